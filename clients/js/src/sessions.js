// Collaborative sessions on the browser client (docs/sessions.md; wire: docs/protocol.md
// "Sessions"): a shared JSON document changed with RFC 6902 patches that the relay orders and
// versions. A separate entry point (`@edgerelay/client/sessions`) so that apps without sessions
// do not ship it; it uses only `EdgeRelay`'s public `request`, `send` and events.
//
// Why it is shaped like this:
// - The local copy changes only by the relay's `patched` events, applied in version order (the
//   sender's own patch included), so every device holds the relay's document at its version:
//   no optimistic state to undo when a patch is refused.
// - A reconnect (or a gap in the versions) joins again with the version held, and the relay
//   answers with the patches after it (or a snapshot): nothing is applied twice or missed.

import { applyPatch } from "./jsonpatch.js";
import { messageId } from "./outbox.js";

export { PatchError, applyPatch } from "./jsonpatch.js";

/** A patch refused because it was made against an old version and later patches touched its
 * paths: `missed` are the versions it did not see (`base + 1 ..= version`), `conflicting` those
 * that touched its paths. Rebase it on the current document and send it again. */
export class SessionConflict extends Error {
  constructor({ base, version, conflicting }) {
    super(`conflict: the patch was made against version ${base}; versions ${base + 1}-${version} were missed`);
    this.code = "conflict";
    this.base = base;
    this.version = version;
    this.conflicting = Array.isArray(conflicting) ? conflicting : [];
    this.missed = [];
    for (let v = base + 1; v <= version && this.missed.length < 10_000; v++) this.missed.push(v);
  }
}

const sessions = new WeakMap();
const RANK = { viewer: 0, editor: 1, owner: 2 };

/** The `Session` `id` of `relay` (made on first use; nothing is sent). */
export function session(relay, id) {
  let byId = sessions.get(relay);
  if (!byId) sessions.set(relay, (byId = new Map()));
  let s = byId.get(id);
  if (!s) byId.set(id, (s = new Session(relay, id)));
  return s;
}

/**
 * One session of one client. Events: `joined`, `patched` (`{patch, doc, version}`), `member`,
 * `cursor` (`{user, data}`), `closed` (`{by}`), `ended` (`{reason, by}`), `error` (a rejoin after
 * a reconnect refused).
 */
export class Session extends EventTarget {
  #relay;
  #wanted = false;
  // Patches answered `applied` whose version the local copy has not reached yet.
  #waiting = [];
  // The highest role this device's token allows (learnt at join: a role below the user's).
  #bound = "owner";

  constructor(relay, id) {
    super();
    this.#relay = relay;
    this.id = id;
    /** The document at `version` (null before the first join). */
    this.doc = null;
    this.version = null;
    /** This device's role (`viewer`, `editor`, `owner`) and the session's status (`open`, `closed`). */
    this.myRole = null;
    this.status = null;
    /** Joined on the current connection. */
    this.joined = false;
    /** User id → `{user, role, present}`. */
    this.members = new Map();
    /** User id → the user's last cursor. */
    this.cursors = new Map();
    relay.addEventListener("frame", (e) => {
      const frame = e.detail;
      if (frame.type === "session" && frame.session === id && !frame.req && frame.event) this.#onEvent(frame.event);
    });
    relay.addEventListener("status", (e) => {
      if (e.detail.state !== "open") {
        this.joined = false;
        this.#settle();
      } else if (this.#wanted) this.#rejoin();
    });
  }

  /** Creates the session with `doc` and joins it as its owner. */
  create(doc, { maxBytes = null, defaultRole = "editor", schema = null } = {}) {
    return this.#enter({ create: { doc, max_bytes: maxBytes, default_role: defaultRole, schema } });
  }

  /** Joins (again: with the version held, catching up from it); kept joined across reconnects. */
  join() {
    return this.#enter({ join: { version: this.version } });
  }

  async leave() {
    this.#wanted = false;
    await this.#action({ leave: {} });
    this.joined = false;
    this.#settle();
  }

  /**
   * Sends an RFC 6902 patch made against `base` (default: the local version); resolves with
   * `{version, rebased}` once the relay stored it and the local copy reached that version (so
   * the next patch is made against it; without a connection it resolves at once, the rejoin
   * catches up). Rejects with `SessionConflict` when versions it did not see touched its paths, or
   * `RelayError` (`read_only`, `patch_failed`, `session_closed`...). `id`: retried with the same
   * id, a patch is applied once.
   */
  async patch(operations, { base = this.version, id = messageId() } = {}) {
    const event = await this.#action({ patch: { id: String(id), base, patch: operations } });
    if (event.conflict) throw new SessionConflict(event.conflict);
    const { version } = event.applied;
    if (this.joined && this.version !== null && this.version < version) {
      await new Promise((resolve) => this.#waiting.push({ version, resolve }));
    }
    return event.applied;
  }

  /** Gives `user` a role (`viewer`, `editor`, or `owner` to hand ownership over); owner only. */
  role(user, role) {
    return this.#action({ role: { user, role } });
  }

  /** Closes the session: readable, no more patches. Owner only. */
  close() {
    return this.#action({ close: {} });
  }

  /** Deletes the session and its history; members get `ended`. Owner only. */
  destroy() {
    return this.#action({ destroy: {} });
  }

  /** Shows this user's cursor (any JSON) to the other users; lossy, rate-limited by the relay. */
  cursor(data) {
    return this.#relay.send({ type: "session", req: 0, session: this.id, action: { cursor: { data } } });
  }

  async #enter(action) {
    this.#wanted = true;
    try {
      await this.#action(action, (event) => event.joined && this.#joined(event.joined));
    } catch (err) {
      this.#wanted = this.joined;
      throw err;
    }
    return this;
  }

  /** One request; resolves with the answer's event. `onEvent` runs before any later frame. */
  async #action(action, onEvent) {
    const frame = await this.#relay.request({ type: "session", session: this.id, action }, (f) => onEvent?.(f.event ?? {}));
    return frame.event ?? {};
  }

