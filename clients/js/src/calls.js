// 1:1 calls on the browser client (docs/calls.md for the behaviour, docs/protocol.md "Calls (1:1)"
// for the frames): a `Call` per call this client knows of, its state as the relay reports it, the
// actions that change it, and an optional RTCPeerConnection wired to the call's signaling.
//
// Why it is shaped like this:
// - The relay owns the state: a `Call` only mirrors the `state` events it receives (and applies
//   nothing locally), so every device of a user shows the same call the same way.
// - Which device is in the call is known only by that device: the one that placed the call, or
//   that answered or rejoined it (its `ok` sets `inCall`, before the `state: connected` that
//   follows it is handled). A reconnected connection is a new device, so `inCall` is cleared then.
// - One offerer, no glare: the caller's device in the call sends a fresh offer after every
//   `state: connected` (the answer, and each rejoin, which brings a new device), on a new
//   RTCPeerConnection; the callee's device makes a new one for every offer and answers it.
// - Signals are handled one after another (a promise chain): a candidate must not be added
//   before the description it belongs to is set. Candidates found before this device's own offer
//   or answer went out wait for it, so the other side never gets a candidate first.
// - The device in the call reports its link's quality (`quality` action) from the peer
//   connection's `getStats()` every `qualityReportMs` (5 s; 0: never), so the relay can flag
//   problems to both sides and keep a summary in the call history.

/** The `quality` report of the interval since `prev` (a `qualitySample`), or null without one. */
export function qualityReport(prev, next) {
  if (!prev || next.at <= prev.at) return null;
  const ms = next.at - prev.at;
  const kbps = (a, b) => Math.max(0, ((b - a) * 8) / ms);
  const lost = next.lost - prev.lost;
  const received = next.received - prev.received;
  const clamp = (v, max) => (Number.isFinite(v) ? Math.min(Math.max(v, 0), max) : 0);
  return {
    rtt_ms: clamp(next.rttMs, 60000),
    loss: clamp(lost + received > 0 ? lost / (lost + received) : 0, 1),
    jitter_ms: clamp(next.jitterMs, 60000),
    send_kbps: clamp(kbps(prev.sent, next.sent), 10000000),
    recv_kbps: clamp(kbps(prev.recvBytes, next.recvBytes), 10000000),
  };
}

/** What a report needs from a `getStats()` result: counters at `at` (ms). */
export function qualitySample(stats, at) {
  const sample = { at, rttMs: 0, jitterMs: 0, lost: 0, received: 0, sent: 0, recvBytes: 0 };
  for (const s of stats.values()) {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime !== undefined) {
      sample.rttMs = s.currentRoundTripTime * 1000;
    } else if (s.type === "inbound-rtp") {
      sample.lost += s.packetsLost ?? 0;
      sample.received += s.packetsReceived ?? 0;
      sample.recvBytes += s.bytesReceived ?? 0;
      sample.jitterMs = Math.max(sample.jitterMs, (s.jitter ?? 0) * 1000);
    } else if (s.type === "outbound-rtp") {
      sample.sent += s.bytesSent ?? 0;
    }
  }
  return sample;
}

const STATES = new Set(["ringing", "connected", "reconnecting", "ended"]);

/** The relay's `state` of a call as `{state, reason, side, callerUntil, calleeUntil}`. */
export function callState(wire) {
  const [state, fields = {}] = Object.entries(wire ?? {})[0] ?? ["unknown"];
  return {
    state,
    reason: fields.reason ?? null,
    side: fields.side ?? null,
    callerUntil: fields.caller_until ?? null,
    calleeUntil: fields.callee_until ?? null,
  };
}

/**
 * One 1:1 call as this device sees it. Made by the client (`EdgeRelay.call()`, or when the relay
 * tells it about a call); not constructed by applications.
 *
 * Properties: `id`, `caller`, `callee`, `media` (`"audio"` | `"video"`), `role` (`"caller"` |
 * `"callee"`: which side this user is), `state` (`"ringing"`, `"connected"`, `"reconnecting"`,
 * `"ended"`), `reason` and `side` (once ended), `callerUntil` and `calleeUntil` (while
 * reconnecting: the away side's deadline, unix ms), `ringing` (this device rings now), `inCall`
 * (this device is the one in the call), `away` (this user's side is away while reconnecting),
 * `peer` (the current RTCPeerConnection when WebRTC is wired) and `remoteStream`.
 *
 * Events: `state` (`detail`: `{state, reason, side, callerUntil, calleeUntil}`), `ring` (this
 * device rings), `answered_elsewhere` (another device of yours answered: stop ringing), `signal`
 * (`detail`: the other side's data, when WebRTC is not wired), `peer` (`detail`: a new
 * RTCPeerConnection), `track` (`detail`: the RTCTrackEvent), `error` (`detail`: an Error of the
 * WebRTC wiring).
 */
