// The edgerelay browser client (plain ES module, no dependencies): WebTransport first, WebSocket
// when WebTransport is missing, blocked or slow; hello with a token, join, publish with ack,
// receive, and reconnect with exponential backoff and full jitter, rejoining every room from the
// last position it saw.
//
//   import { EdgeRelay } from "./edgerelay.js";
//   const relay = new EdgeRelay({ token, webTransportUrl, webSocketUrl, certHashes });
//   relay.addEventListener("message", (e) => console.log(e.detail));
//   await relay.connect();
//   await relay.join("chat:lobby");
//   const position = await relay.publish("chat:lobby", { text: "hi" });
//
// When it connects over WebSocket although WebTransport was wanted (`transport: "auto"`),
// `relay.fallbackReason` and the `open` status event's `fallbackReason` say why: the page is not a
// secure context (WebTransport exists only on https: pages and on http://localhost, 127.0.0.1 or
// [::1]), the browser has no WebTransport, the handshake failed (browsers do not say whether the
// certificate was rejected or the UDP port refused), or no answer came within
// `webTransportTimeoutMs` (UDP dropped on the way). It is null on WebTransport and when
// WebSocket was asked for. Every attempt is tried again on reconnect.
//
// Why it is shaped like this:
// - Protocol v1 over WebTransport is byte for byte raw QUIC's: a control stream first, then one
//   bidirectional stream per room, frames `[u32 length][body]` (docs/protocol.md). A slow room
//   therefore never delays another. Over WebSocket everything shares the one socket.
// - A datagram read loop always runs on WebTransport: Chromium drops incoming datagrams that
//   nobody reads, and the relay uses datagrams for lossy state.
// - Full jitter (a uniformly random delay up to the exponential bound) keeps a relay restart from
//   being hit by every client at the same instant.
// - Each link reports its own end (`link.closed`), and a link given up on (timed out, failed,
//   replaced, or `close()`d while connecting) is closed and ignored from then on: a WebTransport
//   session that fails late must not end the WebSocket that replaced it (that once made the
//   fallback reconnect forever, leaking a socket each time).

import {
  FrameError,
  FrameReader,
  PROTOCOL_VERSION,
  RETRYABLE_CLOSE,
  decodeJson,
  encodeJson,
  fromBase64,
  lengthPrefixed,
} from "./codec.js";
import { Call } from "./calls.js";
import { FLAG_KEYFRAME, GroupReader, encodeFrame, encodeGroupHeader } from "./media.js";

const TOKEN_EXPIRED = 111;
const MEDIA_UNSUPPORTED = 140;

/** The delay before reconnect attempt `attempt` (0-based): uniform in [0, min(cap, base·2^attempt)). */
export function backoffDelay(attempt, { baseMs = 250, capMs = 10_000 } = {}, random = Math.random) {
  const bound = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * bound);
}

/** An error the relay answered a request with (docs/protocol.md, "Errors and close codes"). */
export class RelayError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

class TimeoutError extends Error {}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Why WebTransport cannot even be tried here, or null if it can. `scope` is the global object
 * (a parameter for tests).
 */
export function webTransportUnavailable(url, scope = globalThis) {
  if (typeof scope.WebTransport === "undefined") {
    return scope.isSecureContext === false
      ? "this page is not a secure context (WebTransport needs https:, or http: on localhost or 127.0.0.1)"
      : "this browser has no WebTransport";
  }
  return url ? null : "no webTransportUrl given";
}

/** Why a WebTransport attempt failed, for `fallbackReason`. */
function webTransportFailure(err, timeoutMs) {
  if (err instanceof TimeoutError) return `no answer within ${timeoutMs} ms (UDP blocked?)`;
  // Browsers do not say which on purpose: a certificate that is not trusted and does not match
  // `certHashes`, or a UDP port that refuses, both end as "Opening handshake failed."
  if (err?.name === "WebTransportError") return `${err.message} (certificate rejected or UDP port closed?)`;
  return String(err?.message ?? err) || "connection failed";
}

/**
 * The URLs the demo page (or any page served by the relay) connects to: WebTransport on the
 * relay's UDP port of the page's own host, WebSocket on the page's own host and port. `location`
 * is a URL (or `window.location`); `endpoints` is the relay's `/v1/endpoints` answer. IPv6 hosts
 * keep their brackets (`https://[::1]:4433/v1/wt`).
 */
