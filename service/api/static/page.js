// The try-it page: submit one job (or Q-Align and CIA side by side), follow its events stream, show the
// result. Plain browser JavaScript, no build step. Paths are relative to the page, so the page works
// behind a proxy prefix. EventSource cannot send an Authorization header, so the stream is read with
// fetch() and a streaming body reader (one code path with or without an API key).
"use strict";

const TERMINAL = ["succeeded", "failed", "canceled"];
const METHOD_NAMES = { qalign: "Q-Align", cross_image: "Cross-Image Attention (CIA)" };
const $ = (selector, root = document) => root.querySelector(selector);

function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
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

// ---------------------------------------------------------------------------------------- images
function wireDrop(name) {
  const zone = $(`#${name}-drop`);
  const input = $(`#${name}`);
  const preview = $(`#${name}-preview`);
  const show = () => {
    const file = input.files[0];
    if (!file) return;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.alt = file.name;
    preview.hidden = false;
  };
  preview.addEventListener("error", () => { preview.hidden = true; });  // not an image: the server says why
  input.addEventListener("change", show);
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show();
    }
  });
}

// ---------------------------------------------------------------------------------------- one run
class Run {
  constructor(method) {
    this.method = method;
    this.node = $("#run-template").content.firstElementChild.cloneNode(true);
    this.node.dataset.method = method;
    $(".run-title", this.node).textContent = METHOD_NAMES[method] || method;
    $(".cancel", this.node).addEventListener("click", () => this.cancel());
    $("#runs").append(this.node);
    this.job = null;
  }

  status(text) { $(".status", this.node).textContent = text; }

  problem(problem) {
    this.node.dataset.state = "problem";
    showProblem($(".problem", this.node), problem);
  }

  update(job) {
    this.job = job;
    this.node.dataset.status = job.status;
    const parts = [job.status];
    if (!TERMINAL.includes(job.status)) {
      parts.push(job.stage, `${Math.round(job.progress * 100)} %`);
      if (job.queue_position != null && job.status === "queued") parts.push(`${job.queue_position} ahead`);
      if (job.eta_s != null) parts.push(`about ${Math.ceil(job.eta_s)} s left`);
    }
    this.status(parts.join(" · "));
    $(".bar", this.node).value = job.progress;
    $(".cancel", this.node).hidden = TERMINAL.includes(job.status);
  }

  async submit(form) {
    const body = new FormData();
    body.append("structure", form.structure);
    body.append("appearance", form.appearance);
    body.append("method", this.method);
    body.append("steps", form.steps);
    body.append("seed", form.seed);
    let response;
    try {
      response = await fetch("transfer", {
        method: "POST",
        body,
        headers: { ...authHeaders(), "Idempotency-Key": newKey() },
      });
    } catch (error) {
      this.status("not sent");
      this.problem({ status: 0, title: "Network error", detail: String(error) });
      return;
    }
    if (!response.ok) {
      this.status("refused");
      this.problem(await readProblem(response));
      return;
    }
    this.update(await response.json());
    await this.follow();
  }

  async follow() {
    const id = this.job.id;
    let lastEventId = null;
    for (let attempt = 0; attempt < 20 && !TERMINAL.includes(this.job.status); attempt++) {
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
    this.finish();
  }

  async poll() {
    while (!TERMINAL.includes(this.job.status)) {
      await sleep(500);
      const response = await fetch(`jobs/${this.job.id}`, { headers: authHeaders(), cache: "no-store" });
      if (response.ok) this.update(await response.json());
      else if (response.status < 500) { this.problem(await readProblem(response)); return; }
    }
  }

  async finish() {
    const job = this.job;
    if (job.status === "succeeded") {
      await this.showResult();
    } else if (job.status === "failed") {
      const error = job.error || { type: "failed", detail: "the job failed" };
      this.problem({ status: "Job failed", title: "", detail: error.detail, type: error.type });
    }
  }

  async showResult() {
    const job = this.job;
    const image = $(".result", this.node);
    const link = $(".download", this.node);
    const extension = (job.result.content_type.split("/")[1] || "png").replace("jpeg", "jpg");
    let source;
    try {
      const response = await fetch(`jobs/${job.id}/result`, { headers: authHeaders() });
      if (!response.ok) { this.problem(await readProblem(response)); return; }
      source = URL.createObjectURL(await response.blob());
    } catch (_) {
      source = job.result.url;  // a presigned URL on another origin: the browser loads it directly
    }
    image.addEventListener("load", () => {
      $(".size", this.node).textContent = `${image.naturalWidth} × ${image.naturalHeight}`;
      this.node.dataset.state = "shown";
    }, { once: true });
    image.src = source;
    link.href = source;
    link.download = `qalign-${this.method}-${job.id}.${extension}`;
    $(".output", this.node).hidden = false;
  }

  async cancel() {
    if (!this.job) return;
    const response = await fetch(`jobs/${this.job.id}`, { method: "DELETE", headers: authHeaders() });
    if (response.ok) this.update(await response.json());
    else this.problem(await readProblem(response));
  }
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

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

// ---------------------------------------------------------------------------------------- the form
function readForm() {
  const structure = $("#structure").files[0];
  const appearance = $("#appearance").files[0];
  const missing = [];
  if (!structure) missing.push({ field: "structure", message: "choose or drop an image" });
  if (!appearance) missing.push({ field: "appearance", message: "choose or drop an image" });
  if (missing.length) {
    showProblem($("#form-problem"), {
      status: "Missing image", title: "", detail: "Both images are needed.", errors: missing,
    });
    return null;
  }
  $("#form-problem").hidden = true;
  return { structure, appearance, steps: $("#steps").value, seed: $("#seed").value };
}

wireDrop("structure");
wireDrop("appearance");
$("#transfer-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = readForm();
  if (!form) return;
  $("#runs").replaceChildren();
  const methods = $("#compare").checked ? ["qalign", "cross_image"] : [$("#method").value];
  for (const method of methods) new Run(method).submit(form);
});
