// One job, live: its header and progress, the loss chart, samples, checkpoints and log. What happened so far
// comes from the stored events and the thinned curve, then the page follows the job's event stream.

import { api, ApiError, listAll, request } from "../api.js";
import { LossChart } from "../chart.js";
import { $, el, setText } from "../dom.js";
import { readEventStream } from "../events.js";
import { fmtBytes, fmtDate, fmtInt, fmtNumber, fmtSeconds } from "../format.js";
import { architecture, FINAL } from "../jobs.js";
import { bindBitsToggle, onUnitChange, showLoss, unitName } from "../units.js";

const chart = new LossChart($("loss-chart"), $("chart-hover"));

$("chart-smoothing").addEventListener("input", () => {
  const alpha = Number($("chart-smoothing").value);
  setText("chart-smoothing-value", String(alpha));
  chart.setSmoothing(alpha);
});
bindBitsToggle($("chart-bits"));
onUnitChange(() => {
  setText("chart-unit", unitName());
  chart.update();
});
setText("chart-unit", unitName());

function renderJob(job) {
  const title = job.name || job.id;
  setText("job-title", title);
  document.title = `${title} · charrnn`;
  setText("job-id", job.id);
  showArchitecture(job.model);
  if (!$("job-corpus").textContent) setText("job-corpus", `corpus ${job.corpus_id}`);
  setText("job-created", `created ${fmtDate(job.created_at)}`);
  renderStatus(job.status);
  setText("job-error", job.error ? `Error: ${job.error.message}` : "");
  setText("s-device", job.device || "–");
  renderProgress({ ...(job.progress || {}) }, job.status);
  $("job-play").href = `#/playground?model=${encodeURIComponent(job.id)}`;
  showReferences(job.reference_losses);
  showDiagnosis(job.diagnosis);
}

// The unigram and bigram reference losses of the job's split: known once it starts (its record, and the log
// event that says them).
function showReferences(references) {
  if (!references) return;
  chart.setReferences(references);
  $("chart-ref-key").hidden = false;
}

// The training doctor's latest reading (worker/engine/doctor.py): {kind, message, step}, or none yet. The
// message starts with the kind in words ("still improving: ..."); the kind also colours the box.
function showDiagnosis(diagnosis) {
  const box = $("job-diagnosis");
  box.hidden = !diagnosis;
  if (!diagnosis) return;
  box.dataset.kind = diagnosis.kind;
  setText("job-diagnosis-kind", `Diagnosis at step ${fmtInt(diagnosis.step)}:`);
  setText("job-diagnosis-message", diagnosis.message);
}

// A "log" event may carry the run's start (its model, device and reference losses) or a diagnosis.
function applyLogData(data) {
  applyStartInfo(data);
  if (data.reference_losses) showReferences(data.reference_losses);
  if (data.diagnosis) showDiagnosis(data.diagnosis);
}

// The size a job leaves out is chosen by the worker as the job starts running, after the status turns
// "running": the "training …" log event and the job's record carry it from then on.
let sizeKnown = false;

function showArchitecture(model) {
  setText("job-arch", architecture(model));
  sizeKnown = Boolean(model && model.hidden_size);
}

function renderStatus(status) {
  const badge = $("job-status");
  badge.textContent = status;
  badge.className = `badge ${status}`;
  badge.dataset.status = status;
  $("job-cancel").disabled = FINAL.has(status);
}

function renderProgress(p, status) {
  const fraction = status === "succeeded" ? 1 : p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0;
  $("job-progress").value = fraction;
  setText("job-progress-text", `${Math.round(fraction * 100)} %`);
  setText("s-step", `${fmtInt(p.step || 0)} / ${fmtInt(p.max_steps)}`);
  setText("s-eta", FINAL.has(status) ? "done" : fmtSeconds(p.eta_seconds));
  showLoss($("s-train"), p.train_loss);
  showLoss($("s-val"), p.val_loss);
  showLoss($("s-best"), p.best_val_loss);
  if (p.learning_rate !== undefined) setText("s-lr", fmtNumber(p.learning_rate));
  if (p.chars_per_second !== undefined) setText("s-cps", fmtInt(p.chars_per_second));
}

