// Event topics on the browser client (docs/events.md; wire: docs/protocol.md "Events"). A
// `Subscription` is one `subscribe` the client keeps across reconnects.
//
// Why it is shaped like this:
// - The relay sends an event to a connection once, whichever of its subscriptions matched, and
//   says only its topic: the client finds the subscriptions it belongs to by matching the topic
//   against their patterns here (`topicMatches`).
// - An exact persistent topic has positions: the subscription keeps the last one it saw and
//   resubscribes with it as `since` after a reconnect, and drops any event at or below it, so
//   nothing is lost or seen twice. Other subscriptions carry no position and resume live.

/** Whether `topic` matches `pattern` (`*`: exactly one segment; `>`: one or more, last only). */
export function topicMatches(pattern, topic) {
  const want = pattern.split(".");
  const have = topic.split(".");
  for (let i = 0; i < want.length; i++) {
    if (want[i] === ">") return i === want.length - 1 && have.length > i;
    if (i >= have.length || (want[i] !== "*" && want[i] !== have[i])) return false;
  }
  return have.length === want.length;
}

/** Whether position `a` is at or before `b` in the same epoch. */
function seen(a, b) {
  return b != null && a.epoch === b.epoch && a.offset <= b.offset;
}

/**
 * One subscription (from `EdgeRelay.subscribe`): `event` events with `{topic, position, time, id,
 * tags, data}`, `subscribed` after each (re)subscribe with `{position, recovered}`, and `error`
 * when a resubscribe after a reconnect is refused (the subscription ends then).
 */
export class Subscription extends EventTarget {
  #unsubscribe;

  constructor(pattern, filter, since, unsubscribe) {
    super();
    this.pattern = pattern;
    this.filter = filter;
    // Positions are per topic: only an exact pattern's events share one sequence.
    this.exact = !pattern.split(".").some((s) => s === "*" || s === ">");
    /** The last position seen (exact persistent topics; null otherwise): the next `since`. */
    this.position = this.exact ? since : null;
    /** Whether the relay holds this subscription on the current connection. */
    this.active = false;
    /** `recovered` of the last `subscribed`: false when events were missed (see docs/events.md). */
    this.recovered = null;
    this.#unsubscribe = unsubscribe;
  }

  /** Ends the subscription (no more events, not resubscribed). */
  unsubscribe() {
    return this.#unsubscribe(this);
  }

  _subscribed(frame) {
    this.active = true;
    this.recovered = frame.recovered;
    // Without `since`, or when `since` could not be resumed, events start after the top.
    if (this.exact && frame.position && (this.position == null || !frame.recovered)) this.position = frame.position;
    this.dispatchEvent(new CustomEvent("subscribed", { detail: { position: frame.position ?? null, recovered: frame.recovered } }));
  }

  /** Delivers `frame` unless its position was seen already. */
  _event(frame) {
    const { position } = frame;
    if (this.exact && position) {
      if (seen(position, this.position)) return;
      this.position = position;
    }
    this.dispatchEvent(new CustomEvent("event", { detail: frame }));
  }
}

/** The `Subscription` of `pattern` in `kept` (pattern → Subscription), made and kept on first
 * use with `filter` and `since`; `unsubscribe(sub)` ends it. */
export function keptSubscription(kept, pattern, { filter = null, since = null }, unsubscribe) {
  let sub = kept.get(pattern);
  if (!sub) kept.set(pattern, (sub = new Subscription(String(pattern), filter, since, unsubscribe)));
  return sub;
}
