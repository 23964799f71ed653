// Forms: reading number fields, and showing the server's 422 beside the field it names.

import { el, setText } from "./dom.js";

// A number, null for an empty field, or the text as typed: a non-number goes to the server, whose error names the field.
export function readNumber(input) {
  const raw = input.value.trim();
  if (raw === "") return null;
  const n = Number(raw);
  return isNaN(n) ? raw : n;
}

export function clearFieldErrors(form) {
  for (const node of form.querySelectorAll(".field-error")) node.remove();
  for (const node of form.querySelectorAll("[aria-invalid]")) {
    node.removeAttribute("aria-invalid");
    const described = (node.getAttribute("aria-describedby") || "").split(" ").filter((id) => !id.startsWith("err-"));
    if (described.length) node.setAttribute("aria-describedby", described.join(" "));
    else node.removeAttribute("aria-describedby");
  }
  const summary = form.querySelector(".error[role=alert]");
  if (summary) summary.textContent = "";
}

// Puts `message` beside the field whose data-field is `path`; false if the form has no such field.
export function showFieldError(form, path, message) {
  const box = form.querySelector(`[data-field="${CSS.escape(path)}"]`);
  if (!box) return false;
  const control = box.querySelector("input, select, textarea");
  const id = `err-${path.replace(/\./g, "-")}`;
  let note = document.getElementById(id);
  if (!note) {
    note = el("span", { id, class: "field-error" });
    box.append(note);
  }
  note.textContent = note.textContent ? `${note.textContent}; ${message}` : message;
  if (control) {
    control.setAttribute("aria-invalid", "true");
    const described = (control.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (!described.includes(id)) control.setAttribute("aria-describedby", [...described, id].join(" "));
  }
  const details = box.closest("details");
  if (details) details.open = true;
  return true;
}

// A 422 names fields two ways: FastAPI's list of {loc, msg}, or one sentence that mentions `training.x`.
export function showServerErrors(form, error, summaryId) {
  let placed = 0;
  let first = null;
  const detail = error.body && error.body.detail;
  if (Array.isArray(detail)) {
    for (const item of detail) {
      const loc = (item.loc || []).filter((p) => !["body", "query", "path"].includes(p));
      if (showFieldError(form, loc.join("."), item.msg)) {
        placed += 1;
        first = first || loc.join(".");
      }
    }
  } else if (typeof detail === "string") {
    for (const m of detail.matchAll(/\b((?:model|training)\.[a-z_]+)/g)) {
      if (!first && showFieldError(form, m[1], detail)) {
        placed += 1;
        first = m[1];
      }
    }
  }
  const summary = placed ? `The server refused the form (${error.status}): see the marked field.` : error.message;
  setText(summaryId, summary);
  if (first) {
    const control = form.querySelector(`[data-field="${CSS.escape(first)}"] input, [data-field="${CSS.escape(first)}"] select`);
    if (control) control.focus();
  }
}

