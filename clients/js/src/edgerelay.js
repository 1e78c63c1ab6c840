// The edgerelay browser client (plain ES modules, no dependencies, no build step): WebTransport
// first, WebSocket when WebTransport is missing, blocked or slow; hello with a token, rooms with
// their messages, presence, typing and history; publishes kept until acknowledged; reconnect with
// exponential backoff and full jitter, rejoining every room from the last position it saw.
//
//   import { EdgeRelay } from "@edgerelay/client";
//   const relay = new EdgeRelay({ getToken, webTransportUrl, webSocketUrl, certHashes });
//   await relay.connect();
//   const room = await relay.join("chat:lobby");
//   room.addEventListener("message", (e) => console.log(e.detail));
//   const position = await room.publish({ text: "hi" });
//
// The user-facing reference is clients/js/README.md; the types are in index.d.ts.
//
// Why it is shaped like this:
// - Nothing an app sends is lost to a reconnect: joined rooms are rejoined from their last
//   position (`since`), and publishes wait in an outbox (outbox.js) and go again with their ids
//   until acknowledged; the relay's idempotent publish and exact resume make that exactly once.
// - Calls that cannot work in the current state reject with a `StateError` (errors.js) instead of
//   failing on a missing link: before `connect()`, after `close()`, or with no WebSocket to use.
//   While reconnecting, `join` and `publish` wait for the connection instead.
// - Frames are routed by type whichever link carried them: presence and typing arrive as
//   WebTransport datagrams or as WebSocket messages and reach the same `Room`.
// - Each link reports its own end (`link.closed`), and a link given up on (timed out, failed,
//   replaced, or `close()`d while connecting) is closed and ignored from then on: a WebTransport
//   session that fails late must not end the WebSocket that replaced it.
//
// When it connects over WebSocket although WebTransport was wanted (`transport: "auto"`),
// `fallbackReason` (and the `open` status event's) says why: the page is not a secure context
// (WebTransport exists only on https: pages and on http://localhost, 127.0.0.1 or [::1]), the
// browser has no WebTransport, the handshake failed (browsers do not say whether the certificate
// was rejected or the UDP port refused), or no answer came within `webTransportTimeoutMs`.

import { PROTOCOL_VERSION, RETRYABLE_CLOSE, decodeJson } from "./codec.js";
import { CallBook } from "./calls.js";
import { keptSubscription, topicMatches } from "./events.js";
import { RETRYABLE_REQUEST, RelayError, StateError, TimeoutError, withTimeout } from "./errors.js";
import { GroupWriter, WebSocketLink, WebTransportLink, webTransportFailure, webTransportUnavailable } from "./links.js";
import { FLAG_KEYFRAME } from "./media.js";
import { Outbox, messageId } from "./outbox.js";
import { Room, validRoomName } from "./room.js";
import { backoffDelay, refreshDelay, tokenExpiry } from "./schedule.js";
import { receiptMethods } from "./receipts.js";

export { RelayError, StateError, TimeoutError } from "./errors.js";
export { GroupWriter, webTransportUnavailable } from "./links.js";
export { backoffDelay } from "./schedule.js";

const TOKEN_EXPIRED = 111;
const MEDIA_UNSUPPORTED = 140;
/** After a network change (WebTransport): the rooms asked for what they missed, and how much each. */
const CATCH_UP_ROOMS = 32;
const CATCH_UP_PAGE = 100;
// Frames about a room's members that may come as datagrams (docs/protocol.md).
const PRESENCE_FRAMES = new Set(["presence", "presence_batch", "presence_snapshot", "presence_refresh", "typing"]);
const decoder = new TextDecoder();

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

/** A `history` answer for `room` as `{messages, position, first}`, its entries as messages. */
function historyPage(room, frame) {
  const epoch = frame.position?.epoch ?? 0;
  const messages = (Array.isArray(frame.messages) ? frame.messages : []).map(({ offset, from, time, id, data }) => ({
    type: "message",
    room,
    position: { epoch, offset },
    from,
    time,
    id,
    data,
  }));
  return { messages, position: frame.position, first: frame.first ?? 1 };
}

