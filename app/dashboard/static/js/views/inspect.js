// Inspect: a text as the model saw it. Each character is an element of its own, shaded by the model's surprise
// (or by one unit's activation: the neuron view), with what the model expected there shown on hover and on
// keyboard focus (one tab stop for the text, the arrow keys move between characters). "Find units" lists the
// units that best track simple features of the text; choosing one shades the text by it.

import { api, isSignedOut, listAll } from "../api.js";
import { $, el, setText } from "../dom.js";
import { fmtNumber } from "../format.js";
import { clearFieldErrors, readNumber, showFieldError, showServerErrors } from "../forms.js";

const TOP_K = 5;
const SURPRISE_FULL_BITS = 8; // shaded fully red from here: a 1-in-256 character
let result = null; // the last answer, and which unit it shades by
const latest = { text: 0, units: 0 }; // the newest request of each kind

const pct = (p) => `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)} %`;
const shown = (c) => (c === "\n" ? "↵" : c === " " ? "␣" : c === "\t" ? "⇥" : c);

async function loadModels({ query }) {
  const select = $("i-model");
  const previous = query.get("model") || select.value;
  const jobs = (await listAll("/jobs", 200)).filter((j) => j.status !== "queued" && j.status !== "failed");
  select.replaceChildren(...jobs.map((j) => el("option", { value: j.id, text: `${j.name || j.id} · ${j.status}` })));
  if (previous && previous.startsWith("ckpt_")) select.append(el("option", { value: previous, text: previous }));
  if (!select.options.length) select.append(el("option", { value: "", text: "no model yet: train a job first" }));
  if (previous && [...select.options].some((o) => o.value === previous)) select.value = previous;
}

function unitChoice() {
  const unit = readNumber($("i-unit"));
  const layer = readNumber($("i-layer"));
  return unit === null ? null : { layer: layer ?? 0, unit, state: $("i-state").value };
}

async function run({ findUnits = false } = {}) {
  const form = $("inspect-form");
  clearFieldErrors(form);
  const body = { model: $("i-model").value, text: $("i-text").value, top_k: findUnits ? 0 : TOP_K };
  if (!body.model) return showFieldError(form, "model", "train a job first: there is no model to inspect");
  if (!body.text) return showFieldError(form, "text", "type or paste a text to inspect");
  const choice = unitChoice();
  if (findUnits) body.find_units = true;
  else if (choice) Object.assign(body, { layer: choice.layer, units: [choice.unit] });
  setText("inspect-status", findUnits ? "Looking for units…" : "Reading…");
  // Requests may overlap (a control changed while another was on its way): only each kind's latest is shown.
  const kind = findUnits ? "units" : "text";
  const ticket = (latest[kind] += 1);
  try {
    const answer = await api("POST", "/inspect", body);
    if (ticket !== latest[kind]) return;
    if (findUnits) showUnits(answer.found_units || []);
    else render(answer, choice);
    setText("inspect-status", findUnits ? "" : `${fmtNumber(answer.mean_surprise_bits)} bits per character on average.`);
  } catch (error) {
    if (ticket !== latest[kind]) return;
    setText("inspect-status", "");
    if (!isSignedOut(error)) {
      showServerErrors(form, error, "inspect-error");
      if (error.status === 422 && /\blayer\b/.test(error.message)) showFieldError(form, "layer", error.message);
      else if (error.status === 422 && /\bunits?\b/.test(error.message)) showFieldError(form, "units", error.message);
    }
  }
}

function render(answer, choice) {
  const chars = answer.characters;
  const act = answer.activations;
  const values = choice && act ? (choice.state === "c" && act.c ? act.c : act.h).map((row) => row[0]) : null;
  const scale = values ? Math.max(1e-6, ...values.map(Math.abs)) : SURPRISE_FULL_BITS;
  result = { chars, values, choice, scale, model: answer.checkpoint_id };
  const out = $("inspect-output");
  out.hidden = false;
  out.setAttribute(
    "aria-label",
    values ? `Inspected text, shaded by layer ${choice.layer} unit ${choice.unit} (${choice.state})` : "Inspected text, shaded by surprise",
  );
  const spans = chars.map((c, i) => {
    const span = el("span", {
      class: c.char === "\n" ? "ch nl" : "ch",
      tabindex: i === 0 ? "0" : "-1",
      role: "button",
      "aria-label": describe(i),
      "data-index": String(i),
      text: c.char,
    });
    span.style.backgroundColor = shade(i);
    return span;
  });
  out.replaceChildren(...spans);
  $("inspect-detail").hidden = false;
  setText("inspect-detail", "Hover over a character, or focus one, to see what the model expected there.");
  $("inspect-scale").hidden = false;
  $("scale-bar").className = `bar ${values ? "activation" : "surprise"}`;
  setText("scale-low", values ? `${fmtNumber(-scale)}` : "0 bits (expected)");
  setText("scale-high", values ? `${fmtNumber(scale)} (layer ${choice.layer}, ${choice.state}${choice.unit})` : `${SURPRISE_FULL_BITS}+ bits (surprising)`);
}

