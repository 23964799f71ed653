// What the views know about jobs.

// A job in one of these states changes no more.
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

// "lstm 2×256": the cell, layers and units per layer. A size the job left out reads "auto" until the
// worker has chosen it (the job's model, and the "training …" log event's, carry it from then on).
export function architecture(model) {
  if (!model) return "";
  return `${model.cell || "?"} ${model.num_layers || "?"}×${model.hidden_size || "auto"}`;
}
