// The stream-ml viewer: the stream list (GET /streams, kept live by GET /events), the selected
// stream's predictions (GET /streams/{id}/events, resumed with Last-Event-ID), its latest frame
// (GET /streams/{id}/frame.jpg), charts, uploads (POST /predict) and stream changes.
// Plain JS, no build step, nothing loaded from another origin.
"use strict";

const KEY_STORE = "streamml.apiKey";  // sessionStorage: this tab only
const FRAME_MIN_INTERVAL_MS = 500;
const EVENTS_KEPT = 64;  // recent prediction events of the selected stream, by frame (for the overlay)
const IDS_KEPT = 1000;  // event ids kept per stream (window.streamml.received): a long-lived tab stays small
const REOPEN_MS = [1000, 2000, 5000];

const $ = (id) => document.getElementById(id);

const view = {
  key: sessionStorage.getItem(KEY_STORE),
  token: null,  // {token, expires_at}
  streams: new Map(),  // id -> {info, status}
  selected: null,
  feed: null,  // EventSource of GET /events
  events: null,  // EventSource of the selected stream
  lastId: new Map(),  // stream -> the last event id received
  received: new Map(),  // stream -> every event id received, in order (for the resume check)
  lost: new Map(),  // stream -> [{after, lost}] gaps announced by the gateway
  recent: new Map(),  // frame index -> prediction event (selected stream)
  frame: { inFlight: false, last: 0 },
  reopen: { feed: 0, events: 0 },
  timers: { feed: null, events: null },
  times: [],  // receive times of the selected stream's predictions (for predictions/s)
  charts: null,
  wasUp: false,
  switching: false,  // between closing one stream's events and opening the next: not a disconnection
};

// --- the API ----------------------------------------------------------------------------------

