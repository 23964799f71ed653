// Loss charts, hand-drawn on a canvas: steps on x, loss on y, in the unit the user chose (units.js).
//
// LineChart draws any set of lines, plus labelled horizontal reference lines, and says on hover what is under
// the pointer (in a text element beside it). LossChart is one job's curve: the noisy per-step training loss
// raw (faint) and smoothed (an exponential moving average, its strength a visible control), the validation
// loss at each evaluation, and the unigram and bigram reference losses when the job carries them. Points
// beyond about two per pixel are skipped at draw time (the stored curve comes already thinned by the API's
// ?max_points=).
//
// What was drawn is written on the canvas for tests and assistive tools: data-references (how many reference
// lines), data-reference-labels (their labels, "|"-separated), data-y-min and data-y-max (the y-axis).

import { fmtInt, fmtLoss, fmtNumber } from "./format.js";
import { toUnit, unitName } from "./units.js";

const LABEL_HEIGHT = 14; // px: one line of the chart's 12px labels

export const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0550ae", "#bf3989", "#4d2d00"];

export class LineChart {
  // describe(step) -> the hover text for the point nearest `step`; tooltip: where it goes (textContent).
  constructor(canvas, { tooltip = null, describe = null } = {}) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.describe = describe;
    this.series = []; // {label, color, points: [{step, value}], dots, width, alpha}
    this.references = []; // {label, value}
    this.hoverStep = null;
    this.pending = false;
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("mousemove", (event) => this.hover(event));
    canvas.addEventListener("mouseleave", () => {
      this.hoverStep = null;
      if (this.tooltip) this.tooltip.textContent = "";
      this.schedule();
    });
  }

  set(series, references = []) {
    this.series = series;
    this.references = references.filter((r) => r.value !== null && r.value !== undefined && isFinite(r.value));
    this.canvas.dataset.references = String(this.references.length);
    this.canvas.dataset.referenceLabels = this.references.map((r) => `${r.label} ${fmtLoss(r.value)}`).join("|");
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  hover(event) {
    if (!this.frame) return;
    const rect = this.canvas.getBoundingClientRect();
    const { xMin, xMax, pad, plotW } = this.frame;
    const fraction = (event.clientX - rect.left - pad.left) / plotW;
    if (fraction < 0 || fraction > 1) return;
    this.hoverStep = xMin + fraction * (xMax - xMin);
    if (this.tooltip && this.describe) this.tooltip.textContent = this.describe(this.hoverStep);
    this.schedule();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const pad = { left: 48, right: 12, top: 10, bottom: 28 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#59636e";
    const all = this.series.flatMap((s) => s.points).filter((p) => p.value !== null && isFinite(p.value));
    if (!all.length) {
      this.frame = null;
      ctx.fillText("Waiting for the first metrics…", pad.left, pad.top + plotH / 2);
      return;
    }
    // The y-axis spans the curves and the reference lines (both losses, in the same unit), with a margin.
    const values = [...all.map((p) => p.value), ...this.references.map((r) => r.value)];
    let yMin = Math.min(...values);
    let yMax = Math.max(...values);
    if (yMax - yMin < 1e-6) {
      yMin -= 0.5;
      yMax += 0.5;
    }
    const margin = (yMax - yMin) * 0.05;
    yMin = Math.max(0, yMin - margin);
    yMax += margin;
    canvas.dataset.yMin = String(yMin);
    canvas.dataset.yMax = String(yMax);
    const steps = all.map((p) => p.step);
    const xMin = Math.min(...steps);
    const xMax = Math.max(Math.max(...steps), xMin + 1);
    this.frame = { xMin, xMax, pad, plotW };
    const x = (step) => pad.left + ((step - xMin) / (xMax - xMin)) * plotW;
    const y = (v) => pad.top + (1 - (v - yMin) / (yMax - yMin)) * plotH;

    // grid and axis labels
    ctx.strokeStyle = "#eaeef2";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of ticks(yMin, yMax, 5)) {
      ctx.beginPath();
      ctx.moveTo(pad.left, y(v));
      ctx.lineTo(pad.left + plotW, y(v));
      ctx.stroke();
      ctx.fillText(fmtNumber(v), pad.left - 6, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const s of ticks(xMin, xMax, Math.max(2, Math.floor(plotW / 90)))) ctx.fillText(fmtInt(s), x(s), pad.top + plotH + 8);
    ctx.strokeStyle = "#d0d7de";
    ctx.strokeRect(pad.left, pad.top, plotW, plotH);

    // Reference losses: dashed, labelled at their right end.
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#6e7781";
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    // Labels sit above their line, top one first, each at least a text line below the one above it.
    let labelFloor = -Infinity;
    for (const ref of [...this.references].sort((a, b) => b.value - a.value)) {
      ctx.beginPath();
      ctx.moveTo(pad.left, y(ref.value));
      ctx.lineTo(pad.left + plotW, y(ref.value));
      ctx.stroke();
      const labelY = Math.max(y(ref.value) - 2, labelFloor + LABEL_HEIGHT, pad.top + LABEL_HEIGHT);
      ctx.fillText(`${ref.label} ${fmtLoss(ref.value)}`, pad.left + plotW - 4, labelY);
      labelFloor = labelY;
    }
    ctx.setLineDash([]);

    for (const s of this.series) {
      const stride = Math.max(1, Math.floor(s.points.length / (plotW * 2)));
      const list = s.points.filter((p, i) => (i % stride === 0 || i === s.points.length - 1) && p.value !== null && isFinite(p.value));
      ctx.globalAlpha = s.alpha ?? 1;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = s.width ?? 2;
      ctx.beginPath();
      list.forEach((p, i) => (i ? ctx.lineTo(x(p.step), y(p.value)) : ctx.moveTo(x(p.step), y(p.value))));
      ctx.stroke();
      if (s.dots && list.length <= plotW / 6) {
        for (const p of list) {
          ctx.beginPath();
          ctx.arc(x(p.step), y(p.value), 3, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
      ctx.globalAlpha = 1;
    }
    if (this.hoverStep !== null) {
      ctx.strokeStyle = "#59636e";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x(this.hoverStep), pad.top);
      ctx.lineTo(x(this.hoverStep), pad.top + plotH);
      ctx.stroke();
    }
  }
}

// The point of `points` nearest `step` (points in step order).
export function nearest(points, step) {
  let best = null;
  for (const p of points) if (best === null || Math.abs(p.step - step) < Math.abs(best.step - step)) best = p;
  return best;
}

// An exponential moving average, debiased at the start (TensorBoard's): `alpha` 0 is the raw curve.
export function smooth(values, alpha) {
  const out = [];
  let average = 0;
  let weight = 0;
  for (const v of values) {
    if (v === null || !isFinite(v)) {
      out.push(null);
      continue;
    }
    average = alpha * average + (1 - alpha) * v;
    weight = alpha * weight + (1 - alpha);
    out.push(average / weight);
  }
  return out;
}

// The two reference losses a job's `reference_losses` carries, by name, in the chosen unit (the API gives them
// in nats per character). Its other fields (the same losses in bits, the held-out share) are not losses to draw.
export const REFERENCE_LOSSES = [
  ["unigram", "unigram (character frequencies)"],
  ["bigram", "bigram (previous character)"],
];

export function referenceLines(references) {
  if (!references) return [];
  return REFERENCE_LOSSES.filter(([name]) => typeof references[name] === "number" && isFinite(references[name])).map(
    ([name, label]) => ({ label, value: toUnit(references[name]) }),
  );
}

export class LossChart {
  constructor(canvas, tooltip) {
    this.canvas = canvas;
    this.points = []; // {step, train, val} in nats, as the API reports them
    this.smoothing = 0.6;
    this.references = null;
    this.chart = new LineChart(canvas, { tooltip, describe: (step) => this.describe(step) });
  }

  reset() {
    this.points = [];
    this.references = null;
    this.update();
  }

  setSmoothing(alpha) {
    this.smoothing = alpha;
    this.update();
  }

  setReferences(references) {
    this.references = references || null;
    this.update();
  }

  add(step, train, val) {
    if (step === null || step === undefined) return;
    const last = this.points[this.points.length - 1];
    if (last && step < last.step) return; // already have it (the stored curve overlaps the live events)
    if (last && step === last.step) {
      if (train !== null && train !== undefined) last.train = train;
      if (val !== null && val !== undefined) last.val = val;
    } else {
      this.points.push({ step, train: train ?? null, val: val ?? null });
    }
    this.update();
  }

  describe(step) {
    const p = nearest(this.points, step);
    if (!p) return "";
    const i = this.points.indexOf(p);
    const smoothed = smooth(this.points.slice(0, i + 1).map((q) => q.train), this.smoothing)[i];
    return (
      `step ${fmtInt(p.step)}: train loss ${fmtLoss(toUnit(p.train))} (raw), ${fmtLoss(toUnit(smoothed))} smoothed; ` +
      `validation loss ${fmtLoss(toUnit(p.val))} (${unitName()})`
    );
  }

  update() {
    const pts = this.points;
    const last = pts[pts.length - 1];
    this.canvas.dataset.points = String(pts.length);
    this.canvas.dataset.unit = unitName();
    this.canvas.setAttribute(
      "aria-label",
      last
        ? `Loss chart: train and validation loss by step, ${pts.length} points, in ${unitName()}; at step ${last.step} ` +
            `train loss ${fmtLoss(toUnit(last.train))}, validation loss ${fmtLoss(toUnit(last.val))}`
        : "Loss chart: train and validation loss by step (no points yet)",
    );
    // Validation loss: each metrics row repeats the last evaluation's value, so the line joins the points where
    // it changes, i.e. the evaluations.
    const val = pts.filter((p, i) => p.val !== null && isFinite(p.val) && (i === 0 || p.val !== pts[i - 1].val));
    const smoothed = smooth(pts.map((p) => p.train), this.smoothing);
    const style = getComputedStyle(document.documentElement);
    const colors = { train: style.getPropertyValue("--train").trim(), val: style.getPropertyValue("--val").trim() };
    const series = [
      { label: "validation loss", color: colors.val, dots: true, points: val.map((p) => ({ step: p.step, value: toUnit(p.val) })) },
      { label: "train loss", color: colors.train, points: pts.map((p, i) => ({ step: p.step, value: toUnit(smoothed[i]) })) },
    ];
    if (this.smoothing > 0) {
      series.unshift({ label: "train loss (raw)", color: colors.train, alpha: 0.25, width: 1, points: pts.map((p) => ({ step: p.step, value: toUnit(p.train) })) });
    }
    this.chart.set(series, referenceLines(this.references));
  }
}

function ticks(lo, hi, count) {
  const span = hi - lo;
  if (span <= 0) return [lo];
  const rough = span / count;
  const mag = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= rough) || rough;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}