export function endpointUrls(location, endpoints) {
  const { hostname, host, protocol } = location;
  const bracketed = hostname.includes(":") && !hostname.startsWith("[") ? `[${hostname}]` : hostname;
  return {
    webTransportUrl: `https://${bracketed}:${endpoints.webtransport_port}${endpoints.webtransport_path}`,
    webSocketUrl: `${protocol === "https:" ? "wss:" : "ws:"}//${host}${endpoints.websocket_path}`,
  };
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One group being sent (`EdgeRelay.openGroup`). */
export class GroupWriter {
  #writer;

  constructor(writer) {
    this.#writer = writer;
    // Whether the stream ended cleanly (false: reset, stopped by the relay, or the session ended).
    this.closed = writer.closed.then(
      () => true,
      () => false,
    );
  }

  /** Writes a frame; resolves once the stream accepted it (await it for backpressure). */
  frame(timestampUs, level, bytes) {
    return this.#writer.write(encodeFrame(timestampUs, level, bytes));
  }

  /** Ends the group (finishes the stream). */
  finish() {
    return this.#writer.close().catch(() => {});
  }

  /** Drops the group (resets the stream). */
  abort(reason) {
    return this.#writer.abort(reason).catch(() => {});
  }
}

/** WebTransport: a control stream plus one bidirectional stream per room. */
class WebTransportLink {
  kind = "webtransport";

  constructor(url, certHashes, events) {
    const options = {};
    if (certHashes && certHashes.length > 0) {
      options.serverCertificateHashes = certHashes.map((hash) => ({ algorithm: "sha-256", value: fromBase64(hash) }));
    }
    this.events = events;
    this.transport = new WebTransport(url, options);
    this.rooms = new Map();
    // How this session ends ({code, reason}); it concerns this link only.
    this.closed = this.transport.closed.then(
      (info) => ({ code: info?.closeCode ?? 0, reason: info?.reason ?? "" }),
      (err) => ({ code: null, reason: String(err?.message ?? err) }),
    );
  }

  async open() {
    await this.transport.ready;
    this.#readDatagrams();
    this.#acceptGroups();
    const stream = await this.transport.createBidirectionalStream();
    this.control = stream.writable.getWriter();
    this.#readStream(stream.readable);
  }

  async #readStream(readable) {
    const reader = readable.getReader();
    const frames = new FrameReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        for (const body of frames.push(value)) this.events.frame(decodeJson(decoder.decode(body)));
      }
    } catch (err) {
      if (err instanceof FrameError) this.close(`bad frame from relay: ${err.message}`);
    }
  }

  async #readDatagrams() {
    const reader = this.transport.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this.events.datagram(value);
      }
    } catch {
      // The session is gone; `closed` reports why.
    }
  }

  /** Reads every group stream the relay opens (docs/media.md step 4), each on its own. */
  async #acceptGroups() {
    const streams = this.transport.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await streams.read();
        if (done) return;
        this.#readGroup(value);
      }
    } catch {
      // The session is gone; `closed` reports why.
    }
  }

  async #readGroup(readable) {
    const reader = readable.getReader();
    const groups = new GroupReader();
    let header = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const item of groups.push(value)) {
          if (item.header) {
            header = item.header;
            this.events.media({ type: "group", ...header });
          } else {
            this.events.media({ type: "frame", track: header.track, layer: header.layer, group: header.group, ...item.frame });
          }
        }
      }
      if (header) this.events.media({ type: "end", track: header.track, layer: header.layer, group: header.group, reset: groups.pending > 0 ? -1 : null });
    } catch (err) {
      // A reset (code 0x10: dropped as stale, queue full or track ended) or a malformed stream.
      reader.cancel().catch(() => {});
      if (header) this.events.media({ type: "end", track: header.track, layer: header.layer, group: header.group, reset: err?.streamErrorCode ?? -1 });
    }
  }

  /** A new unidirectional stream carrying one group; `sendOrder` ranks it against the others. */
  async openGroup(header, sendOrder) {
    const options = sendOrder === undefined ? {} : { sendOrder };
    const stream = await this.transport.createUnidirectionalStream(options);
    const writer = stream.getWriter();
    writer.write(encodeGroupHeader(header)).catch(() => {});
    return writer;
  }

  static #bytes(frame) {
    return lengthPrefixed(encoder.encode(encodeJson(frame)));
  }

  send(frame) {
    return this.control.write(WebTransportLink.#bytes(frame));
  }

  /** Opens the room's own stream with its `join` as the first frame. */
  async openRoom(room, join) {
    const stream = await this.transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    this.rooms.set(room, writer);
    this.#readStream(stream.readable);
    return writer.write(WebTransportLink.#bytes(join));
  }

  sendRoom(room, frame) {
    const writer = this.rooms.get(room);
    return writer ? writer.write(WebTransportLink.#bytes(frame)) : this.send(frame);
  }

  closeRoom(room) {
    const writer = this.rooms.get(room);
    this.rooms.delete(room);
    writer?.close().catch(() => {});
  }

  sendDatagram(bytes) {
    const writer = this.transport.datagrams.writable.getWriter();
    writer.write(bytes).catch(() => {});
    writer.releaseLock();
  }

  close(reason = "bye") {
    try {
      this.transport.close({ closeCode: 0, reason });
    } catch {
      // Already closed.
    }
  }
}

/** WebSocket: every frame is one text message on the one socket. */
class WebSocketLink {
  kind = "websocket";

  constructor(url, events) {
    this.events = events;
    this.socket = new WebSocket(url);
    this.socket.binaryType = "arraybuffer";
    let opened, failed, ended;
    this.opened = new Promise((resolve, reject) => {
      opened = resolve;
      failed = reject;
    });
    this.opened.catch(() => {}); // Only `open()` cares; a link given up on may fail unobserved.
    // How this socket ends ({code, reason}); it concerns this link only.
    this.closed = new Promise((resolve) => {
      ended = resolve;
    });
    this.socket.onopen = () => opened();
    this.socket.onerror = () => failed(new Error("WebSocket failed to open"));
    this.socket.onmessage = (event) => {
      const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
      try {
        this.events.frame(decodeJson(text));
      } catch (err) {
        this.close(`bad frame from relay: ${err.message}`);
      }
    };
    this.socket.onclose = (event) => {
      failed(new Error(`WebSocket closed (${event.code})`));
      // 4000 + error code (docs/protocol.md); 1000 is a normal close.
      const code = event.code >= 4000 && event.code < 5000 ? event.code - 4000 : event.code === 1000 ? 0 : null;
      ended({ code, reason: event.reason });
    };
  }

  open() {
    return this.opened;
  }

  send(frame) {
    this.socket.send(encodeJson(frame));
  }

  openRoom(_room, join) {
    this.send(join);
  }

  sendRoom(_room, frame) {
    this.send(frame);
  }

  closeRoom() {}

  openGroup() {
    throw new Error("media needs WebTransport: this connection is a WebSocket (media_unsupported)");
  }

  sendDatagram() {}

  close(reason = "bye") {
    try {
      this.socket.close(1000, reason);
    } catch {
      // Already closed.
    }
  }
}

/**
 * A connection to an edgerelay that survives disconnects.
 *
 * Options: `token` (a JWT) or `getToken` (async, called on every connect), `webTransportUrl`
 * (`https://host:4433/v1/wt`), `webSocketUrl` (`ws://host:8080/v1/ws`), `certHashes` (base64
 * SHA-256 hashes of the relay's dev certificates, from `/v1/cert`; an array, or an async function
 * called before every WebTransport attempt, so a page open across a certificate rotation picks
 * up the new hash when it reconnects; omit with a real certificate),
 * `transport` (`"auto"`, `"webtransport"` or `"websocket"`), `webTransportTimeoutMs` (how long
 * WebTransport gets before the WebSocket fallback), `requestTimeoutMs`, `backoff` (`{baseMs, capMs}`),
 * `clientName`, `networkEvents` (where `online` and `visibilitychange` come from: `{online,
 * visibility}`, by default the page's `window` and `document`; `false` to not listen).
 *
 * Network changes: when the browser reports the network back (`online`) or the page visible again
 * (`visibilitychange`; a phone suspends hidden tabs' timers and sockets), the client calls
 * `networkChanged()`: connected, it pings at once (a connection that does not answer within
 * `networkProbeMs`, 3 s by default, is closed and replaced); reconnecting, it stops waiting out
 * its backoff and tries at once, the backoff starting again from `baseMs`. Pages that learn of a
 * network change otherwise can call it too.
 *
 * Events (`detail`): `status` ({state, transport, delayMs?, code?, reason?, fallbackReason?}),
 * `message` (a `message` frame), `joined` ({room, recovered, position}) on every (re)join, `error`
 * (an `error` frame not tied to a request), `frame` (any other frame: presence, typing, types added
 * later), `datagram` (bytes).
 *
 * Calls (docs/media.md, WebTransport only): `tracks`, `layer`, `speakers`, `keyframe_request` and
 * `layers_wanted` frames arrive as events of those names (`detail`: the frame). Received media
 * arrives as `media` events, in stream order per group: `{type: "group", track, layer, group,
 * flags, keyframe}` when a group stream opens, `{type: "frame", track, layer, group, timestampUs,
 * level, payload}` per frame, and `{type: "end", track, layer, group, reset}` when it ends
 * (`reset` null when it finished, else the reset code, 0x10 for a group the relay dropped, or -1
 * when the stream broke without one: truncated, malformed, or the session ended).
 *
 * WebRTC: `iceServers()` asks for the STUN and TURN servers with fresh credentials.
 *
 * 1:1 calls (docs/calls.md; clients/calls.js has the `Call` object): `call(user, options)`
 * places one; `call` events (`detail`: a `Call`) announce every call this client learns of
 * (placed here, on another device of the user, or to the user), and `ring` events (`detail`: the
 * `Call`) say this device should ring.
 *
 * `join`, `leave`, `publish`, `ping` and `iceServers` need an open connection: before `connect()` (or while
 * reconnecting) they reject with "not connected …". `close()` also ends a connect in progress:
 * nothing stays open and `connect()` rejects.
 */
/** An `ice_servers` frame (or a `GET /v1/ice` body) as `{iceServers, expiresAt}`: entries in
 * `RTCIceServer` form, without the `username` and `credential` that are null (STUN). */
export function rtcIceServers(answer) {
  const servers = answer.servers ?? answer.ice_servers ?? [];
  const iceServers = servers.map(({ urls, username, credential }) => {
    const server = { urls: [...urls] };
    if (username != null) server.username = username;
    if (credential != null) server.credential = credential;
    return server;
  });
  return { iceServers, expiresAt: answer.expires_at };
}

export class EdgeRelay extends EventTarget {
  #options;
  #link = null;
  #rooms = new Map();
  #pending = new Map();
  #nextReq = 1;
  #nextId = 1;
  #stopped = false;
  #goAwayMs = 0;
  // The link being opened or in use, as `{link, dead}`. A dead attempt's link is closed and
  // whatever it still reports is ignored: it can never touch the connection that replaced it.
  #attempt = null;
  #welcomed = null;
  // Track id → room, for sending track requests on the room's stream.
  #trackRooms = new Map();
  // Call id → Call, while the call is live.
  #calls = new Map();
  // Call events that came right behind the welcome, before this connection was open: handled
  // once it is, so that what an app does about them (rejoin, answer) can be sent.
  #earlyCallEvents = [];
  // Failed attempts since the last connection: the backoff's exponent.
  #failures = 0;
  // Ends the backoff wait early (a network change), when one is under way.
  #wake = null;
  // Removes the `online` and `visibilitychange` listeners.
  #unwatch = () => {};

  constructor(options) {
    super();
    this.#options = {
      transport: "auto",
      webTransportTimeoutMs: 3000,
      requestTimeoutMs: 10_000,
      backoff: { baseMs: 250, capMs: 10_000 },
      clientName: "edgerelay-js/1",
      networkProbeMs: 3000,
      networkEvents: { online: globalThis.window, visibility: globalThis.document },
      ...options,
    };
    this.state = "idle";
    this.transport = null;
    this.welcome = null;
    this.fallbackReason = null;
  }

  /** Connects; resolves with the `welcome` once connected, rejects if the relay refuses the token. */
  connect() {
    if (!this.connected) {
      this.connected = new Promise((resolve, reject) => {
        this.#welcomed = { resolve, reject };
      });
      this.#watchNetwork();
      this.#run();
    }
    return this.connected;
  }

  /**
   * The network changed or came back. Connected: ping now, and replace the connection if it
   * does not answer within `networkProbeMs`. Reconnecting: try again now, backoff reset.
   */
  networkChanged() {
    if (this.#stopped) return;
    this.#failures = 0;
    if (this.#wake) {
      this.#wake();
      return;
    }
    const attempt = this.#attempt;
    if (!this.#link || !attempt) return;
    withTimeout(this.ping(), this.#options.networkProbeMs, "ping after a network change").catch((err) => {
      // Only a silent connection is given up; an answer, even an error, shows it works.
      if (err instanceof TimeoutError && this.#attempt === attempt) this.#retire(attempt, "no answer after a network change");
    });
  }

  #watchNetwork() {
    const { networkEvents } = this.#options;
    if (!networkEvents) return;
    const { online, visibility } = networkEvents;
    const onOnline = () => this.networkChanged();
    const onVisible = () => {
      if (visibility.visibilityState !== "hidden") this.networkChanged();
    };
    online?.addEventListener?.("online", onOnline);
    visibility?.addEventListener?.("visibilitychange", onVisible);
    this.#unwatch = () => {
      online?.removeEventListener?.("online", onOnline);
      visibility?.removeEventListener?.("visibilitychange", onVisible);
    };
  }

  /** Joins a room (on WebTransport: its own stream). Rejoined automatically after reconnects. */
  async join(room) {
    this.#requireLink();
    const position = this.#rooms.get(room)?.position ?? null;
    this.#rooms.set(room, { position });
    try {
      return await this.#join(room, position);
    } catch (err) {
      this.#rooms.delete(room);
      this.#link?.closeRoom(room);
      throw err;
    }
  }

  async leave(room) {
    const link = this.#requireLink();
    const req = this.#req();
    const answer = this.#expect(req);
    link.sendRoom(room, { type: "leave", req, room });
    await answer;
    this.#rooms.delete(room);
    link.closeRoom(room);
  }

  /** Publishes `data` (any JSON value); resolves with the acked position `{epoch, offset}`. */
  async publish(room, data, id = `${Date.now().toString(36)}-${this.#nextId++}`) {
    const link = this.#requireLink();
    const req = this.#req();
    const answer = this.#expect(req);
    link.sendRoom(room, { type: "publish", req, room, id, data });
    return (await answer).position;
  }

  /** Round trip to the relay in milliseconds. */
  async ping() {
    const link = this.#requireLink();
    const started = performance.now();
    const req = this.#req();
    const answer = this.#expect(req);
    link.send({ type: "ping", req });
    await answer;
    return performance.now() - started;
  }

  /** The STUN and TURN servers for WebRTC with fresh TURN credentials (an `ice_servers`
   * request): `{iceServers, expiresAt}`, where `iceServers` goes to `new RTCPeerConnection({iceServers})`
   * as it is and `expiresAt` (unix seconds) is when the TURN credentials stop working: ask again
   * before a new call after it. */
  async iceServers() {
    const link = this.#requireLink();
    const req = this.#req();
    const answer = this.#expect(req);
    link.send({ type: "ice_servers", req });
    return rtcIceServers(await answer);
  }

  // --- 1:1 calls (docs/calls.md); over every transport ---

  /**
   * Calls `callee` (a user id of this tenant; the token's `caps.call` must allow it). Resolves
   * with the `Call` once the relay took it (it rings, or ends at once as `busy`); rejects with a
   * `RelayError` (`self_call`, `permission_denied`, ...). Options: `media` (`"video"`, the
   * default, or `"audio"`), and to wire WebRTC: `stream` (the local MediaStream to send, or null
   * to receive only), `iceTransportPolicy` (`"all"` or `"relay"`: TURN only), `iceServers`
   * (instead of asking the relay with `iceServers()` for every peer connection),
   * `RTCPeerConnection` (another implementation). Without `stream` the app does the signaling
   * with `call.signal()` and the call's `signal` events.
   */
  async call(callee, { media = "video", ...rtc } = {}) {
    let call = null;
    await this.#callAction("", { initiate: { callee, media } }, ({ call: id }) => {
      call = this.#addCall({ id, caller: this.welcome.user, callee, media, role: "caller" });
      call.useMedia(rtc);
      call.inCall = true;
    });
    return call;
  }

  /** The live calls this client knows of. */
  get calls() {
    return [...this.#calls.values()];
  }

  /** Sends a datagram (WebTransport only; dropped on WebSocket). */
  sendDatagram(bytes) {
    this.#link?.sendDatagram(bytes);
  }

  // --- calls (docs/media.md); WebTransport only: on WebSocket the relay answers media_unsupported ---

  /**
   * Publishes a track in a joined room: `{name, kind ("audio" | "video" | "screen"), codec,
   * layers: [{width, height, bitrate}]}` (base layer first; audio exactly one, 0x0). Resolves
   * with the track id the group headers carry.
   */
  async publishTrack(room, { name, kind, codec, layers }) {
    this.#requireMedia();
    const answer = await this.#track(room, (req) => ({ type: "track_publish", req, room, name, kind, codec, layers }));
    this.#trackRooms.set(answer.track, room);
    return answer.track;
  }

  /**
   * Opens one group of an own track on a new unidirectional stream and writes its header.
   * Resolves with a writer: `frame(timestampUs, level, bytes)` (resolves when the stream took
   * it), `finish()`, `abort()`. A video group starts with a keyframe (`keyframe` true). Rejects
   * clearly on a WebSocket connection. `options.sendOrder`: higher goes first (audio above video).
   */
  async openGroup(track, layer, group, keyframe, { sendOrder } = {}) {
    const link = this.#requireMedia();
    const writer = await link.openGroup({ track, layer, group, flags: keyframe ? FLAG_KEYFRAME : 0 }, sendOrder);
    return new GroupWriter(writer);
  }

  /** Receives a track: groups arrive as `media` events. Send again to change `maxLayer` or `paused`. */
  async subscribeTrack(track, { maxLayer = 2, paused = false } = {}) {
    this.#requireMedia();
    await this.#track(this.#trackRooms.get(track), (req) => ({ type: "track_subscribe", req, track, max_layer: maxLayer, paused }));
  }

  async unsubscribeTrack(track) {
    await this.#track(this.#trackRooms.get(track), (req) => ({ type: "track_unsubscribe", req, track }));
  }

  /** Mutes (or unmutes) an own track: members get `tracks` with `muted`. */
  async muteTrack(track, muted = true) {
    await this.#track(this.#trackRooms.get(track), (req) => ({ type: "track_mute", req, track, muted }));
  }

  async unpublishTrack(track) {
    await this.#track(this.#trackRooms.get(track), (req) => ({ type: "track_unpublish", req, track }));
  }

  /** Closes for good: no reconnect. */
  close() {
    this.#stopped = true;
    this.#unwatch();
    this.#wake?.();
    if (this.#attempt) this.#retire(this.#attempt, "bye");
    this.#link = null;
    this.#welcomed?.reject(new Error("closed before it connected"));
    this.#welcomed = null;
    this.#setState("closed");
  }

  // --- internals ---

  #req() {
    return this.#nextReq++;
  }

  #requireMedia() {
    const link = this.#requireLink();
    if (link.kind !== "webtransport") {
      // The relay's own answer would be the same error (140, docs/protocol.md).
      throw new RelayError(MEDIA_UNSUPPORTED, "media_unsupported: media needs WebTransport; this connection is a WebSocket");
    }
    return link;
  }

  /** A track request on its room's stream (the control stream when the room is not known). */
  async #track(room, build) {
    const link = this.#requireLink();
    const req = this.#req();
    const answer = this.#expect(req);
    const frame = build(req);
    if (room && this.#rooms.has(room)) link.sendRoom(room, frame);
    else link.send(frame);
    return answer;
  }

  /** A `call` request on the control stream, where the call's events come. */
  #callAction(call, action, onOk) {
    const link = this.#requireLink();
    const req = this.#req();
    const answer = this.#expect(req, onOk);
    link.send({ type: "call", req, call, action });
    return answer;
  }

  #addCall(info) {
    const call = new Call(
      { action: (id, action, onOk) => this.#callAction(id, action, onOk), iceServers: () => this.iceServers() },
      info,
    );
    this.#calls.set(info.id, call);
    this.dispatchEvent(new CustomEvent("call", { detail: call }));
    return call;
  }

  /** An event of a call (`req` 0): to its `Call`, made on its first `state`. */
  #onCallEvent({ call: id, event }) {
    let call = this.#calls.get(id);
    if (!call && event?.state) {
      const { caller, callee, media } = event.state;
      call = this.#addCall({ id, caller, callee, media, role: caller === this.welcome?.user ? "caller" : "callee" });
    }
    if (!call) return;
    call.handle(event);
    if (event?.ring) this.dispatchEvent(new CustomEvent("ring", { detail: call }));
    if (call.state === "ended") this.#calls.delete(id);
  }

  #noteTracks(frame) {
    for (const info of frame.tracks ?? []) this.#trackRooms.set(info.track, frame.room);
    for (const track of frame.ended ?? []) this.#trackRooms.delete(track);
  }

  #requireLink() {
    if (this.state === "idle") throw new Error("not connected: call connect() first");
    if (!this.#link || this.state !== "open") throw new Error(`not connected (${this.state})`);
    return this.#link;
  }

  /** The answer to request `req`; `onAnswer` runs as soon as it arrives, before later frames. */
  #expect(req, onAnswer) {
    const settle = (resolve) => (frame) => {
      onAnswer?.(frame);
      resolve(frame);
    };
    return withTimeout(
      new Promise((resolve, reject) => this.#pending.set(req, { resolve: settle(resolve), reject })),
      this.#options.requestTimeoutMs,
      `request ${req}`,
    ).finally(() => this.#pending.delete(req));
  }

  async #join(room, since) {
    const req = this.#req();
    const answer = this.#expect(req);
    await this.#link.openRoom(room, { type: "join", req, room, since });
    const joined = await answer;
    const entry = this.#rooms.get(room);
    if (entry && !entry.position) entry.position = joined.position;
    const detail = { room, recovered: joined.recovered, position: joined.position };
    this.dispatchEvent(new CustomEvent("joined", { detail }));
    return detail;
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, transport: this.transport, ...extra } }));
  }

  /** What a link reports to this client while its attempt is alive; nothing after. */
  #events(attempt, onWelcome) {
    return {
      frame: (frame) => {
        if (!attempt.dead) this.#onFrame(frame, onWelcome);
      },
      datagram: (bytes) => {
        if (!attempt.dead) this.dispatchEvent(new CustomEvent("datagram", { detail: bytes }));
      },
      media: (event) => {
        if (!attempt.dead) this.dispatchEvent(new CustomEvent("media", { detail: event }));
      },
    };
  }

  #retire(attempt, reason) {
    attempt.dead = true;
    attempt.link?.close(reason);
    if (this.#attempt === attempt) this.#attempt = null;
  }

  #throwIfStopped() {
    if (this.#stopped) throw new Error("closed");
  }

  #onFrame(frame, onWelcome) {
    switch (frame.type) {
      case "welcome":
        return onWelcome(frame);
      case "message": {
        const entry = this.#rooms.get(frame.room);
        if (entry) entry.position = frame.position;
        return this.dispatchEvent(new CustomEvent("message", { detail: frame }));
      }
      case "go_away":
        this.#goAwayMs = frame.reconnect_after_ms;
        return undefined;
      case "tracks":
      case "layer":
      case "speakers":
      case "keyframe_request":
      case "layers_wanted":
        if (frame.type === "tracks") this.#noteTracks(frame);
        return this.dispatchEvent(new CustomEvent(frame.type, { detail: frame }));
      case "call":
        if (frame.req) break;
        if (this.state !== "open") return this.#earlyCallEvents.push(frame);
        return this.#onCallEvent(frame);
      case "error": {
        const pending = this.#pending.get(frame.req);
        if (pending) return pending.reject(new RelayError(frame.code, frame.message));
        if (frame.req === 0) onWelcome(frame);
        return this.dispatchEvent(new CustomEvent("error", { detail: frame }));
      }
      default:
        break;
    }
    const pending = frame.req === undefined ? null : this.#pending.get(frame.req);
    if (pending) return pending.resolve(frame);
    // Anything else (presence, typing, frame types added later) is the application's.
    return this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  /** One connection: open a link (WebTransport, else WebSocket), hello, welcome, rejoin.
   * Returns the attempt; its `link.closed` says how the link ends. */
  async #openOnce() {
    const token = this.#options.getToken ? await this.#options.getToken() : this.#options.token;
    this.#throwIfStopped();
    this.#earlyCallEvents = [];
    const attempt = await this.#openLink(token);
    const { link } = attempt;
    this.#link = link;
    this.transport = link.kind;
    this.#setState("open", this.fallbackReason ? { fallbackReason: this.fallbackReason } : {});
    for (const frame of this.#earlyCallEvents.splice(0)) this.#onCallEvent(frame);
    for (const [room, { position }] of this.#rooms) {
      this.#join(room, position).catch((err) => {
        this.dispatchEvent(new CustomEvent("error", { detail: { room, code: err.code, message: err.message } }));
      });
    }
    return attempt;
  }

  async #openLink(token) {
    const { transport, webTransportUrl, webSocketUrl, webTransportTimeoutMs, requestTimeoutMs } = this.#options;
    const wanted = transport === "auto" ? ["webtransport", "websocket"] : [transport];
    let lastError = null;
    let fallbackReason = null;
    for (const kind of wanted) {
      if (kind === "webtransport") {
        const unavailable = webTransportUnavailable(webTransportUrl);
        if (unavailable) {
          fallbackReason = unavailable;
          lastError = new Error(`WebTransport: ${unavailable}`);
          continue;
        }
      }
      const attempt = { link: null, dead: false };
      this.#attempt = attempt;
      const timeoutMs = kind === "webtransport" && wanted.length > 1 ? webTransportTimeoutMs : requestTimeoutMs;
      try {
        let welcome;
        const welcomed = new Promise((resolve, reject) => {
          welcome = (frame) => (frame.type === "welcome" ? resolve(frame) : reject(new RelayError(frame.code, frame.message)));
        });
        const events = this.#events(attempt, (frame) => {
          // A new connection is a new device to the relay: no call is in it, nothing rings yet.
          if (frame.type === "welcome") for (const call of this.#calls.values()) call.reconnected();
          welcome(frame);
        });
        if (kind === "webtransport") {
          const { certHashes } = this.#options;
          const hashes = typeof certHashes === "function" ? await certHashes() : certHashes;
          this.#throwIfStopped();
          attempt.link = new WebTransportLink(webTransportUrl, hashes, events);
        } else {
          attempt.link = new WebSocketLink(webSocketUrl, events);
        }
        const { link } = attempt;
        const handshake = (async () => {
          await link.open();
          await link.send({ type: "hello", version: PROTOCOL_VERSION, token, client: this.#options.clientName });
          return welcomed;
        })();
        this.welcome = await withTimeout(handshake, timeoutMs, `${kind} hello`);
        this.#throwIfStopped();
        this.fallbackReason = kind === "websocket" ? fallbackReason : null;
        return attempt;
      } catch (err) {
        // Closed, and deaf from now on: a late `closed` or frame of this link changes nothing.
        this.#retire(attempt, "giving up");
        if (err instanceof RelayError || this.#stopped) throw err;
        lastError = err;
        if (kind === "webtransport") fallbackReason = webTransportFailure(err, timeoutMs);
      }
    }
    throw lastError ?? new Error("no transport available");
  }

  async #run() {
    while (!this.#stopped) {
      this.#setState("connecting");
      let info;
      let attempt = null;
      try {
        attempt = await this.#openOnce();
        this.#failures = 0;
        this.#welcomed?.resolve(this.welcome);
        this.#welcomed = null;
        info = await attempt.link.closed;
      } catch (err) {
        info = { code: err instanceof RelayError ? err.code : null, reason: err.message };
      }
      if (attempt) this.#retire(attempt, "closed");
      this.#link = null;
      for (const { reject } of this.#pending.values()) reject(new Error(`connection lost: ${info.reason}`));
      this.#pending.clear();
      if (this.#stopped) return;
      const retry = info.code === null || RETRYABLE_CLOSE.has(info.code) || (info.code === TOKEN_EXPIRED && this.#options.getToken);
      if (!retry) {
        this.#stopped = true;
        this.#setState("closed", { code: info.code, reason: info.reason });
        this.#welcomed?.reject(new RelayError(info.code, info.reason));
        return;
      }
      const delayMs = Math.max(this.#goAwayMs, backoffDelay(this.#failures++, this.#options.backoff));
      this.#goAwayMs = 0;
      this.#setState("reconnecting", { delayMs, code: info.code, reason: info.reason });
      // The wait, unless the network comes back first (`networkChanged`).
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delayMs);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }
}
