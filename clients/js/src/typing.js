// The typing debounce a page runs next to its text input, without IO (`nowMs` passed in), the
// same rule as the Rust client's `TypingDebounce`: while keys are pressed say "start" at most
// every `startEveryMs`, and "stop" once the input was quiet for `quietMs` or the message was
// sent. The relay ends a typist by itself `presence.typing_ttl_ms` (6 s) after the last start,
// so the 3 s refresh keeps a typist shown and a crashed page never types forever.

export class TypingDebounce {
  #startedAt = null;
  #lastKey = 0;

  constructor({ startEveryMs = 3000, quietMs = 5000 } = {}) {
    this.startEveryMs = startEveryMs;
    this.quietMs = quietMs;
  }

  /** A key was pressed: `"start"` when the relay should hear it, else null. */
  keystroke(nowMs) {
    this.#lastKey = nowMs;
    if (this.#startedAt !== null && nowMs - this.#startedAt < this.startEveryMs) return null;
    this.#startedAt = nowMs;
    return "start";
  }

  /** The message was sent or the input cleared: `"stop"` if typing, else null. */
  stop() {
    if (this.#startedAt === null) return null;
    this.#startedAt = null;
    return "stop";
  }

  /** Time passed: `"stop"` once the quiet period is over. Call it at `deadline`. */
  poll(nowMs) {
    const deadline = this.deadline;
    return deadline !== null && nowMs >= deadline ? this.stop() : null;
  }

  /** When `poll` will next have something to say (null while not typing). */
  get deadline() {
    return this.#startedAt === null ? null : this.#lastKey + this.quietMs;
  }

  get typing() {
    return this.#startedAt !== null;
  }
}