/**
 * A connection to an edgerelay that survives disconnects. See clients/js/README.md for the
 * options, events and methods; index.d.ts has their types.
 */
export class EdgeRelay extends EventTarget {
  #options;
  #link = null;
  // Room name → Room, for every room the app asked about.
  #rooms = new Map();
  #pending = new Map();
  #outbox = new Outbox();
  #nextReq = 1;
  #stopped = false;
  #goAwayMs = 0;
  // The link being opened or in use, as `{link, dead}`. A dead attempt's link is closed and
  // whatever it still reports is ignored: it can never touch the connection that replaced it.
  #attempt = null;
  #welcomed = null;
  // Track id → room, for sending track requests on the room's stream.
  #trackRooms = new Map();
  // Pattern → Subscription, for every topic subscription the app keeps (docs/events.md).
  #subscriptions = new Map();
  // The live calls (id → Call).
  #calls = new CallBook(this, { action: (id, action, onOk) => this.#callAction(id, action, onOk), iceServers: () => this.iceServers() });
  // Call events that came right behind the welcome, before this connection was open: handled
  // once it is, so that what an app does about them (rejoin, answer) can be sent.
  #earlyCallEvents = [];
  // Failed attempts since the last connection: the backoff's exponent.
  #failures = 0;
  // Ends the backoff wait early (a network change), when one is under way.
  #wake = null;
  // Removes the `online` and `visibilitychange` listeners.
  #unwatch = () => {};
  // Those waiting for the next open connection (`join` and `publish` while reconnecting).
  #openWaiters = [];
  // The token refresh timer, and the relay's clock minus ours (from `welcome.server_time`).
  #refreshTimer = null;
  #skewMs = 0;

