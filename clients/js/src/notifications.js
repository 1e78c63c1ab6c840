// In-app notifications on the browser client (docs/notifications.md; wire: docs/protocol.md
// "Notifications"): the user's feed with unread state, preferences, push devices. A separate
// entry point (`@edgerelay/client/notifications`) so apps without notifications do not ship it
// (the core's size budget); it uses only the public `request` and the `frame` and `status`
// events, so it works on `EdgeRelay` and `SharedRelay` alike.
//
// Why it is shaped like this:
// - The relay sends updates (`new`, `read`, `prefs` with `req` 0) only to connections that asked
//   for the feed; a new connection has not. So after a reconnect the feed is asked for again
//   (the first page, as an event `page`): anything added meanwhile is in it.
// - The client keeps only the unread count (`unread`) and the preferences it saw; pages are the
//   app's to keep, since it decides how far back to scroll.

const feeds = new WeakMap();

/** The `Notifications` of `relay` (made on first use; nothing is sent). */
export function notifications(relay) {
  let n = feeds.get(relay);
  if (!n) feeds.set(relay, (n = new Notifications(relay)));
  return n;
}

/**
 * One client's notifications. Events: `new` (`{notification, unread}`), `read` (`{id, up_to,
 * unread}`, a read on another device), `prefs` (the preferences, changed on another device),
 * `page` (the first page again after a reconnect).
 */
export class Notifications extends EventTarget {
  #relay;
  #listening = 0;
  /** The feed's unread count, as last told by the relay. */
  unread = 0;
  /** The preferences, once read or set. */
  prefs = null;

  constructor(relay) {
    super();
    this.#relay = relay;
    relay.addEventListener("frame", ({ detail: f }) => {
      if (f.type !== "notifications" || f.req) return;
      const [[name, detail]] = Object.entries(f.event);
      if (typeof detail?.unread === "number") this.unread = detail.unread;
      if (name === "prefs") this.prefs = detail.prefs;
      this.#emit(name, name === "prefs" ? detail.prefs : detail);
    });
    relay.addEventListener("status", ({ detail }) => {
      if (detail.state === "open" && this.#listening) {
        this.feed({ limit: this.#listening }).then((page) => this.#emit("page", page), () => {});
      }
    });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async #ask(action) {
    const answer = await this.#relay.request({ type: "notifications", action });
    return answer.event;
  }

  /** A page of the feed, newest first: `{notifications, unread, next}` (`next`: the `before` of
   * the next page, null at the end). From then on this client gets `new`, `read`, `prefs`. */
  async feed({ before = null, limit = 20 } = {}) {
    this.#listening ||= limit;
    const { page } = await this.#ask({ feed: { before, limit } });
    this.unread = page.unread;
    return page;
  }

  /** Marks notification `id` read (with `upTo`, every one up to it); resolves with the unread
   * count once durable. */
  async markRead(id, { upTo = false } = {}) {
    const { read } = await this.#ask({ mark_read: { id, up_to: upTo } });
    return (this.unread = read.unread);
  }

  /** Reads the preferences (`set` absent) or replaces them; resolves with them. */
  async preferences(set = null) {
    const { prefs } = await this.#ask({ prefs: { set } });
    return (this.prefs = prefs.prefs);
  }

  /** Registers this device's push token (`platform`: `"fcm"` or `"apns"`). */
  async registerDevice(device, platform, token) {
    await this.#ask({ register_device: { device, platform, token } });
  }

  /** Forgets a device's push token (on logout). */
  async unregisterDevice(device) {
    await this.#ask({ unregister_device: { device } });
  }

  /** The app went to the background (`true`) or came back: while every connection of the user
   * is in the background, notifications go to the operator's webhook (push). */
  async setBackground(background) {
    await this.#ask({ background: { background: !!background } });
  }
}
