// The try-it page: one structure image and appearance images make one job (or two: Q-Align and
// CIA side by side); its events stream drives the progress; its results fill a grid in the output's
// own shape; every run is remembered in this browser (localStorage) and can be opened again.
// Every limit and choice (how many appearances, which formats, file size, parameter ranges, the
// statuses a job ends in) comes from GET /limits, so the page never disagrees with the service.
// Plain browser JavaScript, no build step. Paths are relative to the page, so the page works behind a
// proxy prefix. EventSource cannot send an Authorization header, so the stream is read with fetch()
// and a streaming body reader (one code path with or without an API key).
"use strict";

// How the page names the choices GET /limits lists (a value without a name here shows as it is).
const METHOD_NAMES = { qalign: "Q-Align", cross_image: "Cross-Image Attention (CIA)" };
const METHOD_LABELS = { qalign: "Q-Align", cross_image: "CIA (baseline)" };
const ASPECT_LABELS = { structure: "Structure's shape", square: "Square (centre crop)" };
const HISTORY_KEY = "qalign.history.v1";
const HISTORY_MAX = 24;
const THUMB_SIDE = 96;
const $ = (selector, root = document) => root.querySelector(selector);

function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function plural(count, word) { return `${count} ${word}${count === 1 ? "" : "s"}`; }

function megabytes(bytes) { return `${Math.round((bytes / 1048576) * 10) / 10} MB`; }

// ---------------------------------------------------------------------------------------- limits
// GET /limits, asked until the service answers (it may be starting); everything that needs a limit
// waits for it.
let limits = null;
const limitsReady = (async () => {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch("limits", { cache: "no-store" });
      if (response.ok) return await response.json();
    } catch (_) { /* not reachable yet */ }
    await sleep(Math.min(500 * 2 ** attempt, 5000));
  }
})().then((body) => { limits = body; return body; });

function isTerminal(status) { return limits.terminal_statuses.includes(status); }

function options(select, values, labels) {
  const chosen = select.value;
  select.replaceChildren(...values.map((value) => new Option(labels[value] || value, value)));
  if (values.includes(chosen)) select.value = chosen;
}

// The page's words and inputs from the limits: counts, formats, ranges, choices.
function applyLimits() {
  const types = limits.image_media_types.join(",");
  for (const input of [$("#structure"), $("#appearance")]) input.accept = types;
  $("#formats-hint").textContent = limits.image_formats_text;
  $("#max-appearances").textContent = String(limits.max_appearances);
  $("#max-upload").textContent = megabytes(limits.max_upload_bytes);
  for (const [name, range] of [["steps", limits.steps], ["seed", limits.seed]]) {
    Object.assign($(`#${name}`), { min: String(range.min), max: String(range.max) });
  }
  options($("#method"), limits.methods, METHOD_LABELS);
  options($("#aspect"), limits.aspects, ASPECT_LABELS);
  document.body.dataset.ready = "true";
}

// ---------------------------------------------------------------------------------------- problems
async function readProblem(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object" && "status" in body) return body;
  } catch (_) { /* not JSON: shown as text below */ }
  return { status: response.status, title: response.statusText || "Error", detail: text || "no details" };
}

function showProblem(box, problem) {
  box.replaceChildren();
  const heading = document.createElement("h3");
  heading.textContent = `${problem.status} ${problem.title || ""}`.trim();
  const detail = document.createElement("p");
  detail.className = "detail";
  detail.textContent = problem.detail || "";
  box.append(heading, detail);
  if (Array.isArray(problem.errors) && problem.errors.length) {
    const list = document.createElement("ul");
    for (const error of problem.errors) {
      const item = document.createElement("li");
      item.textContent = `${error.field}: ${error.message}` + (error.allowed ? ` (allowed: ${error.allowed})` : "");
      list.append(item);
    }
    box.append(list);
  }
  if (problem.type && problem.type !== "about:blank") {
    const kind = document.createElement("p");
    kind.className = "kind";
    kind.textContent = problem.type;
    box.append(kind);
  }
  box.hidden = false;
}

