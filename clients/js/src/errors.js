// The errors the SDK rejects with, as classes an app can test with `instanceof`: what the relay
// answered (`RelayError`, its numeric code from docs/protocol.md), a call made in a state where it
// cannot work (`StateError`: before `connect()`, after `close()`, no WebSocket in this runtime),
// and a request nobody answered in time (`TimeoutError`). None of them is ever a TypeError.

/** Error names by code (docs/protocol.md, "Errors and close codes"), for `codeName`: each entry
 * is a first code and the names of the codes that follow it. */
const NAMES = {};
for (const run of [
  "100 internal bad_frame frame_too_large hello_required unsupported_version auth_timeout wrong_stream store_unavailable",
  "110 token_invalid token_expired token_not_yet_valid too_many_connections token_revoked message_too_big connection_rate_limited too_many_from_address",
  "120 permission_denied bad_room too_many_rooms already_joined not_joined payload_too_large rate_limited bad_request unknown_track media_limit slow_consumer going_away idle_timeout disconnected",
  "140 media_unsupported",
  "150 not_participant call_ended only_caller only_callee not_ringing already_answered not_reconnecting timed_out self_call cross_tenant not_connected not_host call_full already_invited not_invited not_in_call removed self_target bad_report report_too_frequent unknown_session session_exists session_closed not_in_session read_only not_owner bad_patch patch_failed document_too_large bad_version schema_violation bad_yjs_message wrong_session_kind session_moved",
  "185 bad_topic bad_filter already_subscribed not_subscribed too_many_subscriptions bad_tags connect_denied hook_denied hook_unavailable connect_unavailable",
  "200 not_following bad_mark too_many_marks bad_mentions unknown_notification bad_prefs bad_device too_many_devices unknown_device bad_notification bad_page unknown_dead_letter",
]) {
  const [first, ...names] = run.split(" ");
  names.forEach((name, i) => (NAMES[+first + i] = name));
}

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