function headers(extra = {}) {
  const h = { ...extra };
  if (view.key) h.Authorization = `Bearer ${view.key}`;
  return h;
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (r.status === 401) {
    askKey(view.key ? "That key was refused." : "");
    throw new ApiError(401, "an API key is required");
  }
  return r;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorText(r) {
  try {
    const body = await r.json();
    return body.error ? `${body.error.message} (${r.status} ${body.error.code})` : `${r.status}`;
  } catch {
    return `${r.status} ${r.statusText}`;
  }
}

async function sseQuery(params = {}) {
  // EventSource sends no headers: with a key, a short-lived token goes in the query instead.
  if (view.key) {
    const now = Date.now() / 1000;
    if (!view.token || view.token.expires_at - now < 30) {
      const r = await api("auth/token", { method: "POST" });
      if (!r.ok) throw new ApiError(r.status, await errorText(r));
      view.token = await r.json();
    }
    params.token = view.token.token;
  }
  const q = new URLSearchParams(params).toString();
  return q ? `?${q}` : "";
}

// --- the key ----------------------------------------------------------------------------------

function askKey(message) {
  const dialog = $("key-dialog");
  $("key-button").hidden = false;
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
}

$("key-form").addEventListener("submit", () => {
  view.key = $("key-input").value.trim();
  view.token = null;
  sessionStorage.setItem(KEY_STORE, view.key);
  start();
});
$("key-button").addEventListener("click", () => askKey(""));

// --- connection state -------------------------------------------------------------------------

function connectionState() {
  const open = (es) => es && es.readyState === EventSource.OPEN;
  const up = open(view.feed) && (view.selected === null || view.switching || open(view.events));
  if (up) view.wasUp = true;
  // "connecting" until the first connection; "disconnected" whenever one is down after that
  const state = up ? "connected" : view.wasUp ? "disconnected" : "connecting";
  const el = $("conn");
  if (el.dataset.state !== state) {
    el.dataset.state = state;
    el.textContent = up ? "live" : state === "disconnected" ? "disconnected" : "connecting…";
    $("disconnected-banner").hidden = state !== "disconnected";
  }
}

// --- the stream list --------------------------------------------------------------------------

async function loadStreams() {
  const r = await api("streams");
  if (!r.ok) throw new ApiError(r.status, await errorText(r));
  const infos = await r.json();
  const seen = new Set();
  for (const info of infos) {
    seen.add(info.id);
    const entry = view.streams.get(info.id) || { status: null };
    entry.info = info;
    view.streams.set(info.id, entry);
  }
  for (const id of [...view.streams.keys()]) if (!seen.has(id)) view.streams.delete(id);
  renderStreams();
  let wanted = "";
  try {
    wanted = decodeURIComponent(location.hash.replace(/^#stream=/, ""));
  } catch {
    // a malformed address: start with the first stream
  }
  if (view.selected === null || !view.streams.has(view.selected)) {
    const first = view.streams.has(wanted) ? wanted : view.streams.keys().next().value;
    if (first !== undefined) select(first);
  }
}

function stateOf(entry) {
  return entry.status ? entry.status.state : entry.info ? entry.info.state : "connecting";
}

function renderStreams() {
  const list = $("streams");
  list.replaceChildren();
  for (const [id, entry] of view.streams) {
    const li = document.createElement("li");
    li.dataset.stream = id;
    li.setAttribute("aria-selected", String(id === view.selected));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = id;
    name.title = entry.info ? `${id}: ${entry.info.url}` : id;
    const model = document.createElement("span");
    model.className = "model";
    model.textContent = entry.info ? entry.info.model : "";
    name.append(model);
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.state = stateOf(entry);
    badge.textContent = stateOf(entry);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.title = `Remove ${id}`;
    remove.setAttribute("aria-label", `Remove ${id}`);
    remove.textContent = "×";
    remove.addEventListener("click", (e) => {
      e.stopPropagation();
      removeStream(id);
    });
    li.append(name, badge, remove);
    li.addEventListener("click", () => select(id));
    list.append(li);
  }
  $("no-streams").hidden = view.streams.size > 0;
  renderSelectedBadge();
}

function renderSelectedBadge() {
  const entry = view.selected !== null ? view.streams.get(view.selected) : null;
  const badge = $("stream-badge");
  const triton = $("stream-triton");
  badge.hidden = !entry;
  triton.hidden = true;
  if (!entry) return;
  badge.dataset.state = stateOf(entry);
  badge.textContent = stateOf(entry);
  const t = entry.status ? entry.status.triton : entry.info ? entry.info.triton : "available";
  if (t !== "available") {
    triton.hidden = false;
    triton.textContent = `Triton ${t}`;
  }
}

function onFeedStatus(status) {
  const entry = view.streams.get(status.stream);
  if (status.state === "stopped" && status.reason !== "shutting_down") {
    view.streams.delete(status.stream);
    if (view.selected === status.stream) {
      closeEvents();
      view.selected = null;
      const next = view.streams.keys().next().value;
      if (next !== undefined) select(next);
      else clearPanel();
    }
    renderStreams();
    return;
  }
  if (!entry) {  // a stream added elsewhere: its model and URL come from the list
    view.streams.set(status.stream, { status, info: null });
    loadStreams().catch(() => {});
  } else {
    entry.status = status;
  }
  renderStreams();
}

function openFeed() {
  if (view.feed) view.feed.close();
  clearTimeout(view.timers.feed);
  sseQuery()
    .then((q) => {
      const es = new EventSource(`events${q}`);
      view.feed = es;
      es.addEventListener("open", () => {
        view.reopen.feed = 0;
        connectionState();
      });
      es.addEventListener("status", (e) => onFeedStatus(JSON.parse(e.data)));
      es.addEventListener("error", () => {
        connectionState();
        if (es.readyState === EventSource.CLOSED) reopenLater("feed", openFeed);
      });
      connectionState();
    })
    .catch(() => reopenLater("feed", openFeed));
}

function reopenLater(which, fn) {
  const delay = REOPEN_MS[Math.min(view.reopen[which], REOPEN_MS.length - 1)];
  view.reopen[which] += 1;
  clearTimeout(view.timers[which]);
  view.timers[which] = setTimeout(fn, delay);
  connectionState();
}

async function removeStream(id) {
  try {
    const r = await api(`streams/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (!r.ok && r.status !== 404) alertError(await errorText(r));
  } catch (e) {
    if (e.status !== 401) alertError(String(e.message || e));
  }
}

function alertError(text) {
  const el = $("add-stream-error");
  el.textContent = text;
  el.hidden = false;
}

$("add-stream").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const body = { id: form.id.value.trim(), url: form.url.value.trim() };
  if (form.model.value) body.model = form.model.value;
  if (form.sample_fps.value) body.sample_fps = Number(form.sample_fps.value);
  $("add-stream-error").hidden = true;
  try {
    const r = await api("streams", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!r.ok) return alertError(await errorText(r));
    form.reset();
    await loadStreams();
    select(body.id);
  } catch (err) {
    if (err.status !== 401) alertError(String(err.message || err));
  }
});

// --- the selected stream ----------------------------------------------------------------------

function clearPanel() {
  $("stream-title").textContent = "No stream selected";
  $("topk").replaceChildren();
  $("prediction-empty").hidden = false;
  $("detection-summary").hidden = true;
  $("prediction").dataset.frame = "";
  const frame = $("frame");
  if (frame.dataset.blob) URL.revokeObjectURL(frame.dataset.blob);
  delete frame.dataset.blob;
  frame.removeAttribute("src");
  clearOverlay($("frame-overlay"));
  for (const id of ["stat-frame", "stat-event-id", "stat-inference", "stat-age", "stat-fps"]) $(id).textContent = "–";
  view.recent.clear();
  view.times = [];
  if (view.charts) for (const c of Object.values(view.charts)) c.clear();
  renderSelectedBadge();
}

function select(id) {
  if (view.selected === id && view.events) return;
  closeEvents();
  view.switching = true;
  view.selected = id;
  history.replaceState(null, "", `#stream=${encodeURIComponent(id)}`);
  clearPanel();
  $("stream-title").textContent = id;
  renderStreams();
  openEvents();
}

function closeEvents() {
  clearTimeout(view.timers.events);
  if (view.events) view.events.close();
  view.events = null;
}

function openEvents() {
  const id = view.selected;
  if (id === null) return;
  clearTimeout(view.timers.events);
  const last = view.lastId.get(id);
  // A new EventSource cannot send Last-Event-ID: the query parameter carries it (the same contract).
  sseQuery(last ? { last_event_id: last } : {})
    .then((q) => {
      if (view.selected !== id) return;
      if (view.events) view.events.close();
      const es = new EventSource(`streams/${encodeURIComponent(id)}/events${q}`);
      view.events = es;
      es.addEventListener("open", () => {
        view.reopen.events = 0;
        view.switching = false;
        connectionState();
      });
      es.addEventListener("prediction", (e) => onEvent(id, e, JSON.parse(e.data)));
      es.addEventListener("status", (e) => onEvent(id, e, JSON.parse(e.data)));
      es.addEventListener("error", () => {
        connectionState();
        // CONNECTING: the browser reconnects by itself, sending Last-Event-ID. CLOSED: it gave up
        // (an error status, such as an expired token): open a new one with the last id in the query.
        view.switching = false;
        if (es.readyState === EventSource.CLOSED && view.selected === id) reopenLater("events", openEvents);
      });
      connectionState();
    })
    .catch(() => {
      view.switching = false;
      reopenLater("events", openEvents);
    });
}

function onEvent(id, message, data) {
  // a gap notice carries no id of its own (lastEventId is still the previous event's)
  if (message.lastEventId && data.reason !== "events_lost") {
    const ids = view.received.get(id) || [];
    ids.push(message.lastEventId);
    if (ids.length > IDS_KEPT) ids.splice(0, ids.length - IDS_KEPT);
    view.received.set(id, ids);
    view.lastId.set(id, message.lastEventId);
  }
  if (id !== view.selected) return;
  if (message.type === "status") {
    if (data.reason === "events_lost") {
      const gaps = view.lost.get(id) || [];
      gaps.push({ after: view.lastId.get(id) || null, lost: data.lost_events });
      view.lost.set(id, gaps);
    }
    const entry = view.streams.get(id);
    if (entry && data.reason !== "events_lost") {
      entry.status = data;
      renderStreams();
    }
    return;
  }
  showPrediction(message.lastEventId, data);
}

function showPrediction(eventId, p) {
  view.recent.set(p.frame, p);
  while (view.recent.size > EVENTS_KEPT) view.recent.delete(view.recent.keys().next().value);
  const now = Date.now() / 1000;
  view.times.push(now);
  while (view.times.length && view.times[0] < now - 5) view.times.shift();
  const fps = view.times.length > 1 ? (view.times.length - 1) / Math.max(0.001, now - view.times[0]) : 0;
  const age = Math.max(0, (now - p.captured_at) * 1000);

  $("prediction-empty").hidden = true;
  $("prediction").dataset.frame = String(p.frame);
  $("stat-frame").textContent = String(p.frame);
  $("stat-event-id").textContent = eventId || "–";
  $("stat-inference").textContent = `${p.latency_ms.inference.toFixed(1)} ms`;
  $("stat-batch").textContent = `${(p.latency_ms.batch ?? 0).toFixed(1)} ms`;
  $("stat-age").textContent = `${age.toFixed(0)} ms`;
  $("stat-fps").textContent = fps.toFixed(2);
  if (p.task === "classification") {
    $("detection-summary").hidden = true;
    renderBars($("topk"), p.predictions);
  } else {
    $("topk").replaceChildren();
    const s = $("detection-summary");
    s.hidden = false;
    s.textContent = `${p.label === "person" ? "Person" : "No person"}: ${p.person_count} above ${p.threshold}, ${p.boxes.length} box(es)`;
  }
  view.charts.latency.add("inference", now, p.latency_ms.inference);
  view.charts.latency.add("batch", now, p.latency_ms.batch ?? 0);
  view.charts.latency.add("total", now, p.latency_ms.total);
  view.charts.age.add("age", now, age);
  view.charts.fps.add("fps", now, fps);
  refreshFrame();
}

function renderBars(list, predictions) {
  list.replaceChildren();
  for (const c of predictions) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = c.label;
    label.title = `${c.label} (class ${c.index})`;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = `${(c.probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = `${(c.probability * 100).toFixed(1)}%`;
    li.append(label, bar, p);
    list.append(li);
  }
}

async function refreshFrame() {
  const id = view.selected;
  const now = performance.now();
  if (id === null || view.frame.inFlight || now - view.frame.last < FRAME_MIN_INTERVAL_MS) return;
  view.frame.inFlight = true;
  view.frame.last = now;
  try {
    const r = await fetch(`streams/${encodeURIComponent(id)}/frame.jpg`, { headers: headers(), cache: "no-store" });
    if (!r.ok || view.selected !== id) return;
    const index = Number(r.headers.get("X-Frame-Index"));
    const url = URL.createObjectURL(await r.blob());
    const img = $("frame");
    img.onload = () => {
      img.dataset.frame = String(index);
      const p = view.recent.get(index);
      drawBoxes($("frame-overlay"), img, p && p.task === "detection" ? p : null);
    };
    showBlob(img, url);
  } catch {
    // the connection is down: the indicator says so, and the next event retries
  } finally {
    view.frame.inFlight = false;
  }
}

function showBlob(img, url) {
  // one object URL per image at a time: the previous one is released, loaded or not
  const previous = img.dataset.blob;
  img.dataset.blob = url;
  img.src = url;
  if (previous) URL.revokeObjectURL(previous);
}

function clearOverlay(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.boxes = "0";
}

function drawBoxes(canvas, img, detection) {
  const w = img.clientWidth || img.naturalWidth;
  const h = img.clientHeight || img.naturalHeight;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(h * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!detection) {
    canvas.dataset.boxes = "0";
    return;
  }
  const sx = w / detection.image.width;
  const sy = h / detection.image.height;
  ctx.lineWidth = 2;
  ctx.font = "12px system-ui, sans-serif";
  for (const b of detection.boxes) {
    const color = b.score >= detection.threshold ? "#f04438" : "#fdb022";
    ctx.strokeStyle = color;
    ctx.strokeRect(b.x1 * sx, b.y1 * sy, (b.x2 - b.x1) * sx, (b.y2 - b.y1) * sy);
    const text = `${b.label} ${(b.score * 100).toFixed(0)}%`;
    const tw = ctx.measureText(text).width + 6;
    ctx.fillStyle = color;
    ctx.fillRect(b.x1 * sx, Math.max(0, b.y1 * sy - 15), tw, 15);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, b.x1 * sx + 3, Math.max(11, b.y1 * sy - 3));
  }
  canvas.dataset.boxes = String(detection.boxes.length);
}

// --- uploads ----------------------------------------------------------------------------------

async function predictFile(file) {
  const err = $("upload-error");
  err.hidden = true;
  const form = new FormData();
  form.append("image", file);
  const model = $("upload-model").value;
  const q = model ? `?model=${encodeURIComponent(model)}` : "";
  try {
    const r = await api(`predict${q}`, { method: "POST", body: form });
    if (!r.ok) {
      err.textContent = await errorText(r);
      err.hidden = false;
      return;
    }
    const result = await r.json();
    const img = $("upload-image");
    $("upload-result").hidden = false;
    img.onload = () => drawBoxes($("upload-overlay"), img, result.task === "detection" ? result : null);
    showBlob(img, URL.createObjectURL(file));
    const summary = $("upload-summary");
    summary.dataset.task = result.task;
    if (result.task === "classification") {
      summary.textContent = `${result.model} v${result.model_version}: ${result.predictions[0].label}, ${result.timings_ms.total.toFixed(0)} ms`;
      renderBars($("upload-topk"), result.predictions);
    } else {
      summary.textContent = `${result.model} v${result.model_version}: ${result.label}, ${result.person_count} person(s), ${result.timings_ms.total.toFixed(0)} ms`;
      $("upload-topk").replaceChildren();
    }
  } catch (e) {
    if (e.status !== 401) {
      err.textContent = String(e.message || e);
      err.hidden = false;
    }
  }
}

$("upload-input").addEventListener("change", (e) => {
  if (e.target.files.length) predictFile(e.target.files[0]);
  e.target.value = "";  // choosing the same file again (say, with another model) predicts again
});
const zone = $("drop-zone");
zone.addEventListener("dragover", (e) => {
  e.preventDefault();
  zone.classList.add("over");
});
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  if (e.dataTransfer.files.length) predictFile(e.dataTransfer.files[0]);
});

async function loadModels() {
  // readiness is open (no key) and names every model the gateway serves
  const r = await fetch("health/ready");
  const body = await r.json();
  const names = Object.keys((body.components && body.components.models) || {});
  for (const select of [$("upload-model"), document.querySelector("#add-stream select[name=model]")]) {
    const have = new Set([...select.options].map((o) => o.value));
    for (const name of names) {
      if (have.has(name)) continue;
      const o = document.createElement("option");
      o.value = o.textContent = name;
      select.append(o);
    }
  }
}

// --- start ------------------------------------------------------------------------------------

function tick() {
  const now = Date.now() / 1000;
  if (view.charts) for (const c of Object.values(view.charts)) c.draw(now);
  connectionState();
}

async function start() {
  try {
    await loadStreams();
  } catch (e) {
    if (e.status === 401) return;  // the key dialog is open; start() runs again with the key
    setTimeout(start, 2000);
    return;
  }
  openFeed();
  loadModels().catch(() => {});
}

view.charts = {
  latency: new TimeChart($("chart-latency"), { unit: "ms", colors: ["#1f6feb", "#2da44e", "#b25e00"] }),
  age: new TimeChart($("chart-age"), { unit: "ms" }),
  fps: new TimeChart($("chart-fps")),
};
setInterval(tick, 500);
// For tests and the curious: what this page received, by stream.
window.streamml = {
  received: (id) => [...(view.received.get(id) || [])],
  lost: (id) => [...(view.lost.get(id) || [])],
  selected: () => view.selected,
};
start();
