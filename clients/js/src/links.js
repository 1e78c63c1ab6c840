// The two ways to the relay, as thin links: bytes in, frames out, no state of the app's. Each
// link reports its frames, datagrams and media to the `events` it was given and how it ended
// (`closed`), so the client can ignore a link it gave up on.
//
// - WebTransport: protocol v1 byte for byte as raw QUIC: a control stream first, then one
//   bidirectional stream per room, frames `[u32 length][body]` (docs/protocol.md); a slow room
//   never delays another. A datagram read loop always runs: Chromium drops incoming datagrams
//   nobody reads, and the relay sends lossy state (presence, typing) as datagrams.
// - WebSocket: one text message per frame; everything shares the socket. Its constructor is
//   passed in (the page's `WebSocket`, or e.g. the `ws` package under Node).

import { FrameError, FrameReader, decodeJson, encodeJson, fromBase64, lengthPrefixed } from "./codec.js";
import { RelayError, TimeoutError } from "./errors.js";
import { GroupReader, encodeFrame, encodeGroupHeader } from "./media.js";

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
export function webTransportFailure(err, timeoutMs) {
  if (err instanceof TimeoutError) return `no answer within ${timeoutMs} ms (UDP blocked?)`;
  // Browsers do not say which on purpose: a certificate that is not trusted and does not match
  // `certHashes`, or a UDP port that refuses, both end as "Opening handshake failed."
  if (err?.name === "WebTransportError") return `${err.message} (certificate rejected or UDP port closed?)`;
  return String(err?.message ?? err) || "connection failed";
}


const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A frame's JSON bytes. One larger than the relay's `limits.max_frame_bytes` (`link.maxFrameBytes`,
 * set from the welcome) throws `frame_too_large` (102) instead of going out: the relay would close
 * the whole connection for it, and the reconnect would send it again. */
function encoded(link, frame) {
  const bytes = encoder.encode(encodeJson(frame));
  const max = link.maxFrameBytes;
  if (bytes.length > max) throw new RelayError(102, `frame_too_large: a ${frame.type} frame of ${bytes.length} bytes exceeds limits.max_frame_bytes (${max}); not sent`);
  return bytes;
}

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
export class WebTransportLink {
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
    // A heartbeat tells the relay this client takes heartbeats: it then probes the path with its
    // own when its data stops being acknowledged (an outage), so the first after the network's
    // return restarts delivery (docs/protocol.md, "QUIC datagrams").
    this.sendDatagram(new Uint8Array(1));
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
        // The relay's heartbeats (zero bytes only) carry nothing.
        if (value.every((byte) => byte === 0)) continue;
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

  #bytes(frame) {
    return lengthPrefixed(encoded(this, frame));
  }

  send(frame) {
    return this.control.write(this.#bytes(frame));
  }

  /** Opens the room's own stream with its `join` as the first frame. */
  async openRoom(room, join) {
    const stream = await this.transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    this.rooms.set(room, writer);
    this.#readStream(stream.readable);
    return writer.write(this.#bytes(join));
  }

  sendRoom(room, frame) {
    const writer = this.rooms.get(room);
    return writer ? writer.write(this.#bytes(frame)) : this.send(frame);
  }

  closeRoom(room) {
    const writer = this.rooms.get(room);
    this.rooms.delete(room);
    writer?.close().catch(() => {});
  }

  /** Sends `frames` (requests) on a new stream of their own, so their answers do not wait
   * behind another stream's retransmissions; resolves with a function that finishes it. */
  async sendAlone(frames) {
    const stream = await this.transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    this.#readStream(stream.readable);
    for (const frame of frames) writer.write(this.#bytes(frame)).catch(() => {});
    return () => writer.close().catch(() => {});
  }

  /** Two datagrams of zero bytes (heartbeats to the relay): after a network change they let the
   * relay send more to a new address before it has validated it (docs/protocol.md). */
  pad() {
    const size = Math.min(this.transport.datagrams.maxDatagramSize ?? 0, PADDED_HEARTBEAT_BYTES);
    if (size <= 0) return;
    for (let i = 0; i < 2; i++) this.sendDatagram(new Uint8Array(size));
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

/** The size of a padded heartbeat: a packet within the 1,200 bytes every QUIC path carries. */
const PADDED_HEARTBEAT_BYTES = 1100;

/** WebSocket: every frame is one text message on the one socket. */
export class WebSocketLink {
  kind = "websocket";

  constructor(url, events, WebSocketImpl) {
    this.events = events;
    this.socket = new WebSocketImpl(url);
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
    this.socket.send(decoder.decode(encoded(this, frame)));
  }

  openRoom(_room, join) {
    this.send(join);
  }

  sendRoom(_room, frame) {
    this.send(frame);
  }

  closeRoom() {}

  /** One socket: the frames go on it like any other. */
  async sendAlone(frames) {
    for (const frame of frames) this.send(frame);
    return () => {};
  }

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
