// The demo page served at `/`: a room chat on the browser client. It learns where to connect
// from the relay itself (`/v1/endpoints`, `/v1/cert`), so it works on any host and port.
//
// Calls: everyone present in the room (from presence) gets a call button; a call rings on every
// page of the callee with Answer and Decline, then shows the remote video with the local one
// in a corner and a Hang up button. The media goes peer to peer over WebRTC with the relay's
// ICE servers (TURN credentials included); the relay carries only the signaling.
//
// URL fragment options: `token`, `room`, `transport` (`auto` | `webtransport` | `websocket`),
// `cert` (comma-separated base64 SHA-256 certificate hashes to pin instead of the ones
// `/v1/cert` announces), `join` (join at once), `ice=relay` (calls through TURN only).
// `window.demo` exposes the client for tests, with the call's timings and `callStats()`.

import { decodeJson } from "/sdk/index.js";
import { EdgeRelay, endpointUrls } from "/sdk/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) $("token").value = params.get("token");
if (params.get("room")) $("room").value = params.get("room");

const demo = {
  client: null,
  room: null,
  messages: [],
  transport: null,
  fallbackReason: null,
  state: "idle",
  states: [],
  // The call shown (a Call from clients/js/src/calls.js), what happened to calls in order, and when
  // (epoch ms: `performance.timeOrigin + performance.now()`, comparable between pages).
  call: null,
  callLog: [],
  timings: {},
};
window.demo = demo;

function line(parts, className) {
  const li = document.createElement("li");
  if (className) li.className = className;
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  $("messages").append(li);
  li.scrollIntoView({ block: "nearest" });
}

const fallbackLine = (reason) => `WebSocket fallback: WebTransport failed: ${reason}`;

function showStatus({ state, transport, delayMs, code, reason, fallbackReason }) {
  demo.state = state;
  demo.states.push(state);
  demo.transport = transport;
  if (state === "open") demo.fallbackReason = fallbackReason ?? null;
  const status = $("status");
  status.className = state;
  status.replaceChildren();
  const bold = (text) => Object.assign(document.createElement("b"), { textContent: text });
  status.append(`${state} `);
  if (transport) status.append("over ", bold(transport));
  if (state === "open" && demo.fallbackReason) status.append(` — ${fallbackLine(demo.fallbackReason)}`);
  if (state === "reconnecting") status.append(` — retrying in ${delayMs} ms (${reason || code})`);
  if (state === "closed" && code) status.append(` — ${reason} (${code})`);
  const usable = state === "open" && demo.room;
  $("text").disabled = !usable;
  $("send-button").disabled = !usable;
  renderPeople();
}

// `+` in base64 reads as a space in a URL fragment parameter.
const pinned = params.get("cert")?.replaceAll(" ", "+").split(",").filter(Boolean);

async function connectAndJoin(token, room) {
  const endpoints = await fetch("/v1/endpoints").then((r) => r.json());
  const client = new EdgeRelay({
    token,
    transport: params.get("transport") ?? "auto",
    ...endpointUrls(location, endpoints),
    // Fetched on every WebTransport attempt: the dev certificate rotates every 11 days.
    certHashes: pinned ?? (() => fetch("/v1/cert").then((r) => r.json()).then((cert) => cert.hashes)),
    clientName: "edgerelay-demo/1",
  });
  demo.client = client;
  client.addEventListener("status", (e) => showStatus(e.detail));
  client.addEventListener("message", ({ detail: m }) => {
    demo.messages.push({ offset: m.position.offset, from: m.from, id: m.id, data: m.data });
    const text = typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data);
    line([["meta", `#${m.position.offset}`], ["from", m.from], [null, text]]);
  });
  client.addEventListener("joined", ({ detail }) =>
    line([[null, `joined ${detail.room} at #${detail.position.offset}${detail.recovered ? "" : " (history not recovered)"}`]], "system"),
  );
  client.addEventListener("error", ({ detail }) => line([[null, `error ${detail.code}: ${detail.message}`]], "system"));
  watchPresence(client);
  client.addEventListener("call", ({ detail: call }) => followCall(call));
  client.addEventListener("ring", ({ detail: call }) => ring(call));
  const welcome = await client.connect();
  line([[null, `connected as ${welcome.user} over ${client.transport}`]], "system");
  if (client.fallbackReason) line([[null, fallbackLine(client.fallbackReason)]], "system");
  await client.join(room);
  demo.room = room;
  showStatus({ state: client.state, transport: client.transport, fallbackReason: client.fallbackReason });
}

