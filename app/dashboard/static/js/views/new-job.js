// New job: a form prefilled from GET /jobs/defaults (the engine's own defaults, not a copy in the page).

import { api, ApiError, isSignedOut, listAll } from "../api.js";
import { $, el, setText } from "../dom.js";
import { fmtInt } from "../format.js";
import { clearFieldErrors, readNumber, showFieldError, showServerErrors } from "../forms.js";

let jobDefaults = null;

const SPECIAL_LABELS = { seq_len: "Sequence length", val_fraction: "Validation fraction", gpus: "Processes" };
const label = (key) => {
  if (SPECIAL_LABELS[key]) return SPECIAL_LABELS[key];
  const text = key.replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
};

// Drawn in the budget row above the advanced settings, not among them.
const BUDGET = new Set(["max_seconds"]);
// Left empty, these are chosen for the job's budget and corpus when it starts (GET /jobs/defaults gives null);
// tests/test_faces.py holds this list to the engine's.
const AUTO_FIELDS = new Set(["hidden_size", "dropout", "eval_every"]);

const fieldId = (path) => `f-${path.replace(/\./g, "-")}`;

// `spec` is the field as GET /jobs/defaults describes it (its one definition in the engine): type, bounds, help.
function numberField(group, key, value, spec) {
  const path = `${group}.${key}`;
  const id = fieldId(path);
  const float = spec.type === "float";
  const low = spec.ge ?? spec.gt;
  const high = spec.le ?? spec.lt;
  const input = el("input", {
    id,
    type: "number",
    step: float ? "any" : "1",
    inputmode: float ? "decimal" : "numeric",
    "data-kind": spec.type,
    min: low === undefined ? null : String(low),
    max: high === undefined ? null : String(high),
    title: spec.help,
    placeholder: value === null ? (AUTO_FIELDS.has(key) ? "auto" : "none") : null,
  });
  if (value !== null && value !== undefined) input.value = String(value);
  return el("div", { class: "field", "data-field": path }, el("label", { for: id, text: label(key) }), input);
}

function selectField(group, key, value, spec) {
  const path = `${group}.${key}`;
  const id = fieldId(path);
  const select = el("select", { id, title: spec.help });
  for (const option of spec.choices) select.append(el("option", { value: option, text: option }));
  select.value = value;
  return el("div", { class: "field", "data-field": path }, el("label", { for: id, text: label(key) }), select);
}

const field = (group, key, value) => {
  const spec = jobDefaults.fields[group][key];
  return spec.type === "choice" ? selectField(group, key, value, spec) : numberField(group, key, value, spec);
};

async function loadJobForm({ query }) {
  clearFieldErrors($("job-form"));
  const [corpora, defaults] = await Promise.all([
    listAll("/corpora"),
    jobDefaults ? Promise.resolve(jobDefaults) : api("GET", "/jobs/defaults"),
  ]);
  const select = $("f-corpus_id");
  const previous = query.get("corpus") || select.value;
  select.replaceChildren();
  if (!corpora.length) select.append(el("option", { value: "", text: "no corpus yet: upload one first" }));
  for (const corpus of corpora) {
    select.append(el("option", { value: corpus.id, text: `${corpus.name} (${fmtInt(corpus.num_chars)} chars)` }));
  }
  if (previous && corpora.some((c) => c.id === previous)) select.value = previous;
  if (jobDefaults === defaults && $("model-fields").childElementCount) return; // keep what the user typed
  jobDefaults = defaults;
  const modelBox = $("model-fields");
  const trainingBox = $("training-fields");
  modelBox.replaceChildren();
  trainingBox.replaceChildren();
  for (const [key, value] of Object.entries(defaults.model)) modelBox.append(field("model", key, value));
  for (const [key, value] of Object.entries(defaults.training)) {
    if (!BUDGET.has(key)) trainingBox.append(field("training", key, value));
  }
  const seconds = defaults.training.max_seconds;
  $("f-training-max_seconds").value = seconds ? String(seconds) : "";
  $("f-minutes").value = seconds ? String(seconds / 60) : "";
  $("f-minutes").placeholder = `none: ${fmtInt(defaults.default_max_steps)} steps`;
  $("f-training-max_seconds").placeholder = "none";
  const maxSteps = $(fieldId("training.max_steps"));
  if (maxSteps) maxSteps.placeholder = `none (${fmtInt(defaults.default_max_steps)} if no other limit)`;
}

// Minutes is the budget people think in; max_seconds is what the API takes. Each follows the other.
$("f-minutes").addEventListener("input", () => {
  const minutes = $("f-minutes").value;
  $("f-training-max_seconds").value = minutes === "" ? "" : String(Math.round(Number(minutes) * 60 * 1000) / 1000);
});
$("f-training-max_seconds").addEventListener("input", () => {
  const seconds = $("f-training-max_seconds").value;
  $("f-minutes").value = seconds === "" ? "" : String(Math.round((Number(seconds) / 60) * 1000) / 1000);
});

function jobBody() {
  const body = { corpus_id: $("f-corpus_id").value, model: {}, training: {} };
  const name = $("f-name").value.trim();
  if (name) body.name = name;
  const initFrom = $("f-init_from").value.trim();
  if (initFrom) body.init_from = initFrom;
  for (const group of ["model", "training"]) {
    for (const [key, value] of Object.entries(jobDefaults[group])) {
      const input = $(fieldId(`${group}.${key}`));
      if (!input) continue;
      const given = input.tagName === "SELECT" ? input.value : readNumber(input);
      // Send only what differs from the server's defaults: a left-out field takes the default anyway.
      if (given !== null && given !== value) body[group][key] = given;
    }
  }
  if (initFrom) delete body.model; // a continued job keeps its checkpoint's architecture
  return body;
}

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("job-form");
  clearFieldErrors(form);
  if (!jobDefaults) return;
  if (!$("f-corpus_id").value) {
    showFieldError(form, "corpus_id", "upload a corpus first (Corpora page)");
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const job = await api("POST", "/jobs", jobBody());
    location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  } catch (error) {
    if (error instanceof ApiError && !isSignedOut(error)) showServerErrors(form, error, "job-form-error");
    else if (!(error instanceof ApiError)) setText("job-form-error", error.message);
  } finally {
    button.disabled = false;
  }
});

export default { name: "new", path: "new", title: "New job", errorId: "job-form-error", open: loadJobForm };
