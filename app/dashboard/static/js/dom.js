// Building the page from data. Everything that comes from users or models (names, errors, samples, generated
// text) goes in as text (textContent / text nodes), never as HTML: no module of the dashboard uses innerHTML.

export const $ = (id) => document.getElementById(id);

// el("a", {href, text, class, onclick}, child, "text", ...): attributes by name, `text` as textContent.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function setText(id, text) {
  $(id).textContent = text === null || text === undefined ? "" : String(text);
}
