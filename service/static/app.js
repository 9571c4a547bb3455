// The gateway's web page: pick a generator, set the task, submit, watch, download.
// Plain JavaScript, no build step. It speaks the public HTTP API only (the same calls as
// `service.client`): GET /architectures, POST /generate, GET /jobs/{id}/events (SSE, read
// with fetch so the API key can travel in a header; polling GET /jobs/{id} as a fallback),
// GET /jobs, POST /jobs/{id}/cancel, DELETE /jobs/{id}.
"use strict";

const KEY_STORAGE = "rpg.apiKey";
const FINISHED = new Set(["succeeded", "failed", "canceled"]);
const POLL_MS = 700;

const $ = (id) => document.getElementById(id);
const state = { architectures: new Map(), watching: null };

class ApiError extends Error {
  constructor(status, body) {
    const problem = body && typeof body === "object" ? body : {};
    const lines = (problem.errors || []).map((e) => `- ${e.field}: ${e.message}`);
    super([`${status} ${problem.title || "Error"}: ${problem.detail || body || ""}`, ...lines].join("\n"));
    this.status = status;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) {
    if (response.status === 401) showKeyState("this gateway needs a valid API key");
    throw new ApiError(response.status, data);
  }
  return data;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function showKeyState(text) {
  $("key-state").textContent = text;
}

// ------------------------------------------------------------------ the request form

async function loadArchitectures() {
  try {
    const body = await api("GET", "/architectures");
    const select = $("architecture");
    select.replaceChildren();
    state.architectures.clear();
    for (const arch of body.architectures) {
      state.architectures.set(arch.name, arch);
      select.append(el("option", { value: arch.name, textContent: arch.name }));
    }
    $("num-samples").max = body.limits.max_num_samples;
    $("steps").max = body.limits.max_steps;
    renderTask();
  } catch (err) {
    showFormError(`Could not list the generators: ${err.message}`);
  }
}

function renderTask() {
  const arch = state.architectures.get($("architecture").value);
  if (!arch) return;
  const condition = arch.condition || { kind: "none" };
  const conditional = condition.kind !== "none";
  const labels = condition.labels || [];
  $("task-none").hidden = conditional;
  $("task-classes").hidden = !(conditional && labels.length);
  $("task-embedding-box").hidden = !conditional;
  $("embedding-dim").textContent = condition.dim ?? "";
  $("class-boxes").replaceChildren(
    ...labels.map((label) => el("label", {},
      el("input", { type: "checkbox", value: label, name: "positive_classes" }), String(label))),
  );
  const defaults = arch.defaults || {};
  $("sampler").value = defaults.sampler || "ddim";
  $("steps").value = defaults.steps ?? "";
  $("steps").disabled = $("sampler").value === "ddpm";
  const params = arch.num_parameters ? `${arch.num_parameters.toLocaleString()} parameters per model` : "";
  const zoo = arch.zoo_accuracy_mean != null ? `, zoo accuracy ${(100 * arch.zoo_accuracy_mean).toFixed(1)}%` : "";
  $("arch-info").textContent = params + zoo;
}

function readRequest() {
  const arch = state.architectures.get($("architecture").value);
  const body = { architecture: arch.name, num_samples: Number($("num-samples").value) };
  if (arch.condition && arch.condition.kind !== "none") {
    const embedding = $("task-embedding").value.trim();
    const classes = [...document.querySelectorAll("#class-boxes input:checked")].map((b) => b.value);
    if (embedding) {
      body.task_embedding = JSON.parse(embedding); // a syntax error is shown to the user
    } else if (classes.length) {
      body.task = { positive_classes: classes };
    }
  }
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  body.sampler = $("sampler").value;
  if (body.sampler !== "ddpm" && $("steps").value !== "") body.steps = Number($("steps").value);
  return body;
}

function showFormError(text) {
  $("form-error").textContent = text;
  $("form-error").hidden = !text;
}

async function submit(event) {
  event.preventDefault();
  showFormError("");
  let body;
  try {
    body = readRequest();
  } catch (err) {
    showFormError(`The task embedding is not a JSON list: ${err.message}`);
    return;
  }
  $("submit").disabled = true;
  try {
    const job = await api("POST", "/generate", body);
    watch(job);
    loadJobs();
  } catch (err) {
    showFormError(err.message);
  } finally {
    $("submit").disabled = false;
  }
}

// ------------------------------------------------------------------ one job, live

function renderJob(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  const status = $("job-status");
  status.textContent = job.status + (job.status === "queued" && job.queue_position != null ? ` (#${job.queue_position + 1} in line)` : "");
  status.className = `status ${job.status}`;
  status.dataset.status = job.status;
  $("job-progress").value = job.progress || 0;
  const request = job.request || {};
  const seed = (job.result && job.result.seed) ?? request.seed;
  $("job-detail").textContent = `${request.architecture || ""} · ${request.num_samples || 1} sample(s) · seed ${seed} · ${request.sampler || ""}${request.sampler !== "ddpm" ? ` ${request.steps} steps` : ""} · ${Math.round(100 * (job.progress || 0))}%`;
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error ? `${job.error.type}: ${job.error.message}` : "";
  $("cancel").hidden = FINISHED.has(job.status);
  const files = (job.result && job.result.files) || [];
  $("files").hidden = !files.length;
  $("files").tBodies[0].replaceChildren(...sampleRows(files));
}

// One row per plain file; an adapter sample (a PEFT folder: `sample_000/adapter_config.json`
// + `sample_000/adapter_model.safetensors`) is one row whose link downloads both as one zip.
function sampleRows(files) {
  const folders = new Map();
  const rows = [];
  for (const file of files) {
    const slash = file.name.indexOf("/");
    if (slash < 0) {
      rows.push(el("tr", {},
        el("td", {}, el("a", { href: file.url, download: file.name, textContent: file.name })),
        el("td", { textContent: file.num_parameters.toLocaleString() }),
        el("td", { textContent: humanBytes(file.size_bytes) }),
        el("td", {}, el("code", { textContent: file.sha256 })),
      ));
      continue;
    }
    const folder = file.name.slice(0, slash);
    if (!folders.has(folder)) {
      const group = [];
      folders.set(folder, group);
      const link = el("a", { href: "#", className: "zip", textContent: `${folder}.zip` });
      link.dataset.folder = folder;
      link.addEventListener("click", (event) => { event.preventDefault(); downloadZip(folder, group, link); });
      const row = el("tr", {}, el("td", {}, link), el("td"), el("td"), el("td"));
      row.dataset.folder = folder;
      rows.push(row);
    }
    folders.get(folder).push(file);
  }
  for (const row of rows) {
    const group = row.dataset.folder && folders.get(row.dataset.folder);
    if (!group) continue;
    row.cells[1].textContent = group.reduce((n, f) => n + f.num_parameters, 0).toLocaleString();
    row.cells[2].textContent = humanBytes(group.reduce((n, f) => n + f.size_bytes, 0));
    row.cells[3].replaceChildren(...group.map((f) => el("div", {}, el("code", { textContent: `${f.name.split("/")[1]} ${f.sha256}` }))));
  }
  return rows;
}

// Fetch a sample folder's files, check each sha256 against the manifest, and save them as
// one zip (stored, not compressed: safetensors do not shrink) named after the folder.
async function downloadZip(folder, group, link) {
  link.textContent = `${folder}.zip (preparing)`;
  try {
    const entries = [];
    for (const file of group) {
      const response = await fetch(file.url);
      if (!response.ok) throw new Error(`${file.name}: HTTP ${response.status}`);
      const data = new Uint8Array(await response.arrayBuffer());
      if (data.length !== file.size_bytes) throw new Error(`${file.name}: size mismatch, download again`);
      if (window.crypto && crypto.subtle) { // only on https or localhost pages
        const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", data)), (b) => b.toString(16).padStart(2, "0")).join("");
        if (digest !== file.sha256) throw new Error(`${file.name}: sha256 mismatch, download again`);
      }
      entries.push({ name: file.name, data });
    }
    const url = URL.createObjectURL(new Blob([zipStored(entries)], { type: "application/zip" }));
    const save = el("a", { href: url, download: `${folder}.zip` });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    link.textContent = `${folder}.zip`;
  } catch (error) {
    link.textContent = `${folder}.zip (failed: ${error.message})`;
  }
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(data) {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// A zip archive (PKWARE APPNOTE 4.3: local headers, data, central directory, end record)
// with every entry stored. Sizes stay under 4 GiB: no zip64.
function zipStored(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const nameBytes = encoder.encode(name);
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); // local file header signature
    local.setUint16(4, 20, true); // version needed
    local.setUint16(8, 0, true); // method: stored
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true); // compressed size
    local.setUint32(22, data.length, true); // uncompressed size
    local.setUint16(26, nameBytes.length, true);
    parts.push(new Uint8Array(local.buffer), nameBytes, data);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true); // central directory header signature
    entry.setUint16(4, 20, true); // version made by
    entry.setUint16(6, 20, true); // version needed
    entry.setUint32(16, crc, true);
    entry.setUint32(20, data.length, true);
    entry.setUint32(24, data.length, true);
    entry.setUint16(28, nameBytes.length, true);
    entry.setUint32(42, offset, true); // where the local header starts
    central.push(new Uint8Array(entry.buffer), nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const size = central.reduce((n, part) => n + part.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); // end of central directory signature
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, new Uint8Array(end.buffer)]);
}

