// Jobs: every job of the owner, refreshed every 2 s while any of them is still queued or running.

import { listAll } from "../api.js";
import { $, el, setText } from "../dom.js";
import { fmtDate, fmtInt, fmtLoss } from "../format.js";
import { FINAL } from "../jobs.js";

function jobFraction(job) {
  if (job.status === "succeeded") return 1;
  const p = job.progress || {};
  return p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0;
}

function jobRow(job) {
  const title = job.name || job.id;
  const p = job.progress || {};
  const bar = el("progress", { max: "1", value: String(jobFraction(job)), "aria-label": `Progress of ${title}` });
  return el(
    "tr",
    { "data-id": job.id },
    el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: title })),
    el("td", { "data-label": "Status" }, el("span", { class: `badge ${job.status}`, text: job.status })),
    el("td", { "data-label": "Progress" }, bar, el("div", { class: "hint", text: `step ${fmtInt(p.step || 0)} / ${fmtInt(p.max_steps)}` })),
    el("td", { "data-label": "Train loss", class: "num", text: fmtLoss(p.train_loss) }),
    el("td", { "data-label": "Val loss", class: "num", text: fmtLoss(p.val_loss) }),
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

export default { name: "jobs", path: "jobs", title: "Jobs", errorId: "jobs-error", open: loadJobs };
