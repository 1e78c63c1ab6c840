// When to do things, as pure functions of the time (passed in) so tests need no clock: the
// reconnect backoff and the token refresh before expiry.

/**
 * The delay before reconnect attempt `attempt` (0-based): uniform in [0, min(cap, base·2^attempt))
 * ("full jitter": a relay restart is not hit by every client at the same instant).
 */
export function backoffDelay(attempt, { baseMs = 250, capMs = 10_000 } = {}, random = Math.random) {
  const bound = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * bound);
}

/** A JWT's `exp` (unix seconds), or null when it has none or is not a JWT. Nothing is verified. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const base64 = part.replaceAll("-", "+").replaceAll("_", "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const exp = JSON.parse(atob(base64)).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/**
 * How long to wait before refreshing a token that expires at `expiresAt` (unix seconds) when it
 * is `nowMs` (unix ms, the relay's clock): `beforeMs` ahead of the expiry, or halfway there when
 * the token lives less than twice that; 0 when it has expired already.
 */
export function refreshDelay(expiresAt, nowMs, beforeMs = 60_000) {
  const remaining = expiresAt * 1000 - nowMs;
  if (!(remaining > 0)) return 0;
  return remaining > 2 * beforeMs ? remaining - beforeMs : Math.floor(remaining / 2);
}
