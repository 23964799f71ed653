// A small registry of views, picked by the URL's hash (#/jobs/job_123?x=1).
//
// A view is { name, path, title, errorId, nav, open }: its section in index.html is #view-NAME; `path` is
// matched segment by segment (":id" takes any one); `nav` names the menu link to mark (default: name);
// open({params, query, signal}) fills the section and may keep working (timers, streams) until `signal`
// aborts, which happens when the user leaves the view. An error open() throws shows in #ERRORID.
// Adding a view: a <section id="view-NAME" class="view" hidden> and a menu link in index.html, a module
// under views/, and its line in app.js.

import { isSignedOut } from "./api.js";
import { $, setText } from "./dom.js";
import { apiKey, signOut } from "./session.js";

const views = [];
let current = null; // the AbortController of the view on screen

export function addView(view) {
  views.push({ nav: view.name, ...view, segments: view.path.split("/") });
}

export function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), query: new URLSearchParams(query || "") };
}

function match(parts) {
  for (const view of views) {
    if (view.segments.length !== parts.length) continue;
    const params = {};
    const fits = view.segments.every((segment, i) => {
      if (segment.startsWith(":")) params[segment.slice(1)] = decodeURIComponent(parts[i]);
      return segment.startsWith(":") || segment === parts[i];
    });
    if (fits) return { view, params };
  }
  return null;
}

// Shows section #view-NAME alone and marks the menu link `nav`.
export function showSection(name, nav = name) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${name}`;
  for (const link of document.querySelectorAll("#nav a[data-view]")) {
    if (link.dataset.view === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// Stops the current view's timers and streams.
export function leaveView() {
  if (current) current.abort();
  current = null;
}

export async function route() {
  leaveView();
  if (!apiKey()) {
    signOut();
    return;
  }
  $("nav").hidden = false;
  const { parts, query } = parseHash();
  const found = match(parts.length ? parts : ["corpora"]);
  if (!found) {
    location.hash = "#/corpora";
    return;
  }
  const { view, params } = found;
  showSection(view.name, view.nav);
  document.title = `${view.title} · charrnn`;
  const controller = new AbortController();
  current = controller;
  try {
    await view.open({ params, query, signal: controller.signal });
  } catch (error) {
    if (!controller.signal.aborted && !isSignedOut(error)) setText(view.errorId, error.message || String(error));
  }
}