export class Call extends EventTarget {
  #link;
  #rtc = null;
  #work = Promise.resolve();
  // Candidates found before this device's offer or answer was sent.
  #heldCandidates = null;
  // The quality reporter's timer and its last sample.
  #qualityTimer = null;
  #qualityPrev = null;

  constructor(link, { id, caller, callee, media, role }) {
    super();
    this.#link = link;
    Object.assign(this, { id, caller, callee, media, role });
    Object.assign(this, { state: "ringing", reason: null, side: null, callerUntil: null, calleeUntil: null });
    this.ringing = false;
    this.inCall = false;
    this.peer = null;
    this.remoteStream = null;
  }

  get away() {
    return this.state === "reconnecting" && (this.role === "caller" ? this.callerUntil : this.calleeUntil) !== null;
  }

  /**
   * Answers on this device (which must be ringing). `options` as for `EdgeRelay.call()`: with a
   * `stream` the call wires an RTCPeerConnection; without, the app exchanges `signal`s itself.
   */
  answer(options) {
    return this.#enter({ answer: {} }, options);
  }

  /** Comes back into a `reconnecting` call on this device, as the side that is away. */
  rejoin(options) {
    return this.#enter({ rejoin: {} }, options);
  }

  /** Declines while it rings (callee). */
  reject() {
    return this.#link.action(this.id, { reject: {} });
  }

  /** Gives up before an answer (caller). */
  cancel() {
    return this.#link.action(this.id, { cancel: {} });
  }

  /** Ends the call in any live state, from either side: the "end call" button. */
  hangUp() {
    return this.#link.action(this.id, { hang_up: {} });
  }

  /** Sends signaling data (text) to the other side's device in the call. */
  signal(data) {
    return this.#link.action(this.id, { signal: { data } });
  }

  /** Sets what the WebRTC wiring uses (see `EdgeRelay.call()`); null or no `stream` key: none. */
  useMedia(options) {
    this.#rtc = options && "stream" in options ? options : null;
  }

