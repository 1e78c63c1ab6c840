// The demo page served at `/`: a room chat on the browser SDK (`/sdk/index.js`) that two people
// can use without handling tokens: each picks a name, and the page asks the relay for a dev
// token (`POST /v1/dev/token`, served only by a relay on its dev keys and dev certificate; a
// relay without it gets a token pasted into the password field instead, never shown). It shows
// who is in the room and their status, who is typing, the room's history on load (and older
// pages when scrolled to the top), and the connection state in words. It learns where to
// connect from the relay itself (`/v1/endpoints`, `/v1/cert`), so it works on any host and port.
//
// Calls: everyone present in the room gets a call button; a call rings on every page of the
// callee with Answer and Decline, then shows the remote video with the local one in a corner
// and a Hang up button. The media goes peer to peer over WebRTC with the relay's ICE servers
// (TURN credentials included); the relay carries only the signaling.
//
// One connection for all tabs: where the browser has Web Locks and BroadcastChannel, the tabs of
// one user share one relay connection (`SharedRelay`, shareKey per user): one tab holds it and
// relays for the others, and the status line says which. Calls work in every tab: the tab that
// places or answers a call holds its media (RTCPeerConnection); its signaling goes through the
// tab that holds the connection. A new message from someone else raises one browser
// notification per browser (not one per tab), once notifications are allowed.
//
// Unread badges and ticks (docs/receipts.md): the rooms this user follows are listed with their
// unread count (red when someone mentioned you), kept live on every device of the user; what
// this page shows while visible is marked read. Your own messages carry ticks: ✓ sent (acked),
// ✓✓ delivered to every other member, blue ✓✓ read by every other member (a member who hides
// reads never counts as read).
//
// URL fragment options: `name`, `room`, `join` (join at once), `token` (use this token instead
// of a dev token; taken out of the address bar at once and kept in this tab's sessionStorage
// so a reload still works), `transport` (`auto` | `webtransport` | `websocket`), `cert`
// (comma-separated base64 SHA-256 certificate hashes to pin instead of `/v1/cert`'s),
// `ice=relay` (calls through TURN only), `share=off` (this tab connects on its own, as another
// device would). `window.demo` exposes the client for tests, with the
// call's timings and `callStats()`.

import { EdgeRelay, SharedRelay, endpointUrls, messageId } from "/sdk/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const TOKEN_KEY = "edgerelay-demo-token";
if (params.get("token")) {
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  history.replaceState(null, "", `#${params}`);
}
const pastedToken = () => $("token").value.trim() || sessionStorage.getItem(TOKEN_KEY) || "";
if (params.get("name")) $("name").value = params.get("name");
if (params.get("room")) $("room").value = params.get("room");

const demo = {
  client: null,
  /** The joined room's name (null until joined), and its `Room`. */
  room: null,
  chat: null,
  /** Every message shown, in offset order: `{offset, from, id, data}`. */
  messages: [],
  transport: null,
  fallbackReason: null,
  state: "idle",
  states: [],
  /** Whether the connection is shared between this user's tabs, and held by this tab. */
  shared: false,
  leader: false,
  /** Notifications raised by this tab: `{offset, from, text}`. */
  notifications: [],
  // The call shown (a Call from clients/js/src/calls.js), what happened to calls in order, and when
  // (epoch ms: `performance.timeOrigin + performance.now()`, comparable between pages).
  call: null,
  callLog: [],
  timings: {},
  /** The joined room's receipts (`receiptStatus`, merged with `receipts` updates), and the
   * position of the newest message shown. */
  receipts: null,
  position: null,
};
window.demo = demo;

// --- the message list ---

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

function item(parts, className) {
  const li = document.createElement("li");
  if (className) li.className = className;
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  return li;
}

/** Adds a line at the bottom, scrolled into view when the reader was at the bottom already. */
function line(parts, className) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = item(parts, className);
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
  return li;
}

const system = (text) => line([[null, text]], "system");

function messageItem(m) {
  const me = demo.client?.welcome?.user;
  const text = typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data);
  const li = item([["time", clock.format(new Date(m.time))], ["from", m.from === me ? `${m.from} (you)` : m.from], [null, text]], m.from === me ? "mine" : "");
  li.dataset.offset = m.position.offset;
  if (m.from === me) li.firstChild.after(item([["ticks sent", TICKS.sent]]).firstChild);
  const at = demo.position;
  if (!at || at.epoch !== m.position.epoch || at.offset < m.position.offset) demo.position = m.position;
  return li;
}

function showMessage(m) {
  demo.messages.push({ offset: m.position.offset, from: m.from, id: m.id, data: m.data });
  document.querySelector(`#messages li.pending[data-id="${CSS.escape(m.id)}"]`)?.remove();
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(messageItem(m));
  if (atBottom || m.from === demo.client?.welcome?.user) list.scrollTop = list.scrollHeight;
  renderTicks();
  markShownRead();
}

