// Corpora: the owner's uploaded texts, upload (picker or drop, with a progress bar) and delete.

import { api, errorFrom, keyRefused, listAll } from "../api.js";
import { $, el, setText } from "../dom.js";
import { fmtBytes, fmtDate, fmtInt } from "../format.js";
import { apiKey } from "../session.js";

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

// XMLHttpRequest rather than the request helper's fetch: only XMLHttpRequest reports upload progress. Its
// answers take the helper's path all the same (errorFrom, keyRefused on a 401).
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
    if (xhr.status === 201) {
      const body = JSON.parse(xhr.responseText);
      bar.value = 100;
      setText("upload-status", `Uploaded ${body.name}: ${fmtInt(body.num_chars)} characters, vocabulary ${body.vocab_size}.`);
      $("corpus-file").value = "";
      $("corpus-name").value = "";
      selectedFile = null;
      await loadCorpora().catch((e) => setText("corpora-error", e.message));
      return;
    }
    bar.hidden = true;
    setText("upload-status", "");
    const error = errorFrom(xhr.status, xhr.responseText);
    if (xhr.status === 401) keyRefused(error);
    else setText("upload-error", `Upload refused (${xhr.status}): ${error.message}`);
  });
  xhr.addEventListener("error", () => {
    submit.disabled = false;
    bar.hidden = true;
    setText("upload-status", "");
    setText("upload-error", "The upload failed: the server could not be reached or closed the connection.");
  });
  xhr.open("POST", "/corpora");
  xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
  xhr.send(form);
});

export default { name: "corpora", path: "corpora", title: "Corpora", errorId: "corpora-error", open: loadCorpora };
