// The play page of `nfd-rt serve`: one WebSocket, one session. Protocol: docs/serve.md.
// The loop is closed: each frame that arrives is answered with the keys held now, so a player has one action
// in flight at a time and the time from sending it to its frame is the round-trip latency shown.
// A hidden page sends no input (the server parks its world after --park-after) and pings to stay connected;
// reconnecting, or reloading the page, continues the world with the hello's resume token (?resume=).
// A model with a pointer (hello.pointer: Waypoint) also takes the mouse: click the picture to capture it; each
// action carries the movement since the last one and the wheel. A model with several frames a step
// (hello.frames_per_step = F: Waypoint's 4) sends each step as one image of its F frames stacked top to bottom, in
// time order; the page shows them one after the other over the tick (1 / hello.fps s).
"use strict";

const $ = (id) => document.getElementById(id);
const screen = $("screen");
const ctx = screen.getContext("2d");
const frameCanvas = document.createElement("canvas"); // the last frame at its own size (tests read it)
const frameCtx = frameCanvas.getContext("2d", { willReadFrequently: true });
const params = new URLSearchParams(location.search);
const CLOSE_REASONS = {
  1000: "closed", 1001: "the server is shutting down", 1006: "connection lost",
  1011: "the server failed to run this session", 4400: "too many malformed messages",
  4401: "unauthorized: this server needs ?token=", 4408: "idle for too long",
  4409: "this world was resumed in another tab or window", 4422: "bad request", 4429: "too many messages",
  4503: "the server is full", 4504: "too slow to read frames",
  4507: "your parked world was dropped (the server's memory for parked worlds was full)",
};
const RESUME_KEY = "nfd_rt.resume"; // this tab's world, for a reconnect or a reload (sessionStorage)

// State the tests read as window.nfd.
const nfd = window.nfd = { hello: null, frames: 0, latencies: [], closed: null, stats: null, connected: false };
const held = new Set();
let ws = null, keymap = null, sentAt = null, watchdog = null, frameTimes = [], paused = false, lastSent = 0;
let mouseX = 0, mouseY = 0, wheel = 0, showing = null;
const MOUSE_BUTTONS = ["MouseLeft", "MouseMiddle", "MouseRight"]; // MouseEvent.button 0, 1, 2

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const k of ["token", "format", "seed"]) if (params.has(k)) u.searchParams.set(k, params.get(k));
  const resume = sessionStorage.getItem(RESUME_KEY);
  if (resume) u.searchParams.set("resume", resume);
  return u.toString();
}

function show(text) {
  $("message").textContent = text;
  $("overlay").classList.toggle("show", !!text);
}

function send(msg) {
  ws.send(JSON.stringify(msg));
  lastSent = performance.now();
}

function sendAction() {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (document.hidden) { paused = true; return; } // no input while nobody looks: the server parks the world
  const msg = keymap
    ? { type: "keys", keys: [...held].filter((k) => keymap.has(k)) }
    : { type: "action", action: new Array(nfd.hello.action_dim).fill(0) };
  if (keymap && nfd.hello.pointer) {
    msg.mouse = [mouseX, mouseY];
    msg.scroll = Math.sign(wheel);
    mouseX = mouseY = wheel = 0;
  }
  send(msg);
  sentAt = performance.now();
}

async function onFrame(blob) {
  const now = performance.now();
  if (sentAt !== null) {
    nfd.latencies.push(now - sentAt);
    if (nfd.latencies.length > 100) nfd.latencies.shift();
    sentAt = null;
  }
  frameTimes.push(now);
  while (frameTimes.length && now - frameTimes[0] > 1000) frameTimes.shift();
  sendAction(); // answer first: decoding and drawing overlap with the server's next step
  const bmp = await createImageBitmap(blob);
  if (frameCanvas.width !== bmp.width || frameCanvas.height !== bmp.height) {
    frameCanvas.width = bmp.width; frameCanvas.height = bmp.height;
  }
  frameCtx.drawImage(bmp, 0, 0);
  bmp.close();
  nfd.frames += 1;
  $("frame").textContent = nfd.frames;
  // The step's frames, one after the other over the tick (a newer message cuts the rest short).
  const n = Math.max(1, (nfd.hello && nfd.hello.frames_per_step) || 1), h = frameCanvas.height / n;
  const token = showing = {};
  for (let i = 0; i < n && showing === token; i++) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(frameCanvas, 0, i * h, frameCanvas.width, h, 0, 0, screen.width, screen.height);
    if (i + 1 < n) await new Promise((r) => setTimeout(r, 1000 / ((nfd.hello && nfd.hello.fps) || 20) / n));
  }
}