  #enter(action, options) {
    if (options !== undefined) this.useMedia(options);
    return this.#link.action(this.id, action, () => {
      this.inCall = true;
      this.ringing = false;
    });
  }

  // --- what the relay says (called by the client, in frame order) ---

  /** A `call` frame's event for this call. */
  handle(event) {
    const [name, fields = {}] = Object.entries(event ?? {})[0] ?? [];
    if (name === "state") {
      const detail = callState(fields?.state);
      // A state this client does not know (malformed, or added later) changes nothing.
      return STATES.has(detail.state) ? this.#onState(detail) : undefined;
    }
    if (name === "ring") {
      this.ringing = true;
      return this.dispatchEvent(new CustomEvent("ring"));
    }
    if (name === "answered_elsewhere") {
      this.ringing = false;
      return this.dispatchEvent(new CustomEvent("answered_elsewhere"));
    }
    if (name === "signal") {
      if (!this.#rtc) return this.dispatchEvent(new CustomEvent("signal", { detail: fields?.data }));
      return this.#queue(() => this.#onSignal(fields?.data));
    }
    return undefined;
  }

  /** This device's connection was replaced: the relay knows it as a new device now. */
  reconnected() {
    this.inCall = false;
    this.ringing = false;
  }

  #onState(detail) {
    const wasConnected = this.state === "connected";
    Object.assign(this, detail);
    if (detail.state !== "ringing") this.ringing = false;
    if (detail.state === "ended") {
      this.inCall = false;
      this.#closePeer();
    }
    this.dispatchEvent(new CustomEvent("state", { detail }));
    const offer = detail.state === "connected" && !wasConnected && this.inCall && this.role === "caller";
    if (offer && this.#rtc) this.#queue(() => this.#offer());
  }

  // --- WebRTC wiring ---

  #queue(step) {
    this.#work = this.#work.then(step).catch((err) => this.dispatchEvent(new CustomEvent("error", { detail: err })));
  }

  async #newPeer() {
    this.#closePeer();
    const { stream, iceTransportPolicy = "all", iceServers, RTCPeerConnection: Peer = globalThis.RTCPeerConnection } = this.#rtc;
    const servers = iceServers ?? (await this.#link.iceServers()).iceServers;
    // Hung up while the servers were on their way: no peer connection any more.
    if (this.state === "ended") return null;
    const peer = new Peer({ iceServers: servers, iceTransportPolicy });
    this.peer = peer;
    this.remoteStream = null;
    this.#heldCandidates = [];
    peer.onicecandidate = ({ candidate }) => {
      if (!candidate || this.peer !== peer) return;
      const data = JSON.stringify(candidate.toJSON ? candidate.toJSON() : candidate);
      if (this.#heldCandidates) this.#heldCandidates.push(data);
      else this.#send(data);
    };
    peer.ontrack = (event) => {
      if (this.peer !== peer) return;
      if (event.streams?.[0]) this.remoteStream = event.streams[0];
      else if (typeof MediaStream !== "undefined") {
        // A sender that added its track without a stream: collect the tracks in one of ours.
        this.remoteStream ??= new MediaStream();
        this.remoteStream.addTrack(event.track);
      }
      this.dispatchEvent(new CustomEvent("track", { detail: event }));
    };
    if (stream) {
      for (const track of stream.getTracks()) peer.addTrack(track, stream);
    } else {
      for (const kind of this.media === "video" ? ["audio", "video"] : ["audio"]) {
        peer.addTransceiver(kind, { direction: "recvonly" });
      }
    }
    this.dispatchEvent(new CustomEvent("peer", { detail: peer }));
    this.#reportQuality(peer);
    return peer;
  }

  /** Sends this device's description, then the candidates that waited for it. */
  #sendDescription({ type, sdp }) {
    this.#send(JSON.stringify({ type, sdp }));
    const held = this.#heldCandidates ?? [];
    this.#heldCandidates = null;
    for (const data of held) this.#send(data);
  }

  #send(data) {
    // Refused only when the call moved on (ended, or the other side is away): nothing to do.
    this.signal(data).catch(() => {});
  }

  async #offer() {
    if (this.state !== "connected") return;
    const peer = await this.#newPeer();
    if (!peer) return;
    await peer.setLocalDescription(await peer.createOffer());
    this.#sendDescription(peer.localDescription);
  }

  async #onSignal(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      throw new Error(`signal that is not JSON: ${String(data).slice(0, 80)}`);
    }
    if (message?.type === "offer" && this.role === "callee") {
      const peer = await this.#newPeer();
      if (!peer) return;
      await peer.setRemoteDescription(message);
      await peer.setLocalDescription(await peer.createAnswer());
      this.#sendDescription(peer.localDescription);
    } else if (message?.type === "answer" && this.role === "caller") {
      await this.peer?.setRemoteDescription(message);
    } else if (message && "candidate" in message && this.peer) {
      // A candidate of a peer connection the other side has replaced fails here: harmless.
      await this.peer.addIceCandidate(message).catch(() => {});
    }
  }

  #closePeer() {
    clearInterval(this.#qualityTimer);
    this.#qualityTimer = null;
    this.#qualityPrev = null;
    this.peer?.close();
    this.peer = null;
  }

  /** Every `qualityReportMs`, while `peer` is this call's and this device is in it: a report. */
  #reportQuality(peer) {
    const every = this.#rtc?.qualityReportMs ?? 5000;
    if (!every || typeof peer.getStats !== "function") return;
    // The first interval's counters start now.
    peer.getStats().then((stats) => {
      if (this.peer === peer && !this.#qualityPrev) this.#qualityPrev = qualitySample(stats, Date.now());
    }, () => {});
    this.#qualityTimer = setInterval(async () => {
      if (this.peer !== peer || !this.inCall || this.state !== "connected") return;
      const sample = qualitySample(await peer.getStats(), Date.now());
      const report = qualityReport(this.#qualityPrev, sample);
      this.#qualityPrev = sample;
      // Refusals (a report too soon after a reconnect) are the relay's business, not the app's.
      if (report) this.#link.action(this.id, { quality: report }).catch(() => {});
    }, every);
  }
}

/**
 * The calls one client knows of (id → `Call`), kept from its `call` events: `EdgeRelay` has one,
 * and so has every tab of a `SharedRelay` (the leader forwards the events, and each tab's
 * actions go through it). `client` gets the `call` and `ring` events; `link` is
 * `{action(id, action, onOk), iceServers()}`.
 */
export class CallBook {
  constructor(client, link) {
    this.client = client;
    this.link = link;
    this.calls = new Map();
  }

  /** Places a call (`initiate`); resolves with its `Call`, this device in it. */
  async place(callee, media, rtc) {
    let call = null;
    await this.link.action("", { initiate: { callee, media } }, ({ call: id }) => {
      call = this.#add({ id, caller: this.client.welcome.user, callee, media, role: "caller" });
      call.useMedia(rtc);
      call.inCall = true;
    });
    return call;
  }

  /** An event of a call (`{call, event}`, `req` 0): to its `Call`, made on its first `state`. */
  onEvent({ call: id, event }) {
    let call = this.calls.get(id);
    if (!call && event?.state) {
      const { caller, callee, media } = event.state;
      call = this.#add({ id, caller, callee, media, role: caller === this.client.welcome?.user ? "caller" : "callee" });
    }
    if (!call) return;
    call.handle(event);
    if (event?.ring) this.client.dispatchEvent(new CustomEvent("ring", { detail: call }));
    if (call.state === "ended") this.calls.delete(id);
  }

  /** A new connection: the relay knows it as a new device, in no call. */
  reconnected() {
    for (const call of this.calls.values()) call.reconnected();
  }

  #add(info) {
    const call = new Call(this.link, info);
    this.calls.set(info.id, call);
    this.client.dispatchEvent(new CustomEvent("call", { detail: call }));
    return call;
  }
}
