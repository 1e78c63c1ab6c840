// The browser client's 1:1 call API (clients/js/src/calls.js) against a scripted relay: a stand-in
// WebSocket that answers like the relay (docs/protocol.md "Calls (1:1)") and a stand-in
// RTCPeerConnection, so the order of what the client sends is checked without a browser
// (tests/browser_webrtc.rs does it with Chromium, coturn and real media). Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";

import { decodeJson, encodeJson } from "../src/codec.js";
import { EdgeRelay } from "../src/edgerelay.js";

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

/** Waits (bounded) until `check()` is truthy. */
async function until(check, what) {
  for (let i = 0; i < 200; i++) {
    const value = check();
    if (value) return value;
    await tick();
  }
  throw new Error(`never happened: ${what}`);
}

/** A WebSocket whose other end is the test: `sent` holds the client's frames, `deliver` sends
 * relay frames (several in one go arrive with no microtask between them, as from one read). */
class ScriptedSocket {
  static last = null;
  // Relay frames sent right behind the next welcome, in the same read.
  static afterWelcome = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.user = new URL(url).searchParams.get("user");
    ScriptedSocket.last = this;
    setTimeout(() => this.onopen(), 0);
  }

  send(text) {
    const frame = decodeJson(text);
    this.sent.push(frame);
    if (frame.type === "hello") {
      this.deliver({ type: "welcome", version: 1, session: "s1", user: this.user, server_time: 0, limits: null });
      this.deliver(...ScriptedSocket.afterWelcome.splice(0));
    }
  }

  deliver(...frames) {
    for (const frame of frames) this.onmessage({ data: encodeJson(frame, "server") });
  }

  close() {
    setTimeout(() => this.onclose({ code: 1000, reason: "" }), 0);
  }

  /** The `call` frames the client sent, as `[call, action name, action fields, req]`. */
  calls() {
    return this.sent.filter((f) => f.type === "call").map((f) => [f.call, ...Object.entries(f.action)[0], f.req]);
  }

  lastReq(type) {
    return this.sent.filter((f) => f.type === type).at(-1).req;
  }
}
globalThis.WebSocket = ScriptedSocket;

/** An RTCPeerConnection stand-in that records what it is given and finds one candidate after
 * each local description. */
class FakePeer {
  static all = [];

  constructor(config) {
    this.config = config;
    this.tracks = [];
    this.transceivers = [];
    this.candidates = [];
    this.closed = false;
    this.localDescription = null;
    this.remoteDescription = null;
    FakePeer.all.push(this);
  }

  addTrack(track, stream) {
    this.tracks.push([track, stream]);
  }

  addTransceiver(kind, init) {
    this.transceivers.push([kind, init.direction]);
  }

  async createOffer() {
    return { type: "offer", sdp: `offer-${FakePeer.all.indexOf(this)}` };
  }

  async createAnswer() {
    assert.ok(this.remoteDescription, "an answer needs the offer first");
    return { type: "answer", sdp: `answer-${FakePeer.all.indexOf(this)}` };
  }

  async setLocalDescription(description) {
    this.localDescription = description;
    // Found at once, before the client sent the description: it must hold it back.
    const candidate = { candidate: `candidate:${this.localDescription.type}`, sdpMid: "0", sdpMLineIndex: 0 };
    this.onicecandidate({ candidate: { toJSON: () => candidate } });
    this.onicecandidate({ candidate: null });
  }

  async setRemoteDescription(description) {
    this.remoteDescription = description;
  }

  async addIceCandidate(candidate) {
    if (!this.remoteDescription) throw new Error("InvalidStateError: no remote description");
    this.candidates.push(candidate);
  }

  close() {
    this.closed = true;
  }
}

const ID = "6f1c2a9be04d7731";
const TURN = {
  urls: ["turn:127.0.0.1:3478?transport=udp"],
  username: "1700086400:acme/alice",
  credential: "WO0uCwAps3TeZPw85UvYp+Lz6Nk=",
};
const state = (caller, callee, wire) => ({ state: { caller, callee, media: "video", state: wire } });
const event = (req, call, body) => ({ type: "call", req, call, event: body });

async function connected(user) {
  // A short reconnect backoff: `until` waits a bounded number of ticks, not the default's 250 ms of jitter.
  const client = new EdgeRelay({
    token: "t",
    transport: "websocket",
    webSocketUrl: `ws://relay.test/v1/ws?user=${user}`,
    backoff: { baseMs: 5, capMs: 5 },
  });
  await client.connect();
  return [client, ScriptedSocket.last];
}

/** Answers the client's pending `ice_servers` request with one TURN entry. */
async function answerIceServers(socket) {
  await until(() => socket.sent.some((f) => f.type === "ice_servers" && !f.answered), "an ice_servers request");
  const request = socket.sent.find((f) => f.type === "ice_servers" && !f.answered);
  request.answered = true;
  socket.deliver({ type: "ice_servers", req: request.req, servers: [TURN], expires_at: 1700086400 });
}