// ---------------------------------------------------------------------------------------- inputs
// A file's image format told by its first bytes as qalign_core.images.sniff_format does (a text file
// renamed .png has the type image/png but not the signature); null when it is none of these.
async function sniffFormat(file) {
  const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  const starts = (...bytes) => bytes.every((byte, i) => head[i] === byte);
  const text = (from, to) => String.fromCharCode(...head.slice(from, to));
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "png";
  if (starts(0xff, 0xd8, 0xff)) return "jpeg";
  if (text(0, 4) === "RIFF" && text(8, 12) === "WEBP") return "webp";
  return null;
}

// Split dropped or chosen files into images the service accepts, the names of the others (not an
// accepted format) and the names of those over the service's file size limit, in order.
async function screenFiles(files) {
  await limitsReady;
  const list = [...files];
  const formats = await Promise.all(list.map((file) => sniffFormat(file).catch(() => null)));
  const isImage = (k) => limits.image_formats.includes(formats[k]);
  return {
    accepted: list.filter((file, k) => isImage(k) && file.size <= limits.max_upload_bytes),
    refused: list.filter((_, k) => !isImage(k)).map((file) => file.name),
    tooLarge: list.filter((file, k) => isImage(k) && file.size > limits.max_upload_bytes).map((file) => file.name),
  };
}

function refuseFiles({ refused, tooLarge }) {
  if (refused.length) {
    showProblem($("#form-problem"), {
      status: "Not an image", title: "",
      detail: `Only ${limits.image_formats_text} images are accepted; not added: ${refused.join(", ")}.`,
    });
    $("#form-problem").dataset.kind = "not-an-image";
  } else if (tooLarge.length) {
    showProblem($("#form-problem"), {
      status: "Image too large", title: "",
      detail: `An image file may be at most ${megabytes(limits.max_upload_bytes)}; not added: ${tooLarge.join(", ")}.`,
    });
    $("#form-problem").dataset.kind = "too-large";
  }
}

// The "Missing image" notice follows the inputs: it lists what is still missing and goes once
// nothing is (other notices stay until the next submit).
function refreshMissingNotice() {
  const box = $("#form-problem");
  if (box.hidden || box.dataset.kind !== "missing") return;
  const missing = missingInputs();
  if (missing.length) showMissing(missing);
  else box.hidden = true;
}

// The structure: one file, previewed inside its fixed square box (object-fit: contain shows its shape).
const structure = { file: null, width: 0, height: 0 };

async function chooseStructure(files) {
  const screened = await screenFiles([...files].slice(0, 1));
  refuseFiles(screened);
  setStructure(screened.accepted[0]);
}

