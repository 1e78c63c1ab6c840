// One relay connection for all tabs of an origin (per `shareKey`, e.g. per user): the tabs elect
// a leader with the Web Locks API; the leader holds the one `EdgeRelay` connection and relays
// for the others over a BroadcastChannel. When the leader tab closes, its lock is released, the
// next tab takes it, connects, and every tab asks it again for its rooms from the last position
// it delivered and for its publishes not yet acknowledged. So nothing is lost and nothing shows
// twice across a hand-over:
// - the new leader joins each room from the oldest position any tab announced within
//   `gatherMs` of taking over, and a tab that is behind the leader's position (it announced
//   later) fetches the missing offsets with `history` before delivering live messages again;
// - every tab's `Room` drops offsets it already delivered;
// - publishes are re-sent with their ids, and the relay's idempotent publish answers a repeat
//   with the original position.
// Presence counts the tabs as one device, because there is one connection.
//
// Beyond rooms, every tab has the same API as on `EdgeRelay`:
// - Frames (`request`, `send`): the leader sends them and answers the tab that asked before it
//   forwards any later frame, and forwards every unrequested frame (`frame` events) to all tabs.
//   So `session(shared, id)` (sessions.js) works unchanged: each tab's `Session` rejoins with the
//   version it holds when the connection (re)opens, a new leader's included. The leader counts
//   the tabs in each session and sends `leave` only for the last one. A frame left unanswered
//   by a leader that went rejects with `not_connected` (it may have reached the relay: a call
//   action must not go twice), as on a lost `EdgeRelay` connection; joins, publishes and
//   subscriptions are asked again, and a leader performs each request of a tab once.
// - Event topics (`subscribe`): the leader holds one subscription per pattern (the relay takes a
//   pattern once per connection), without a filter, from the oldest position the tabs announce
//   (exact persistent topics) when it takes over; every tab's `Subscription` applies its own
//   filter (filter.js) and drops what it saw. The last tab's `unsubscribe` ends it.
// - Rooms are counted like sessions: the last tab's `leave` leaves on the connection. Presence
//   and token methods (`setStatus`, `privacy`, `refresh`...) are called on the connection by the
//   leader; media and datagrams stay `EdgeRelay`'s (they use its WebTransport streams directly).
// - Calls: the leader forwards the call events to every tab, and each tab keeps its own `Call`s
//   and sends its actions through the leader. The tab that places or answers a call owns its
//   RTCPeerConnection (its media never leave it); the signaling goes through the leader.
//
// Notifications once per browser: a `notify` event fires for each new message of any room a tab
// joined, in one tab only (the leader's), never twice for one message across hand-overs: every
// tab learns up to where the leader notified, so a new leader skips what was replayed to it.
//
//   const relay = new SharedRelay({ shareKey: "alice", getToken, webSocketUrl, ... });
//   await relay.connect();
//   const room = await relay.join("chat:lobby"); // a Room, as with EdgeRelay
//
// Needs `navigator.locks` and `BroadcastChannel` (both in every current browser); without them
// use `EdgeRelay` (one connection per tab).

import { CallBook } from "./calls.js";
import { EdgeRelay } from "./edgerelay.js";
import { RelayError, StateError } from "./errors.js";
import { keptSubscription, topicMatches } from "./events.js";
import { compileFilter } from "./filter.js";
import { messageId } from "./outbox.js";
import { receiptMethods } from "./receipts.js";
import { Room, validRoomName } from "./room.js";

const PRESENCE = new Set(["presence", "presence_batch", "presence_snapshot", "presence_refresh", "typing"]);
// `EdgeRelay` methods a tab asks the leader to call on the connection, as they are.
const FORWARDED = ["setStatus", "activity", "privacy", "refresh"];
// `EdgeRelay` methods that use the connection's WebTransport streams and datagrams directly.
const MEDIA = ["publishTrack", "openGroup", "subscribeTrack", "unsubscribeTrack", "muteTrack", "unpublishTrack", "sendDatagram"];