/** Sends a chat line; resolves with its acked position. */
demo.send = async (text) => demo.client.publish(demo.room, { text });

// --- who is here (presence of the joined room) ---

const people = new Map(); // user → {status, version}

function watchPresence(client) {
  const apply = (frame) => {
    if (frame.room !== demo.room && demo.room) return;
    if (frame.type === "presence_snapshot") {
      people.clear();
      for (const entry of frame.users) people.set(entry.user, entry);
    } else if (frame.type === "presence") {
      const known = people.get(frame.entry.user);
      if (!known || known.version < frame.entry.version) people.set(frame.entry.user, frame.entry);
    } else return;
    renderPeople();
  };
  client.addEventListener("frame", ({ detail }) => apply(detail));
  // On WebTransport presence updates come as datagrams (one frame each).
  client.addEventListener("datagram", ({ detail }) => {
    try {
      apply(decodeJson(new TextDecoder().decode(detail)));
    } catch {
      // Not a frame this page reads.
    }
  });
}

function renderPeople() {
  const me = demo.client?.welcome?.user;
  const here = [...people.values()].filter((p) => p.user !== me && p.status !== "offline");
  const busy = demo.state !== "open" || (demo.call && demo.call.state !== "ended");
  $("dial-button").disabled = busy;
  const list = $("people");
  list.replaceChildren();
  if (here.length === 0) {
    list.append(Object.assign(document.createElement("li"), { className: "empty", textContent: demo.room ? "nobody else is here yet" : "join a room to see who is here" }));
  }
  for (const { user, status } of here) {
    const li = document.createElement("li");
    li.dataset.user = user;
    const button = Object.assign(document.createElement("button"), { type: "button", textContent: "Call" });
    button.className = "green";
    button.disabled = busy;
    button.addEventListener("click", () => demo.callUser(user));
    li.append(`${user}${status === "online" ? "" : ` (${status})`}`, button);
    list.append(li);
  }
}

// --- calls ---

const now = () => performance.timeOrigin + performance.now();
const other = (call) => (call.role === "caller" ? call.callee : call.caller);
const REASONS = {
  rejected: "declined",
  cancelled: "cancelled",
  busy: "busy",
  missed: "missed",
  no_answer: "no answer",
  hangup: "hung up",
  connection_lost: "connection lost",
};

function logCall(event, call, extra = {}) {
  demo.callLog.push({ event, call: call.id, state: call.state, ...extra });
}

function callStatus(text, live = false) {
  $("call-status").textContent = text;
  $("call-status").className = live ? "live" : "";
}

/** The local camera and microphone, or null (receive only) when there are none or they are refused. */
async function localStream(media) {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: media === "video" });
    $("local-video").srcObject = stream;
    return stream;
  } catch (err) {
    line([[null, `no camera or microphone (${err.message}): receiving only`]], "system");
    return null;
  }
}

function mediaOptions(stream) {
  return { stream, iceTransportPolicy: params.get("ice") === "relay" ? "relay" : "all" };
}

function stopLocal() {
  for (const track of $("local-video").srcObject?.getTracks() ?? []) track.stop();
  $("local-video").srcObject = null;
  $("remote-video").srcObject = null;
}

function followCall(call) {
  logCall("call", call, { role: call.role });
  call.addEventListener("state", ({ detail }) => {
    logCall("state", call, { reason: detail.reason, side: detail.side });
    if (detail.state === "connected" && call.inCall) demo.timings.connected ??= now();
    if (call !== demo.call && !(call.inCall || call.ringing)) return;
    showCall(call);
  });
  call.addEventListener("answered_elsewhere", () => {
    logCall("answered_elsewhere", call);
    $("ring").className = "";
    callStatus(`${call.caller}'s call was answered on another device`);
  });
  call.addEventListener("peer", () => logCall("peer", call));
  call.addEventListener("track", () => {
    const video = $("remote-video");
    if (video.srcObject !== call.remoteStream) {
      video.srcObject = call.remoteStream;
      video.play().catch(() => {});
      // The first remote frame decoded, for the setup figures.
      video.addEventListener("loadeddata", () => (demo.timings.firstFrame ??= now()), { once: true });
    }
  });
  call.addEventListener("error", ({ detail }) => line([[null, `call: ${detail.message}`]], "system"));
}

