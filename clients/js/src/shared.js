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

import { EdgeRelay } from "./edgerelay.js";
import { RelayError, StateError } from "./errors.js";
import { messageId } from "./outbox.js";
import { Room, validRoomName } from "./room.js";

const older = (a, b) => (a === null ? b : b === null ? a : a.epoch !== b.epoch ? a : a.offset <= b.offset ? a : b);

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
  // Leader: per room, the oldest `since` announced while gathering, and the join under way.
  #gathering = new Map();
  // Per room being joined or filled: live messages held back until history filled the gap.
  #held = new Map();
  // Per room, the last position some leader fired `notify` for.
  #notified = new Map();

  constructor({ shareKey = "default", gatherMs = 150, ...options } = {}) {
    super();
    this.#options = { shareKey, gatherMs, ...options };
    /** Whether this tab holds the connection. */
    this.isLeader = false;
    this.state = "idle";
    this.transport = null;
    this.welcome = null;
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
    this.connected = new Promise((resolve) => {
      this.#onOpen = resolve;
    });
    navigator.locks.request(`edgerelay:${shareKey}`, () => this.#lead());
    this.#post({ t: "hello", from: this.#tab });
    return this.connected;
  }

  #onOpen = () => {};

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

  async leave(name) {
    const room = this.room(name);
    room._left();
  }

  /** Publishes through the leader; kept and sent again to a new leader until acknowledged. */
  publish(name, data, { id = messageId() } = {}) {
    try {
      this.room(name);
      this.#requireStarted();
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#request("publish", { room: name, data, id });
  }

  history(name, options = {}) {
    return this.#request("history", { room: name, options });
  }

  typing(name, typing) {
    return this.#request("typing", { room: name, typing });
  }

  close() {
    this.#stopped = true;
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

  #request(op, args) {
    const req = this.#nextReq++;
    return new Promise((resolve, reject) => {
      const request = { op, args, resolve, reject };
      this.#requests.set(req, request);
      this.#send(req, request);
    });
  }

  #send(req, { op, args }) {
    const message = { t: "req", from: this.#tab, req, op, args };
    if (this.isLeader) this.#serve(message);
    else this.#post(message);
  }

  #answered({ req, ok, value, error }) {
    const request = this.#requests.get(req);
    if (!request) return;
    this.#requests.delete(req);
    if (ok) request.resolve(value);
    else request.reject(errorOf(error));
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
        // A new leader (or the answer to our hello): ask it for everything again.
        if (message.to && message.to !== this.#tab) return;
        this.#mirror(message.status);
        for (const [req, request] of this.#requests) this.#send(req, request);
        for (const room of this.#rooms.values()) {
          if (room.wanted && !this.#hasJoinPending(room.name)) this.#joinThroughLeader(room).catch(() => {});
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

  #hasJoinPending(name) {
    for (const { op, args } of this.#requests.values()) if (op === "join" && args.room === name) return true;
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
      case "presence": {
        const room = this.#rooms.get(event.frame.room);
        if (room?.wanted) room._presence(event.frame);
        return undefined;
      }
      default:
        return undefined;
    }
  }

  #status() {
    const inner = this.#inner;
    return inner ? { state: inner.state, transport: inner.transport, welcome: inner.welcome } : null;
  }

  #mirror(status) {
    if (!status) return;
    if (status.welcome) this.welcome = status.welcome;
    this.#setState(status);
    if (status.state === "open") this.#onOpen(this.welcome);
  }

  #setState({ state, transport }) {
    if (this.state === state && this.transport === transport) return;
    this.state = state;
    this.transport = transport ?? null;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, transport: this.transport, leader: this.isLeader } }));
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
    inner.addEventListener("frame", ({ detail }) => {
      if (["presence", "presence_batch", "presence_snapshot", "presence_refresh", "typing"].includes(detail.type)) broadcast({ type: "presence", frame: detail });
    });
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

  /** Leader: performs a tab's request on the connection and answers it. */
  async #serve({ from, req, op, args }) {
    const inner = this.#inner;
    if (!inner) return;
    let reply;
    try {
      reply = { ok: true, value: await this.#perform(inner, op, args) };
    } catch (err) {
      reply = { ok: false, error: plainError(err) };
    }
    const answer = { t: "res", to: from, req, ...reply };
    if (from === this.#tab) this.#answered(answer);
    else this.#post(answer);
  }

  async #perform(inner, op, args) {
    switch (op) {
      case "join":
        return this.#joinOnce(inner, args.room, args.since);
      case "publish":
        return inner.publish(args.room, args.data, { id: args.id });
      case "history":
        return inner.history(args.room, args.options);
      case "typing":
        return inner.typing(args.room, args.typing);
      default:
        throw new Error(`unknown request ${op}`);
    }
  }

  /** Joins `name` once for every tab, from the oldest position announced within `gatherMs`. */
  async #joinOnce(inner, name, since) {
    const room = inner.room(name);
    let gathering = this.#gathering.get(name);
    if (!gathering && !room.wanted) {
      gathering = { since: null };
      gathering.joined = new Promise((resolve) => setTimeout(resolve, this.#options.gatherMs)).then(() => {
        room.position = gathering.since;
        return inner.join(name);
      });
      this.#gathering.set(name, gathering);
    }
    if (gathering) {
      gathering.since = older(gathering.since, since ?? null);
      await gathering.joined;
    } else {
      await inner.join(name);
    }
    return { position: room.position, recovered: room.recovered, members: room.members };
  }
}