/** Answers every `call` request not answered yet with `ok`. */
function okAll(socket) {
  for (const f of socket.sent.filter((f) => f.type === "call" && !f.answered)) {
    f.answered = true;
    socket.deliver(event(f.req, f.call, { ok: {} }));
  }
}

test("the caller's device: call(), ringing, then on connected an offer with the relay's ICE servers, trickle both ways, hang-up", async () => {
  const [alice, socket] = await connected("alice");
  const seen = [];
  alice.addEventListener("call", ({ detail }) => seen.push(["call", detail.id]));
  const stream = { getTracks: () => ["camera", "microphone"] };
  const placing = alice.call("bob", { stream, iceTransportPolicy: "relay", RTCPeerConnection: FakePeer });
  await until(() => socket.calls().length === 1, "initiate sent");
  assert.deepEqual(socket.calls()[0].slice(0, 3), ["", "initiate", { callee: "bob", media: "video" }]);
  // The ok and the first state in one read: the call exists before its state is handled.
  socket.deliver(event(socket.lastReq("call"), ID, { ok: {} }), event(0, ID, state("alice", "bob", { ringing: {} })));
  const call = await placing;
  call.addEventListener("state", ({ detail }) => seen.push(["state", detail.state, detail.reason, detail.side]));
  assert.deepEqual(
    [call.id, call.role, call.caller, call.callee, call.state, call.inCall, call.ringing],
    [ID, "caller", "alice", "bob", "ringing", true, false],
  );
  assert.deepEqual(alice.calls, [call]);

  FakePeer.all = [];
  socket.deliver(event(0, ID, state("alice", "bob", { connected: {} })));
  await answerIceServers(socket);
  await until(() => socket.calls().length === 3, "offer and candidate sent");
  const [peer] = FakePeer.all;
  assert.deepEqual(peer.config, { iceServers: [TURN], iceTransportPolicy: "relay" });
  assert.deepEqual(peer.tracks, [["camera", stream], ["microphone", stream]]);
  const signals = socket.calls().slice(1).map(([id, name, fields]) => [id, name, JSON.parse(fields.data)]);
  assert.deepEqual(signals, [
    [ID, "signal", { type: "offer", sdp: "offer-0" }],
    [ID, "signal", { candidate: "candidate:offer", sdpMid: "0", sdpMLineIndex: 0 }],
  ]);
  okAll(socket);

  // The callee's answer, then its candidate: applied in that order.
  const candidate = { candidate: "candidate:9 1 udp 1 127.0.0.1 5000 typ relay", sdpMid: "0", sdpMLineIndex: 0 };
  socket.deliver(
    event(0, ID, { signal: { data: JSON.stringify({ type: "answer", sdp: "remote" }) } }),
    event(0, ID, { signal: { data: JSON.stringify(candidate) } }),
  );
  await until(() => peer.candidates.length === 1, "candidate added");
  assert.deepEqual(peer.remoteDescription, { type: "answer", sdp: "remote" });
  assert.deepEqual(peer.candidates, [candidate]);

  const hangingUp = call.hangUp();
  assert.deepEqual(socket.calls().at(-1).slice(0, 2), [ID, "hang_up"]);
  socket.deliver(
    event(socket.lastReq("call"), ID, { ok: {} }),
    event(0, ID, state("alice", "bob", { ended: { reason: "hangup", side: "caller" } })),
  );
  await hangingUp;
  assert.ok(peer.closed, "the peer connection is closed when the call ends");
  assert.deepEqual(seen, [
    ["call", ID],
    ["state", "connected", null, null],
    ["state", "ended", "hangup", "caller"],
  ]);
  assert.deepEqual(alice.calls, [], "an ended call is forgotten");
  alice.close();
});