function shade(i) {
  if (result.values) {
    const v = result.values[i] / result.scale;
    return v >= 0 ? `rgba(207, 34, 46, ${(0.85 * v).toFixed(3)})` : `rgba(9, 105, 218, ${(-0.85 * v).toFixed(3)})`;
  }
  const t = Math.min(1, result.chars[i].surprise_bits / SURPRISE_FULL_BITS);
  return `rgba(${Math.round(245 - 38 * t)}, ${Math.round(159 - 125 * t)}, ${Math.round(0 + 46 * t)}, ${(0.85 * t).toFixed(3)})`;
}

// The character's whole story in one line: its accessible name, and the text shown on hover or focus.
function describe(i) {
  const c = result.chars[i];
  const expected = c.top.map((t) => `${JSON.stringify(t.char)} ${pct(t.prob)}`).join(", ");
  let text =
    `${JSON.stringify(c.char)} (character ${i + 1}): probability ${pct(c.prob)}, surprise ${fmtNumber(c.surprise_bits)} bits, ` +
    `rank ${c.rank}, entropy ${fmtNumber(c.entropy_bits)} bits. Expected: ${expected || "–"}`;
  if (result.values) text += `. Layer ${result.choice.layer} unit ${result.choice.unit} (${result.choice.state}): ${fmtNumber(result.values[i])}`;
  return text;
}

function showDetail(span) {
  const i = Number(span.dataset.index);
  const c = result.chars[i];
  const detail = $("inspect-detail");
  const expected = c.top.map((t) => `${shown(t.char)} ${pct(t.prob)}`).join(" · ");
  detail.replaceChildren(
    el("strong", { text: shown(c.char) }),
    ` p ${pct(c.prob)} · surprise ${fmtNumber(c.surprise_bits)} bits · rank ${c.rank} · entropy ${fmtNumber(c.entropy_bits)} bits`,
    el("br"),
    `expected: ${expected || "–"}`,
    result.values ? ` · unit ${result.choice.state}${result.choice.unit}: ${fmtNumber(result.values[i])}` : "",
  );
  detail.dataset.index = String(i);
}

function showUnits(features) {
  const box = $("units-found");
  $("found-title").hidden = false;
  $("found-hint").hidden = false;
  box.replaceChildren(
    ...features.map((f) =>
      el(
        "section",
        { "data-feature": f.feature },
        el("h3", { text: f.description }),
        f.units.length
          ? el(
              "ul",
              {},
              ...f.units.map((u) =>
                el(
                  "li",
                  {},
                  el("button", {
                    type: "button",
                    text: `layer ${u.layer} ${u.state}${u.unit} (${u.correlation >= 0 ? "+" : ""}${u.correlation.toFixed(2)})`,
                    "aria-label": `Show layer ${u.layer} unit ${u.unit} (${u.state}), correlation ${u.correlation.toFixed(2)} with ${f.description}`,
                    onclick: () => {
                      $("i-layer").value = String(u.layer);
                      $("i-unit").value = String(u.unit);
                      $("i-state").value = u.state;
                      run();
                    },
                  }),
                ),
              ),
            )
          : el("p", { class: "hint", text: f.note || "none" }),
      ),
    ),
  );
}

const out = $("inspect-output");
out.addEventListener("mouseover", (event) => {
  if (event.target.classList && event.target.classList.contains("ch")) showDetail(event.target);
});
out.addEventListener("focusin", (event) => {
  if (!event.target.classList.contains("ch")) return;
  for (const other of out.querySelectorAll('.ch[tabindex="0"]')) if (other !== event.target) other.tabIndex = -1;
  event.target.tabIndex = 0;
  showDetail(event.target);
});
out.addEventListener("keydown", (event) => {
  const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity };
  if (!(event.key in moves) || !event.target.classList.contains("ch")) return;
  event.preventDefault();
  const spans = out.children;
  const i = Math.max(0, Math.min(spans.length - 1, Number(event.target.dataset.index) + moves[event.key]));
  spans[i].focus();
});
$("inspect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
$("find-units").addEventListener("click", () => run({ findUnits: true }));
for (const id of ["i-layer", "i-unit", "i-state"]) {
  $(id).addEventListener("change", () => {
    if (result) run(); // the neuron view follows the controls once a text is shown
  });
}

export default { name: "inspect", path: "inspect", title: "Inspect", errorId: "inspect-error", open: loadModels };
