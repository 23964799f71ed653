// Losses in nats per character (as the API reports them) or in bits (nats / ln 2): the user's choice, kept for
// the tab. Every view that shows a loss reads it here and redraws when it changes.

import { fmtLoss } from "./format.js";

const KEY = "charrnn.bits";
const listeners = new Set();

export const inBits = () => sessionStorage.getItem(KEY) === "1";
export const unitName = () => (inBits() ? "bits per character" : "nats per character");
export const toUnit = (nats) => (nats === null || nats === undefined ? nats : inBits() ? nats / Math.LN2 : nats);
export const fmtLossIn = (nats) => fmtLoss(toUnit(nats));

export function setBits(on) {
  sessionStorage.setItem(KEY, on ? "1" : "0");
  for (const node of document.querySelectorAll("[data-nats]")) node.textContent = fmtLossIn(natsOf(node));
  for (const listener of listeners) listener();
}

const natsOf = (node) => (node.dataset.nats === "" ? null : Number(node.dataset.nats));

// Shows a loss (nats per character, as the API gives it) in `node`, in the chosen unit, and keeps it in step
// when the choice changes.
export function showLoss(node, nats) {
  node.dataset.nats = nats === null || nats === undefined ? "" : String(nats);
  node.textContent = fmtLossIn(natsOf(node));
  return node;
}

// Calls `listener` on every change; a checkbox given is kept in step with the choice.
export function onUnitChange(listener) {
  listeners.add(listener);
}

// A "Bits per character" checkbox: reads and sets the choice.
export function bindBitsToggle(checkbox) {
  checkbox.checked = inBits();
  checkbox.addEventListener("change", () => setBits(checkbox.checked));
  onUnitChange(() => (checkbox.checked = inBits()));
}