function setStructure(file) {
  if (!file) return;
  const preview = $("#structure-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  structure.file = file;
  structure.width = structure.height = 0;
  preview.alt = file.name;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("#structure-drop").classList.add("filled");
  refreshMissingNotice();
}

function ratioName(width, height) {
  const ratio = width / height;
  const known = [[1, 1], [4, 3], [3, 4], [3, 2], [2, 3], [16, 9], [9, 16], [2, 1], [1, 2]];
  for (const [w, h] of known) if (Math.abs(ratio - w / h) < 0.02) return `${w}:${h}`;
  return ratio >= 1 ? `${ratio.toFixed(2)}:1` : `1:${(1 / ratio).toFixed(2)}`;
}

function wireStructure() {
  const zone = $("#structure-drop");
  const input = $("#structure");
  const preview = $("#structure-preview");
  preview.addEventListener("load", () => {
    structure.width = preview.naturalWidth;
    structure.height = preview.naturalHeight;
    const badge = $("#structure-size");
    badge.textContent = `${structure.width} × ${structure.height} · ${ratioName(structure.width, structure.height)}`;
    badge.hidden = false;
  });
  preview.addEventListener("error", () => {  // not an image: the server says why on submit
    preview.hidden = true;
    $("#structure-size").hidden = true;
    zone.classList.remove("filled");
  });
  input.addEventListener("change", () => chooseStructure(input.files));
  wireDropZone(zone, (files) => chooseStructure(files));
}

// The appearances: up to max_appearances tiles in a fixed grid; the "Add" tile takes the next free cell.
const appearances = [];  // {file, url, node}

async function chooseAppearances(files) {
  const screened = await screenFiles(files);
  addAppearances(screened.accepted);
  refuseFiles(screened);
}

function addAppearances(files) {
  const refused = [];
  for (const file of files) {
    if (appearances.length >= limits.max_appearances) { refused.push(file.name); continue; }
    const node = $("#appearance-template").content.firstElementChild.cloneNode(true);
    const entry = { file, url: URL.createObjectURL(file), node };
    const preview = $(".preview", node);
    preview.alt = file.name;
    preview.addEventListener("error", () => {  // not an image the browser shows: the server says why
      node.classList.add("unreadable");
      $(".tile-name", node).textContent = file.name;
    }, { once: true });
    preview.src = entry.url;
    $(".remove", node).addEventListener("click", () => removeAppearance(entry));
    appearances.push(entry);
  }
  renderAppearances();
  if (refused.length) {
    showProblem($("#form-problem"), {
      status: "Too many appearance images", title: "",
      detail: `A job takes 1 to ${limits.max_appearances} appearance images; not added: ${refused.join(", ")}.`,
    });
    $("#form-problem").dataset.kind = "too-many";
  }
}

function removeAppearance(entry) {
  const index = appearances.indexOf(entry);
  if (index !== -1) appearances.splice(index, 1);
  // The URL stays valid: a result card of an earlier run may still show it as its source.
  renderAppearances();
}

function renderAppearances() {
  const grid = $("#appearances");
  const add = $("#appearance-drop");
  appearances.forEach((entry, index) => { $(".tile-index", entry.node).textContent = String(index + 1); });
  const free = Math.max(0, limits.max_appearances - appearances.length - 1);
  const slots = Array.from({ length: free }, () => Object.assign(document.createElement("span"), { className: "tile slot" }));
  grid.replaceChildren(...appearances.map((entry) => entry.node), add, ...slots);
  add.hidden = appearances.length >= limits.max_appearances;
  $("#appearance-count").textContent = `${appearances.length} / ${limits.max_appearances}`;
  const looks = appearances.length;
  $("#submit").textContent = looks > 1 ? `Create ${looks} looks` : "Transfer";
  refreshMissingNotice();
}

function wireAppearances() {
  const input = $("#appearance");
  input.addEventListener("change", () => {
    chooseAppearances([...input.files]);
    input.value = "";  // choosing the same file again adds it again
  });
  wireDropZone($("#appearances"), (files) => chooseAppearances([...files]), $("#appearance-drop"));
}

function wireDropZone(zone, onFiles, highlight = zone) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); highlight.classList.add("over"); });
  zone.addEventListener("dragleave", () => highlight.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    highlight.classList.remove("over");
    if (event.dataTransfer.files.length) onFiles(event.dataTransfer.files);
  });
}

// The output's aspect ratio as the service will make it (the frames take it before any result arrives).
function expectedShape(aspect) {
  if (aspect === "square" || !structure.width) return 1;
  const most = limits.max_aspect_ratio;  // beyond, the service crops to it
  return Math.min(most, Math.max(1 / most, structure.width / structure.height));
}

// ---------------------------------------------------------------------------------------- one run
class Run {
  constructor(method, sources = []) {
    this.method = method;
    this.sources = sources;  // the appearances' preview URLs, shown beside each result
    this.node = $("#run-template").content.firstElementChild.cloneNode(true);
    this.node.dataset.method = method;
    $(".run-title", this.node).textContent = METHOD_NAMES[method] || method;
    $(".cancel", this.node).addEventListener("click", () => this.cancel());
    $("#runs").append(this.node);
    this.job = null;
    this.cards = [];
    this.ratio = null;  // the frames' aspect ratio once known
    this.remembered = false;  // in the history: its entry follows every status change
  }