function addSample(data) {
  $("samples-empty").hidden = true;
  const box = $("samples");
  const article = el(
    "article",
    { class: "sample" },
    el("h3", {}, `Step ${fmtInt(data.step)} · val loss `, showLoss(el("span"), data.val_loss)),
    el("pre", { text: data.sample || "" }),
  );
  box.prepend(article); // newest first
  while (box.childElementCount > 200) box.lastElementChild.remove();
}

function addLog(event) {
  const log = $("job-log");
  log.prepend(el("li", { text: `${new Date(event.created_at).toLocaleTimeString()} ${event.message}` }));
  while (log.childElementCount > 50) log.lastElementChild.remove();
}

// The "training …" log event the worker writes on starting carries the device and the model as it runs.
function applyStartInfo(data) {
  if (data.device) setText("s-device", data.device);
  if (data.model && data.model.hidden_size) showArchitecture(data.model);
}

async function loadCheckpoints(jobId, signal) {
  const checkpoints = await listAll(`/jobs/${encodeURIComponent(jobId)}/checkpoints`, 300, { signal });
  const body = $("ckpt-table").tBodies[0];
  body.replaceChildren();
  $("ckpt-empty").hidden = checkpoints.length > 0;
  $("ckpt-table").hidden = checkpoints.length === 0;
  checkpoints.sort((a, b) => b.step - a.step);
  for (const c of checkpoints) {
    const download = el("button", { type: "button", text: "Download", "aria-label": `Download checkpoint at step ${c.step}` });
    download.addEventListener("click", () => downloadCheckpoint(c, download));
    const play = el("a", {
      class: "button",
      href: `#/playground?model=${encodeURIComponent(c.id)}`,
      text: "Try",
      "aria-label": `Try checkpoint at step ${c.step} in the playground`,
    });
    const step = `${fmtInt(c.step)}${c.is_best ? " ★" : ""}`;
    body.append(
      el(
        "tr",
        { "data-id": c.id },
        el("td", { "data-label": "Step", class: "num", text: step, title: c.is_best ? "best so far" : null }),
        showLoss(el("td", { "data-label": "Val loss", class: "num" }), c.val_loss),
        el("td", { "data-label": "Size", class: "num", text: fmtBytes(c.size_bytes) }),
        el("td", { class: "actions" }, download, " ", play),
      ),
    );
  }
}