/** An older page, above what is shown, keeping the reader's place. */
function showEarlier(messages) {
  const list = $("messages");
  const anchor = list.querySelector("li[data-offset]");
  const before = list.scrollHeight;
  const fragment = document.createDocumentFragment();
  for (const m of messages) fragment.append(messageItem(m));
  list.insertBefore(fragment, anchor ?? list.querySelector("li.system") ?? null);
  list.scrollTop += list.scrollHeight - before;
  demo.messages.unshift(...messages.map((m) => ({ offset: m.position.offset, from: m.from, id: m.id, data: m.data })));
  renderEarlierButton();
  renderTicks();
  markShownRead();
}

// --- unread badges and ticks (docs/receipts.md) ---

const TICKS = { sent: "✓", delivered: "✓✓", read: "✓✓" };

/** `sent`, `delivered` or `read` for the own message at `offset` of the joined room. */
function tickOf(offset) {
  const r = demo.receipts;
  const me = demo.client?.welcome?.user;
  if (!r || r.epoch !== demo.position?.epoch) return "sent";
  const others = r.members.filter((m) => m.user !== me);
  // Rooms too big for per-member detail have the watermarks only.
  if (!r.members.length && r.count > 1) return r.read_all >= offset ? "read" : r.delivered_all >= offset ? "delivered" : "sent";
  if (!others.length) return "sent";
  if (others.every((m) => m.read != null && m.read >= offset)) return "read";
  return others.every((m) => m.delivered >= offset) ? "delivered" : "sent";
}
demo.tickOf = tickOf;

function renderTicks() {
  for (const span of document.querySelectorAll("#messages li.mine span.ticks")) {
    const tick = tickOf(Number(span.parentElement.dataset.offset));
    span.className = `ticks ${tick}`;
    span.textContent = TICKS[tick];
    span.title = tick;
  }
}

/** The rooms this user follows, each with its unread badge; a click opens the room. */
function renderRooms() {
  const unread = demo.client?.unread;
  if (!unread) return;
  const list = $("rooms");
  list.replaceChildren();
  for (const [name, entry] of [...unread.rooms].sort(([a], [b]) => a.localeCompare(b))) {
    const li = document.createElement("li");
    li.dataset.room = name;
    if (name === demo.room) li.className = "current";
    const button = Object.assign(document.createElement("button"), { type: "button", className: "link", textContent: name });
    button.addEventListener("click", () => {
      $("room").value = name;
      $("connect").requestSubmit();
    });
    li.append(button);
    if (entry.unread > 0) {
      const badge = Object.assign(document.createElement("span"), { className: "badge", textContent: String(entry.unread) });
      if (entry.mentions > 0) {
        badge.classList.add("mention");
        badge.title = `${entry.mentions} mentioning you`;
      }
      li.append(badge);
    }
    list.append(li);
  }
}

let readTimer = null;
/** Marks the joined room read up to the newest message shown, while the page is visible. */
function markShownRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const { client, room, position } = demo;
    const entry = client?.unread?.rooms.get(room);
    if (!position || !entry || document.visibilityState !== "visible") return;
    if (entry.read.epoch === position.epoch && entry.read.offset >= position.offset) return;
    client.markRead([{ room, position }]).catch(() => {});
  }, 300);
}
document.addEventListener("visibilitychange", markShownRead);

/** The joined room's receipts, in full (on join and after each reconnect). */
async function loadReceipts(client, room) {
  try {
    const status = await client.receiptStatus(room);
    if (demo.client === client && demo.room === room) demo.receipts = status;
    renderTicks();
  } catch (err) {
    console.warn("receipts:", err.message);
  }
}

function renderEarlierButton() {
  const list = $("messages");
  list.querySelector("li.earlier")?.remove();
  if (!demo.chat?.hasEarlier) return;
  const li = document.createElement("li");
  li.className = "earlier";
  const button = Object.assign(document.createElement("button"), { type: "button", className: "link", textContent: "Load earlier messages" });
  button.addEventListener("click", () => loadEarlier());
  li.append(button);
  list.prepend(li);
}

let loading = null;
/** Loads the page before the oldest message shown ("load earlier"); one at a time. */
function loadEarlier() {
  if (!demo.chat || loading || demo.chat.hasEarlier === false) return loading;
  loading = demo.chat
    .loadEarlier(30)
    .then(showEarlier)
    .catch((err) => system(`could not load earlier messages: ${err.message}`))
    .finally(() => (loading = null));
  return loading;
}
demo.loadEarlier = loadEarlier;
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 40) loadEarlier();
});

// --- connection state, in words ---

const TRANSPORTS = { webtransport: "WebTransport", websocket: "WebSocket" };
const fallbackLine = (reason) => `WebSocket fallback: WebTransport failed: ${reason}`;
let countdown = null;

