// Publishes not yet acknowledged, in the order they were made, each with its id, so that a
// connection lost before the `ack` loses nothing: the client sends them again with the same ids
// once it is back, and the relay (which dedupes ids within `store.dedupe_window_secs`) stores and
// delivers each exactly once, as the Rust client's `Resilient` does. No IO here: the client
// decides when to send.

/** A message id that is unique per user and room, not only within the dedupe window. */
export function messageId(scope = globalThis) {
  if (typeof scope.crypto?.randomUUID === "function") return scope.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (typeof scope.crypto?.getRandomValues === "function") scope.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Outbox {
  #entries = new Map();

  /**
   * Adds a publish (`mentions`: a `publish_mentions`) (or, for an id already waiting, one more waiter on it). Resolves with the
   * acked position; `entry.fresh` says whether it is new and must be sent.
   */
  add(room, id, data, mentions) {
    const key = `${room}\n${id}`;
    let entry = this.#entries.get(key);
    const fresh = !entry;
    if (fresh) {
      entry = { room, id, data, mentions, waiters: [], attempts: 0 };
      this.#entries.set(key, entry);
    }
    const promise = new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
    return { entry, fresh, promise };
  }

  /** The waiting publishes, oldest first. */
  get entries() {
    return [...this.#entries.values()];
  }

  get size() {
    return this.#entries.size;
  }

  /** The relay acknowledged `room`/`id` at `position`. */
  ack(room, id, position) {
    this.#settle(room, id, (w) => w.resolve(position));
  }

  /** The publish can never succeed (a non-retryable error): reject its waiters, forget it. */
  fail(room, id, error) {
    this.#settle(room, id, (w) => w.reject(error));
  }

  /** Rejects and forgets everything (the client was closed). */
  failAll(error) {
    for (const entry of this.#entries.values()) for (const w of entry.waiters) w.reject(error);
    this.#entries.clear();
  }

  #settle(room, id, each) {
    const key = `${room}\n${id}`;
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    for (const w of entry.waiters) each(w);
  }
}