  status(text) { $(".status", this.node).textContent = text; }

  problem(problem) {
    this.node.dataset.state = "problem";
    showProblem($(".problem", this.node), problem);
  }

  // One card per expected result, in the expected shape, so the grid does not jump when they load.
  placeholders(count, shape) {
    const grid = $(".results", this.node);
    while (this.cards.length < count) {
      const card = $("#result-template").content.firstElementChild.cloneNode(true);
      const k = this.cards.length;
      card.dataset.index = String(k);
      $(".label", card).textContent = count > 1 || k > 0 ? `Look ${k + 1}` : "Result";
      if (this.sources[k]) {
        const source = $(".source", card);
        source.src = this.sources[k];
        source.hidden = false;
      }
      grid.append(card);
      this.cards.push(card);
    }
    this.shape(shape);
  }

  // The frames' aspect ratio. The service returns the structure's exact aspect (to the pixel), so a
  // result within 1 % of the frames' ratio leaves them as they are: nothing moves when it arrives.
  shape(ratio) {
    if (ratio != null && Number.isFinite(ratio) && !(this.ratio && Math.abs(ratio / this.ratio - 1) < 0.01)) {
      this.ratio = ratio;
    }
    if (!this.ratio) return;
    for (const card of this.cards) $(".frame", card).style.setProperty("--shape", String(this.ratio));
  }

  update(job) {
    const changed = !this.job || this.job.status !== job.status;
    this.job = job;
    this.node.dataset.status = job.status;
    if (changed && this.remembered) runHistory.remember(job);  // the history says what the card says
    this.node.dataset.jobId = job.id;
    $(".job-id", this.node).textContent = `job ${job.id}`;
    const parts = [job.status];
    if (!isTerminal(job.status)) {
      parts.push(job.stage, `${Math.round(job.progress * 100)} %`);
      if (job.queue_position != null && job.status === "queued") parts.push(`${job.queue_position} ahead`);
      if (job.eta_s != null) parts.push(`about ${Math.ceil(job.eta_s)} s left`);
    }
    this.status(parts.join(" · "));
    $(".bar", this.node).value = job.progress;
    $(".cancel", this.node).hidden = isTerminal(job.status);
    const count = job.appearances || 1;
    if (job.output) this.placeholders(count, job.output.width / job.output.height);
    else if (this.cards.length < count && job.status !== "failed" && job.status !== "canceled") {
      this.placeholders(count, this.cards.length ? null : 1);
    }
    if (job.status === "failed" || job.status === "canceled") {
      $(".results", this.node).replaceChildren();
      this.cards = [];
    }
  }

  async submit(form) {
    const body = new FormData();
    body.append("structure", form.structure);
    for (const file of form.appearances) body.append("appearance", file);
    body.append("method", this.method);
    body.append("aspect", form.aspect);
    body.append("steps", form.steps);
    body.append("seed", form.seed);
    this.placeholders(form.appearances.length, form.shape);
    let response;
    try {
      response = await fetch("transfer", {
        method: "POST",
        body,
        headers: { ...authHeaders(), "Idempotency-Key": newKey() },
      });
    } catch (error) {
      this.status("not sent");
      this.clearResults();
      this.problem({ status: 0, title: "Network error", detail: String(error) });
      return;
    }
    if (!response.ok) {
      this.status("refused");
      this.clearResults();
      this.problem(await readProblem(response));
      if (response.status === 401 || response.status === 403) $(".more").open = true;  // the key field
      return;
    }
    this.update(await response.json());
    this.remembered = true;
    runHistory.remember(this.job);
    await this.follow();
  }

  clearResults() {
    $(".results", this.node).replaceChildren();
    this.cards = [];
  }

