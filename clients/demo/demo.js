// The demo page served at `/`: a room chat on the browser client. It learns where to connect
// from the relay itself (`/v1/endpoints`, `/v1/cert`), so it works on any host and port.
//
// URL fragment options: `token`, `room`, `transport` (`auto` | `webtransport` | `websocket`),
// `cert` (comma-separated base64 SHA-256 certificate hashes to pin instead of the ones
// `/v1/cert` announces), `join` (join at once). `window.demo` exposes the client for tests.

import { EdgeRelay, endpointUrls } from "./edgerelay.js";

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
  const welcome = await client.connect();
  line([[null, `connected as ${welcome.user} over ${client.transport}`]], "system");
  if (client.fallbackReason) line([[null, fallbackLine(client.fallbackReason)]], "system");
  await client.join(room);
  demo.room = room;
  showStatus({ state: client.state, transport: client.transport, fallbackReason: client.fallbackReason });
}

/** Sends a chat line; resolves with its acked position. */
demo.send = async (text) => demo.client.publish(demo.room, { text });

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
