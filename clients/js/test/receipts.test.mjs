// Receipts and unread counts through the SDK against a real relay (docs/receipts.md): two devices
// of alice and bob in one room. Counts after bob's publishes (a mention counted), a read on one of
// alice's devices clears the other's badge, bob's status shows his messages delivered and read,
// and `shareReads(false)` hides alice's reads from him. Run: node --test clients/js/test/.
import { test } from "node:test";
import assert from "node:assert/strict";

import { nextEvent, startRelay, until, wsClient } from "./relay.mjs";

const ROOM = "chat:team";
const tokenOf = (relay, user) => () => relay.token(user).then((t) => t.token);

test("unread counts across two devices, delivered and read ticks, reads hidden", { timeout: 60_000 }, async () => {
  const relay = await startRelay({ EDGERELAY_RECEIPTS__INTERVAL_MS: "50" });
  const laptop = wsClient(relay, tokenOf(relay, "alice"));
  const phone = wsClient(relay, tokenOf(relay, "alice"));
  const bob = wsClient(relay, tokenOf(relay, "bob"));
  const clients = [laptop, phone, bob];
  try {
    await Promise.all(clients.map((c) => c.connect()));
    for (const c of clients) await c.join(ROOM);
    const synced = await laptop.syncUnread();
    assert.equal(synced, laptop.unread);
    assert.deepEqual([synced.total, synced.mentions, synced.rooms.get(ROOM)?.unread], [0, 0, 0]);
    await phone.syncUnread();
    await bob.syncUnread();

    // Bob writes three messages, naming alice in the last: her badge says 3, one mention. The
    // mention may come one `interval_ms` after the count (it is counted once stored).
    const counted = nextEvent(laptop, "unread", (u) => u.rooms.get(ROOM)?.unread === 3 && u.mentions === 1);
    await bob.publish(ROOM, { text: "one" });
    await bob.publish(ROOM, { text: "two" });
    const last = await bob.publishWithMentions(ROOM, { text: "@alice three" }, ["alice"], { id: "m-3" });
    const badge = await counted;
    assert.deepEqual([badge.total, badge.mentions, badge.rooms.get(ROOM).mentions], [3, 1, 1]);
    assert.deepEqual(badge.rooms.get(ROOM).top, last);
    // The same id again is the same message (kept and deduped like publish).
    assert.deepEqual(await bob.publishWithMentions(ROOM, { text: "@alice three" }, ["alice"], { id: "m-3" }), last);
    await until(() => phone.unread.total === 3, "the phone counts 3 as well");
    assert.equal(bob.unread.total, 0, "a sender's own messages are read");

    // Reading on the phone clears the laptop's badge at once.
    const cleared = nextEvent(laptop, "unread", (u) => u.total === 0);
    await phone.markRead([{ room: ROOM, position: last }]);
    const after = await cleared;
    assert.deepEqual([after.mentions, after.rooms.get(ROOM).unread, after.rooms.get(ROOM).read], [0, 0, last]);

    // Bob's ticks: alice's devices confirmed delivery, and she read it.
    const status = await bob.receiptStatus(ROOM);
    assert.equal(status.room, ROOM);
    assert.equal(status.count, 2);
    assert.ok(status.delivered_all >= last.offset && status.read_all >= last.offset, JSON.stringify(status));
    const alice = status.members.find((m) => m.user === "alice");
    assert.deepEqual([alice.delivered, alice.read], [last.offset, last.offset]);

    // Alice stops sharing reads: bob sees her next message delivered, never read.
    await laptop.shareReads(false);
    let hidden = null;
    // Delivered before any read: her devices confirm what they received with `cursor`.
    const delivered = nextEvent(bob, "receipts", (r) => r.room === ROOM && r.delivered_all >= (hidden?.offset ?? Infinity));
    hidden = await bob.publish(ROOM, { text: "four" });
    const updated = await delivered;
    assert.equal(updated.members.find((m) => m.user === "alice")?.read ?? null, null);
    await until(() => laptop.unread.total === 1, "alice counts the fourth");
    await laptop.markRead([{ room: ROOM, position: hidden }]);
    const now = await bob.receiptStatus(ROOM);
    const hers = now.members.find((m) => m.user === "alice");
    assert.equal(hers.delivered, hidden.offset);
    assert.equal(hers.read ?? null, null, "her read is not shown");
    // `read_all` counts only the members who share reads (bob alone here): per-member ticks
    // come from `members`.
    assert.equal(now.read_all, hidden.offset);
    assert.equal(laptop.unread.total, 0, "her own devices still sync her counts");

    // A refused request: a room alice does not follow.
    await assert.rejects(laptop.receiptStatus("chat:elsewhere"), (err) => err.code === 200 || err.code === "not_following");
  } finally {
    for (const c of clients) c.close();
    await relay.stop();
  }
});