  // Show a job remembered in the history: its state now, then follow it if it is still going.
  async open(id) {
    this.status("loading…");
    await limitsReady;
    let response;
    try {
      response = await fetch(`jobs/${encodeURIComponent(id)}`, { headers: authHeaders(), cache: "no-store" });
    } catch (error) {
      this.problem({ status: 0, title: "Network error", detail: String(error) });
      return;
    }
    if (!response.ok) {
      const problem = await readProblem(response);
      if (response.status === 404) {
        problem.detail = `${problem.detail} It has expired or was erased (or it belongs to another API key).`;
        runHistory.markGone(id);
      }
      this.status("not available");
      this.problem(problem);
      return;
    }
    this.remembered = true;  // opened from the history: keep its entry in step
    this.update(await response.json());
    if (isTerminal(this.job.status)) await this.finish();
    else await this.follow();
  }

  async follow() {
    const id = this.job.id;
    let lastEventId = null;
    for (let attempt = 0; attempt < 20 && !isTerminal(this.job.status); attempt++) {
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      let response;
      try {
        response = await fetch(`jobs/${id}/events`, { headers, cache: "no-store" });
      } catch (error) {
        await sleep(Math.min(500 * 2 ** attempt, 5000));
        continue;
      }
      if (!response.ok) {
        if (response.status >= 500) { await sleep(Math.min(500 * 2 ** attempt, 5000)); continue; }
        const problem = await readProblem(response);
        if (response.status === 404 && problem.type !== "/problems/job-not-found") {
          await this.poll();  // a service without the events stream
          break;
        }
        this.problem(problem);
        return;
      }
      lastEventId = await readEvents(response, lastEventId, (event) => this.update(JSON.parse(event.data)));
    }
    await this.finish();
  }

  async poll() {
    while (!isTerminal(this.job.status)) {
      await sleep(500);
      const response = await fetch(`jobs/${this.job.id}`, { headers: authHeaders(), cache: "no-store" });
      if (response.ok) this.update(await response.json());
      else if (response.status < 500) { this.problem(await readProblem(response)); return; }
    }
  }

  async finish() {
    const job = this.job;
    if (job.status === "succeeded") {
      await this.showResults();
    } else if (job.status === "failed") {
      const error = job.error || { type: "failed", detail: "the job failed" };
      this.problem({ status: "Job failed", title: "", detail: error.detail, type: error.type });
    }
    runHistory.remember(job, job.status === "succeeded" ? this.thumbnails() : undefined);
  }

  async showResults() {
    const job = this.job;
    const results = job.results && job.results.length ? job.results : [job.result];
    this.placeholders(results.length, results[0].width / results[0].height);
    const loaded = results.map((result, k) => this.showResult(result, k));
    await Promise.all(loaded);
    if (this.node.dataset.state !== "problem") this.node.dataset.state = "shown";
  }

  async showResult(result, k) {
    const job = this.job;
    const card = this.cards[k];
    const image = $(".result", card);
    const link = $(".download", card);
    const extension = (result.content_type.split("/")[1] || "png").replace("jpeg", "jpg");
    let source;
    try {
      const path = k === 0 ? "result" : `results/${k}`;  // /result: the first, on every service version
      const response = await fetch(`jobs/${job.id}/${path}`, { headers: authHeaders() });
      if (!response.ok) { this.problem(await readProblem(response)); return; }
      source = URL.createObjectURL(await response.blob());
    } catch (_) {
      source = result.url;  // a presigned URL on another origin: the browser loads it directly
    }
    await new Promise((resolve) => {
      image.addEventListener("load", resolve, { once: true });
      image.addEventListener("error", resolve, { once: true });
      image.src = source;
    });
    this.shape(image.naturalWidth / image.naturalHeight || 1);
    $(".size", card).textContent = `${image.naturalWidth} × ${image.naturalHeight}`;
    image.alt = `result ${k + 1} of job ${job.id}`;
    link.href = source;
    // qalign_schema/naming.py's scheme: qalign-<job id>.<ext>, or -<k> before it for several results
    const numbered = this.cards.length > 1 ? `-${k}` : "";
    link.download = `qalign-${job.id}${numbered}.${extension}`;
    card.classList.add("loaded");
  }

