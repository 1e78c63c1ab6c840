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
// Why it is shaped like this:
// - Protocol v1 over WebTransport is byte for byte raw QUIC's: a control stream first, then one
//   bidirectional stream per room, frames `[u32 length][body]` (docs/protocol.md). A slow room
//   therefore never delays another. Over WebSocket everything shares the one socket.
// - A datagram read loop always runs on WebTransport: Chromium drops incoming datagrams that
//   nobody reads, and the relay uses datagrams for lossy state.
// - Full jitter (a uniformly random delay up to the exponential bound) keeps a relay restart from
//   being hit by every client at the same instant.

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

const TOKEN_EXPIRED = 111;

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

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const encoder = new TextEncoder();
const decoder = new TextDecoder();

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
    // `closed` settles once: exactly one of these runs.
    this.transport.closed.then(
      (info) => events.closed({ code: info?.closeCode ?? 0, reason: info?.reason ?? "" }),
      (err) => events.closed({ code: null, reason: String(err?.message ?? err) }),
    );
  }

  async open() {
    await this.transport.ready;
    this.#readDatagrams();
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
  }

  open() {
    return new Promise((resolve, reject) => {
      this.socket.onopen = () => resolve();
      this.socket.onerror = () => reject(new Error("WebSocket failed to open"));
      this.socket.onmessage = (event) => {
        const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
        try {
          this.events.frame(decodeJson(text));
        } catch (err) {
          this.close(`bad frame from relay: ${err.message}`);
        }
      };
      this.socket.onclose = (event) => {
        reject(new Error(`WebSocket closed (${event.code})`));
        // 4000 + error code (docs/protocol.md); 1000 is a normal close.
        const code = event.code >= 4000 && event.code < 5000 ? event.code - 4000 : event.code === 1000 ? 0 : null;
        this.events.closed({ code, reason: event.reason });
      };
    });
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
 * `clientName`.
 *
 * Events (`detail`): `status` ({state, transport, delayMs?}), `message` (a `message` frame),
 * `joined` ({room, recovered, position}) on every (re)join, `error` (an `error` frame not tied to a
 * request), `frame` (any other frame: presence, typing, types added later), `datagram` (bytes).
 */
export class EdgeRelay extends EventTarget {
  #options;
  #link = null;
  #rooms = new Map();
  #pending = new Map();
  #nextReq = 1;
  #nextId = 1;
  #stopped = false;
  #goAwayMs = 0;
  #linkClosed = null;
  #welcomed = null;

  constructor(options) {
    super();
    this.#options = {
      transport: "auto",
      webTransportTimeoutMs: 3000,
      requestTimeoutMs: 10_000,
      backoff: { baseMs: 250, capMs: 10_000 },
      clientName: "edgerelay-js/1",
      ...options,
    };
    this.state = "idle";
    this.transport = null;
    this.welcome = null;
  }

  /** Connects; resolves with the `welcome` once connected, rejects if the relay refuses the token. */
  connect() {
    if (!this.connected) {
      this.connected = new Promise((resolve, reject) => {
        this.#welcomed = { resolve, reject };
      });
      this.#run();
    }
    return this.connected;
  }

  /** Joins a room (on WebTransport: its own stream). Rejoined automatically after reconnects. */
  async join(room) {
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
    const started = performance.now();
    const req = this.#req();
    const answer = this.#expect(req);
    this.#requireLink().send({ type: "ping", req });
    await answer;
    return performance.now() - started;
  }

  /** Sends a datagram (WebTransport only; dropped on WebSocket). */
  sendDatagram(bytes) {
    this.#link?.sendDatagram(bytes);
  }

  /** Closes for good: no reconnect. */
  close() {
    this.#stopped = true;
    this.#link?.close();
    this.#setState("closed");
  }

  // --- internals ---

  #req() {
    return this.#nextReq++;
  }

  #requireLink() {
    if (!this.#link || this.state !== "open") throw new Error(`not connected (${this.state})`);
    return this.#link;
  }

  #expect(req) {
    return withTimeout(
      new Promise((resolve, reject) => this.#pending.set(req, { resolve, reject })),
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

  #events(onWelcome) {
    return {
      frame: (frame) => this.#onFrame(frame, onWelcome),
      datagram: (bytes) => this.dispatchEvent(new CustomEvent("datagram", { detail: bytes })),
      closed: (info) => this.#linkClosed?.(info),
    };
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
      case "error": {
        const pending = this.#pending.get(frame.req);
        if (pending) return pending.reject(new RelayError(frame.code, frame.message));
        if (frame.req === 0) onWelcome(frame);
        return this.dispatchEvent(new CustomEvent("error", { detail: frame }));
      }
      default: {
        const pending = frame.req === undefined ? null : this.#pending.get(frame.req);
        if (pending) return pending.resolve(frame);
        // Anything else (presence, typing, frame types added later) is the application's.
        return this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
      }
    }
  }

  /** One connection: open a link (WebTransport, else WebSocket), hello, welcome, rejoin.
   * Returns `{closed}`, a promise of how the link ends. */
  async #openOnce() {
    const token = this.#options.getToken ? await this.#options.getToken() : this.#options.token;
    const closed = new Promise((resolve) => {
      this.#linkClosed = resolve;
    });
    const link = await this.#openLink(token);
    this.#link = link;
    this.transport = link.kind;
    this.#setState("open");
    for (const [room, { position }] of this.#rooms) {
      this.#join(room, position).catch((err) => {
        this.dispatchEvent(new CustomEvent("error", { detail: { room, code: err.code, message: err.message } }));
      });
    }
    // Wrapped: an async function returning a bare promise would wait for it.
    return { closed };
  }

  async #openLink(token) {
    const { transport, webTransportUrl, webSocketUrl, webTransportTimeoutMs, requestTimeoutMs } = this.#options;
    const wanted = transport === "auto" ? ["webtransport", "websocket"] : [transport];
    let lastError = null;
    for (const kind of wanted) {
      if (kind === "webtransport" && (typeof WebTransport === "undefined" || !webTransportUrl)) continue;
      let link = null;
      try {
        let welcome;
        const welcomed = new Promise((resolve, reject) => {
          welcome = (frame) => (frame.type === "welcome" ? resolve(frame) : reject(new RelayError(frame.code, frame.message)));
        });
        const events = this.#events((frame) => welcome(frame));
        if (kind === "webtransport") {
          const { certHashes } = this.#options;
          const hashes = typeof certHashes === "function" ? await certHashes() : certHashes;
          link = new WebTransportLink(webTransportUrl, hashes, events);
        } else {
          link = new WebSocketLink(webSocketUrl, events);
        }
        const timeoutMs = kind === "webtransport" && wanted.length > 1 ? webTransportTimeoutMs : requestTimeoutMs;
        const handshake = (async () => {
          await link.open();
          link.send({ type: "hello", version: PROTOCOL_VERSION, token, client: this.#options.clientName });
          return welcomed;
        })();
        this.welcome = await withTimeout(handshake, timeoutMs, `${kind} hello`);
        return link;
      } catch (err) {
        link?.close("giving up");
        if (err instanceof RelayError) throw err;
        lastError = err;
      }
    }
    throw lastError ?? new Error("no transport available");
  }

  async #run() {
    let attempt = 0;
    while (!this.#stopped) {
      this.#setState("connecting");
      let info;
      try {
        const { closed } = await this.#openOnce();
        attempt = 0;
        this.#welcomed?.resolve(this.welcome);
        this.#welcomed = null;
        info = await closed;
      } catch (err) {
        info = { code: err instanceof RelayError ? err.code : null, reason: err.message };
      }
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
      const delayMs = Math.max(this.#goAwayMs, backoffDelay(attempt++, this.#options.backoff));
      this.#goAwayMs = 0;
      this.#setState("reconnecting", { delayMs, code: info.code, reason: info.reason });
      await sleep(delayMs);
    }
  }
}