test("the callee's devices: both ring, one answers and answers the offer, the other is told answered elsewhere", async () => {
  const [phone, phoneSocket] = await connected("bob");
  const [laptop, laptopSocket] = await connected("bob");
  const rings = [];
  for (const [name, client] of [["phone", phone], ["laptop", laptop]]) {
    client.addEventListener("ring", ({ detail }) => rings.push([name, detail.id, detail.caller, detail.ringing]));
  }
  for (const socket of [phoneSocket, laptopSocket]) {
    socket.deliver(event(0, ID, state("alice", "bob", { ringing: {} })), event(0, ID, { ring: { caller: "alice", media: "video" } }));
  }
  assert.deepEqual(rings, [
    ["phone", ID, "alice", true],
    ["laptop", ID, "alice", true],
  ]);
  const [call] = phone.calls;
  const [other] = laptop.calls;
  assert.equal(call.role, "callee");
  let elsewhere = 0;
  other.addEventListener("answered_elsewhere", () => elsewhere++);

  FakePeer.all = [];
  const answering = call.answer({ stream: null, RTCPeerConnection: FakePeer });
  assert.deepEqual(phoneSocket.calls().at(-1).slice(0, 2), [ID, "answer"]);
  phoneSocket.deliver(event(phoneSocket.lastReq("call"), ID, { ok: {} }), event(0, ID, state("alice", "bob", { connected: {} })));
  await answering;
  assert.deepEqual([call.state, call.inCall, call.ringing], ["connected", true, false]);
  laptopSocket.deliver(event(0, ID, state("alice", "bob", { connected: {} })), event(0, ID, { answered_elsewhere: {} }));
  assert.deepEqual([other.state, other.inCall, other.ringing, elsewhere], ["connected", false, false, 1]);

  // The caller's offer and a candidate that follows it at once.
  const candidate = { candidate: "candidate:1 1 udp 1 127.0.0.1 6000 typ host", sdpMid: "0", sdpMLineIndex: 0 };
  phoneSocket.deliver(
    event(0, ID, { signal: { data: JSON.stringify({ type: "offer", sdp: "caller-offer" }) } }),
    event(0, ID, { signal: { data: JSON.stringify(candidate) } }),
  );
  await answerIceServers(phoneSocket);
  await until(() => phoneSocket.calls().length === 3, "answer and candidate sent");
  const [peer] = FakePeer.all;
  assert.deepEqual(peer.config, { iceServers: [TURN], iceTransportPolicy: "all" });
  assert.deepEqual(peer.transceivers, [["audio", "recvonly"], ["video", "recvonly"]], "receive only without a stream");
  assert.deepEqual(peer.remoteDescription, { type: "offer", sdp: "caller-offer" });
  await until(() => peer.candidates.length === 1, "candidate added after the offer");
  const sent = phoneSocket.calls().slice(1).map(([, name, fields]) => [name, JSON.parse(fields.data)]);
  assert.deepEqual(sent, [
    ["signal", { type: "answer", sdp: "answer-0" }],
    ["signal", { candidate: "candidate:answer", sdpMid: "0", sdpMLineIndex: 0 }],
  ]);
  assert.equal(laptopSocket.calls().length, 0, "the other device sent nothing");
  phone.close();
  laptop.close();
});

test("a rejoin brings a new peer connection and a new offer; a reconnect takes the device out of the call", async () => {
  const [alice, socket] = await connected("alice");
  FakePeer.all = [];
  const placing = alice.call("bob", { media: "audio", stream: { getTracks: () => ["mic"] }, RTCPeerConnection: FakePeer });
  await until(() => socket.calls().length === 1, "initiate");
  socket.deliver(event(socket.lastReq("call"), ID, { ok: {} }));
  const call = await placing;
  socket.deliver(event(0, ID, state("alice", "bob", { connected: {} })));
  await answerIceServers(socket);
  await until(() => FakePeer.all.length === 1 && socket.calls().length === 3, "first offer");
  okAll(socket);

  // Bob's device drops and he comes back on another: reconnecting, then connected again.
  socket.deliver(event(0, ID, state("alice", "bob", { reconnecting: { caller_until: null, callee_until: 1700000015000 } })));
  assert.deepEqual([call.state, call.calleeUntil, call.away], ["reconnecting", 1700000015000, false]);
  assert.ok(!FakePeer.all[0].closed, "media may go on while the signaling reconnects");
  socket.deliver(event(0, ID, state("alice", "bob", { connected: {} })));
  await answerIceServers(socket);
  await until(() => FakePeer.all.length === 2 && socket.calls().length === 5, "second offer");
  assert.ok(FakePeer.all[0].closed, "the old peer connection is replaced");
  assert.deepEqual(JSON.parse(socket.calls()[3][2].data), { type: "offer", sdp: "offer-1" });
  okAll(socket);

  // Alice's connection drops: the new one is another device, not in the call until it rejoins.
  // The relay tells it the call's state right behind the welcome; the app rejoins at once.
  let rejoining = null;
  call.addEventListener(
    "state",
    () => {
      assert.deepEqual([call.away, call.inCall], [true, false], "alice's side is away, this device not in the call");
      rejoining = call.rejoin();
    },
    { once: true },
  );
  ScriptedSocket.afterWelcome = [event(0, ID, state("alice", "bob", { reconnecting: { caller_until: 1700000020000, callee_until: null } }))];
  socket.onclose({ code: 1006, reason: "gone" });
  await until(() => ScriptedSocket.last !== socket && alice.state === "open" && rejoining !== null, "reconnected and rejoining");
  const again = ScriptedSocket.last;
  assert.deepEqual(again.calls().at(-1).slice(0, 2), [ID, "rejoin"]);
  again.deliver(event(again.lastReq("call"), ID, { ok: {} }), event(0, ID, state("alice", "bob", { connected: {} })));
  await rejoining;
  assert.equal(call.inCall, true);
  await answerIceServers(again);
  await until(() => FakePeer.all.length === 3 && again.calls().length === 3, "offer after the rejoin");
  assert.deepEqual(JSON.parse(again.calls()[1][2].data), { type: "offer", sdp: "offer-2" });
  alice.close();
});