  // Small JPEG data URLs of the first results, for the history (a cross-origin result cannot be read).
  thumbnails() {
    const thumbs = [];
    for (const card of this.cards.slice(0, 4)) {
      const image = $(".result", card);
      if (!image.naturalWidth) continue;
      const scale = THUMB_SIDE / Math.max(image.naturalWidth, image.naturalHeight);
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(image.naturalWidth * scale));
      canvas.height = Math.max(1, Math.round(image.naturalHeight * scale));
      try {
        canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
        thumbs.push(canvas.toDataURL("image/jpeg", 0.8));
      } catch (_) { /* tainted by another origin: no thumbnail */ }
    }
    return thumbs;
  }

  async cancel() {
    if (!this.job) return;
    const response = await fetch(`jobs/${this.job.id}`, { method: "DELETE", headers: authHeaders() });
    if (response.ok) this.update(await response.json());
    else this.problem(await readProblem(response));
  }
}

// Server-Sent Events from a fetch() response: calls onEvent({event, data, id}) per event; returns the
// last event id seen (to resume with Last-Event-ID if the stream ends before the terminal event).
async function readEvents(response, lastEventId, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let current = { event: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (current.data.length) {
          if (current.id !== null) lastEventId = current.id;
          onEvent({ event: current.event, data: current.data.join("\n"), id: current.id });
        }
        current = { event: "message", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue;  // comment (keep-alive ping)
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let text = colon === -1 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") current.event = text;
      else if (field === "data") current.data.push(text);
      else if (field === "id") current.id = text;
    }
  }
  return lastEventId;
}

// ---------------------------------------------------------------------------------------- history
// The page's earlier runs, newest first, in localStorage: job ids and what to show without asking the
// service (method, count, size, small thumbnails). The images themselves stay on the service.
const runHistory = {
  load() {
    try {
      const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
      return Array.isArray(list) ? list.filter((entry) => entry && typeof entry.id === "string") : [];
    } catch (_) {
      return [];
    }
  },

  save(list) {
    for (let keep = list.length; keep >= 0; keep--) {
      try {
        localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, keep)));
        return;
      } catch (_) { /* over the storage quota: drop the oldest run and try again */ }
    }
  },

  remember(job, thumbs) {
    const list = this.load();
    const old = list.find((entry) => entry.id === job.id) || {};
    const entry = {
      id: job.id,
      method: job.params.method,
      aspect: job.params.aspect || "structure",
      appearances: job.appearances || 1,
      status: job.status,
      created_at: job.created_at,
      width: job.output ? job.output.width : (job.result ? job.result.width : old.width),
      height: job.output ? job.output.height : (job.result ? job.result.height : old.height),
      thumbs: thumbs && thumbs.length ? thumbs : (old.thumbs || []),
    };
    this.save([entry, ...list.filter((item) => item.id !== job.id)].slice(0, HISTORY_MAX));
    this.render();
  },

  markGone(id) {
    const list = this.load();
    for (const entry of list) if (entry.id === id) entry.gone = true;
    this.save(list);
    this.render();
  },

  forget(id) {
    this.save(this.load().filter((entry) => entry.id !== id));
    this.render();
  },

  render() {
    const list = this.load();
    const box = $("#history-list");
    box.replaceChildren();
    for (const entry of list) {
      const item = $("#history-template").content.firstElementChild.cloneNode(true);
      item.dataset.jobId = entry.id;
      if ($("#runs").querySelector(`.run[data-job-id="${CSS.escape(entry.id)}"]`)) item.classList.add("active");
      const thumbs = $(".thumbs", item);
      for (const thumb of entry.thumbs.slice(0, 3)) {
        const image = document.createElement("img");
        image.src = thumb;
        image.alt = "";
        thumbs.append(image);
      }
      if (!entry.thumbs.length) {
        const empty = document.createElement("span");
        empty.className = "thumb-empty";
        thumbs.append(empty);
      }
      $(".history-title", item).textContent =
        `${entry.appearances > 1 ? plural(entry.appearances, "look") : "1 look"} · ${METHOD_NAMES[entry.method] || entry.method}`;
      const when = entry.created_at ? new Date(entry.created_at) : null;
      const meta = [];
      if (entry.width && entry.height) meta.push(`${entry.width} × ${entry.height}`);
      if (when && !Number.isNaN(when.getTime())) {
        meta.push(when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }));
      }
      meta.push(entry.gone ? "no longer on the service" : entry.status);
      $(".history-meta", item).textContent = meta.join(" · ");
      $(".history-open", item).addEventListener("click", () => {
        $("#runs").replaceChildren();
        new Run(entry.method).open(entry.id).then(() => runHistory.render());
        runHistory.render();
      });
      $(".history-remove", item).addEventListener("click", () => runHistory.forget(entry.id));
      box.append(item);
    }
    $("#history").hidden = list.length === 0;
  },
};

