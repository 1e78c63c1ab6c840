// The browser client's pure logic: where a page connects, why WebTransport cannot be tried, and
// clear errors for calls made before `connect()`. Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";

import { readFileSync } from "node:fs";

import { decodeJson, encodeJson } from "../src/codec.js";
import { EdgeRelay, endpointUrls, rtcIceServers, webTransportUnavailable } from "../src/edgerelay.js";

const golden = JSON.parse(readFileSync(new URL("../../../tests/golden/frames-v1.json", import.meta.url), "utf8"));

const endpoints = { webtransport_port: 4433, webtransport_path: "/v1/wt", websocket_path: "/v1/ws" };

test("a page's endpoints use its own host: names, IPv4, IPv6 literals, https", () => {
  const cases = [
    ["http://localhost:8080/", "https://localhost:4433/v1/wt", "ws://localhost:8080/v1/ws"],
    ["http://127.0.0.1:8080/#token=x", "https://127.0.0.1:4433/v1/wt", "ws://127.0.0.1:8080/v1/ws"],
    ["http://[::1]:8080/", "https://[::1]:4433/v1/wt", "ws://[::1]:8080/v1/ws"],
    ["http://[2001:db8::7]/", "https://[2001:db8::7]:4433/v1/wt", "ws://[2001:db8::7]/v1/ws"],
    ["https://relay.example/", "https://relay.example:4433/v1/wt", "wss://relay.example/v1/ws"],
  ];
  for (const [page, webTransportUrl, webSocketUrl] of cases) {
    assert.deepEqual(endpointUrls(new URL(page), endpoints), { webTransportUrl, webSocketUrl }, page);
  }
  // A location-like object whose hostname lost its brackets still gets a valid URL.
  const bare = { hostname: "::1", host: "[::1]:8080", protocol: "http:" };
  assert.equal(endpointUrls(bare, endpoints).webTransportUrl, "https://[::1]:4433/v1/wt");
});

test("why WebTransport cannot be tried: insecure page, missing API, no URL", () => {
  const url = "https://127.0.0.1:4433/v1/wt";
  assert.match(webTransportUnavailable(url, { isSecureContext: false }), /not a secure context/);
  assert.match(webTransportUnavailable(url, { isSecureContext: true }), /no WebTransport/);
  assert.match(webTransportUnavailable(undefined, { WebTransport: class {} }), /no webTransportUrl/);
  assert.equal(webTransportUnavailable(url, { isSecureContext: true, WebTransport: class {} }), null);
});

test("join, publish and ping before connect() say so instead of throwing a TypeError", async () => {
  const client = new EdgeRelay({ token: "t", webSocketUrl: "ws://127.0.0.1:1/v1/ws" });
  const calls = [
    () => client.join("chat:lobby"),
    () => client.publish("chat:lobby", { text: "hi" }),
    () => client.ping(),
    () => client.iceServers(),
  ];
  for (const call of calls) {
    await assert.rejects(call, (err) => !(err instanceof TypeError) && /call connect\(\) first/.test(err.message));
  }
});

test("ice_servers: the request encodes like the relay's, the answer becomes RTCIceServer entries", () => {
  assert.equal(encodeJson({ type: "ice_servers", req: 17 }), golden["client.ice_servers"].json);
  const answer = decodeJson(golden["server.ice_servers"].json);
  assert.deepEqual(rtcIceServers(answer), {
    iceServers: [
      { urls: ["stun:stun.example.com:3478"] },
      {
        urls: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"],
        username: "1700086400:acme/alice",
        credential: "WO0uCwAps3TeZPw85UvYp+Lz6Nk=",
      },
    ],
    expiresAt: 1700086400,
  });
  // The HTTP endpoint's body (`GET /v1/ice`) converts the same way.
  const http = { ice_servers: [{ urls: ["stun:s:3478"] }], expires_at: 5 };
  assert.deepEqual(rtcIceServers(http), { iceServers: [{ urls: ["stun:s:3478"] }], expiresAt: 5 });
});

/** A client whose WebSocket never opens: every attempt fails, and the backoff would wait a
 * minute before the next; `networkEvents` as given. */
function refusedClient(networkEvents) {
  class Refused {
    constructor() {
      setTimeout(() => {
        this.onerror?.();
        this.onclose?.({ code: 1006, reason: "" });
      }, 0);
    }
    close() {}
  }
  return new EdgeRelay({
    token: "t",
    WebSocket: Refused,
    transport: "websocket",
    webSocketUrl: "ws://127.0.0.1:1/v1/ws",
    backoff: { baseMs: 60_000, capMs: 60_000 },
    networkEvents,
  });
}

test("online and visibilitychange end the reconnect backoff at once", { timeout: 10_000 }, async () => {
  const online = new EventTarget();
  const visibility = Object.assign(new EventTarget(), { visibilityState: "visible" });
  const client = refusedClient({ online, visibility });
  const states = [];
  const waitFor = (state) =>
    new Promise((resolve) => {
      const seen = states.filter((s) => s === state).length;
      const check = () => {
        if (states.filter((s) => s === state).length > seen) {
          client.removeEventListener("status", check);
          resolve();
        }
      };
      client.addEventListener("status", check);
    });
  client.addEventListener("status", (e) => states.push(e.detail.state));
  client.connect().catch(() => {});
  await waitFor("reconnecting");
  const again = waitFor("connecting");
  online.dispatchEvent(new Event("online"));
  await again;
  await waitFor("reconnecting");
  // A page hidden is not a reason; shown again it is.
  visibility.visibilityState = "hidden";
  visibility.dispatchEvent(new Event("visibilitychange"));
  assert.equal(states.at(-1), "reconnecting");
  const shown = waitFor("connecting");
  visibility.visibilityState = "visible";
  visibility.dispatchEvent(new Event("visibilitychange"));
  await shown;
  client.close();
  // Closed: no listener is left to act.
  online.dispatchEvent(new Event("online"));
  assert.equal(states.at(-1), "closed");
});

test("while the browser reports no network the state is offline, with the next attempt's time", { timeout: 10_000 }, async () => {
  const had = Object.getOwnPropertyDescriptor(globalThis, "navigator");
  Object.defineProperty(globalThis, "navigator", { value: { onLine: false }, configurable: true });
  const online = new EventTarget();
  const client = refusedClient({ online, visibility: null });
  try {
    const statuses = [];
    client.addEventListener("status", ({ detail }) => statuses.push(detail));
    client.connect().catch(() => {});
    while (!statuses.some((s) => s.state === "offline")) await new Promise((resolve) => setTimeout(resolve, 5));
    const offline = statuses.find((s) => s.state === "offline");
    assert.ok(offline.retryAt > Date.now() && offline.delayMs > 0, JSON.stringify(offline));
    assert.equal(client.state, "offline");
    assert.equal(client.retryAt, offline.retryAt);
    // The network is back: the next attempt starts at once.
    globalThis.navigator.onLine = true;
    online.dispatchEvent(new Event("online"));
    while (statuses.at(-1).state !== "reconnecting") await new Promise((resolve) => setTimeout(resolve, 5));
    assert.deepEqual(statuses.map((s) => s.state).slice(0, 4), ["connecting", "offline", "connecting", "reconnecting"]);
  } finally {
    client.close();
    if (had) Object.defineProperty(globalThis, "navigator", had);
    else delete globalThis.navigator;
  }
});
