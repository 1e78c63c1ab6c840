// Read marks, unread counts and delivery/read receipts on the browser client (docs/receipts.md;
// wire: docs/protocol.md "Receipts and unread counts"): the methods below, assigned to both
// `EdgeRelay` and `SharedRelay`. They use only the public `request`, `publish` and the `frame`
// and `status` events, so a tab behind a `SharedRelay` leader works unchanged (the leader
// forwards the relay's updates to every tab as frames).
//
// Why it is shaped like this:
// - The relay sends updates only to connections that sent `sync`, and each entry replaces the
//   client's one for its room, with the totals always complete: the client keeps the map and
//   merges, it never counts. The `sync` answer is applied as soon as it arrives (`onAnswer`), so
//   an update right behind it is never overwritten by it.
// - A new connection is not synced: once the app synced, every reopen syncs again (full).
// - Delivered is what a device confirmed with `cursor`: once synced, the client confirms the
//   messages it hands to the app, coalesced per room, so senders see their messages delivered.
// - Small on purpose: every app ships it with the core (size budget, tools/size.mjs).

/** Sends the receipts `action`; resolves with the answer's event (`{ok: {}}`, `{unread}`...). */
const ask = (relay, action, onAnswer) => relay.request({ type: "receipts", action }, onAnswer).then((f) => f.event);

/** Applies a receipts event: `unread` merges into `relay.unread`; each tells the app by an event
 * of its name (`unread`: the whole `relay.unread`; `receipts`: one room's update). */
function apply(relay, event) {
  const u = event?.unread;
  const state = relay.unread;
  if (u) {
    if (u.full) state.rooms.clear();
    for (const entry of u.rooms) state.rooms.set(entry.room, entry);
    state.total = u.total;
    state.mentions = u.mentions;
  }
  const type = u ? "unread" : event?.receipts && "receipts";
  if (type) relay.dispatchEvent(new CustomEvent(type, { detail: u ? state : event.receipts }));
}

const sync = (relay) => ask(relay, { sync: {} }, (f) => apply(relay, f.event)).then(() => relay.unread);

export const receiptMethods = {
  /** Resolves with `{rooms, total, mentions}` (also `this.unread`), then `unread` events keep it
   * live, and `receipts` events bring the rooms' delivery and read progress. */
  syncUnread() {
    if (!this.unread) {
      this.unread = { rooms: new Map(), total: 0, mentions: 0 };
      this.addEventListener("frame", ({ detail: f }) => f.type === "receipts" && !f.req && apply(this, f.event));
      // The relay forgets the sync with the connection: a new one syncs again.
      this.addEventListener("status", ({ detail }) => detail.state === "open" && sync(this).catch(() => {}));
      // Delivered: `cursor` for what arrived (`notify`: a SharedRelay's, once per browser), one
      // per room a moment later, however many messages came.
      const due = new Map();
      const flush = () => {
        for (const [room, position] of due) this.send({ type: "cursor", room, position }).catch(() => {});
        due.clear();
      };
      const delivered = ({ detail: m }) => {
        if (!due.size) setTimeout(flush, 100);
        due.set(m.room, m.position);
      };
      this.addEventListener("message", delivered);
      this.addEventListener("notify", delivered);
    }
    return sync(this);
  },
  /** Marks rooms read up to and including each `position`; resolves once durable. */
  async markRead(marks) {
    await ask(this, { read: { marks } });
  },
  /** A followed room's receipts: `{room, epoch, delivered_all, read_all, count, members}`. */
  async receiptStatus(room) {
    return (await ask(this, { status: { room } })).receipts;
  },
  /** Whether other members see this user's reads (kept by the relay; default true). */
  async shareReads(share) {
    await ask(this, { privacy: { share_read: !!share } });
  },
  /** `publish` naming the users it mentions (counted in their `mentions`); kept and retried
   * like `publish`. */
  publishWithMentions(room, data, mentions, { id } = {}) {
    return this.publish(room, data, { id, mentions });
  },
};