// ---------------------------------------------------------------------------------------- the form
function missingInputs() {
  const missing = [];
  if (!structure.file) missing.push({ field: "structure", message: "choose or drop an image" });
  if (!appearances.length) {
    missing.push({ field: "appearance", message: `add 1 to ${limits.max_appearances} images` });
  }
  return missing;
}

function showMissing(missing) {
  showProblem($("#form-problem"), {
    status: "Missing image", title: "", detail: "A structure image and at least one appearance image are needed.",
    errors: missing,
  });
  $("#form-problem").dataset.kind = "missing";
}

function readForm() {
  const missing = missingInputs();
  if (missing.length) {
    showMissing(missing);
    return null;
  }
  $("#form-problem").hidden = true;
  const aspect = $("#aspect").value;
  return {
    structure: structure.file,
    appearances: appearances.map((entry) => entry.file),
    sources: appearances.map((entry) => entry.url),
    aspect,
    shape: expectedShape(aspect),
    steps: $("#steps").value,
    seed: $("#seed").value,
  };
}

// ---------------------------------------------------------------------------------------- the model
// The served model as GET /readyz reports it (its workers' backbone, native size and sizes); asked
// again until a worker has loaded it, and whenever the API key changes (details need a key).
async function showModel() {
  let body = null;
  try {
    const response = await fetch("readyz", { headers: authHeaders(), cache: "no-store" });
    body = await response.json();
  } catch (_) { /* the service is starting: try again below */ }
  const line = $("#model-info");
  const model = body && body.model;
  clearTimeout(showModel.retry);
  if (!model) {
    line.hidden = true;
    // Details withheld (a keyed service, no key yet): the key's change asks again. Else the
    // model is still loading, or the service starting: ask again shortly.
    if (!body || "checks" in body) showModel.retry = setTimeout(showModel, 5000);
    return;
  }
  line.textContent = `Model: ${model.title}${model.name ? ` (${model.name})` : ""} · results ` +
    `${model.native_size} px on the longer side by default, ${model.min_size} to ${model.max_size} px ` +
    `in steps of ${model.size_unit} through the API's size parameter.`;
  line.dataset.backbone = model.backbone;
  line.hidden = false;
}

wireStructure();
wireAppearances();
$("#api-key").addEventListener("change", showModel);
showModel();
runHistory.render();
limitsReady.then(() => {
  applyLimits();
  renderAppearances();
});
$("#transfer-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  await limitsReady;
  const form = readForm();
  if (!form) return;
  $("#runs").replaceChildren();
  const methods = $("#compare").checked ? ["qalign", "cross_image"] : [$("#method").value];
  for (const method of methods) new Run(method, form.sources).submit(form);
  $("#runs").scrollIntoView({ behavior: "smooth", block: "start" });
});