  /** Resolves the patches the local copy has reached (all of them when not joined). */
  #settle() {
    this.#waiting = this.#waiting.filter((w) => {
      const done = !this.joined || (this.version !== null && w.version <= this.version);
      if (done) w.resolve();
      return !done;
    });
  }

  #rejoin() {
    this.join().catch((err) => {
      if (err?.code === "not_connected") return; // Lost again: the next connection rejoins.
      this.#wanted = false;
      this.dispatchEvent(new CustomEvent("error", { detail: err }));
    });
  }

  #joined({ role, status, version, snapshot, patches, members }) {
    if (snapshot) {
      this.doc = snapshot.doc;
      this.version = snapshot.version;
    }
    for (const patch of Array.isArray(patches) ? patches : []) this.#apply(patch, false);
    this.version = version;
    this.myRole = role;
    this.status = status;
    this.joined = true;
    this.members = new Map((members ?? []).map((m) => [m.user, m]));
    const mine = this.members.get(this.#relay.welcome?.user);
    this.#bound = mine && RANK[role] < RANK[mine.role] ? role : "owner";
    this.#settle();
    this.dispatchEvent(new CustomEvent("joined", { detail: { version, role, status } }));
  }

  /** Applies the next version; ignores one already held; rejoins on a gap. */
  #apply(patch, announce = true) {
    if (this.version === null || typeof patch?.version !== "number" || patch.version <= this.version) return;
    if (patch.version !== this.version + 1) {
      if (announce) this.#rejoin();
      return;
    }
    try {
      this.doc = applyPatch(this.doc, patch.patch);
    } catch (err) {
      // The relay applied it, so only a copy that went wrong fails here: start over from a snapshot.
      this.version = null;
      this.doc = null;
      if (announce) this.#rejoin();
      return;
    }
    this.version = patch.version;
    this.#settle();
    if (announce) this.dispatchEvent(new CustomEvent("patched", { detail: { patch, doc: this.doc, version: this.version } }));
  }

  #onEvent(event) {
    if (event.patched) return this.#apply(event.patched.patch);
    if (event.member) {
      const member = event.member.member;
      this.members.set(member.user, member);
      // The owner changed this user's role: this device's follows, within its token.
      if (member.user === this.#relay.welcome?.user && RANK[member.role] !== undefined) {
        this.myRole = RANK[member.role] < RANK[this.#bound] ? member.role : this.#bound;
      }
      return this.dispatchEvent(new CustomEvent("member", { detail: event.member.member }));
    }
    if (event.cursor) {
      const { user, data } = event.cursor;
      if (data === null) this.cursors.delete(user);
      else this.cursors.set(user, data);
      return this.dispatchEvent(new CustomEvent("cursor", { detail: { user, data } }));
    }
    if (event.closed) {
      this.status = "closed";
      return this.dispatchEvent(new CustomEvent("closed", { detail: event.closed }));
    }
    if (event.ended) {
      this.#wanted = false;
      this.joined = false;
      this.#settle();
      return this.dispatchEvent(new CustomEvent("ended", { detail: event.ended }));
    }
    return undefined;
  }
}
