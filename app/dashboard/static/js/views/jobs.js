// Jobs: every job of the owner, refreshed every 2 s while any of them is still queued or running. Ticked jobs
// can be compared: their validation curves on one chart, and their settings side by side, what differs marked.

import { api, isSignedOut, listAll } from "../api.js";
import { LineChart, nearest, PALETTE, referenceLines } from "../chart.js";
import { $, el, setText } from "../dom.js";
import { fmtDate, fmtInt, fmtLoss } from "../format.js";
import { FINAL } from "../jobs.js";
import { bindBitsToggle, fmtLossIn, onUnitChange, showLoss, toUnit, unitName } from "../units.js";

const selected = new Set(); // job ids ticked, kept across refreshes
let compared = null; // {jobs, curves} of the comparison on screen
const compareChart = new LineChart($("compare-chart"), { tooltip: $("compare-hover"), describe: describeCompared });

function jobFraction(job) {
  if (job.status === "succeeded") return 1;
  const p = job.progress || {};
  return p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0;
}

function jobRow(job) {
  const title = job.name || job.id;
  const p = job.progress || {};
  const bar = el("progress", { max: "1", value: String(jobFraction(job)), "aria-label": `Progress of ${title}` });
  const tick = el("input", { type: "checkbox", "aria-label": `Select ${title} to compare`, checked: selected.has(job.id) });
  tick.addEventListener("change", () => (tick.checked ? selected.add(job.id) : selected.delete(job.id)));
  return el(
    "tr",
    { "data-id": job.id },
    el("td", { "data-label": "Compare" }, tick),
    el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: title })),
    el("td", { "data-label": "Status" }, el("span", { class: `badge ${job.status}`, text: job.status })),
    el("td", { "data-label": "Progress" }, bar, el("div", { class: "hint", text: `step ${fmtInt(p.step || 0)} / ${fmtInt(p.max_steps)}` })),
    showLoss(el("td", { "data-label": "Train loss", class: "num" }), p.train_loss),
    showLoss(el("td", { "data-label": "Val loss", class: "num" }), p.val_loss),
    el("td", { "data-label": "Created", text: fmtDate(job.created_at) }),
  );
}

async function loadJobs({ signal }) {
  let timer = null;
  signal.addEventListener("abort", () => clearTimeout(timer));
  const refresh = async () => {
    const jobs = await listAll("/jobs", 200, { signal });
    if (signal.aborted) return;
    setText("jobs-error", "");
    $("jobs-table").tBodies[0].replaceChildren(...jobs.map(jobRow));
    $("jobs-empty").hidden = jobs.length > 0;
    $("jobs-table").hidden = jobs.length === 0;
    if (jobs.some((j) => !FINAL.has(j.status))) {
      timer = setTimeout(() => refresh().catch((e) => signal.aborted || setText("jobs-error", e.message)), 2000);
    }
  };
  await refresh();
}

// The settings of each job as rows "model.cell", "training.learning_rate", ...: every key any of them has.
function settingsRows(jobs) {
  const rows = [["corpus", jobs.map((j) => j.corpus_id)]];
  for (const group of ["model", "training"]) {
    const keys = [...new Set(jobs.flatMap((j) => Object.keys(j[group] || {})))].sort();
    for (const key of keys) rows.push([`${group}.${key}`, jobs.map((j) => (j[group] || {})[key])]);
  }
  rows.push(["status", jobs.map((j) => j.status)]);
  rows.push(["steps", jobs.map((j) => (j.progress || {}).step)]);
  rows.push([`best val loss (${unitName()})`, jobs.map((j) => fmtLossIn((j.progress || {}).best_val_loss))]);
  return rows;
}

const cellText = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));

function drawCompared() {
  if (!compared) return;
  const { jobs, curves } = compared;
  setText("compare-unit", unitName());
  const series = jobs.map((job, i) => ({
    label: job.name || job.id,
    color: PALETTE[i % PALETTE.length],
    dots: true,
    points: curves[i].map((p) => ({ step: p.step, value: toUnit(p.val) })),
  }));
  // The corpus's reference lines, when every run trained on the same corpus (and it has them).
  const corpora = new Set(jobs.map((j) => j.corpus_id));
  const refs = corpora.size === 1 ? referenceLines(jobs.find((j) => j.reference_losses)?.reference_losses) : [];
  compareChart.set(series, refs);
  $("compare-chart").dataset.series = String(series.length);
  $("compare-chart").setAttribute(
    "aria-label",
    `Validation loss by step of ${jobs.length} jobs, in ${unitName()}: ` +
      jobs.map((j, i) => `${j.name || j.id} ends at ${fmtLoss(toUnit((curves[i].at(-1) || {}).val))}`).join("; "),
  );
  $("compare-legend").replaceChildren(
    ...series.map((s) => {
      const item = el("li", { text: s.label });
      item.style.setProperty("--swatch", s.color);
      return item;
    }),
  );
  const table = $("compare-table");
  table.tHead.replaceChildren(
    el("tr", {}, el("th", { scope: "col", text: "Setting" }), ...jobs.map((j) => el("th", { scope: "col", text: j.name || j.id }))),
  );
  table.tBodies[0].replaceChildren(
    ...settingsRows(jobs).map(([name, values]) => {
      const differs = new Set(values.map(cellText)).size > 1;
      return el(
        "tr",
        { class: differs ? "differs" : null, "data-setting": name },
        el("th", { scope: "row" }, name, differs ? el("span", { class: "sr-only", text: " (differs)" }) : null),
        ...values.map((v) => el("td", { class: differs ? "differs" : null, text: cellText(v) })),
      );
    }),
  );
}

function describeCompared(step) {
  if (!compared) return "";
  return compared.jobs
    .map((j, i) => {
      const p = nearest(compared.curves[i], step);
      return p ? `${j.name || j.id}: step ${fmtInt(p.step)} ${fmtLoss(toUnit(p.val))}` : null;
    })
    .filter(Boolean)
    .join(" · ");
}

async function compare() {
  const ids = [...selected];
  if (ids.length < 2) {
    setText("compare-status", "Tick two or more jobs to compare their runs.");
    return;
  }
  setText("compare-status", `Comparing ${ids.length} jobs…`);
  try {
    const jobs = await Promise.all(ids.map((id) => api("GET", `/jobs/${encodeURIComponent(id)}`)));
    const metrics = await Promise.all(ids.map((id) => api("GET", `/jobs/${encodeURIComponent(id)}/metrics?max_points=1000`)));
    // Each metrics row repeats the last evaluation: keep the rows where the validation loss changes.
    const curves = metrics.map((rows) =>
      rows.filter((m, i) => m.val_loss !== null && (i === 0 || m.val_loss !== rows[i - 1].val_loss)).map((m) => ({ step: m.step, val: m.val_loss })),
    );
    compared = { jobs, curves };
    $("compare").hidden = false;
    drawCompared();
    setText("compare-status", `${ids.length} jobs compared.`);
  } catch (error) {
    if (!isSignedOut(error)) setText("jobs-error", error.message);
    setText("compare-status", "");
  }
}

$("compare-go").addEventListener("click", compare);
bindBitsToggle($("compare-bits"));
onUnitChange(drawCompared);

export default { name: "jobs", path: "jobs", title: "Jobs", errorId: "jobs-error", open: loadJobs };
