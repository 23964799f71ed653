// The loss chart: a hand-written canvas drawing of two lines, steps on x, loss on y. Points beyond about two
// per pixel are skipped at draw time (the stored curve comes already thinned by the API's ?max_points=).

import { fmtInt, fmtLoss, fmtNumber } from "./format.js";

export class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = []; // {step, train, val}
    this.pending = false;
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  reset() {
    this.points = [];
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

  update() {
    const last = this.points[this.points.length - 1];
    this.canvas.dataset.points = String(this.points.length);
    this.canvas.setAttribute(
      "aria-label",
      last
        ? `Loss chart: train and validation loss by step, ${this.points.length} points; at step ${last.step} ` +
            `train loss ${fmtLoss(last.train)}, validation loss ${fmtLoss(last.val)}`
        : "Loss chart: train and validation loss by step (no points yet)",
    );
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
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
    const style = getComputedStyle(document.documentElement);
    const colors = { train: style.getPropertyValue("--train").trim(), val: style.getPropertyValue("--val").trim() };
    const pad = { left: 48, right: 12, top: 10, bottom: 28 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#59636e";
    const pts = this.points;
    if (!pts.length) {
      ctx.fillText("Waiting for the first metrics…", pad.left, pad.top + plotH / 2);
      return;
    }
    let yMin = Infinity;
    let yMax = -Infinity;
    for (const p of pts) {
      for (const v of [p.train, p.val]) {
        if (v !== null && isFinite(v)) {
          yMin = Math.min(yMin, v);
          yMax = Math.max(yMax, v);
        }
      }
    }
    if (!isFinite(yMin)) return;
    if (yMax - yMin < 1e-6) {
      yMin -= 0.5;
      yMax += 0.5;
    }
    const margin = (yMax - yMin) * 0.05;
    yMin = Math.max(0, yMin - margin);
    yMax += margin;
    const xMin = pts[0].step;
    const xMax = Math.max(pts[pts.length - 1].step, xMin + 1);
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
    for (const s of ticks(xMin, xMax, Math.max(2, Math.floor(plotW / 90)))) {
      ctx.fillText(fmtInt(s), x(s), pad.top + plotH + 8);
    }
    ctx.strokeStyle = "#d0d7de";
    ctx.strokeRect(pad.left, pad.top, plotW, plotH);

    // Train loss: every point (thinned to about two per pixel). Validation loss: each metrics row repeats
    // the last evaluation's value, so the line joins the points where it changes, i.e. the evaluations.
    const stride = Math.max(1, Math.floor(pts.length / (plotW * 2)));
    const train = pts.filter((p, i) => (i % stride === 0 || i === pts.length - 1) && p.train !== null && isFinite(p.train));
    const val = pts.filter((p, i) => p.val !== null && isFinite(p.val) && (i === 0 || p.val !== pts[i - 1].val));
    const evalThin = Math.max(1, Math.floor(val.length / (plotW / 3)));
    const series = [
      ["train", train, false],
      ["val", val.filter((p, i) => i % evalThin === 0 || i === val.length - 1), true],
    ];
    for (const [key, list, dots] of series) {
      ctx.strokeStyle = colors[key];
      ctx.fillStyle = colors[key];
      ctx.lineWidth = 2;
      ctx.beginPath();
      list.forEach((p, i) => (i ? ctx.lineTo(x(p.step), y(p[key])) : ctx.moveTo(x(p.step), y(p[key]))));
      ctx.stroke();
      if (dots && list.length <= plotW / 6) {
        for (const p of list) {
          ctx.beginPath();
          ctx.arc(x(p.step), y(p[key]), 3, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
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

