// The errors the SDK rejects with, as classes an app can test with `instanceof`: what the relay
// answered (`RelayError`, its numeric code from docs/protocol.md), a call made in a state where it
// cannot work (`StateError`: before `connect()`, after `close()`, no WebSocket in this runtime),
// and a request nobody answered in time (`TimeoutError`). None of them is ever a TypeError.

/** Error names by code (docs/protocol.md, "Errors and close codes"), for messages and `name`. */
const NAMES = {
  100: "internal",
  101: "bad_frame",
  102: "frame_too_large",
  103: "hello_required",
  104: "unsupported_version",
  105: "auth_timeout",
  106: "wrong_stream",
  107: "store_unavailable",
  110: "token_invalid",
  111: "token_expired",
  112: "token_not_yet_valid",
  113: "too_many_connections",
  114: "token_revoked",
  120: "permission_denied",
  121: "bad_room",
  122: "too_many_rooms",
  123: "already_joined",
  124: "not_joined",
  125: "payload_too_large",
  126: "rate_limited",
  127: "bad_request",
  130: "slow_consumer",
  131: "going_away",
  132: "idle_timeout",
  133: "disconnected",
  140: "media_unsupported",
};

/** Codes after which the same request can succeed later unchanged (a publish is retried). */
export const RETRYABLE_REQUEST = new Set([100, 107, 126]);

/** An error the relay answered a request with, or closed the connection with. */
export class RelayError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "RelayError";
    /** The protocol's numeric code (e.g. 120). */
    this.code = code;
    /** Its name (e.g. `permission_denied`), or null for a code this SDK does not know. */
    this.codeName = NAMES[code] ?? null;
  }
}

/**
 * A call made when it cannot work: `code` is `not_connected` (before `connect()`, or a request
 * that needs a live connection while reconnecting), `closed` (after `close()`, or the relay
 * closed for good), `no_websocket` (no WebSocket constructor in this runtime: pass one as the
 * `WebSocket` option) or `unsupported` (e.g. media on a WebSocket connection).
 */
export class StateError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "StateError";
    this.code = code;
  }
}

/** A request the relay did not answer within `requestTimeoutMs`. */
export class TimeoutError extends Error {
  constructor(message) {
    super(message);
    this.name = "TimeoutError";
  }
}

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
