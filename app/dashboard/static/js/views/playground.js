// Playground: generate from a job's best checkpoint or a given checkpoint (streamed), and score a text.

import { api, ApiError, isSignedOut, listAll, messageOf, request } from "../api.js";
import { $, el, setText } from "../dom.js";
import { readEventStream } from "../events.js";
import { fmtInt } from "../format.js";
import { clearFieldErrors, readNumber, showFieldError, showServerErrors } from "../forms.js";

let generation = null; // the AbortController of the stream in flight

async function loadPlayground({ query }) {
  const select = $("g-model");
  const previous = query.get("model") || select.value;
  const jobs = (await listAll("/jobs", 200)).filter((j) => j.status !== "queued" && j.status !== "failed");
  const jobGroup = el("optgroup", { label: "Jobs (their best checkpoint)" });
  for (const job of jobs) {
    jobGroup.append(el("option", { value: job.id, text: `${job.name || job.id} · ${job.status}` }));
  }
  select.replaceChildren(jobGroup);
  // Checkpoints of the newest few jobs, and the one asked for if it is older.
  const ckptGroup = el("optgroup", { label: "Checkpoints" });
  const lists = await Promise.all(
    jobs.slice(0, 8).map((j) => listAll(`/jobs/${encodeURIComponent(j.id)}/checkpoints`, 100).catch(() => [])),
  );
  const names = Object.fromEntries(jobs.map((j) => [j.id, j.name || j.id]));
  for (const c of lists.flat()) {
    ckptGroup.append(el("option", { value: c.id, text: `${names[c.job_id]} · step ${c.step}${c.is_best ? " (best)" : ""}` }));
  }
  if (previous && previous.startsWith("ckpt_") && !ckptGroup.querySelector(`option[value="${CSS.escape(previous)}"]`)) {
    ckptGroup.append(el("option", { value: previous, text: previous }));
  }
  if (ckptGroup.childElementCount) select.append(ckptGroup);
  if (!select.querySelector("option")) select.append(el("option", { value: "", text: "no model yet: train a job first" }));
  if (previous && select.querySelector(`option[value="${CSS.escape(previous)}"]`)) select.value = previous;
}

const numberOrNull = (id) => readNumber($(id));

$("gen-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("gen-form");
  clearFieldErrors(form);
  if (generation) generation.abort();
  const body = {
    model: $("g-model").value,
    prompt: $("g-prompt").value,
    temperature: numberOrNull("g-temperature") ?? 1.0,
    length: numberOrNull("g-length") ?? 200,
    stream: true,
  };
  for (const [key, id] of [["top_k", "g-top_k"], ["top_p", "g-top_p"], ["seed", "g-seed"]]) {
    const value = numberOrNull(id);
    if (value !== null) body[key] = value;
  }
  if (!body.model) {
    showFieldError(form, "model", "train a job first: there is no model to sample from");
    return;
  }
  const out = $("gen-output");
  out.replaceChildren();
  out.dataset.chunks = "0";
  out.dataset.done = "false";
  if (body.prompt) out.append(el("span", { class: "prompt", text: body.prompt }));
  const generated = document.createTextNode("");
  out.append(generated);
  setText("gen-meta", "Generating…");
  const controller = new AbortController();
  generation = controller;
  $("gen-go").disabled = true;
  $("gen-stop").disabled = false;
  let chunks = 0;
  const onEvent = (message) => {
    const data = JSON.parse(message.data);
    if (message.type === "chunk") {
      generated.appendData(data.text);
      chunks += 1;
      out.dataset.chunks = String(chunks);
    } else if (message.type === "done") {
      const sample = (data.samples || [])[0] || {};
      setText(
        "gen-meta",
        `${fmtInt(data.usage && data.usage.generated_chars)} characters from ${data.checkpoint_id}` +
          ` (stopped by ${sample.finish_reason || "?"}).`,
      );
      out.dataset.done = "true";
    } else if (message.type === "error") {
      setText("gen-error", messageOf(data, 500));
    }
  };
  try {
    const response = await request("/generate", {
      method: "POST",
      json: body,
      headers: { Accept: "text/event-stream" },
      signal: controller.signal,
    });
    await readEventStream(response, onEvent, controller.signal);
  } catch (error) {
    if (controller.signal.aborted) setText("gen-meta", "Stopped.");
    else if (error instanceof ApiError) {
      if (!isSignedOut(error)) showServerErrors(form, error, "gen-error");
      setText("gen-meta", "");
    } else {
      setText("gen-error", `Generation failed: ${error.message}`);
      setText("gen-meta", "");
    }
  } finally {
    if (generation === controller) generation = null;
    $("gen-go").disabled = false;
    $("gen-stop").disabled = true;
  }
});

$("gen-stop").addEventListener("click", () => {
  if (generation) generation.abort();
});

$("score-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("score-form");
  clearFieldErrors(form);
  setText("score-result", "");
  const model = $("g-model").value;
  if (!model) {
    setText("score-error", "Pick a model above first.");
    return;
  }
  try {
    const result = await api("POST", "/score", { model, text: $("score-text").value });
    setText(
      "score-result",
      `Loss ${result.loss.toFixed(4)} nats per character over ${fmtInt(result.chars)} characters ` +
        `(${(result.loss / Math.LN2).toFixed(3)} bits/char, perplexity ${Math.exp(result.loss).toFixed(2)}).`,
    );
  } catch (error) {
    if (error instanceof ApiError && !isSignedOut(error)) showServerErrors(form, error, "score-error");
    else if (!(error instanceof ApiError)) setText("score-error", error.message);
  }
});

export default { name: "playground", path: "playground", title: "Playground", errorId: "gen-error", open: loadPlayground };