test("without a stream the app signals itself; refusals are RelayErrors with the protocol's code", async () => {
  const [bob, socket] = await connected("bob");
  socket.deliver(event(0, ID, state("alice", "bob", { connected: {} })));
  const [call] = bob.calls;
  const got = [];
  call.addEventListener("signal", ({ detail }) => got.push(detail));
  socket.deliver(event(0, ID, { signal: { data: "hello from alice" } }));
  assert.deepEqual(got, ["hello from alice"]);
  const sending = call.signal("hi alice");
  assert.deepEqual(socket.calls().at(-1).slice(0, 3), [ID, "signal", { data: "hi alice" }]);
  socket.deliver({ type: "error", req: socket.lastReq("call"), code: 160, message: "not_connected" });
  await assert.rejects(sending, (err) => err.code === 160);
  // A frame this client built encodes as the golden vector does (field order from the protocol).
  assert.equal(
    encodeJson({ type: "call", req: 22, call: ID, action: { hang_up: {} } }),
    '{"call":{"req":22,"call":"6f1c2a9be04d7731","action":{"hang_up":{}}}}',
  );
  // Events this client cannot read (malformed, or added later) change nothing and break nothing.
  socket.deliver(event(0, ID, null), event(0, ID, { state: null }), event(0, ID, { teleport: {} }), event(0, "ffff", { ring: {} }));
  assert.deepEqual(bob.calls.map((c) => [c.id, c.state]), [[ID, "connected"]]);
  socket.deliver(event(0, ID, state("alice", "bob", { ended: { reason: "hangup", side: "caller" } })));
  assert.deepEqual(bob.calls, []);
  bob.close();
});

test("a call that ends while its ICE servers are on their way makes no peer connection", async () => {
  const [alice, socket] = await connected("alice");
  FakePeer.all = [];
  const placing = alice.call("bob", { stream: { getTracks: () => [] }, RTCPeerConnection: FakePeer });
  await until(() => socket.calls().length === 1, "initiate");
  socket.deliver(event(socket.lastReq("call"), ID, { ok: {} }), event(0, ID, state("alice", "bob", { connected: {} })));
  const call = await placing;
  await until(() => socket.sent.some((f) => f.type === "ice_servers"), "an ice_servers request");
  socket.deliver(event(0, ID, state("alice", "bob", { ended: { reason: "hangup", side: "callee" } })));
  await answerIceServers(socket);
  for (let i = 0; i < 5; i++) await tick();
  assert.deepEqual([call.state, call.peer, FakePeer.all.length, socket.calls().length], ["ended", null, 0, 1]);
  alice.close();
});

test("quality reports come from the growth of getStats() counters between two samples", async () => {
  const { qualityReport, qualitySample } = await import("../src/calls.js");
  const stats = (rtt, lost, received, sent, recvBytes, jitter) =>
    new Map([
      ["p", { type: "candidate-pair", nominated: true, state: "succeeded", currentRoundTripTime: rtt }],
      ["a", { type: "inbound-rtp", packetsLost: lost, packetsReceived: received, bytesReceived: recvBytes, jitter }],
      ["v", { type: "outbound-rtp", bytesSent: sent }],
      ["x", { type: "candidate-pair", nominated: false, state: "failed", currentRoundTripTime: 9 }],
    ]);
  const first = qualitySample(stats(0.04, 10, 90, 1000, 2000, 0.002), 1000);
  assert.equal(qualityReport(null, first), null, "no report without a previous sample");
  const second = qualitySample(stats(0.05, 20, 180, 126000, 64500, 0.003), 6000);
  assert.deepEqual(qualityReport(first, second), {
    rtt_ms: 50,
    loss: 0.1, // 10 lost of 100 in the interval
    jitter_ms: 3,
    send_kbps: 200, // 125,000 bytes in 5 s
    recv_kbps: 100,
  });
  // Counters that went back (a new peer connection) never give negative or NaN fields.
  const reset = qualitySample(stats(Number.NaN, 0, 0, 0, 0, 0), 7000);
  const report = qualityReport(second, reset);
  for (const value of Object.values(report)) assert.ok(Number.isFinite(value) && value >= 0, JSON.stringify(report));
});
