// One room as the app sees it: an EventTarget with the room's messages (each once, in offset
// order, across reconnects), its members' presence, who is typing, and history paging ("load
// earlier"). `EdgeRelay.room(name)` makes it; the client feeds it the frames of its room
// whichever transport carried them (a WebTransport datagram or a WebSocket message decode the
// same way), and it sends through the client.
//
// Events (`detail`): `message` (a message: `{room, position, from, time, id, data}`), `joined`
// (`{recovered, position}`, on every join and rejoin), `gap` (`{position}`: history could not
// fill what this client missed, or the room's history was lost and a new epoch began; reload
// with `loadEarlier`), `presence` (`{members, entry}`; `entry` is the update, null after a
// snapshot), `typing` (`{users, total, text}`, also when a typing view expires), `history`
// (`{messages, hasEarlier}`: a page `loadEarlier` fetched, oldest first), `left`.

import { PresenceView, typingText } from "./presence.js";
import { TypingDebounce } from "./typing.js";

const ROOM_NAME = /^[A-Za-z0-9_:.@=+-]{1,128}$/;

/** Whether `name` is a valid room name (docs/protocol.md: 1-128 of `A-Z a-z 0-9 _ : . @ = + -`). */
export function validRoomName(name) {
  return typeof name === "string" && ROOM_NAME.test(name);
}

export class Room extends EventTarget {
  #client;
  #view = new PresenceView();
  #debounce;
  #typingTimer = null;
  #quietTimer = null;
  // Lowest offset delivered in this epoch (live or from history): where "load earlier" continues.
  #oldest = null;

  constructor(name, client, typingOptions) {
    super();
    this.#client = client;
    this.#debounce = new TypingDebounce(typingOptions);
    /** The room's name. */
    this.name = name;
    /** The last position delivered (`{epoch, offset}`), or null before the first join. */
    this.position = null;
    /** Whether the last join recovered everything missed since `position`. */
    this.recovered = null;
    /** Joined on the current connection. */
    this.joined = false;
    /** Kept joined across reconnects (from `join()` until `leave()`). */
    this.wanted = false;
    /** Whether older messages than the ones loaded are retained (null until known). */
    this.hasEarlier = null;
    // The join under way on the current connection (the client's, internal).
    this._joining = null;
    // When this room last delivered a message (the client's catch-up asks busy rooms first).
    this._deliveredAt = 0;
  }

  /** Joins (or waits for the rejoin while reconnecting); resolves with this room. */
  join() {
    return this.#client.join(this.name);
  }

  leave() {
    return this.#client.leave(this.name);
  }

  /** Publishes `data`; resolves with its acked position, retried across reconnects. */
  publish(data, options) {
    return this.#client.publish(this.name, data, options);
  }

  /** A page of history: up to `limit` messages before offset `before`, oldest first. */
  history(options) {
    return this.#client.history(this.name, options);
  }