function statusText({ state, transport, retryAt, code, reason }) {
  switch (state) {
    case "idle":
      return "Not connected";
    case "connecting":
      return "Connecting…";
    case "open":
      return `Connected over ${TRANSPORTS[transport] ?? transport}${demo.fallbackReason ? ` — ${fallbackLine(demo.fallbackReason)}` : ""}`;
    case "reconnecting": {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      const why = reason ? ` (${reason})` : "";
      return seconds > 0 ? `Connection lost${why}. Reconnecting in ${seconds} s…` : `Connection lost${why}. Reconnecting…`;
    }
    case "offline":
      return "Offline: waiting for the network to come back…";
    case "closed":
      return code ? `Disconnected: ${reason || "closed by the relay"} (${code})` : "Disconnected";
    default:
      return state;
  }
}

/** Which tab holds the shared connection, in words (beside the state). */
function sharing(state) {
  if (!demo.shared || state === "idle" || state === "closed") return "";
  return demo.leader ? "This tab holds the connection for all your tabs" : "Connected through another of your tabs";
}

function showStatus(detail) {
  const { state, transport, fallbackReason } = detail;
  if (detail.leader !== undefined) demo.leader = detail.leader;
  demo.state = state;
  demo.states.push(state);
  demo.transport = transport;
  if (state === "open") demo.fallbackReason = fallbackReason ?? null;
  clearInterval(countdown);
  const status = $("status");
  status.className = state;
  status.textContent = statusText(detail);
  $("sharing").textContent = sharing(state);
  if (state === "reconnecting") countdown = setInterval(() => (status.textContent = statusText(detail)), 1000);
  const usable = state === "open" && demo.room;
  $("text").disabled = !usable;
  $("send-button").disabled = !usable;
  renderPeople();
}

// --- joining ---

// `+` in base64 reads as a space in a URL fragment parameter.
const pinned = params.get("cert")?.replaceAll(" ", "+").split(",").filter(Boolean);

/** A fresh dev token for `name` from the relay (also when the SDK refreshes it). */
async function devToken(name) {
  const response = await fetch("/v1/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: name }),
  });
  if (response.status === 404) {
    // Asking again will not help: stop here and offer the token field.
    $("token-box").open = true;
    system("this relay hands out no dev tokens (it runs with a real certificate or without dev keys): use a token");
    setTimeout(() => demo.client?.close(), 0);
    throw new Error("no dev tokens here");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.message ?? `dev token: HTTP ${response.status}`);
  return body.token;
}

async function connectAndJoin({ token, name }, roomName) {
  const endpoints = await fetch("/v1/endpoints").then((r) => r.json());
  demo.shared = canShare();
  demo.leader = false;
  const Client = demo.shared ? SharedRelay : EdgeRelay;
  const client = new Client({
    // One connection per user for all their tabs.
    shareKey: `edgerelay-demo:${name || tokenUser(token)}`,
    ...(token ? { token } : { getToken: () => devToken(name) }),
    transport: params.get("transport") ?? "auto",
    ...endpointUrls(location, endpoints),
    // Fetched on every WebTransport attempt: the dev certificate rotates every 11 days.
    certHashes: pinned ?? (() => fetch("/v1/cert").then((r) => r.json()).then((cert) => cert.hashes)),
    clientName: "edgerelay-demo/2",
  });
  demo.client = client;
  client.addEventListener("status", (e) => showStatus(e.detail));
  client.addEventListener("error", ({ detail }) => system(`error ${detail.code ?? ""}: ${detail.message}`));
  client.addEventListener("call", ({ detail: call }) => followCall(call));
  client.addEventListener("ring", ({ detail: call }) => ring(call));
  // Shared: `notify` fires in one tab per browser. Alone: this tab's messages.
  if (demo.shared) client.addEventListener("notify", ({ detail }) => notify(detail));
  const welcome = await client.connect();
  system(`connected as ${welcome.user}`);
  client.addEventListener("unread", () => {
    renderRooms();
    markShownRead();
  });
  client.addEventListener("receipts", ({ detail }) => {
    if (detail.room !== demo.room) return;
    // An update lists the members that moved: merge them into the full status.
    const held = demo.receipts?.epoch === detail.epoch ? demo.receipts.members : [];
    demo.receipts = { ...detail, members: [...new Map([...held, ...detail.members].map((m) => [m.user, m])).values()] };
    renderTicks();
  });
  client.addEventListener("status", ({ detail }) => detail.state === "open" && demo.room && loadReceipts(client, demo.room));

  const chat = client.room(roomName);
  demo.chat = chat;
  chat.addEventListener("message", ({ detail }) => {
    showMessage(detail);
    if (!demo.shared) notify(detail);
  });
  chat.addEventListener("presence", () => renderPeople());
  chat.addEventListener("typing", ({ detail }) => ($("typing").textContent = detail.text));
  chat.addEventListener("gap", () => system("some messages could not be recovered after the connection came back"));
  await client.join(roomName);
  demo.room = roomName;
  client
    .syncUnread()
    .then(() => (renderRooms(), loadReceipts(client, roomName)))
    .catch((err) => console.warn("unread counts:", err.message));
  // A reload comes back to the same room as the same user (a token stays in sessionStorage).
  if (!token) params.set("name", welcome.user);
  params.set("room", roomName);
  history.replaceState(null, "", `#${params}`);
  showStatus({ state: client.state, transport: client.transport, fallbackReason: client.fallbackReason });
  // What was said before: the latest page now, older ones on scroll.
  await loadEarlier();
  $("text").focus();
}