// Reads `GET /jobs/{id}/events` with fetch (EventSource cannot send an Authorization
// header). Resolves with the last job document; rejects when the stream is unavailable.
async function streamEvents(jobId, watcher) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (watcher.lastEventId) headers["Last-Event-ID"] = watcher.lastEventId;
  const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal: watcher.abort.signal });
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.startsWith("text/event-stream")) throw new Error(`no event stream (${response.status})`);
  $("job-transport").textContent = "(live)";
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) watcher.lastEventId = line.slice(3).trim();
      }
      if (!data.length) continue;
      last = JSON.parse(data.join("\n"));
      if (watcher !== state.watching) return last;
      renderJob(last);
    }
  }
  if (!last || !FINISHED.has(last.status)) throw new Error("the event stream ended early");
  return last;
}

async function poll(jobId, watcher) {
  $("job-transport").textContent = "(polling)";
  for (;;) {
    const job = await api("GET", `/jobs/${encodeURIComponent(jobId)}`);
    if (watcher !== state.watching) return job;
    renderJob(job);
    if (FINISHED.has(job.status)) return job;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function watch(job) {
  if (state.watching) state.watching.abort.abort();
  const watcher = { abort: new AbortController(), lastEventId: null };
  state.watching = watcher;
  renderJob(job);
  if (FINISHED.has(job.status)) return;
  let final = null;
  for (let attempt = 0; attempt < 2 && !final; attempt += 1) {
    try {
      final = await streamEvents(job.id, watcher); // a dropped stream resumes once
    } catch (err) {
      if (err.name === "AbortError") return;
    }
  }
  if (!final) {
    try { final = await poll(job.id, watcher); } catch (err) { $("job-error").hidden = false; $("job-error").textContent = err.message; }
  }
  if (watcher === state.watching) loadJobs();
}

async function cancelJob() {
  const id = $("job-id").textContent;
  try { renderJob(await api("POST", `/jobs/${encodeURIComponent(id)}/cancel`)); } catch (err) { showFormError(err.message); }
}

// ------------------------------------------------------------------ recent jobs

async function loadJobs() {
  let jobs = [];
  try {
    jobs = (await api("GET", "/jobs?limit=20")).jobs;
  } catch (err) {
    $("jobs-empty").hidden = false;
    $("jobs-empty").textContent = `Could not list jobs: ${err.message}`;
    return;
  }
  $("jobs-empty").hidden = jobs.length > 0;
  $("jobs-empty").textContent = "No jobs yet.";
  $("jobs").tBodies[0].replaceChildren(...jobs.map((job) => {
    const open = el("a", { href: `#${job.id}`, textContent: job.id.slice(0, 8) });
    open.addEventListener("click", (event) => { event.preventDefault(); api("GET", `/jobs/${job.id}`).then(watch, (e) => showFormError(e.message)); });
    const remove = el("button", { type: "button", className: "small", textContent: "Delete", disabled: !FINISHED.has(job.status) });
    remove.addEventListener("click", () => api("DELETE", `/jobs/${job.id}`).then(loadJobs, (e) => showFormError(e.message)));
    const row = el("tr", {},
      el("td", { textContent: new Date(job.created_at).toLocaleString() }),
      el("td", {}, open),
      el("td", { textContent: (job.request || {}).architecture || "" }),
      el("td", { textContent: (job.request || {}).num_samples || "" }),
      el("td", { textContent: job.status, className: `status ${job.status}` }),
      el("td", {}, remove),
    );
    row.dataset.job = job.id;
    return row;
  }));
}

// ------------------------------------------------------------------ start

function init() {
  $("api-key").value = apiKey();
  showKeyState(apiKey() ? "saved in this browser" : "");
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    showKeyState("saved in this browser");
    loadArchitectures();
    loadJobs();
  });
  $("architecture").addEventListener("change", renderTask);
  $("sampler").addEventListener("change", () => { $("steps").disabled = $("sampler").value === "ddpm"; });
  $("generate-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancelJob);
  $("refresh").addEventListener("click", loadJobs);
  loadArchitectures();
  loadJobs();
}

document.addEventListener("DOMContentLoaded", init);