  /**
   * Loads the page before the oldest message this room delivered (or before the top when none
   * came yet); dispatches `history` and resolves with its messages, oldest first (empty when
   * nothing older is retained).
   */
  async loadEarlier(limit = 50) {
    const before = this.#oldest ?? (this.position ? this.position.offset + 1 : null);
    if (before !== null && before <= 1) {
      this.hasEarlier = false;
      return [];
    }
    const page = await this.history({ before, limit });
    const messages = page.messages;
    if (messages.length > 0 && (this.#oldest === null || messages[0].position.offset < this.#oldest)) {
      this.#oldest = messages[0].position.offset;
    }
    this.hasEarlier = messages.length > 0 && messages[0].position.offset > page.first;
    this.dispatchEvent(new CustomEvent("history", { detail: { messages, hasEarlier: this.hasEarlier } }));
    return messages;
  }

  /** Present members (`{user, status, custom, version, last_seen}`), sorted by user id. */
  get members() {
    return this.#view.members;
  }

  /** How many members the room has: the latest `presence_refresh` count, or the members listed.
   * A quiet room (the relay's `presence.quiet_rooms`) lists nobody but is counted. */
  get memberCount() {
    return this.#view.count;
  }

  /** A member's status here (`offline` when not present). */
  status(user) {
    return this.#view.status(user);
  }

  /** Who types now, leaving out this client's own user: `{users, total, text}`. */
  get typing() {
    const { users, total } = this.#view.typing(Date.now(), this.#client.welcome?.user ?? null);
    return { users, total, text: typingText(users, total) };
  }

  /** Says whether this user types here, as is (see `keystroke` for the debounced way). */
  setTyping(typing) {
    return this.#client.typing(this.name, typing);
  }

  /**
   * Call on every keystroke in the room's input: sends `typing` at most every 3 s while keys
   * come, and stops after 5 s without one (or at `stopTyping()`, e.g. when the message is sent).
   */
  keystroke() {
    if (this.#debounce.keystroke(Date.now())) this.#signal(true);
    clearTimeout(this.#quietTimer);
    this.#quietTimer = setTimeout(() => this.#pollTyping(), this.#debounce.quietMs);
  }

  /** The user sent the message or cleared the input. */
  stopTyping() {
    clearTimeout(this.#quietTimer);
    if (this.#debounce.stop()) this.#signal(false);
  }

  #pollTyping() {
    if (this.#debounce.poll(Date.now())) this.#signal(false);
    else if (this.#debounce.deadline !== null) {
      this.#quietTimer = setTimeout(() => this.#pollTyping(), Math.max(0, this.#debounce.deadline - Date.now()));
    }
  }

  #signal(typing) {
    // Lossy state: not connected now is no reason to fail the keystroke.
    this.#client.typing(this.name, typing).catch(() => {});
  }

  // --- fed by the client ---

  /** A `joined` answer. */
  _joined({ position, recovered }) {
    // Not recovered (or a first join): messages continue after the relay's top, whatever was held.
    const gap = this.position !== null && !recovered;
    if (!this.position || !recovered) this.position = position;
    if (gap) this.#oldest = null;
    this.recovered = recovered;
    this.joined = true;
    this.dispatchEvent(new CustomEvent("joined", { detail: { recovered, position } }));
    if (gap) this.dispatchEvent(new CustomEvent("gap", { detail: { position } }));
  }

  /** The messages of a catch-up page (`history_after`) this room had not delivered, delivered
   * now: none unless the page continues right after the last offset delivered, in the same
   * epoch (the rest comes on the room's stream, which drops what was delivered here). */
  _caughtUp(messages, epoch) {
    const held = this.position;
    if (!held || held.epoch !== epoch) return [];
    const missed = messages.filter((m) => m.position.offset > held.offset);
    if (missed.length === 0 || missed[0].position.offset !== held.offset + 1) return [];
    return missed.filter((m) => this._message(m));
  }

  /** A `message`; false when it was a duplicate (an offset already delivered) and dropped. */
  _message(frame) {
    const position = frame.position;
    if (!position) return false;
    const held = this.position;
    if (held && held.epoch === position.epoch && position.offset <= held.offset) return false;
    const newEpoch = held !== null && held.epoch !== position.epoch;
    this.position = position;
    this._deliveredAt = Date.now();
    if (newEpoch || this.#oldest === null) this.#oldest = position.offset;
    if (newEpoch) this.dispatchEvent(new CustomEvent("gap", { detail: { position } }));
    this.dispatchEvent(new CustomEvent("message", { detail: frame }));
    return true;
  }

  /** `presence`, `presence_batch`, `presence_snapshot`, `presence_refresh` and `typing`; true when it asked for a
   * fresh snapshot (a refresh disagreed). */
  _presence(frame) {
    switch (frame.type) {
      case "presence_snapshot":
        this.#view.applySnapshot(frame.users);
        this.#presenceChanged(null);
        return false;
      case "presence":
        if (this.#view.apply(frame.entry)) this.#presenceChanged(frame.entry);
        return false;
      case "presence_batch": {
        // Several members' changes at once: one event for the batch.
        const entries = Array.isArray(frame.entries) ? frame.entries : [];
        const applied = entries.filter((entry) => this.#view.apply(entry));
        if (applied.length) this.#presenceChanged(applied.length === 1 ? applied[0] : null);
        return false;
      }
      case "presence_refresh":
        return this.#view.applyRefresh(frame.count, frame.digest);
      case "typing":
        if (this.#view.applyTyping(frame, Date.now())) this.#typingChanged();
        return false;
      default:
        return false;
    }
  }

  /** The connection ended: not joined until the rejoin. */
  _disconnected() {
    this.joined = false;
  }

  _left() {
    this.joined = false;
    this.wanted = false;
    this.stopTyping();
    clearTimeout(this.#typingTimer);
    this.dispatchEvent(new CustomEvent("left"));
  }

  /** Stops the timers (the client was closed). */
  _close() {
    this.joined = false;
    clearTimeout(this.#quietTimer);
    clearTimeout(this.#typingTimer);
  }

  #presenceChanged(entry) {
    this.dispatchEvent(new CustomEvent("presence", { detail: { members: this.members, entry } }));
  }

  #typingChanged() {
    this.dispatchEvent(new CustomEvent("typing", { detail: this.typing }));
    // Shown until `ttl_ms` after it came, unless a newer view replaces it: say so when it ends.
    clearTimeout(this.#typingTimer);
    const { untilMs } = this.#view.typing(Date.now());
    if (untilMs !== null) {
      this.#typingTimer = setTimeout(() => this.#typingChanged(), Math.max(0, untilMs - Date.now()) + 1);
    }
  }
}