/** Whether this tab can share one connection with the user's other tabs. */
function canShare() {
  return params.get("share") !== "off" && Boolean(globalThis.navigator?.locks) && typeof BroadcastChannel === "function";
}

/** The user a token is for (its `sub`), to share one connection per user; the token when unreadable. */
function tokenUser(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replaceAll("-", "+").replaceAll("_", "/"))).sub;
  } catch {
    return token;
  }
}

// --- notifications: one per message from someone else, once per browser ---

function notify(m) {
  if (m.from === demo.client?.welcome?.user) return;
  const text = typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data);
  demo.notifications.push({ offset: m.position.offset, from: m.from, text });
  if (globalThis.Notification?.permission === "granted") {
    // The tag makes the browser replace, never stack, a notification of the same message.
    new Notification(`${m.from} in ${m.room}`, { body: text, tag: `${m.room}:${m.position.offset}` });
  }
  renderNotifyButton();
}

function renderNotifyButton() {
  const button = $("notify-button");
  button.hidden = !globalThis.Notification || Notification.permission !== "default";
}
$("notify-button").addEventListener("click", () => Notification.requestPermission().then(renderNotifyButton));
renderNotifyButton();

function start(credentials) {
  demo.client?.close();
  demo.room = null;
  demo.chat = null;
  demo.messages = [];
  demo.receipts = null;
  demo.position = null;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  demo.ready = connectAndJoin(credentials, $("room").value.trim());
  demo.ready.catch((err) => system(`could not connect: ${err.message}`));
  return demo.ready;
}

/** Sends a chat line; resolves with its acked position (kept and retried while reconnecting). */
demo.send = async (text) => {
  const id = messageId();
  const pending = line([["time", "sending…"], ["from", demo.client.welcome.user], [null, text]], "pending");
  pending.dataset.id = id;
  try {
    return await demo.chat.publish({ text }, { id });
  } catch (err) {
    pending.remove();
    throw err;
  }
};

// --- who is here (presence of the joined room) ---

function renderPeople() {
  const me = demo.client?.welcome?.user;
  const members = demo.chat?.members.filter((p) => p.status !== "offline") ?? [];
  const busy = demo.state !== "open" || (demo.call && demo.call.state !== "ended");
  $("dial-button").disabled = busy;
  const list = $("people");
  list.replaceChildren();
  if (members.length === 0) {
    list.append(Object.assign(document.createElement("li"), { className: "empty", textContent: demo.room ? "nobody is here yet" : "join a room to see who is here" }));
  }
  for (const { user, status, custom } of members) {
    const li = document.createElement("li");
    li.dataset.user = user;
    li.title = `${user}: ${status}${custom ? ` — ${custom}` : ""}`;
    const dot = Object.assign(document.createElement("span"), { className: `dot ${status}` });
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: user === me ? `${user} (you)` : `${user}${status === "online" ? "" : ` (${status})`}` });
    li.append(dot, name);
    if (user !== me) {
      const button = Object.assign(document.createElement("button"), { type: "button", textContent: "Call", className: "green" });
      button.disabled = busy;
      button.addEventListener("click", () => demo.callUser(user));
      li.append(button);
    }
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
  else if (call.state === "connected") callStatus(call.inCall ? `In a call with ${who}` : `In a call with ${who} on another device${demo.shared ? " or tab" : ""}`, true);
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
  const name = $("name").value.trim();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (name) start({ name });
  else if (token) start({ token });
  else $("name").focus();
});
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = pastedToken();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start({ token });
});

$("text").addEventListener("input", () => {
  if ($("text").value) demo.chat?.keystroke();
  else demo.chat?.stopTyping();
});
$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text) return;
  $("text").value = "";
  demo.chat.stopTyping();
  try {
    await demo.send(text);
  } catch (err) {
    system(`not sent: ${err.message}`);
  }
});

if (params.get("join") !== null && ($("name").value || sessionStorage.getItem(TOKEN_KEY))) $("connect").requestSubmit();