function ring(call) {
  demo.timings.ring ??= now();
  logCall("ring", call);
  demo.call = call;
  $("ring-text").textContent = `${call.caller} is calling (${call.media})…`;
  $("ring").className = "on";
  callStatus("");
  renderPeople();
}

function showCall(call) {
  demo.call = call;
  const who = other(call);
  $("ring").className = call.ringing ? "on" : "";
  $("stage").className = call.inCall && call.state !== "ended" ? "on" : "";
  $("remote-label").textContent = who;
  if (call.state === "ringing" && call.role === "caller") callStatus(`Calling ${who}…`);
  else if (call.state === "connected") callStatus(call.inCall ? `In a call with ${who}` : `In a call with ${who} on another device`, true);
  else if (call.state === "reconnecting") callStatus(`Reconnecting${call.away ? " (rejoining…)" : ` (waiting for ${who})`}`);
  else if (call.state === "ended") {
    const by = call.side && call.reason === "hangup" ? ` by ${call.side === call.role ? "you" : who}` : "";
    callStatus(`Call with ${who} ended: ${REASONS[call.reason] ?? call.reason}${by}`);
    stopLocal();
  }
  // This device was in the call and came back: take the call up again.
  if (call.away && call.hadMedia && !call.inCall) call.rejoin(call.hadMedia).catch(() => {});
  renderPeople();
}

/** Places a video call to `user`; resolves with the Call. */
demo.callUser = async (user) => {
  demo.timings = { placed: now() };
  try {
    const stream = await localStream("video");
    demo.timings.initiated = now();
    const call = await demo.client.call(user, { media: "video", ...mediaOptions(stream) });
    call.hadMedia = mediaOptions(stream);
    showCall(call);
    return call;
  } catch (err) {
    stopLocal();
    callStatus(`Could not call ${user}: ${err.message}`);
    throw err;
  }
};

demo.answer = async () => {
  const call = demo.call;
  demo.timings.answered = now();
  $("ring").className = "";
  const stream = await localStream(call.media);
  call.hadMedia = mediaOptions(stream);
  await call.answer(call.hadMedia);
  showCall(call);
};

demo.reject = () => demo.call.reject();
demo.hangUp = () => demo.call.hangUp();

/** What the call's peer connection reports: video frames decoded, the selected candidate pair's
 * types (and the TURN server of a local relay candidate), and its connection state; null without
 * a peer connection. */
demo.callStats = async () => {
  const peer = demo.call?.peer;
  if (!peer) return null;
  const stats = new Map();
  (await peer.getStats()).forEach((s) => stats.set(s.id, s));
  let framesDecoded = 0;
  let pair = null;
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") framesDecoded += s.framesDecoded ?? 0;
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  }
  return {
    framesDecoded,
    local: stats.get(pair?.localCandidateId)?.candidateType ?? null,
    // For a relay candidate: the TURN server it was allocated on.
    localUrl: stats.get(pair?.localCandidateId)?.url ?? null,
    remote: stats.get(pair?.remoteCandidateId)?.candidateType ?? null,
    connectionState: peer.connectionState,
  };
};

$("dial").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("callee").value.trim();
  if (user) demo.callUser(user).catch(() => {});
});
$("answer").addEventListener("click", () => demo.answer().catch((err) => callStatus(`Could not answer: ${err.message}`)));
$("reject").addEventListener("click", () => demo.reject().catch(() => {}));
$("hang-up").addEventListener("click", () => demo.hangUp().catch(() => {}));

$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  demo.client?.close();
  demo.room = null;
  demo.ready = connectAndJoin($("token").value.trim(), $("room").value.trim());
  demo.ready.catch((err) => line([[null, `could not connect: ${err.message}`]], "system"));
});

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text) return;
  $("text").value = "";
  try {
    await demo.send(text);
  } catch (err) {
    line([[null, `not sent: ${err.message}`]], "system");
  }
});

if (params.get("join") !== null && $("token").value) $("connect").requestSubmit();