  constructor(options = {}) {
    super();
    this.#options = {
      transport: "auto",
      webTransportTimeoutMs: 3000,
      requestTimeoutMs: 10_000,
      backoff: { baseMs: 250, capMs: 10_000 },
      clientName: "edgerelay-js/1",
      networkProbeMs: 3000,
      refreshBeforeMs: 60_000,
      networkEvents: { online: globalThis.window, visibility: globalThis.document },
      ...options,
    };
    /** `idle`, `connecting`, `open`, `reconnecting`, `offline` or `closed`. */
    this.state = "idle";
    /** `webtransport` or `websocket` while open, else the last one used (null before). */
    this.transport = null;
    this.welcome = null;
    this.fallbackReason = null;
    /** When the next connection attempt starts (unix ms) while reconnecting or offline. */
    this.retryAt = null;
    /** The `connect()` promise, once called. */
    this.connected = null;
  }

  /** Connects; resolves with the `welcome` once connected, rejects if the relay refuses the token. */
  connect() {
    if (this.#stopped) return Promise.reject(new StateError("closed", "this client was closed: make a new one"));
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
    if (this.#link.kind === "webtransport") this.#catchUp();
    withTimeout(this.ping(), this.#options.networkProbeMs, "ping after a network change").catch((err) => {
      // Only a silent connection is given up; an answer, even an error, shows it works.
      if (err instanceof TimeoutError && this.#attempt === attempt) this.#retire(attempt, "no answer after a network change");
    });
  }

  /** After a network change on WebTransport: asks the most recently active joined rooms for
   * what they hold after the last message delivered, on a stream of its own (the rooms'
   * streams wait a round trip more for QUIC to resend what an outage lost) and delivers the
   * answers' unbroken runs; the rooms' streams drop those copies later. Failures are ignored:
   * the rooms' streams deliver everything anyway. */
  #catchUp() {
    const rooms = [...this.#rooms.values()]
      .filter((room) => room.joined && room.position)
      .sort((a, b) => b._deliveredAt - a._deliveredAt)
      .slice(0, CATCH_UP_ROOMS);
    if (rooms.length === 0) return;
    this.#link.pad?.();
    this.#historiesAfter(rooms.map((room) => [room.name, room.position.offset]), CATCH_UP_PAGE)
      .then((pages) =>
        pages.forEach(({ value }, i) => {
          for (const m of value ? rooms[i]._caughtUp(value.messages, value.position?.epoch) : []) {
            this.dispatchEvent(new CustomEvent("message", { detail: m }));
          }
        }),
      )
      .catch(() => {});
  }

  /** `history_after` for each `[room, after]`, on one stream of their own: each page settled
   * (`Promise.allSettled`) as `history` returns it. */
  async #historiesAfter(rooms, limit) {
    const asked = rooms.map(([room, after]) => {
      const req = this.#req();
      return [room, this.#expect(req), { type: "history_after", req, room, after, limit }];
    });
    const finish = await this.#requireLink().sendAlone(asked.map((a) => a[2]));
    try {
      return await Promise.allSettled(asked.map(async ([room, answer]) => historyPage(room, await answer)));
    } finally {
      finish();
    }
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

  // --- rooms ---

  /** The `Room` named `name` (made on first use; nothing is sent). Throws `RelayError` 121
   * (`bad_room`) for a name the relay would refuse. */
  room(name) {
    if (!validRoomName(name)) {
      throw new RelayError(121, `bad_room: ${JSON.stringify(name)} is not a room name (1-128 of A-Z a-z 0-9 _ : . @ = + -)`);
    }
    let room = this.#rooms.get(name);
    if (!room) {
      room = new Room(name, this, this.#options.typing);
      this.#rooms.set(name, room);
    }
    return room;
  }

  /** All rooms this client was asked about. */
  get rooms() {
    return [...this.#rooms.values()];
  }

  /**
   * Joins a room (on WebTransport: its own stream) and keeps it joined across reconnects;
   * resolves with its `Room` once joined. While reconnecting it waits for the connection; a
   * join cut off by a lost connection, or refused with a retryable error (`store_unavailable`),
   * is tried again. Other refusals (`permission_denied`, `bad_room`...) reject.
   */
  async join(name) {
    const room = this.room(name);
    this.#requireStarted();
    const wasWanted = room.wanted;
    room.wanted = true;
    return this.#persist(
      async () => {
        if (!room.joined) await this.#joinOnce(room);
        return room;
      },
      () => true,
      () => {
        if (!wasWanted && !room.joined) {
          room.wanted = false;
          this.#link?.closeRoom(name);
        }
      },
    );
  }

  /**
   * `once()` on an open connection until it succeeds: again on the next connection when this
   * one is lost, and after a backoff delay when refused with a retryable error, while `wanted()`.
   * Other refusals run `giveUp()` and reject.
   */
  async #persist(once, wanted, giveUp) {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#whenOpen();
        return await once();
      } catch (err) {
        const lost = err instanceof StateError && err.code === "not_connected" && !this.#stopped;
        const retryable = err instanceof RelayError && RETRYABLE_REQUEST.has(err.code);
        if ((!lost && !retryable) || !wanted()) {
          giveUp();
          throw err;
        }
        if (retryable) await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt, this.#options.backoff)));
      }
    }
  }

  /** Leaves a room and stops rejoining it. While reconnecting nothing is joined on the relay:
   * the room is only dropped from the rooms rejoined (it resolves at once). */
  async leave(name) {
    this.#requireStarted();
    const room = this.room(name);
    const link = this.#link;
    if (!link || this.state !== "open") return room._left();
    const req = this.#req();
    const answer = this.#expect(req);
    link.sendRoom(name, { type: "leave", req, room: name });
    await answer;
    room._left();
    link.closeRoom(name);
  }

  /**
   * Publishes `data` (any JSON value, or `binary(bytes)`) to a room (joined or not, with the
   * `publish` capability); resolves with the acked position `{epoch, offset}`. Kept and sent
   * again with the same id across reconnects until acknowledged (exactly once); a relay error
   * that is not retryable rejects it. `options.id`: your own message id (unique per user and room).
   */
  publish(name, data, { id = messageId(), mentions } = {}) {
    try {
      if (!validRoomName(name)) this.room(name);
      this.#requireStarted();
    } catch (err) {
      return Promise.reject(err);
    }
    const { entry, fresh, promise } = this.#outbox.add(name, String(id), data, mentions);
    if (fresh && this.#link && this.state === "open") this.#sendPublish(entry, this.#link);
    return promise;
  }

  /** Publishes not yet acknowledged. */
  get unacked() {
    return this.#outbox.size;
  }

  /**
   * A page of a room's history: up to `limit` (1-100) messages before offset `before` (null:
   * the newest), oldest first, as messages. Resolves with `{messages, position, first}`
   * (`position`: the room's top; `first`: the lowest offset retained).
   */
  async history(name, { before = null, limit = 50 } = {}) {
    const link = this.#requireLink();
    this.room(name);
    const req = this.#req();
    const answer = this.#expect(req);
    link.sendRoom(name, { type: "history", req, room: name, before, limit });
    return historyPage(name, await answer);
  }

  /**
   * A page of a room's history forward: up to `limit` (1-100) messages after offset `after`,
   * oldest first, as messages (cut short, keeping the oldest, to fit a frame). Resolves with
   * `{messages, position, first}`; compare `position.epoch` with yours. On WebTransport it goes
   * on a stream of its own.
   */
  async historyAfter(name, { after = 0, limit = 100 } = {}) {
    this.room(name);
    const [page] = await this.#historiesAfter([[name, after]], limit);
    if (page.status === "rejected") throw page.reason;
    return page.value;
  }

  /** Says whether this user types in a joined room (lossy: dropped when not connected). */
  async typing(name, typing) {
    this.#requireLink().send({ type: "typing", room: name, typing: Boolean(typing) });
  }

  /** Sets this user's status (`online`, `away`, `busy`, `offline`) and custom text everywhere. */
  async setStatus(status, custom = null) {
    this.#requireLink().send({ type: "set_status", status, custom });
  }

  /** Marks this device active (an idle user shows as away after `presence.idle_after_ms`). */
  async activity() {
    this.#requireLink().send({ type: "activity" });
  }

  /** Hides this user's presence and/or typing everywhere (kept by the relay). */
  async privacy({ hidePresence = false, hideTyping = false } = {}) {
    this.#requireLink().send({ type: "privacy", hide_presence: hidePresence, hide_typing: hideTyping });
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

  /**
   * Sends a new token now (`token`, or one from `getToken`); resolves with its expiry (unix
   * seconds). With `getToken` the client does this by itself `refreshBeforeMs` before expiry.
   */
  async refresh(token) {
    const link = this.#requireLink();
    const fresh = token ?? (await this.#token());
    const req = this.#req();
    const answer = this.#expect(req);
    link.send({ type: "refresh", req, token: fresh });
    const { expires_at: expiresAt } = await answer;
    this.#options.token = fresh;
    this.#scheduleRefresh(expiresAt);
    return expiresAt;
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

  // --- event topics (docs/events.md); over every transport ---

  /**
   * Subscribes to a topic pattern (`orders.eu.created`, `orders.*.created`, `orders.>`) and keeps
   * it across reconnects; resolves with its `Subscription` once the relay took it. `filter`: a
   * filter on the events' tags; `since`: a position to resume an exact persistent topic after.
   * While reconnecting it waits for the connection. Refusals (`permission_denied`, `bad_topic`,
   * `bad_filter`...) reject. One subscription per pattern: the same pattern again gives the same
   * `Subscription`.
   */
  async subscribe(pattern, { filter = null, since = null } = {}) {
    this.#requireStarted();
    const sub = keptSubscription(this.#subscriptions, pattern, { filter, since }, (s) => this.#unsubscribe(s));
    const kept = () => this.#subscriptions.get(pattern) === sub;
    return this.#persist(
      async () => {
        if (!sub.active) await this.#subscribeOnce(sub);
        return sub;
      },
      kept,
      () => {
        if (kept()) this.#subscriptions.delete(pattern);
      },
    );
  }

  /** The topic subscriptions this client keeps. */
  get subscriptions() {
    return [...this.#subscriptions.values()];
  }

  /** `subscribe` on this connection: the one under way (after a reconnect), or a new one. */
  #subscribeOnce(sub) {
    if (!sub._subscribing) {
      const link = this.#requireLink();
      const req = this.#req();
      const answer = this.#expect(req);
      link.send({ type: "subscribe", req, pattern: sub.pattern, filter: sub.filter, since: sub.position });
      const subscribing = answer.then((frame) => sub._subscribed(frame));
      sub._subscribing = subscribing;
      const done = () => {
        if (sub._subscribing === subscribing) sub._subscribing = null;
      };
      subscribing.then(done, done);
    }
    return sub._subscribing;
  }

  async #unsubscribe(sub) {
    if (this.#subscriptions.get(sub.pattern) !== sub) return;
    this.#subscriptions.delete(sub.pattern);
    const wasActive = sub.active;
    sub.active = false;
    if (!wasActive || !this.#link || this.state !== "open") return;
    const req = this.#req();
    const answer = this.#expect(req);
    this.#link.send({ type: "unsubscribe", req, pattern: sub.pattern });
    await answer;
  }

  // --- any frame (the sessions module, frame types the SDK does not wrap) ---

  /**
   * Sends `frame` (`{type, ...fields}` of docs/protocol.md) on the control stream with a fresh
   * `req`; resolves with the answer frame, rejects with `RelayError` when refused. `onAnswer`
   * runs with the answer before any later frame is handled.
   */
  async request(frame, onAnswer) {
    const link = this.#requireLink();
    const req = this.#req();
    // Sent first: a frame refused unsent (`frame_too_large`) leaves no answer waiting.
    link.send({ ...frame, req });
    return this.#expect(req, onAnswer);
  }

  /** Sends `frame` on the control stream, expecting no answer. */
  async send(frame) {
    this.#requireLink().send(frame);
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
  call(callee, { media = "video", ...rtc } = {}) {
    return this.#calls.place(callee, media, rtc);
  }

  /** The live calls this client knows of. */
  get calls() {
    return [...this.#calls.calls.values()];
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

  /** Closes for good: no reconnect; waiting publishes and requests reject with a `StateError`. */
  close() {
    if (this.state === "closed" && this.#stopped) return;
    this.#stopped = true;
    this.#unwatch();
    this.#wake?.();
    clearTimeout(this.#refreshTimer);
    if (this.#attempt) this.#retire(this.#attempt, "bye");
    this.#link = null;
    const closed = new StateError("closed", "closed before it connected");
    this.#welcomed?.reject(closed);
    this.#welcomed = null;
    this.#failWaiting(new StateError("closed", "the client was closed"));
    for (const room of this.#rooms.values()) room._close();
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
    if (room && this.#rooms.get(room)?.joined) link.sendRoom(room, frame);
    else link.send(frame);
    return answer;
  }

  /** A `call` request on the control stream, where the call's events come. */
  #callAction(call, action, onOk) {
    const link = this.#requireLink();
    const req = this.#req();
    link.send({ type: "call", req, call, action });
    return this.#expect(req, onOk);
  }

  /** An event of a call (`req` 0): `call_event` with it as it came (what `SharedRelay`
   * forwards), then to its `Call`. */
  #onCallEvent(frame) {
    this.dispatchEvent(new CustomEvent("call_event", { detail: frame }));
    this.#calls.onEvent(frame);
  }

  #noteTracks(frame) {
    for (const info of frame.tracks ?? []) this.#trackRooms.set(info.track, frame.room);
    for (const track of frame.ended ?? []) this.#trackRooms.delete(track);
  }

  /** Throws unless `connect()` was called and `close()` was not. */
  #requireStarted() {
    if (this.#stopped) throw new StateError("closed", `the client is closed${this.closeReason ? ` (${this.closeReason})` : ""}`);
    if (this.state === "idle") throw new StateError("not_connected", "not connected: call connect() first");
  }

  /** The open link, or a `StateError`. */
  #requireLink() {
    this.#requireStarted();
    if (!this.#link || this.state !== "open") throw new StateError("not_connected", `not connected (${this.state})`);
    return this.#link;
  }

  /** Resolves once a connection is open (now, or after the reconnect); rejects on `close()`. */
  #whenOpen() {
    if (this.#link && this.state === "open") return Promise.resolve();
    return new Promise((resolve, reject) => this.#openWaiters.push({ resolve, reject }));
  }

  #failWaiting(error) {
    for (const { reject } of this.#openWaiters.splice(0)) reject(error);
    for (const { reject } of this.#pending.values()) reject(error);
    this.#pending.clear();
    this.#outbox.failAll(error);
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

  /** The room's join on this connection: the one under way (a rejoin), or a new one. */
  #joinOnce(room) {
    if (!room._joining) {
      const joining = this.#join(room);
      room._joining = joining;
      const done = () => {
        if (room._joining === joining) room._joining = null;
      };
      joining.then(done, done);
    }
    return room._joining;
  }

  /** Joins `room` from its last position; resolves with it once joined. `.sent` resolves once
   * the `join` was written (its stream opened on WebTransport). */
  #join(room) {
    const req = this.#req();
    const answer = this.#expect(req);
    const sent = Promise.resolve(this.#link.openRoom(room.name, { type: "join", req, room: room.name, since: room.position }));
    const joined = (async () => {
      await sent;
      const frame = await answer;
      room._joined(frame);
      const detail = { room: room.name, recovered: frame.recovered, position: frame.position };
      this.dispatchEvent(new CustomEvent("joined", { detail }));
      return room;
    })();
    joined.sent = sent;
    return joined;
  }

  /**
   * Sends one outbox entry on `link`. Its answer settles it; the loss of the connection does not
   * (the entry stays and is sent again on the next one). A retryable refusal (`rate_limited`,
   * `store_unavailable`, `internal`) is sent again after a backoff delay.
   */
  #sendPublish(entry, link) {
    const req = this.#req();
    entry.attempts += 1;
    const { room, id, data } = entry;
    this.#pending.set(req, {
      keep: true,
      resolve: (ack) => {
        this.#pending.delete(req);
        this.#outbox.ack(room, id, ack.position);
      },
      reject: (err) => {
        this.#pending.delete(req);
        if (!(err instanceof RelayError) || !RETRYABLE_REQUEST.has(err.code)) return this.#outbox.fail(room, id, err);
        setTimeout(() => {
          if (this.#link === link && this.state === "open") this.#sendPublish(entry, link);
        }, backoffDelay(entry.attempts, this.#options.backoff));
        return undefined;
      },
    });
    try {
      link.sendRoom(room, { type: entry.mentions ? "publish_mentions" : "publish", req, room, id, data, mentions: entry.mentions });
    } catch (err) {
      this.#pending.get(req).reject(err); // Too large to send: not retryable.
    }
  }

  /** A token: from `getToken` when given (a new one each time), else the `token` option. */
  async #token() {
    const { getToken, token } = this.#options;
    return getToken ? await getToken() : token;
  }

  /** Refreshes the token `refreshBeforeMs` before `expiresAt` (unix seconds), with `getToken`. */
  #scheduleRefresh(expiresAt) {
    clearTimeout(this.#refreshTimer);
    if (!this.#options.getToken || !Number.isFinite(expiresAt)) return;
    const delay = refreshDelay(expiresAt, Date.now() + this.#skewMs, this.#options.refreshBeforeMs);
    const link = this.#link;
    this.#refreshTimer = setTimeout(() => {
      if (this.#link !== link || this.#stopped) return;
      this.refresh().catch((err) => {
        // The connection ends at expiry then, and the reconnect asks `getToken` again.
        this.dispatchEvent(new CustomEvent("error", { detail: { code: err.code ?? null, message: `token refresh failed: ${err.message}` } }));
      });
    }, delay);
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.retryAt = extra.retryAt ?? null;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, transport: this.transport, ...extra } }));
  }

  /** What a link reports to this client while its attempt is alive; nothing after. */
  #events(attempt, onWelcome) {
    return {
      frame: (frame) => {
        if (!attempt.dead) this.#onFrame(frame, onWelcome);
      },
      datagram: (bytes) => {
        if (attempt.dead) return;
        this.dispatchEvent(new CustomEvent("datagram", { detail: bytes }));
        // A datagram is one frame body in the connection's codec (JSON here), no length prefix.
        let frame;
        try {
          frame = decodeJson(decoder.decode(bytes));
        } catch {
          return; // Lossy and never fatal: an undecodable datagram is dropped.
        }
        if (PRESENCE_FRAMES.has(frame.type) || frame.type === "session") this.#onFrame(frame, onWelcome);
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
    if (this.#stopped) throw new StateError("closed", "closed before it connected");
  }

  /** A presence or typing frame: to its room; a refresh that disagrees asks for a snapshot. */
  #onPresence(frame) {
    const room = typeof frame.room === "string" ? this.#rooms.get(frame.room) : undefined;
    if (room?._presence(frame) && this.#link && this.state === "open") {
      this.#link.send({ type: "presence_sync", req: this.#req(), room: room.name });
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  #onFrame(frame, onWelcome) {
    switch (frame.type) {
      case "welcome":
        return onWelcome(frame);
      case "message": {
        const room = typeof frame.room === "string" ? this.#rooms.get(frame.room) : undefined;
        if (room && !room._message(frame)) return undefined; // Already delivered.
        return this.dispatchEvent(new CustomEvent("message", { detail: frame }));
      }
      case "ack":
        break;
      case "go_away":
        this.#goAwayMs = frame.reconnect_after_ms;
        return undefined;
      case "presence":
      case "presence_batch":
      case "presence_snapshot":
      case "presence_refresh":
      case "typing":
        // A snapshot answering `presence_sync` carries its `req`; nobody waits for it.
        this.#pending.get(frame.req)?.resolve(frame);
        return this.#onPresence(frame);
      case "tracks":
      case "layer":
      case "speakers":
      case "keyframe_request":
      case "layers_wanted":
        if (frame.type === "tracks") this.#noteTracks(frame);
        return this.dispatchEvent(new CustomEvent(frame.type, { detail: frame }));
      case "event":
        if (typeof frame.topic !== "string") return undefined;
        for (const sub of this.#subscriptions.values()) if (topicMatches(sub.pattern, frame.topic)) sub._event(frame);
        return this.dispatchEvent(new CustomEvent("event", { detail: frame }));
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
    // Anything else (frame types added later) is the application's.
    return this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  /** One connection: open a link (WebTransport, else WebSocket), hello, welcome, rejoin, resend.
   * Returns the attempt; its `link.closed` says how the link ends. */
  async #openOnce() {
    const token = await this.#token();
    this.#throwIfStopped();
    this.#earlyCallEvents = [];
    const attempt = await this.#openLink(token);
    const { link } = attempt;
    this.#link = link;
    this.transport = link.kind;
    this.#skewMs = Number.isFinite(this.welcome.server_time) ? this.welcome.server_time - Date.now() : 0;
    this.#scheduleRefresh(tokenExpiry(token));
    this.#setState("open", this.fallbackReason ? { fallbackReason: this.fallbackReason } : {});
    for (const frame of this.#earlyCallEvents.splice(0)) this.#onCallEvent(frame);
    // Rooms first (their streams open in order), then every publish not yet acknowledged.
    const joins = [];
    for (const room of this.#rooms.values()) {
      if (!room.wanted) continue;
      const join = this.#joinOnce(room);
      joins.push(join);
      join.catch((err) => {
        if (err instanceof StateError) return; // Lost again: the next connection rejoins.
        // Retryable refusals are tried again by `join`; the others end the room's membership.
        const again = err instanceof RelayError && RETRYABLE_REQUEST.has(err.code) ? this.join(room.name) : Promise.reject(err);
        again.catch((final) => {
          room.wanted = false;
          this.dispatchEvent(new CustomEvent("error", { detail: { room: room.name, code: final.code, message: final.message } }));
        });
      });
    }
    // Subscriptions again, exact persistent topics from the last position seen.
    for (const sub of this.#subscriptions.values()) {
      this.#subscribeOnce(sub).catch((err) => {
        if (err instanceof StateError) return; // Lost again: the next connection resubscribes.
        const again = err instanceof RelayError && RETRYABLE_REQUEST.has(err.code) ? this.subscribe(sub.pattern) : Promise.reject(err);
        again.catch((final) => {
          if (this.#subscriptions.get(sub.pattern) === sub) this.#subscriptions.delete(sub.pattern);
          const detail = { pattern: sub.pattern, code: final.code, message: final.message };
          sub.dispatchEvent(new CustomEvent("error", { detail }));
          this.dispatchEvent(new CustomEvent("error", { detail }));
        });
      });
    }
    for (const { resolve } of this.#openWaiters.splice(0)) resolve();
    await Promise.allSettled(joins.map((join) => join.sent));
    if (this.#link === link) for (const entry of this.#outbox.entries) this.#sendPublish(entry, link);
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
          lastError = new StateError("unsupported", `WebTransport: ${unavailable}`);
          continue;
        }
      }
      const WebSocketImpl = this.#options.WebSocket ?? globalThis.WebSocket;
      if (kind === "websocket" && typeof WebSocketImpl !== "function") {
        // Not worth retrying: nothing will change. Node before 22 has no global WebSocket.
        const why = fallbackReason ? ` (and WebTransport: ${fallbackReason})` : "";
        throw new StateError("no_websocket", `no WebSocket in this runtime${why}: pass one as the WebSocket option (e.g. from the ws package)`);
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
          if (frame.type === "welcome") this.#calls.reconnected();
          welcome(frame);
        });
        if (kind === "webtransport") {
          const { certHashes } = this.#options;
          const hashes = typeof certHashes === "function" ? await certHashes() : certHashes;
          this.#throwIfStopped();
          attempt.link = new WebTransportLink(webTransportUrl, hashes, events);
        } else {
          attempt.link = new WebSocketLink(webSocketUrl, events, WebSocketImpl);
        }
        const { link } = attempt;
        const handshake = (async () => {
          await link.open();
          await link.send({ type: "hello", version: PROTOCOL_VERSION, token, client: this.#options.clientName });
          return welcomed;
        })();
        this.welcome = await withTimeout(handshake, timeoutMs, `${kind} hello`);
        this.#throwIfStopped();
        link.maxFrameBytes = this.welcome.limits?.max_frame_bytes;
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
    throw lastError ?? new StateError("unsupported", "no transport available");
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
        if (err instanceof StateError && err.code === "no_websocket") {
          this.closeReason = err.message;
          this.#welcomed?.reject(err);
          this.#welcomed = null;
          this.close();
          return;
        }
        info = { code: err instanceof RelayError ? err.code : null, reason: err.message };
      }
      if (attempt) this.#retire(attempt, "closed");
      this.#link = null;
      clearTimeout(this.#refreshTimer);
      for (const room of this.#rooms.values()) room._disconnected();
      for (const sub of this.#subscriptions.values()) sub.active = false;
      // Requests die with their connection; publishes stay in the outbox for the next one.
      for (const [req, { reject, keep }] of [...this.#pending]) {
        this.#pending.delete(req);
        if (!keep) reject(new StateError("not_connected", `connection lost: ${info.reason}`));
      }
      if (this.#stopped) return;
      const retry = info.code === null || RETRYABLE_CLOSE.has(info.code) || (info.code === TOKEN_EXPIRED && this.#options.getToken);
      if (!retry) {
        const error = new RelayError(info.code, info.reason);
        this.closeReason = info.reason;
        this.#welcomed?.reject(error);
        this.#welcomed = null;
        this.#stopped = true;
        this.#unwatch();
        this.#failWaiting(error);
        for (const room of this.#rooms.values()) room._close();
        this.#setState("closed", { code: info.code, reason: info.reason });
        return;
      }
      const delayMs = Math.max(this.#goAwayMs, backoffDelay(this.#failures++, this.#options.backoff));
      this.#goAwayMs = 0;
      const offline = this.#options.networkEvents && globalThis.navigator?.onLine === false;
      this.#setState(offline ? "offline" : "reconnecting", { delayMs, retryAt: Date.now() + delayMs, code: info.code, reason: info.reason });
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

// syncUnread, markRead, receiptStatus, shareReads, publishWithMentions (docs/receipts.md).
Object.assign(EdgeRelay.prototype, receiptMethods);
