// charrnn dashboard: one hand-written script, no framework, no build step, nothing from a CDN.
//
// Rules this file keeps:
// - The API key lives in sessionStorage (this tab only) and travels only in the Authorization header:
//   never in a URL, never in a log.
// - Everything that comes from users or models (names, errors, samples, generated text) goes into the page
//   with textContent / createTextNode, never as HTML. There is no innerHTML in this file.
// - Live updates (a job's events, streamed generation) use fetch() and read the Server-Sent Events body
//   ourselves. The browser's EventSource cannot send an Authorization header, and the alternatives are worse:
//   the key in the URL ends up in logs and history, and a session cookie would need CSRF defences on every
//   POST. fetch streaming keeps one way of authenticating for the whole API.
"use strict";

(() => {
  const KEY_STORE = "charrnn.apiKey";
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const $ = (id) => document.getElementById(id);

  let apiKey = sessionStorage.getItem(KEY_STORE) || "";
  let viewCleanup = null; // stops the current view's timers and streams when we leave it
  let jobDefaults = null;

  // ---------- small helpers ----------

  function el(tag, attrs, ...children) {
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

  function setText(id, text) {
    $(id).textContent = text === null || text === undefined ? "" : String(text);
  }

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
  const fmtLoss = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(4));

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i += 1;
    }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${sec} s`;
    return `${sec} s`;
  }

  function fmtDate(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function fmtNumber(x) {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
    return Number(x.toPrecision(4)).toString();
  }

  // ---------- the API ----------

  class ApiError extends Error {
    constructor(status, body) {
      super(messageOf(body, status));
      this.status = status;
      this.body = body;
    }
  }

  function messageOf(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && typeof body.message === "string") return body.message;
    if (body && Array.isArray(body.detail)) return body.detail.map((e) => e.msg).join("; ");
    if (typeof body === "string" && body) return body;
    return `the server answered ${status}`;
  }

  async function readError(response) {
    const text = await response.text();
    try {
      return new ApiError(response.status, JSON.parse(text));
    } catch {
      return new ApiError(response.status, text);
    }
  }

  function authHeaders(extra) {
    return { Authorization: `Bearer ${apiKey}`, ...(extra || {}) };
  }

  async function api(method, path, body, options) {
    const init = { method, headers: authHeaders(), signal: options && options.signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (!response.ok) {
      const error = await readError(response);
      if (response.status === 401) keyRefused(error.message);
      throw error;
    }
    return response.status === 204 ? null : response.json();
  }

  // Every page of a list (up to `max` items).
  async function listAll(path, max) {
    const items = [];
    let after = null;
    for (;;) {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api("GET", `${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
      items.push(...page.data);
      if (!page.has_more || !page.data.length || items.length >= (max || 500)) return items;
      after = page.data[page.data.length - 1].id;
    }
  }

  // Reads a text/event-stream body (what EventSource would do, but over fetch so we can send the key).
  async function readSSE(response, onEvent, signal) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    const line = (text) => {
      if (text === "") {
        if (event.data.length) onEvent({ type: event.type, data: event.data.join("\n"), id: event.id });
        event = { type: "message", data: [], id: null };
        return;
      }
      if (text.startsWith(":")) return; // a comment: the server's keep-alive ping
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event.type = value;
      else if (field === "data") event.data.push(value);
      else if (field === "id") event.id = value;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        for (;;) {
          const m = /\r\n|\r|\n/.exec(buffer);
          if (!m || (m[0] === "\r" && m.index === buffer.length - 1)) break; // "\r" may be half of "\r\n"
          line(buffer.slice(0, m.index));
          buffer = buffer.slice(m.index + m[0].length);
        }
      }
      if (buffer) line(buffer);
      line("");
    } finally {
      if (signal && signal.aborted) reader.cancel().catch(() => {});
    }
  }

  // ---------- sign in ----------

  function keyRefused(message) {
    apiKey = "";
    sessionStorage.removeItem(KEY_STORE);
    showSignIn(`The API key was refused: ${message}. Sign in again with a valid key.`);
  }

  function showSignIn(message) {
    $("nav").hidden = true;
    showView("signin");
    setText("signin-error", message || "");
    $("api-key").focus();
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = $("api-key").value.trim();
    setText("signin-error", "");
    if (!candidate) {
      setText("signin-error", "Enter an API key.");
      $("api-key").setAttribute("aria-invalid", "true");
      return;
    }
    const response = await fetch("/corpora?limit=1", { headers: { Authorization: `Bearer ${candidate}` } });
    if (!response.ok) {
      const error = await readError(response);
      $("api-key").setAttribute("aria-invalid", "true");
      setText(
        "signin-error",
        response.status === 401 ? `That key was refused: ${error.message}.` : `Sign-in failed: ${error.message}`,
      );
      return;
    }
    $("api-key").removeAttribute("aria-invalid");
    $("api-key").value = "";
    apiKey = candidate;
    sessionStorage.setItem(KEY_STORE, apiKey);
    $("nav").hidden = false;
    if (!location.hash || location.hash === "#/" || location.hash === "#/signin") location.hash = "#/corpora";
    else route();
  });

  $("sign-out").addEventListener("click", () => {
    apiKey = "";
    sessionStorage.removeItem(KEY_STORE);
    if (viewCleanup) viewCleanup();
    viewCleanup = null;
    showSignIn("Signed out.");
  });

  // ---------- routing ----------

  function showView(name) {
    for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${name}`;
    for (const link of document.querySelectorAll("#nav a[data-view]")) {
      if (link.dataset.view === name || (name === "job" && link.dataset.view === "jobs")) {
        link.setAttribute("aria-current", "page");
      } else link.removeAttribute("aria-current");
    }
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, query] = raw.split("?");
    return { parts: path.split("/").filter(Boolean), query: new URLSearchParams(query || "") };
  }

  async function route() {
    if (viewCleanup) viewCleanup();
    viewCleanup = null;
    if (!apiKey) {
      showSignIn();
      return;
    }
    $("nav").hidden = false;
    const { parts, query } = parseHash();
    const name = parts[0] || "corpora";
    const titles = { corpora: "Corpora", new: "New job", jobs: "Jobs", playground: "Playground" };
    try {
      if (name === "jobs" && parts[1]) {
        showView("job");
        document.title = "Job · charrnn";
        await openJob(parts[1]);
      } else if (name in titles) {
        showView(name);
        document.title = `${titles[name]} · charrnn`;
        if (name === "corpora") await loadCorpora();
        if (name === "new") await loadJobForm(query.get("corpus"));
        if (name === "jobs") await loadJobs();
        if (name === "playground") await loadPlayground(query.get("model"));
      } else {
        location.hash = "#/corpora";
      }
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) reportError(name, error);
    }
  }

  function reportError(view, error) {
    const target = { corpora: "corpora-error", jobs: "jobs-error", new: "job-form-error", playground: "gen-error" }[view];
    setText(target || "job-error", error.message || String(error));
  }

  window.addEventListener("hashchange", route);

  // ---------- corpora ----------

  let selectedFile = null;

  async function loadCorpora() {
    setText("corpora-error", "");
    const corpora = await listAll("/corpora");
    const body = $("corpora-table").tBodies[0];
    body.replaceChildren();
    $("corpora-empty").hidden = corpora.length > 0;
    $("corpora-table").hidden = corpora.length === 0;
    for (const corpus of corpora) body.append(corpusRow(corpus));
  }

  function corpusRow(corpus) {
    const actions = el("td", { class: "actions" });
    const train = el("a", {
      class: "button",
      href: `#/new?corpus=${encodeURIComponent(corpus.id)}`,
      text: "Train",
      "aria-label": `Train on ${corpus.name}`,
    });
    const del = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${corpus.name}` });
    del.addEventListener("click", () => confirmDelete(corpus, actions, del));
    actions.append(train, " ", del);
    return el(
      "tr",
      { "data-id": corpus.id },
      el("td", { "data-label": "Name", title: corpus.id }, el("span", { text: corpus.name })),
      el("td", { "data-label": "Size", class: "num", text: fmtBytes(corpus.size_bytes) }),
      el("td", { "data-label": "Characters", class: "num", text: fmtInt(corpus.num_chars) }),
      el("td", { "data-label": "Vocabulary", class: "num", text: fmtInt(corpus.vocab_size) }),
      el("td", { "data-label": "Uploaded", text: fmtDate(corpus.created_at) }),
      actions,
    );
  }

  function confirmDelete(corpus, cell, button) {
    const yes = el("button", { type: "button", class: "danger", text: "Yes, delete" });
    const no = el("button", { type: "button", text: "Keep" });
    const question = el("span", { text: `Delete ${corpus.name}? ` });
    const original = [...cell.childNodes];
    cell.replaceChildren(question, yes, " ", no);
    yes.focus();
    no.addEventListener("click", () => {
      cell.replaceChildren(...original);
      button.focus();
    });
    yes.addEventListener("click", async () => {
      try {
        await api("DELETE", `/corpora/${encodeURIComponent(corpus.id)}`);
        await loadCorpora();
      } catch (error) {
        cell.replaceChildren(...original);
        setText("corpora-error", `Could not delete ${corpus.name}: ${error.message}`);
      }
    });
  }

  function chooseFile(file) {
    selectedFile = file || null;
    setText("upload-error", "");
    setText("upload-status", file ? `${file.name} (${fmtBytes(file.size)})` : "");
  }

  $("corpus-file").addEventListener("change", () => chooseFile($("corpus-file").files[0]));

  const drop = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    try {
      $("corpus-file").files = files; // keeps the file input and what will be sent in step
    } catch {
      /* an old browser: the dropped file is still the one we send */
    }
    chooseFile(files[0]);
  });

  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = selectedFile || $("corpus-file").files[0];
    setText("upload-error", "");
    if (!file) {
      setText("upload-error", "Choose a text file first (or drop one on the box).");
      $("corpus-file").focus();
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    const name = $("corpus-name").value.trim();
    if (name) form.append("name", name);
    // XMLHttpRequest rather than fetch: only it reports upload progress.
    const xhr = new XMLHttpRequest();
    const bar = $("upload-progress");
    const submit = event.submitter || $("upload-form").querySelector("button[type=submit]");
    bar.hidden = false;
    bar.value = 0;
    submit.disabled = true;
    setText("upload-status", `Uploading ${file.name}…`);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", async () => {
      submit.disabled = false;
      let body = xhr.responseText;
      try {
        body = JSON.parse(body);
      } catch {
        /* not JSON: show it as it is */
      }
      if (xhr.status === 201) {
        bar.value = 100;
        setText("upload-status", `Uploaded ${body.name}: ${fmtInt(body.num_chars)} characters, vocabulary ${body.vocab_size}.`);
        $("corpus-file").value = "";
        $("corpus-name").value = "";
        selectedFile = null;
        await loadCorpora().catch((e) => setText("corpora-error", e.message));
      } else {
        bar.hidden = true;
        setText("upload-status", "");
        const message = messageOf(body, xhr.status);
        if (xhr.status === 401) keyRefused(message);
        else setText("upload-error", `Upload refused (${xhr.status}): ${message}`);
      }
    });
    xhr.addEventListener("error", () => {
      submit.disabled = false;
      bar.hidden = true;
      setText("upload-status", "");
      setText("upload-error", "The upload failed: the server could not be reached or closed the connection.");
    });
    xhr.open("POST", "/corpora");
    xhr.setRequestHeader("Authorization", `Bearer ${apiKey}`);
    xhr.send(form);
  });

  // ---------- new job ----------

  const label = (key) => {
    const special = { seq_len: "Sequence length", val_fraction: "Validation fraction", top_k: "Top-k", gpus: "Processes" };
    if (special[key]) return special[key];
    const text = key.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  };

  const BUDGET = new Set(["max_seconds"]);
  const FLOAT_FIELDS = new Set([
    "dropout", "learning_rate", "min_lr_ratio", "weight_decay", "grad_clip", "max_epochs", "max_seconds", "val_fraction",
  ]);
  // Left empty, these are chosen for the job's budget and corpus when it starts (GET /jobs/defaults gives null).
  const AUTO_FIELDS = new Set(["hidden_size", "dropout"]);

  function fieldId(path) {
    return `f-${path.replace(/\./g, "-")}`;
  }

  function numberField(group, key, value) {
    const path = `${group}.${key}`;
    const id = fieldId(path);
    const input = el("input", {
      id,
      type: "number",
      step: FLOAT_FIELDS.has(key) ? "any" : "1",
      inputmode: FLOAT_FIELDS.has(key) ? "decimal" : "numeric",
      "data-kind": FLOAT_FIELDS.has(key) ? "float" : "int",
      placeholder: value === null ? (AUTO_FIELDS.has(key) ? "auto" : "none") : null,
    });
    if (value !== null && value !== undefined) input.value = String(value);
    return el("div", { class: "field", "data-field": path }, el("label", { for: id, text: label(key) }), input);
  }

  function selectField(group, key, options, value) {
    const path = `${group}.${key}`;
    const id = fieldId(path);
    const select = el("select", { id });
    for (const option of options) select.append(el("option", { value: option, text: option }));
    select.value = value;
    return el("div", { class: "field", "data-field": path }, el("label", { for: id, text: label(key) }), select);
  }

  async function loadJobForm(corpusId) {
    clearFieldErrors($("job-form"));
    const [corpora, defaults] = await Promise.all([
      listAll("/corpora"),
      jobDefaults ? Promise.resolve(jobDefaults) : api("GET", "/jobs/defaults"),
    ]);
    const select = $("f-corpus_id");
    const previous = corpusId || select.value;
    select.replaceChildren();
    if (!corpora.length) select.append(el("option", { value: "", text: "no corpus yet: upload one first" }));
    for (const corpus of corpora) {
      select.append(el("option", { value: corpus.id, text: `${corpus.name} (${fmtInt(corpus.num_chars)} chars)` }));
    }
    if (previous && corpora.some((c) => c.id === previous)) select.value = previous;
    if (jobDefaults === defaults && $("model-fields").childElementCount) return; // keep what the user typed
    jobDefaults = defaults;
    const modelBox = $("model-fields");
    const trainingBox = $("training-fields");
    modelBox.replaceChildren();
    trainingBox.replaceChildren();
    for (const [key, value] of Object.entries(defaults.model)) {
      modelBox.append(key === "cell" ? selectField("model", key, ["lstm", "gru", "rnn"], value) : numberField("model", key, value));
    }
    for (const [key, value] of Object.entries(defaults.training)) {
      if (!BUDGET.has(key)) trainingBox.append(numberField("training", key, value));
    }
    const seconds = defaults.training.max_seconds;
    $("f-training-max_seconds").value = seconds ? String(seconds) : "";
    $("f-minutes").value = seconds ? String(seconds / 60) : "";
    $("f-minutes").placeholder = `none: ${fmtInt(defaults.default_max_steps)} steps`;
    $("f-training-max_seconds").placeholder = "none";
    const maxSteps = $(fieldId("training.max_steps"));
    if (maxSteps) maxSteps.placeholder = `none (${fmtInt(defaults.default_max_steps)} if no other limit)`;
  }

  // Minutes is the budget people think in; max_seconds is what the API takes. Each follows the other.
  $("f-minutes").addEventListener("input", () => {
    const minutes = $("f-minutes").value;
    $("f-training-max_seconds").value = minutes === "" ? "" : String(Math.round(Number(minutes) * 60 * 1000) / 1000);
  });
  $("f-training-max_seconds").addEventListener("input", () => {
    const seconds = $("f-training-max_seconds").value;
    $("f-minutes").value = seconds === "" ? "" : String(Math.round((Number(seconds) / 60) * 1000) / 1000);
  });

  function readNumber(input) {
    const raw = input.value.trim();
    if (raw === "") return null;
    const n = Number(raw);
    return isNaN(n) ? raw : n; // a non-number goes to the server as typed, so its error names the field
  }

  function jobBody() {
    const body = { corpus_id: $("f-corpus_id").value, model: {}, training: {} };
    const name = $("f-name").value.trim();
    if (name) body.name = name;
    const initFrom = $("f-init_from").value.trim();
    if (initFrom) body.init_from = initFrom;
    for (const group of ["model", "training"]) {
      for (const [key, value] of Object.entries(jobDefaults[group])) {
        const input = $(fieldId(`${group}.${key}`));
        if (!input) continue;
        const given = input.tagName === "SELECT" ? input.value : readNumber(input);
        // Send only what differs from the server's defaults: a left-out field takes the default anyway.
        if (given !== null && given !== value) body[group][key] = given;
      }
    }
    if (initFrom) delete body.model; // a continued job keeps its checkpoint's architecture
    return body;
  }

  function clearFieldErrors(form) {
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
  function showFieldError(form, path, message) {
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
  function showServerErrors(form, error, summaryId) {
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

  $("job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = $("job-form");
    clearFieldErrors(form);
    if (!jobDefaults) return;
    if (!$("f-corpus_id").value) {
      showFieldError(form, "corpus_id", "upload a corpus first (Corpora page)");
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await api("POST", "/jobs", jobBody());
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      if (error instanceof ApiError && error.status !== 401) showServerErrors(form, error, "job-form-error");
      else if (!(error instanceof ApiError)) setText("job-form-error", error.message);
    } finally {
      button.disabled = false;
    }
  });

  // ---------- jobs list ----------

  function jobFraction(job) {
    if (job.status === "succeeded") return 1;
    const p = job.progress || {};
    return p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0;
  }

  async function loadJobs() {
    let timer = null;
    let stopped = false;
    viewCleanup = () => {
      stopped = true;
      clearTimeout(timer);
    };
    const refresh = async () => {
      const jobs = await listAll("/jobs", 200);
      if (stopped) return;
      setText("jobs-error", "");
      const body = $("jobs-table").tBodies[0];
      body.replaceChildren();
      $("jobs-empty").hidden = jobs.length > 0;
      $("jobs-table").hidden = jobs.length === 0;
      for (const job of jobs) {
        const title = job.name || job.id;
        const p = job.progress || {};
        const bar = el("progress", { max: "1", value: String(jobFraction(job)), "aria-label": `Progress of ${title}` });
        body.append(
          el(
            "tr",
            { "data-id": job.id },
            el("td", { "data-label": "Job" }, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: title })),
            el("td", { "data-label": "Status" }, el("span", { class: `badge ${job.status}`, text: job.status })),
            el("td", { "data-label": "Progress" }, bar, el("div", { class: "hint", text: `step ${fmtInt(p.step || 0)} / ${fmtInt(p.max_steps)}` })),
            el("td", { "data-label": "Train loss", class: "num", text: fmtLoss(p.train_loss) }),
            el("td", { "data-label": "Val loss", class: "num", text: fmtLoss(p.val_loss) }),
            el("td", { "data-label": "Created", text: fmtDate(job.created_at) }),
          ),
        );
      }
      if (jobs.some((j) => !FINAL.has(j.status))) {
        timer = setTimeout(() => refresh().catch((e) => setText("jobs-error", e.message)), 2000);
      }
    };
    await refresh();
  }

  // ---------- one job, live ----------

  // A hand-written canvas chart: two lines, steps on x, loss on y. Points beyond about two per pixel are
  // skipped at draw time (the stored curve comes already thinned by the API's ?max_points=).
  class LossChart {
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

  const chart = new LossChart($("loss-chart"));

  function renderJob(job) {
    const title = job.name || job.id;
    setText("job-title", title);
    document.title = `${title} · charrnn`;
    const model = job.model || {};
    setText("job-id", job.id);
    setText("job-arch", `${model.cell || "?"} ${model.num_layers || "?"}×${model.hidden_size || "?"}`);
    if (!$("job-corpus").textContent) setText("job-corpus", `corpus ${job.corpus_id}`);
    setText("job-created", `created ${fmtDate(job.created_at)}`);
    renderStatus(job.status);
    setText("job-error", job.error ? `Error: ${job.error.message}` : "");
    setText("s-device", job.device || "–");
    renderProgress({ ...(job.progress || {}) }, job.status);
    $("job-play").href = `#/playground?model=${encodeURIComponent(job.id)}`;
  }

  function renderStatus(status) {
    const badge = $("job-status");
    badge.textContent = status;
    badge.className = `badge ${status}`;
    $("job-cancel").disabled = FINAL.has(status);
    $("job-status").dataset.status = status;
  }

  function renderProgress(p, status) {
    const fraction = status === "succeeded" ? 1 : p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0;
    $("job-progress").value = fraction;
    setText("job-progress-text", `${Math.round(fraction * 100)} %`);
    setText("s-step", `${fmtInt(p.step || 0)} / ${fmtInt(p.max_steps)}`);
    setText("s-eta", FINAL.has(status) ? "done" : fmtSeconds(p.eta_seconds));
    setText("s-train", fmtLoss(p.train_loss));
    setText("s-val", fmtLoss(p.val_loss));
    setText("s-best", fmtLoss(p.best_val_loss));
    if (p.learning_rate !== undefined) setText("s-lr", fmtNumber(p.learning_rate));
    if (p.chars_per_second !== undefined) setText("s-cps", fmtInt(p.chars_per_second));
  }

  function addSample(data) {
    $("samples-empty").hidden = true;
    const box = $("samples");
    const article = el(
      "article",
      { class: "sample" },
      el("h3", { text: `Step ${fmtInt(data.step)} · val loss ${fmtLoss(data.val_loss)}` }),
      el("pre", { text: data.sample || "" }),
    );
    box.prepend(article); // newest first
    while (box.childElementCount > 200) box.lastElementChild.remove();
  }

  function addLog(event) {
    const log = $("job-log");
    log.prepend(el("li", { text: `${new Date(event.created_at).toLocaleTimeString()} ${event.message}` }));
    while (log.childElementCount > 50) log.lastElementChild.remove();
  }

  async function loadCheckpoints(jobId) {
    const checkpoints = await listAll(`/jobs/${encodeURIComponent(jobId)}/checkpoints`, 300);
    const body = $("ckpt-table").tBodies[0];
    body.replaceChildren();
    $("ckpt-empty").hidden = checkpoints.length > 0;
    $("ckpt-table").hidden = checkpoints.length === 0;
    checkpoints.sort((a, b) => b.step - a.step);
    for (const c of checkpoints) {
      const download = el("button", { type: "button", text: "Download", "aria-label": `Download checkpoint at step ${c.step}` });
      download.addEventListener("click", () => downloadCheckpoint(c, download));
      const play = el("a", {
        class: "button",
        href: `#/playground?model=${encodeURIComponent(c.id)}`,
        text: "Try",
        "aria-label": `Try checkpoint at step ${c.step} in the playground`,
      });
      body.append(
        el(
          "tr",
          { "data-id": c.id },
          el("td", { "data-label": "Step", class: "num", text: `${fmtInt(c.step)}${c.is_best ? " ★" : ""}`, title: c.is_best ? "best so far" : null }),
          el("td", { "data-label": "Val loss", class: "num", text: fmtLoss(c.val_loss) }),
          el("td", { "data-label": "Size", class: "num", text: fmtBytes(c.size_bytes) }),
          el("td", { class: "actions" }, download, " ", play),
        ),
      );
    }
  }

  // A link can't carry the Authorization header, so: fetch → Blob → object URL → a temporary <a download>.
  async function downloadCheckpoint(checkpoint, button) {
    setText("ckpt-error", "");
    button.disabled = true;
    try {
      const response = await fetch(`/checkpoints/${encodeURIComponent(checkpoint.id)}/download`, { headers: authHeaders() });
      if (!response.ok) throw await readError(response);
      const blob = await response.blob();
      const disposition = response.headers.get("Content-Disposition") || "";
      const match = /filename="?([^";]+)"?/.exec(disposition);
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: match ? match[1] : `${checkpoint.job_id}-step${checkpoint.step}.safetensors` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    } catch (error) {
      setText("ckpt-error", `Download failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function openJob(jobId) {
    const controller = new AbortController();
    viewCleanup = () => controller.abort();
    const path = `/jobs/${encodeURIComponent(jobId)}`;
    $("samples").replaceChildren();
    $("samples-empty").hidden = false;
    $("job-log").replaceChildren();
    $("ckpt-table").tBodies[0].replaceChildren();
    for (const id of ["s-lr", "s-cps", "job-error", "ckpt-error", "job-corpus"]) setText(id, "");
    chart.reset();
    let job = await api("GET", path);
    if (controller.signal.aborted) return;
    renderJob(job);
    api("GET", `/corpora/${encodeURIComponent(job.corpus_id)}`)
      .then((corpus) => {
        if (!controller.signal.aborted) setText("job-corpus", `corpus ${corpus.name}`);
      })
      .catch(() => {});
    $("job-cancel").onclick = async () => {
      $("job-cancel").disabled = true;
      try {
        job = await api("POST", `${path}/cancel`);
        renderJob(job);
      } catch (error) {
        setText("job-error", `Could not cancel: ${error.message}`);
        $("job-cancel").disabled = FINAL.has(job.status);
      }
    };

    // What happened so far: the events (samples, logs) and the stored, thinned curve; then follow live
    // from the last event we have.
    let cursor = 0;
    let status = job.status;
    for (;;) {
      const page = await api("GET", `${path}/events?limit=1000&after=${cursor}`, undefined, controller);
      for (const event of page.data) {
        cursor = event.id;
        if (event.type === "sample") addSample(event.data);
        else if (event.type === "status" || event.type === "log") addLog(event);
        if (event.type === "status" && event.data.status) status = event.data.status; // newer than `job`
        if (event.type === "log" && event.data.device) setText("s-device", event.data.device);
      }
      if (!page.has_more) break;
    }
    renderStatus(status);
    const metrics = await api("GET", `${path}/metrics?max_points=2000`, undefined, controller);
    if (controller.signal.aborted) return;
    for (const m of metrics) chart.add(m.step, m.train_loss, m.val_loss);
    const last = metrics[metrics.length - 1];
    if (last) renderProgress({ ...job.progress, learning_rate: last.learning_rate, chars_per_second: last.chars_per_second }, status);
    await loadCheckpoints(jobId);
    if (!FINAL.has(job.status)) follow(jobId, cursor, status, controller.signal);
  }

  async function follow(jobId, after, initialStatus, signal) {
    const path = `/jobs/${encodeURIComponent(jobId)}`;
    let cursor = after;
    let status = initialStatus;
    const onEvent = (message) => {
      if (message.id) cursor = Number(message.id);
      const event = JSON.parse(message.data);
      const data = event.data || {};
      if (event.type === "metrics" || event.type === "sample") {
        chart.add(data.step, data.train_loss, data.val_loss);
        if (status === "queued") {
          status = "running"; // metrics flow only while it runs
          renderStatus(status);
        }
        renderProgress(data, status);
        if (event.type === "sample") addSample(data);
      } else if (event.type === "checkpoint") {
        loadCheckpoints(jobId).catch((e) => setText("ckpt-error", e.message));
      } else if (event.type === "status") {
        status = data.status;
        renderStatus(status);
        addLog(event);
      } else if (event.type === "log") {
        if (data.device) setText("s-device", data.device);
        addLog(event);
      }
    };
    while (!signal.aborted) {
      try {
        const response = await fetch(`${path}/events?after=${cursor}`, {
          headers: authHeaders({ Accept: "text/event-stream" }),
          signal,
        });
        if (!response.ok) {
          const error = await readError(response);
          if (response.status === 401) keyRefused(error.message);
          throw error;
        }
        await readSSE(response, onEvent, signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status < 500) {
          setText("job-error", error.message);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 2000)); // dropped connection: pick up where we were
      }
      if (signal.aborted) return;
      const job = await api("GET", path).catch(() => null);
      if (job && FINAL.has(job.status)) {
        renderJob(job);
        await loadCheckpoints(jobId).catch(() => {});
        return;
      }
    }
  }

  // ---------- playground ----------

  let generation = null; // the AbortController of the stream in flight

  async function loadPlayground(model) {
    const select = $("g-model");
    const previous = model || select.value;
    const jobs = (await listAll("/jobs", 200)).filter((j) => j.status !== "queued" && j.status !== "failed");
    const jobGroup = el("optgroup", { label: "Jobs (their best checkpoint)" });
    for (const job of jobs) {
      jobGroup.append(el("option", { value: job.id, text: `${job.name || job.id} · ${job.status}` }));
    }
    select.replaceChildren(jobGroup);
    // Checkpoints of the newest few jobs, and the one asked for if it is older.
    const ckptGroup = el("optgroup", { label: "Checkpoints" });
    const lists = await Promise.all(
      jobs.slice(0, 8).map((j) => listAll(`/jobs/${encodeURIComponent(j.id)}/checkpoints`, 100).catch(() => [])),
    );
    const names = Object.fromEntries(jobs.map((j) => [j.id, j.name || j.id]));
    for (const c of lists.flat()) {
      ckptGroup.append(el("option", { value: c.id, text: `${names[c.job_id]} · step ${c.step}${c.is_best ? " (best)" : ""}` }));
    }
    if (previous && previous.startsWith("ckpt_") && !ckptGroup.querySelector(`option[value="${CSS.escape(previous)}"]`)) {
      ckptGroup.append(el("option", { value: previous, text: previous }));
    }
    if (ckptGroup.childElementCount) select.append(ckptGroup);
    if (!select.querySelector("option")) select.append(el("option", { value: "", text: "no model yet: train a job first" }));
    if (previous && select.querySelector(`option[value="${CSS.escape(previous)}"]`)) select.value = previous;
  }

  function numberOrNull(id) {
    return readNumber($(id));
  }

  $("gen-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = $("gen-form");
    clearFieldErrors(form);
    if (generation) generation.abort();
    const body = {
      model: $("g-model").value,
      prompt: $("g-prompt").value,
      temperature: numberOrNull("g-temperature") ?? 1.0,
      length: numberOrNull("g-length") ?? 200,
      stream: true,
    };
    for (const [key, id] of [["top_k", "g-top_k"], ["top_p", "g-top_p"], ["seed", "g-seed"]]) {
      const value = numberOrNull(id);
      if (value !== null) body[key] = value;
    }
    if (!body.model) {
      showFieldError(form, "model", "train a job first: there is no model to sample from");
      return;
    }
    const out = $("gen-output");
    out.replaceChildren();
    out.dataset.chunks = "0";
    out.dataset.done = "false";
    if (body.prompt) out.append(el("span", { class: "prompt", text: body.prompt }));
    const generated = document.createTextNode("");
    out.append(generated);
    setText("gen-meta", "Generating…");
    const controller = new AbortController();
    generation = controller;
    $("gen-go").disabled = true;
    $("gen-stop").disabled = false;
    let chunks = 0;
    try {
      const response = await fetch("/generate", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) {
        const error = await readError(response);
        if (response.status === 401) keyRefused(error.message);
        throw error;
      }
      await readSSE(
        response,
        (message) => {
          const data = JSON.parse(message.data);
          if (message.type === "chunk") {
            generated.appendData(data.text);
            chunks += 1;
            out.dataset.chunks = String(chunks);
          } else if (message.type === "done") {
            const sample = (data.samples || [])[0] || {};
            setText(
              "gen-meta",
              `${fmtInt(data.usage && data.usage.generated_chars)} characters from ${data.checkpoint_id}` +
                ` (stopped by ${sample.finish_reason || "?"}).`,
            );
            out.dataset.done = "true";
          } else if (message.type === "error") {
            setText("gen-error", messageOf(data, 500));
          }
        },
        controller.signal,
      );
    } catch (error) {
      if (controller.signal.aborted) setText("gen-meta", "Stopped.");
      else if (error instanceof ApiError) {
        if (error.status !== 401) showServerErrors(form, error, "gen-error");
        setText("gen-meta", "");
      } else {
        setText("gen-error", `Generation failed: ${error.message}`);
        setText("gen-meta", "");
      }
    } finally {
      if (generation === controller) generation = null;
      $("gen-go").disabled = false;
      $("gen-stop").disabled = true;
    }
  });

  $("gen-stop").addEventListener("click", () => {
    if (generation) generation.abort();
  });

  $("score-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = $("score-form");
    clearFieldErrors(form);
    setText("score-result", "");
    const model = $("g-model").value;
    if (!model) {
      setText("score-error", "Pick a model above first.");
      return;
    }
    try {
      const result = await api("POST", "/score", { model, text: $("score-text").value });
      setText(
        "score-result",
        `Loss ${result.loss.toFixed(4)} nats per character over ${fmtInt(result.chars)} characters ` +
          `(${(result.loss / Math.LN2).toFixed(3)} bits/char, perplexity ${Math.exp(result.loss).toFixed(2)}).`,
      );
    } catch (error) {
      if (error instanceof ApiError && error.status !== 401) showServerErrors(form, error, "score-error");
      else if (!(error instanceof ApiError)) setText("score-error", error.message);
    }
  });

  // ---------- start ----------

  route();
})();