export const older = (a, b) => (a === null ? b : b === null ? a : a.epoch !== b.epoch ? a : a.offset <= b.offset ? a : b);

function errorOf(value) {
  if (value?.kind === "relay") return new RelayError(value.code, value.text);
  if (value?.kind === "state") return new StateError(value.code, value.text);
  return new Error(value?.text ?? "failed");
}

function plainError(err) {
  if (err instanceof RelayError) return { kind: "relay", code: err.code, text: err.message.replace(/^\d+: /, "") };
  if (err instanceof StateError) return { kind: "state", code: err.code, text: err.message };
  return { kind: "error", text: String(err?.message ?? err) };
}

/** The leader's count of which tabs hold a session or a topic subscription, so that one tab's
 * `leave` or `unsubscribe` ends it on the connection only when no other tab holds it. */
export class Holders {
  #byKey = new Map();

  add(key, tab) {
    let tabs = this.#byKey.get(key);
    if (!tabs) this.#byKey.set(key, (tabs = new Set()));
    tabs.add(tab);
  }

  /** Takes `tab` out of `key`; true when no tab holds it any more. */
  remove(key, tab) {
    const tabs = this.#byKey.get(key);
    tabs?.delete(tab);
    if (tabs?.size) return false;
    this.#byKey.delete(key);
    return true;
  }
}

/** A session request's holder key and verb (`join`, `create`, `leave`...), or null. */
export function sessionVerb(frame) {
  if (frame?.type !== "session" || typeof frame.session !== "string") return null;
  return { key: `s:${frame.session}`, verb: Object.keys(frame.action ?? {})[0] ?? null };
}

