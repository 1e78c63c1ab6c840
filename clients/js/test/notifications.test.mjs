// Notifications through the SDK against a real relay (docs/notifications.md): two devices of one
// user read the same feed; a notification the backend adds reaches both live, a read on one
// reaches the other, preferences sync, and the first page comes again after a reconnect.
// Run: node --test clients/js/test/.
import { test } from "node:test";
import assert from "node:assert/strict";

import { notifications } from "../src/notifications.js";
import { nextEvent, startRelay, wsClient } from "./relay.mjs";

const API_KEY = "sdk-test-api-key-0123456789";
const tokenOf = (relay, user) => () => relay.token(user).then((t) => t.token);

async function add(relay, body) {
  const response = await fetch(`${relay.base}/v1/api/notifications`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ tenant: "demo", type: "mention", ...body }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).results;
}

test("a feed on two devices: live, reads and preferences synced, paging", { timeout: 60_000 }, async () => {
  const relay = await startRelay({ EDGERELAY_API__KEY: API_KEY });
  const laptop = wsClient(relay, tokenOf(relay, "alice"));
  const phone = wsClient(relay, tokenOf(relay, "alice"));
  try {
    await Promise.all([laptop.connect(), phone.connect()]);
    const [onLaptop, onPhone] = [notifications(laptop), notifications(phone)];
    assert.equal(notifications(laptop), onLaptop, "one per client");
    assert.deepEqual(await onLaptop.feed(), { notifications: [], unread: 0, next: null });
    await onPhone.feed();

    const arrived = nextEvent(onPhone, "new", (d) => d.notification.title === "hi");
    const [result] = await add(relay, { user: "alice", title: "hi", data: { thread: 7 }, room: "chat:team" });
    assert.equal(result.delivered_here, 2);
    const { notification, unread } = await arrived;
    assert.deepEqual([notification.id, notification.data, notification.room, unread], [1, { thread: 7 }, "chat:team", 1]);
    assert.equal(onPhone.unread, 1);

    for (const title of ["two", "three"]) await add(relay, { user: "alice", title });
    const page = await onLaptop.feed({ limit: 2 });
    assert.deepEqual(page.notifications.map((n) => n.title), ["three", "two"]);
    assert.deepEqual((await onLaptop.feed({ before: page.next, limit: 2 })).notifications.map((n) => n.title), ["hi"]);

    // Read on the laptop: the phone hears it.
    const read = nextEvent(onPhone, "read", (d) => d.unread === 0);
    assert.equal(await onLaptop.markRead(3, { upTo: true }), 0);
    assert.deepEqual(await read, { id: 3, up_to: true, unread: 0 });

    // Preferences set on the phone reach the laptop; bad ones are refused with their code.
    const prefs = { mutes: [{ room: "chat:team", until: null }], quiet_hours: { start: "22:00", end: "07:00", tz: "Europe/Berlin" }, min_priority: "high", skip_types: [] };
    const synced = nextEvent(onLaptop, "prefs");
    assert.deepEqual(await onPhone.preferences(prefs), prefs);
    assert.deepEqual(await synced, prefs);
    await assert.rejects(onPhone.preferences({ ...prefs, quiet_hours: { start: "25:00", end: "07:00", tz: "UTC" } }), (e) => e.code === 205);
    await onPhone.registerDevice("phone-1", "fcm", "fcm-token");
    await onPhone.setBackground(true);
    const [muted] = await add(relay, { user: "alice", title: "muted", room: "chat:team", priority: "urgent" });
    assert.equal(muted.silent, true);
  } finally {
    laptop.close();
    phone.close();
    await relay.stop();
  }
});