function onText(msg) {
  if (msg.type === "hello") {
    nfd.hello = msg;
    sessionStorage.setItem(RESUME_KEY, msg.resume);
    if (msg.resume_error) console.warn("could not continue the world:", msg.resume_error);
    keymap = msg.keys ? new Set(msg.keys) : null;
    // The stage keeps the model's aspect ratio (512 pixels wide): 64x64 Gridworld square, 640x360 Waypoint wide.
    const stageHeight = Math.round(512 * msg.height / msg.width);
    $("stage").style.height = `${stageHeight}px`;
    if (screen.height !== stageHeight) screen.height = stageHeight;
    $("model").textContent = `${msg.model} ${msg.width}x${msg.height}, ${msg.world} world, replica ${msg.replica}`;
    $("seed").value = msg.seed;
    if (!keymap) show("This model has no key map: the page sends no-op actions.");
    else if (msg.pointer) $("model").textContent += " (click the picture to steer with the mouse, Esc to free it)";
    if (msg.world === "blank") sendAction(); // no starting frame comes: ask for the first one
  } else if (msg.type === "stats") {
    nfd.stats = msg;
    $("players").textContent = msg.players;
    $("server").textContent = `server: ${msg.server_fps} frames/s in all, step ${msg.step_ms ?? "–"} ms a tick, ` +
      `${msg.dropped} of your frames dropped`;
  } else if (msg.type === "error") {
    console.warn("server:", msg.message);
  }
}

function connect() {
  show("");
  $("status").textContent = "connecting";
  ws = new WebSocket(wsUrl());
  ws.binaryType = "blob";
  ws.onopen = () => { nfd.connected = true; nfd.closed = null; $("status").textContent = "playing"; };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onText(JSON.parse(e.data));
    else onFrame(e.data);
  };
  ws.onclose = (e) => {
    nfd.connected = false;
    nfd.closed = { code: e.code, reason: e.reason };
    const why = e.reason || CLOSE_REASONS[e.code] || "connection closed";
    $("status").textContent = `closed (${e.code})`;
    show(`Disconnected: ${why} (code ${e.code})`);
  };
}

// A frame answered with nothing (an error reply, a reset in between): ask again after a second of silence.
watchdog = setInterval(() => {
  if (sentAt !== null && performance.now() - sentAt > 1000) sendAction();
  if (document.hidden && ws && ws.readyState === WebSocket.OPEN && performance.now() - lastSent > 15000) {
    send({ type: "ping", t: Date.now() }); // stay connected (a ping is no input: the world stays parked)
  }
  const lat = nfd.latencies.slice(-20);
  $("fps").textContent = frameTimes.length;
  $("latency").textContent = lat.length ? (lat.reduce((a, b) => a + b, 0) / lat.length).toFixed(0) : "–";
}, 250);

document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  if (paused) { paused = false; sendAction(); } // back: the next input brings the parked world back
  else if (nfd.closed && nfd.closed.code === 4408) $("reconnect").onclick(); // closed while away: continue
});

addEventListener("keydown", (e) => {
  if (keymap && keymap.has(e.code)) { held.add(e.code); e.preventDefault(); }
});
addEventListener("keyup", (e) => { held.delete(e.code); });
addEventListener("blur", () => held.clear());
// The mouse (a model with a pointer): captured by a click on the picture, released with Esc.
screen.addEventListener("click", () => {
  if (nfd.hello && nfd.hello.pointer && document.pointerLockElement !== screen) screen.requestPointerLock();
});
addEventListener("mousemove", (e) => {
  if (document.pointerLockElement === screen) { mouseX += e.movementX; mouseY += e.movementY; }
});
addEventListener("wheel", (e) => { if (document.pointerLockElement === screen) wheel -= Math.sign(e.deltaY); });
addEventListener("mousedown", (e) => {
  const k = MOUSE_BUTTONS[e.button];
  if (document.pointerLockElement === screen && keymap && keymap.has(k)) held.add(k);
});
addEventListener("mouseup", (e) => { held.delete(MOUSE_BUTTONS[e.button]); });
$("reset").onclick = () => {
  const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
  if (ws && ws.readyState === WebSocket.OPEN) {
    send({ type: "reset", seed });
    sentAt = performance.now();
  }
  $("reset").blur();
};
$("reconnect").onclick = () => { if (ws) ws.onclose = null; if (ws) ws.close(); connect(); };

// For tests and curious players: the last frame's pixels, RGB rows (what the model drew, before scaling).
nfd.framePixels = () => {
  const { width, height } = frameCanvas;
  const rgba = frameCtx.getImageData(0, 0, width, height).data;
  const rgb = [];
  for (let i = 0; i < rgba.length; i += 4) rgb.push(rgba[i], rgba[i + 1], rgba[i + 2]);
  return { width, height, rgb };
};

connect();