export class SharedRelay extends EventTarget {
  #options;
  #channel = null;
  #tab = messageId();
  #rooms = new Map();
  // Requests this tab made and the leader has not answered: sent again to a new leader.
  #requests = new Map();
  #nextReq = 1;
  #inner = null;
  #stopped = false;
  #releaseLock = null;
  // Leader: per room or pattern, the oldest `since` announced while gathering, and the start.
  #gathering = new Map();
  // Per room being joined or filled: live messages held back until history filled the gap.
  #held = new Map();
  // Per room, the last position some leader fired `notify` for.
  #notified = new Map();
  // This tab's topic subscriptions (pattern → Subscription) and calls.
  #subscriptions = new Map();
  #calls = new CallBook(this, {
    action: (call, action, onOk) => this.request({ type: "call", call, action }, onOk),
    iceServers: () => this.iceServers(),
  });
  // Leader: which tabs hold each session and topic subscription.
  #holders = new Holders();
  // Leader: the requests (`tab req`) it took, the latest 1000, so that one asked again is not
  // performed twice.
  #served = new Set();
  // Whether the last `status` event said this tab leads.
  #ledShown = false;

  constructor({ shareKey = "default", gatherMs = 150, ...options } = {}) {
    super();
    this.#options = { shareKey, gatherMs, ...options };
    /** Whether this tab holds the connection. */
    this.isLeader = false;
    this.state = "idle";
    this.transport = null;
    this.welcome = null;
    this.fallbackReason = null;
    this.retryAt = null;
    this.connected = null;
  }

  static {
    for (const name of FORWARDED) {
      this.prototype[name] = function (...args) {
        return this.#ask("call", { name, args });
      };
    }
    const unsupported = async () => {
      throw new StateError("unsupported", "media and datagrams use the connection's own WebTransport streams: use an EdgeRelay in the tab that sends or receives them");
    };
    for (const name of MEDIA) this.prototype[name] = unsupported;
  }

  /** Starts: joins the election and, as a follower, talks to the leader. Resolves once a leader
   * (this tab or another) is connected. */
  connect() {
    if (this.#stopped) return Promise.reject(new StateError("closed", "this client was closed: make a new one"));
    if (this.connected) return this.connected;
    if (typeof BroadcastChannel !== "function" || !globalThis.navigator?.locks) {
      return Promise.reject(new StateError("unsupported", "sharing a connection needs BroadcastChannel and navigator.locks: use EdgeRelay"));
    }
    const { shareKey } = this.#options;
    this.#channel = new BroadcastChannel(`edgerelay:${shareKey}`);
    this.#channel.onmessage = ({ data }) => this.#onMessage(data);
    this.connected = new Promise((resolve, reject) => {
      this.#onOpen = resolve;
      this.#onFail = reject;
    });
    navigator.locks.request(`edgerelay:${shareKey}`, () => this.#lead());
    this.#post({ t: "hello", from: this.#tab });
    return this.connected;
  }

  #onOpen = () => {};
  #onFail = () => {};

  room(name) {
    if (!validRoomName(name)) throw new RelayError(121, `bad_room: ${JSON.stringify(name)} is not a room name`);
    let room = this.#rooms.get(name);
    if (!room) {
      room = new Room(name, this, this.#options.typing);
      this.#rooms.set(name, room);
    }
    return room;
  }

  /** Joins through the leader; resolves with the room once the leader joined it. */
  async join(name) {
    const room = this.room(name);
    this.#requireStarted();
    room.wanted = true;
    await this.#joinThroughLeader(room);
    return room;
  }

  /** Asks the leader to join `room` from this tab's position, then fills any gap from history;
   * live messages wait meanwhile, so they come after the filled ones. */
  async #joinThroughLeader(room) {
    if (!this.#held.has(room.name)) this.#held.set(room.name, []);
    try {
      const answer = await this.#request("join", { room: room.name, since: room.position });
      room._joined(answer);
      room._presence({ type: "presence_snapshot", room: room.name, users: answer.members });
      await this.#fill(room, answer.position);
    } finally {
      const held = this.#held.get(room.name) ?? [];
      this.#held.delete(room.name);
      for (const frame of held) room._message(frame);
    }
  }

  /** Leaves for this tab; the leader leaves on the connection when no other tab is in it. */
  async leave(name) {
    const room = this.room(name);
    room._left();
    await this.#ask("leave", { room: name });
  }

  get rooms() {
    return [...this.#rooms.values()];
  }

  /** Publishes through the leader; kept and sent again to a new leader until acknowledged. */
  publish(name, data, { id = messageId(), mentions } = {}) {
    try {
      this.room(name);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#ask("publish", { room: name, data, id, mentions });
  }

  /** This tab's publishes waiting for their ack. */
  get unacked() {
    let n = 0;
    for (const { op } of this.#requests.values()) n += op === "publish";
    return n;
  }

  /** Tells the leader the network changed (see `EdgeRelay.networkChanged`). */
  networkChanged() {
    this.#ask("call", { name: "networkChanged", args: [] }).catch(() => {});
  }

  /** The round trip from this tab through the leader to the relay, in milliseconds. */
  async ping() {
    const started = performance.now();
    await this.#ask("call", { name: "ping", args: [] });
    return performance.now() - started;
  }

  history(name, options = {}) {
    return this.#ask("history", { room: name, options });
  }

  historyAfter(name, options = {}) {
    return this.#ask("history_after", { room: name, options });
  }

  typing(name, typing) {
    return this.#ask("typing", { room: name, typing });
  }

  /** Any frame with a fresh `req`, sent by the leader (see `EdgeRelay.request`); `onAnswer`
   * runs with the answer before this tab handles any later frame. */
  request(frame, onAnswer) {
    return this.#ask("request", { frame }, onAnswer);
  }

  /** A frame without an answer, sent by the leader. */
  send(frame) {
    return this.#ask("send", { frame });
  }

  // --- event topics: one subscription per pattern on the connection, for every tab ---

  /** As `EdgeRelay.subscribe`: resolves with this tab's `Subscription` once the leader holds one. */
  async subscribe(pattern, { filter = null, since = null } = {}) {
    this.#requireStarted();
    // The leader subscribes without a filter; each tab applies its own (a bad one is refused here).
    const accepts = compileFilter(filter);
    const sub = keptSubscription(this.#subscriptions, pattern, { filter, since }, (s) => this.#unsubscribe(s));
    sub._accepts ??= accepts;
    if (!sub.active) await this.#subscribeThroughLeader(sub);
    return sub;
  }

  get subscriptions() {
    return [...this.#subscriptions.values()];
  }

  async #subscribeThroughLeader(sub) {
    const kept = () => this.#subscriptions.get(sub.pattern) === sub;
    try {
      const answer = await this.#request("subscribe", { pattern: sub.pattern, since: sub.position });
      if (kept()) sub._subscribed(answer);
    } catch (err) {
      if (kept()) this.#subscriptions.delete(sub.pattern);
      throw err;
    }
  }

  async #unsubscribe(sub) {
    if (this.#subscriptions.get(sub.pattern) !== sub) return;
    this.#subscriptions.delete(sub.pattern);
    sub.active = false;
    await this.#request("unsubscribe", { pattern: sub.pattern });
  }

  // --- 1:1 calls: this tab's own `Call`s, their actions through the leader ---

  /** As `EdgeRelay.call`: this tab is the caller's device in the call (its RTCPeerConnection). */
  call(callee, { media = "video", ...rtc } = {}) {
    return this.#calls.place(callee, media, rtc);
  }

  get calls() {
    return [...this.#calls.calls.values()];
  }

  iceServers() {
    return this.#ask("iceServers", {});
  }

  close() {
    this.#stopped = true;
    this.#onFail(new StateError("closed", "closed before it connected"));
    this.#inner?.close();
    this.#releaseLock?.();
    for (const { reject } of this.#requests.values()) reject(new StateError("closed", "the client was closed"));
    this.#requests.clear();
    for (const room of this.#rooms.values()) room._close();
    this.#channel?.close();
    this.#setState({ state: "closed", transport: null });
  }

  // --- internals ---

  #requireStarted() {
    if (this.#stopped) throw new StateError("closed", "the client is closed");
    if (!this.connected) throw new StateError("not_connected", "not connected: call connect() first");
  }

  #post(message) {
    if (!this.#stopped) this.#channel.postMessage(message);
  }

  /** `#request` once `connect()` was called, else a rejected promise. */
  #ask(op, args, onAnswer) {
    try {
      this.#requireStarted();
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#request(op, args, onAnswer);
  }

  #request(op, args, onAnswer) {
    const req = this.#nextReq++;
    return new Promise((resolve, reject) => {
      const request = { op, args, resolve, reject, onAnswer };
      this.#requests.set(req, request);
      this.#send(req, request);
    });
  }

  #send(req, { op, args }, again = false) {
    const message = { t: "req", from: this.#tab, req, op, args, again };
    if (this.isLeader) this.#serve(message);
    else this.#post(message);
  }

  #answered({ req, ok, value, error }) {
    const request = this.#requests.get(req);
    if (!request) return;
    this.#requests.delete(req);
    if (ok) {
      request.onAnswer?.(value);
      request.resolve(value);
    } else request.reject(errorOf(error));
  }

  /** Offsets between what `room` delivered and `top` (the leader's position), from history,
   * before live messages again: a tab that was behind at a hand-over misses nothing. */
  async #fill(room, top) {
    const held = room.position;
    if (!held || !top || held.epoch !== top.epoch || top.offset <= held.offset) return;
    let from = held.offset;
    while (from < top.offset) {
      const limit = Math.min(100, top.offset - from);
      const page = await this.history(room.name, { before: from + limit + 1, limit });
      if (page.messages.length === 0) break;
      for (const m of page.messages) room._message(m);
      from = page.messages.at(-1).position.offset;
    }
  }

  #onMessage(message) {
    switch (message.t) {
      case "hello":
        if (this.isLeader) this.#post({ t: "leader", from: this.#tab, to: message.from, status: this.#status() });
        return;
      case "leader":
        // A new leader (or the answer to our hello): ask it again for what is unanswered (a
        // leader that answered our hello has every request since), the rooms and topics.
        if (message.to && message.to !== this.#tab) return;
        this.#mirror(message.status);
        if (!message.to) for (const [req, request] of this.#requests) this.#send(req, request, true);
        for (const room of this.#rooms.values()) {
          if (room.wanted && !this.#asking("join", room.name)) this.#joinThroughLeader(room).catch(() => {});
        }
        for (const sub of this.#subscriptions.values()) {
          if (this.#asking("subscribe", sub.pattern)) continue;
          sub.active = false;
          this.#subscribeThroughLeader(sub).catch((err) => {
            const detail = { pattern: sub.pattern, code: err.code, message: err.message };
            sub.dispatchEvent(new CustomEvent("error", { detail }));
            this.dispatchEvent(new CustomEvent("error", { detail }));
          });
        }
        return;
      case "req":
        if (this.isLeader) this.#serve(message);
        return;
      case "res":
        if (message.to === this.#tab) this.#answered(message);
        return;
      case "event":
        return this.#deliver(message.event);
      default:
        return undefined;
    }
  }

  /** Whether this tab waits for the leader's answer to `op` about room or pattern `name`. */
  #asking(op, name) {
    for (const { op: o, args } of this.#requests.values()) if (o === op && (args.room ?? args.pattern) === name) return true;
    return false;
  }

  /** An event of the leader's connection, in this tab. */
  #deliver(event) {
    switch (event.type) {
      case "status":
        return this.#mirror(event.detail);
      case "message": {
        const room = this.#rooms.get(event.frame.room);
        const held = this.#held.get(event.frame.room);
        if (held) held.push(event.frame);
        else if (room?.wanted) room._message(event.frame);
        return undefined;
      }
      case "notified":
        this.#notified.set(event.room, event.position);
        return undefined;
      case "frame": {
        const { frame } = event;
        const room = PRESENCE.has(frame.type) ? this.#rooms.get(frame.room) : null;
        if (room?.wanted) room._presence(frame);
        return this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
      }
      case "topic": {
        const { frame } = event;
        for (const sub of this.#subscriptions.values()) if (topicMatches(sub.pattern, frame.topic) && sub._accepts(frame.tags)) sub._event(frame);
        return this.dispatchEvent(new CustomEvent("event", { detail: frame }));
      }
      case "call": {
        // Signals are for the tab in the call (the relay sends them to the device in it).
        const { call, event: what } = event.frame;
        if (what?.signal && !this.#calls.calls.get(call)?.inCall) return undefined;
        return this.#calls.onEvent(event.frame);
      }
      case "error":
        return this.dispatchEvent(new CustomEvent("error", { detail: event.detail }));
      default:
        return undefined;
    }
  }

  #status() {
    const inner = this.#inner;
    if (!inner) return null;
    const { state, transport, welcome, fallbackReason, retryAt } = inner;
    return { state, transport, welcome, fallbackReason, retryAt };
  }

  #mirror(status) {
    if (!status) return;
    const welcome = status.welcome;
    if (welcome && welcome.session !== this.welcome?.session) {
      // A new connection is a new device to the relay: this tab's calls are not in it.
      if (this.welcome) this.#calls.reconnected();
      this.welcome = welcome;
    }
    this.#setState(status);
    if (status.state === "open") this.#onOpen(this.welcome);
    // The leader's connection closed for good (a refused token, no WebSocket): as on `EdgeRelay`,
    // `connect()` rejects and this client is closed (the next tab would be refused the same).
    if (status.state === "closed" && !this.#stopped) {
      this.closeReason = status.reason;
      this.#onFail(status.code ? new RelayError(status.code, status.reason) : new StateError("closed", status.reason ?? "closed"));
      this.close();
    }
  }

  #setState({ welcome, ...detail }) {
    const { state, transport = null } = detail;
    if (this.state === state && this.transport === transport && this.#ledShown === this.isLeader) return;
    this.state = state;
    this.transport = transport;
    this.fallbackReason = detail.fallbackReason ?? (state === "open" ? null : this.fallbackReason);
    this.retryAt = detail.retryAt ?? null;
    this.#ledShown = this.isLeader;
    this.dispatchEvent(new CustomEvent("status", { detail: { ...detail, transport, leader: this.isLeader } }));
  }

  /** This tab holds the lock: connect, tell the others, serve until the tab goes. */
  async #lead() {
    if (this.#stopped) return;
    this.isLeader = true;
    const { shareKey, gatherMs, ...options } = this.#options;
    const inner = new (options.EdgeRelay ?? EdgeRelay)(options);
    this.#inner = inner;
    const broadcast = (event) => {
      this.#post({ t: "event", event });
      this.#deliver(event);
    };
    inner.addEventListener("status", ({ detail }) => broadcast({ type: "status", detail: { ...detail, welcome: inner.welcome } }));
    inner.addEventListener("message", ({ detail }) => {
      broadcast({ type: "message", frame: detail });
      // Once per browser: here only, and only past what an earlier leader notified.
      const last = this.#notified.get(detail.room);
      const position = detail.position;
      if (last && last.epoch === position.epoch && position.offset <= last.offset) return;
      broadcast({ type: "notified", room: detail.room, position });
      this.dispatchEvent(new CustomEvent("notify", { detail }));
    });
    // Presence, typing, session events and frames the SDK does not wrap; topic events; calls.
    inner.addEventListener("frame", ({ detail }) => broadcast({ type: "frame", frame: detail }));
    inner.addEventListener("event", ({ detail }) => broadcast({ type: "topic", frame: detail }));
    inner.addEventListener("call_event", ({ detail }) => broadcast({ type: "call", frame: detail }));
    inner.addEventListener("error", ({ detail }) => broadcast({ type: "error", detail }));
    try {
      await inner.connect();
    } catch {
      return; // Closed, or refused for good: the status says so.
    }
    this.#post({ t: "leader", from: this.#tab, status: this.#status() });
    // Ask for this tab's own rooms and requests the way followers do.
    this.#onMessage({ t: "leader", status: this.#status() });
    // Hold the lock for the life of the tab (or until close()).
    await new Promise((resolve) => {
      this.#releaseLock = resolve;
    });
  }

  /** Leader: performs a tab's request on the connection and answers it, once: as soon as an
   * answer frame arrives for `request` (before later frames are forwarded), else when done. */
  async #serve({ from, req, op, args, again }) {
    const inner = this.#inner;
    if (!inner) return;
    // A request asked again after a take-over may be one this leader has: it answers once.
    const key = `${from} ${req}`;
    if (this.#served.has(key)) return;
    this.#served.add(key);
    if (this.#served.size > 1000) this.#served.delete(this.#served.values().next().value);
    let answered = false;
    const reply = (result) => {
      if (answered) return;
      answered = true;
      const answer = { t: "res", to: from, req, ...result };
      if (from === this.#tab) this.#answered(answer);
      else this.#post(answer);
    };
    try {
      // Frames (a call action, a patch) die with the connection they were sent on, as on
      // `EdgeRelay`: one asked again after a take-over may have reached the relay already.
      if (again && (op === "request" || op === "send")) throw new StateError("not_connected", "connection lost: the tab that held it closed");
      const early = (value) => reply({ ok: true, value });
      reply({ ok: true, value: await this.#perform(inner, from, op, args, early) });
    } catch (err) {
      reply({ ok: false, error: plainError(err) });
    }
  }

  async #perform(inner, tab, op, args, early) {
    switch (op) {
      case "join":
        return this.#joinOnce(inner, tab, args.room, args.since);
      case "leave": {
        const key = `r:${args.room}`;
        if (!this.#holders.remove(key, tab)) return null;
        this.#gathering.delete(key);
        return inner.leave(args.room);
      }
      case "call":
        if (![...FORWARDED, "ping", "networkChanged"].includes(args.name)) throw new Error(`unknown request ${args.name}`);
        return inner[args.name](...args.args);
      case "publish":
        return inner.publish(args.room, args.data, { id: args.id, mentions: args.mentions });
      case "history":
        return inner.history(args.room, args.options);
      case "history_after":
        return inner.historyAfter(args.room, args.options);
      case "typing":
        return inner.typing(args.room, args.typing);
      case "request":
        return this.#forward(inner, tab, args.frame, early);
      case "send":
        return inner.send(args.frame);
      case "subscribe":
        return this.#subscribeOnce(inner, tab, args);
      case "unsubscribe": {
        const key = `e:${args.pattern}`;
        if (!this.#holders.remove(key, tab)) return null;
        this.#gathering.delete(key);
        return inner.subscriptions.find((s) => s.pattern === args.pattern)?.unsubscribe() ?? null;
      }
      case "iceServers":
        return inner.iceServers();
      default:
        throw new Error(`unknown request ${op}`);
    }
  }

  /** A tab's frame on the connection; a session's `leave` only when no other tab is in it. */
  async #forward(inner, tab, frame, early) {
    const session = sessionVerb(frame);
    if (session?.verb === "leave" && !this.#holders.remove(session.key, tab)) {
      return { type: "session", session: frame.session, event: { ok: {} } };
    }
    const answer = await inner.request(frame, early);
    if (session?.verb === "join" || session?.verb === "create") this.#holders.add(session.key, tab);
    return answer;
  }

  /**
   * `start(since)` once for `key` (a room or a pattern), from the oldest `since` the tabs
   * announce within `gatherMs` of the first ask; later asks wait for the same start (again when
   * it failed, or `alive()` says it ended). Resolves with the `since` it started from.
   */
  #gathered(key, since, alive, start) {
    let gathering = this.#gathering.get(key);
    if (gathering?.done && !alive()) gathering = null;
    if (!gathering) {
      gathering = { since: null, done: false };
      gathering.started = new Promise((resolve) => setTimeout(resolve, this.#options.gatherMs))
        .then(() => start(gathering.since))
        .then(
          () => {
            gathering.done = true;
            return gathering.since;
          },
          (err) => {
            if (this.#gathering.get(key) === gathering) this.#gathering.delete(key);
            throw err;
          },
        );
      this.#gathering.set(key, gathering);
    }
    if (!gathering.done) gathering.since = older(gathering.since, since ?? null);
    return gathering.started;
  }

  /** Joins `name` once for every tab, from the oldest position announced within `gatherMs`. */
  async #joinOnce(inner, tab, name, since) {
    const room = inner.room(name);
    const key = `r:${name}`;
    await this.#gathered(key, since, () => room.wanted, (oldest) => {
      room.position = oldest;
      return inner.join(name);
    });
    this.#holders.add(key, tab);
    return { position: room.position, recovered: room.recovered, members: room.members };
  }

  /** Subscribes to `pattern` once for every tab, from the oldest position announced. A tab
   * that announced an older one later gets `recovered: false`: what lies between is gone. */
  async #subscribeOnce(inner, tab, { pattern, since }) {
    const key = `e:${pattern}`;
    const held = () => inner.subscriptions.find((s) => s.pattern === pattern);
    const from = await this.#gathered(key, since, () => Boolean(held()), (oldest) => inner.subscribe(pattern, { since: oldest }));
    const sub = held();
    if (!sub) throw new StateError("not_connected", `${pattern} is no longer subscribed`);
    this.#holders.add(key, tab);
    const behind = since != null && (from == null || since.epoch !== from.epoch || since.offset < from.offset);
    return { position: sub.position, recovered: sub.recovered !== false && !behind };
  }
}

// syncUnread, markRead, receiptStatus, shareReads, publishWithMentions, as on EdgeRelay.
Object.assign(SharedRelay.prototype, receiptMethods);