// A link can't carry the Authorization header, so: fetch → Blob → object URL → a temporary <a download>.
async function downloadCheckpoint(checkpoint, button) {
  setText("ckpt-error", "");
  button.disabled = true;
  try {
    const response = await request(`/checkpoints/${encodeURIComponent(checkpoint.id)}/download`);
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: match ? match[1] : `${checkpoint.job_id}-step${checkpoint.step}.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) setText("ckpt-error", `Download failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

// The loss curve as CSV: fetched with the key (a link cannot carry it), then saved from a Blob.
async function downloadCsv(path, jobId) {
  try {
    const blob = await (await request(`${path}/metrics.csv`)).blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `${jobId}-metrics.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) setText("job-error", `Download failed: ${error.message}`);
  }
}

async function openJob({ params, signal }) {
  const jobId = params.id;
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  $("job-csv").href = path + "/metrics.csv";
  $("job-csv").onclick = (event) => {
    event.preventDefault();
    downloadCsv(path, jobId);
  };
  $("samples").replaceChildren();
  $("samples-empty").hidden = false;
  $("job-log").replaceChildren();
  $("ckpt-table").tBodies[0].replaceChildren();
  for (const id of ["s-lr", "s-cps", "job-error", "ckpt-error", "job-corpus"]) setText(id, "");
  showArchitecture(null);
  showDiagnosis(null);
  $("chart-ref-key").hidden = true;
  chart.reset();
  let job = await api("GET", path, undefined, { signal });
  renderJob(job);
  api("GET", `/corpora/${encodeURIComponent(job.corpus_id)}`, undefined, { signal })
    .then((corpus) => setText("job-corpus", `corpus ${corpus.name}`))
    .catch(() => {});
  $("job-cancel").onclick = async () => {
    $("job-cancel").disabled = true;
    try {
      job = await api("POST", `${path}/cancel`);
      renderJob(job);
    } catch (error) {
      setText("job-error", `Could not cancel: ${error.message}`);
      $("job-cancel").disabled = FINAL.has(job.status);
    }
  };

  let cursor = 0;
  let status = job.status;
  for (;;) {
    const page = await api("GET", `${path}/events?limit=1000&after=${cursor}`, undefined, { signal });
    for (const event of page.data) {
      cursor = event.id;
      if (event.type === "sample") addSample(event.data);
      else if (event.type === "status" || event.type === "log") addLog(event);
      if (event.type === "status" && event.data.status) status = event.data.status; // newer than `job`
      if (event.type === "log") applyLogData(event.data || {});
    }
    if (!page.has_more) break;
  }
  renderStatus(status);
  const metrics = await api("GET", `${path}/metrics?max_points=2000`, undefined, { signal });
  for (const m of metrics) chart.add(m.step, m.train_loss, m.val_loss);
  const last = metrics[metrics.length - 1];
  if (last) renderProgress({ ...job.progress, learning_rate: last.learning_rate, chars_per_second: last.chars_per_second }, status);
  await loadCheckpoints(jobId, signal);
  if (!FINAL.has(job.status)) follow(jobId, cursor, status, signal);
}

async function follow(jobId, after, initialStatus, signal) {
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  let cursor = after;
  let status = initialStatus;
  // Metrics flow once the size is chosen: if the log event that names it went by unseen (the stream
  // reconnected past it), the job's record has it.
  let reading = false;
  const readChosenSize = () => {
    if (sizeKnown || reading) return;
    reading = true;
    api("GET", path, undefined, { signal })
      .then((job) => showArchitecture(job.model))
      .catch(() => {})
      .finally(() => (reading = false));
  };
  const onEvent = (message) => {
    if (message.id) cursor = Number(message.id);
    const event = JSON.parse(message.data);
    const data = event.data || {};
    if (event.type === "metrics" || event.type === "sample") {
      chart.add(data.step, data.train_loss, data.val_loss);
      if (status === "queued") {
        status = "running"; // metrics flow only while it runs
        renderStatus(status);
      }
      readChosenSize();
      renderProgress(data, status);
      if (event.type === "sample") addSample(data);
    } else if (event.type === "checkpoint") {
      loadCheckpoints(jobId, signal).catch((e) => signal.aborted || setText("ckpt-error", e.message));
    } else if (event.type === "status") {
      status = data.status;
      renderStatus(status);
      addLog(event);
    } else if (event.type === "log") {
      applyLogData(data);
      addLog(event);
    }
  };
  while (!signal.aborted) {
    try {
      const response = await request(`${path}/events?after=${cursor}`, { headers: { Accept: "text/event-stream" }, signal });
      await readEventStream(response, onEvent, signal);
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) {
        if (error.status !== 401) setText("job-error", error.message);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000)); // dropped connection: pick up where we were
    }
    if (signal.aborted) return;
    const job = await api("GET", path, undefined, { signal }).catch(() => null);
    if (job && FINAL.has(job.status)) {
      renderJob(job);
      await loadCheckpoints(jobId, signal).catch(() => {});
      return;
    }
  }
}

export default { name: "job", path: "jobs/:id", nav: "jobs", title: "Job", errorId: "job-error", open: openJob };
