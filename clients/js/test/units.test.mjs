// The SDK's pure parts, no relay: presence and typing views, the typing debounce, the outbox,
// the token refresh schedule, the errors calls in the wrong state reject with, and the types
// file naming exactly what the package exports. Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as sdk from "../src/index.js";
import {
  EdgeRelay,
  Outbox,
  PresenceView,
  RelayError,
  Room,
  StateError,
  TypingDebounce,
  presenceDigest,
  refreshDelay,
  tokenExpiry,
  typingText,
} from "../src/index.js";
import { compileFilter } from "../src/filter.js";

const entry = (user, status, version, custom = null) => ({ user, status, custom, version, last_seen: 0 });

test("a catch-up page delivers only the unbroken run after what the room delivered", () => {
  const message = (offset, epoch = 7) => ({ type: "message", room: "a", position: { epoch, offset }, from: "bob", time: 0, id: `m${offset}`, data: "x" });
  const holding = (offset) => {
    const room = new Room("a", null, {});
    room._message(message(offset));
    return room;
  };
  const offsets = (messages) => messages.map((m) => m.position.offset);
  const room = holding(12);
  const delivered = [];
  room.addEventListener("message", (e) => delivered.push(e.detail.position.offset));
  assert.deepEqual(offsets(room._caughtUp([11, 12, 13, 14, 15].map((o) => message(o)), 7)), [13, 14, 15]);
  assert.deepEqual(delivered, [13, 14, 15], "as room messages too");
  assert.equal(room._message(message(14)), false, "the room stream's copy is a duplicate");
  assert.deepEqual(holding(12)._caughtUp([14, 15].map((o) => message(o)), 7), [], "a gap after what is held: none of it");
  assert.deepEqual(holding(12)._caughtUp([13].map((o) => message(o, 8)), 8), [], "another epoch");
  assert.deepEqual(new Room("a", null, {})._caughtUp([message(1)], 7), [], "nothing delivered yet: nothing to continue");
});

test("presence: late and reordered updates never roll back; snapshots keep newer entries", () => {
  const view = new PresenceView();
  assert.ok(view.apply(entry("alice", "online", 10)));
  assert.ok(view.apply(entry("alice", "offline", 12)));
  assert.ok(!view.apply(entry("alice", "away", 11)), "older than what is held");
  assert.equal(view.status("alice"), "offline");
  assert.ok(view.apply(entry("bob", "busy", 20)));
  view.applySnapshot([entry("carol", "online", 7), entry("bob", "online", 19)]);
  assert.deepEqual(view.members.map((m) => [m.user, m.status]), [["bob", "busy"], ["carol", "online"]]);
  assert.ok(!view.apply(entry("carol", "online", 7)), "the snapshot's version counts");
  // Bad input from a peer is ignored, never thrown.
  assert.ok(!view.apply(null));
  assert.ok(!view.apply({ status: "online" }));
  view.applySnapshot("nonsense");
  assert.deepEqual(view.members, []);
});

test("presence digest: docs/protocol.md's example, and a refresh that disagrees asks for a sync", () => {
  assert.equal(presenceDigest([entry("alice", "online", 1)]), 0x000ea9180c3d431e);
  const view = new PresenceView();
  view.apply(entry("alice", "online", 1));
  assert.ok(!view.needsSync(1, 0x000ea9180c3d431e));
  assert.ok(view.needsSync(2, 0x000ea9180c3d431e));
  assert.ok(view.needsSync(1, 12345));
});

test("presence: a quiet room's refresh (digest 0) gives a count and never asks for a sync", () => {
  const view = new PresenceView();
  assert.equal(view.applyRefresh(4, 0), false);
  assert.equal(view.count, 4);
  assert.deepEqual(view.members, []);
  view.apply({ user: "alice", status: "online", custom: null, version: 1, last_seen: 0 });
  assert.equal(view.applyRefresh(4, 0), true, "a quiet room lists nobody: the view is stale");
});

test("typing: the relay's view shown until its ttl, never older versions, without yourself", () => {
  const view = new PresenceView();
  assert.ok(view.applyTyping({ users: ["alice", "me"], others: 0, version: 5, ttl_ms: 6000 }, 1000));
  assert.equal(view.typingText(1000, "me"), "alice is typing…");
  assert.deepEqual(view.typing(6999, "me"), { users: ["alice"], total: 1, untilMs: 7000 });
  assert.equal(view.typingText(7000, "me"), "", "expired");
  assert.ok(!view.applyTyping({ users: ["bob"], others: 0, version: 4, ttl_ms: 6000 }, 2000));
  assert.equal(typingText(["Alice", "Bob", "Carol"], 3), "Alice, Bob and Carol are typing…");
  assert.equal(typingText(["Alice", "Bob", "Carol"], 4), "Alice, Bob and 2 others are typing…");
  assert.equal(typingText(["Alice"], 2), "Alice and 1 other is typing…");
  assert.equal(typingText([], 0), "");
});

test("typing debounce: start at most every 3 s while typing, stop after 5 s quiet or on send", () => {
  const d = new TypingDebounce({ startEveryMs: 3000, quietMs: 5000 });
  const sent = [];
  for (let t = 0; t <= 7000; t += 100) if (d.keystroke(t)) sent.push(t);
  assert.deepEqual(sent, [0, 3000, 6000]);
  assert.equal(d.deadline, 12_000);
  assert.equal(d.poll(11_999), null);
  assert.equal(d.poll(12_000), "stop");
  assert.equal(d.poll(13_000), null, "stop is said once");
  assert.equal(d.keystroke(13_000), "start");
  assert.equal(d.stop(), "stop");
  assert.equal(d.stop(), null);
});

test("outbox: oldest first, one entry per id with every waiter answered, failures reject", async () => {
  const outbox = new Outbox();
  const a = outbox.add("r", "a", 1);
  const again = outbox.add("r", "a", 1);
  const b = outbox.add("r", "b", 2);
  assert.deepEqual([a.fresh, again.fresh, b.fresh], [true, false, true]);
  assert.deepEqual(outbox.entries.map((e) => e.id), ["a", "b"]);
  outbox.ack("r", "a", { epoch: 1, offset: 9 });
  assert.deepEqual(await a.promise, { epoch: 1, offset: 9 });
  assert.deepEqual(await again.promise, { epoch: 1, offset: 9 });
  outbox.fail("r", "b", new RelayError(125, "payload_too_large"));
  await assert.rejects(b.promise, (err) => err instanceof RelayError && err.codeName === "payload_too_large");
  assert.equal(outbox.size, 0);
});

test("token refresh schedule: a minute ahead, halfway for short tokens, now when expired", () => {
  const now = 1_700_000_000_000;
  assert.equal(refreshDelay(now / 1000 + 3600, now), 3_540_000);
  assert.equal(refreshDelay(now / 1000 + 60, now), 30_000);
  assert.equal(refreshDelay(now / 1000 + 3, now, 1000), 2000);
  assert.equal(refreshDelay(now / 1000 - 5, now), 0);
  const payload = Buffer.from(JSON.stringify({ sub: "a", exp: 1700003600 })).toString("base64url");
  assert.equal(tokenExpiry(`eyJhbGciOiJIUzI1NiJ9.${payload}.sig`), 1700003600);
  for (const bad of ["", "nope", "a.b.c", null, "a.e30.c"]) assert.equal(tokenExpiry(bad), null, String(bad));
});

test("calls in the wrong state reject with a StateError, never a TypeError, on EdgeRelay and SharedRelay", async () => {
  const options = { token: "t", webSocketUrl: "ws://127.0.0.1:1/v1/ws", networkEvents: false };
  for (const relay of [new EdgeRelay(options), new sdk.SharedRelay(options)]) {
    const calls = {
      join: () => relay.join("chat:lobby"),
      publish: () => relay.publish("chat:lobby", { text: "hi" }),
      history: () => relay.history("chat:lobby"),
      typing: () => relay.typing("chat:lobby", true),
      setStatus: () => relay.setStatus("away"),
      activity: () => relay.activity(),
      privacy: () => relay.privacy({ hideTyping: true }),
      ping: () => relay.ping(),
      refresh: () => relay.refresh("t"),
      leave: () => relay.leave("chat:lobby"),
      subscribe: () => relay.subscribe("orders.eu"),
      request: () => relay.request({ type: "ping" }),
      send: () => relay.send({ type: "activity" }),
      iceServers: () => relay.iceServers(),
      call: () => relay.call("bob"),
      syncUnread: () => relay.syncUnread(),
      markRead: () => relay.markRead([]),
      roomPublish: () => relay.room("chat:lobby").publish({ text: "hi" }),
      roomLoadEarlier: () => relay.room("chat:lobby").loadEarlier(),
    };
    const kind = relay.constructor.name;
    for (const [name, call] of Object.entries(calls)) {
      await assert.rejects(call, (err) => err instanceof StateError && err.code === "not_connected" && /connect\(\) first/.test(err.message), `${kind}.${name}`);
    }
    // A room name the relay would refuse is refused here, with the relay's code.
    assert.throws(() => relay.room("has space"), (err) => err instanceof RelayError && err.code === 121);
    await assert.rejects(relay.publish(42, "x"), (err) => err instanceof RelayError && err.codeName === "bad_room");
    relay.close();
    for (const [name, call] of Object.entries(calls)) {
      await assert.rejects(call, (err) => err instanceof StateError && err.code === "closed", `${kind}.${name} after close`);
    }
    await assert.rejects(relay.connect(), (err) => err instanceof StateError && err.code === "closed");
  }
});

test("without a WebSocket (Node < 22, none injected) connect fails at once instead of retrying", async () => {
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    const relay = new EdgeRelay({ token: "t", webSocketUrl: "ws://127.0.0.1:1/v1/ws", networkEvents: false });
    const states = [];
    relay.addEventListener("status", (e) => states.push(e.detail.state));
    await assert.rejects(relay.connect(), (err) => err instanceof StateError && err.code === "no_websocket" && /WebSocket option/.test(err.message));
    assert.deepEqual(states, ["connecting", "closed"]);
    await assert.rejects(relay.publish("chat:lobby", 1), (err) => err instanceof StateError && err.code === "closed");
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("close() while connecting rejects connect() and every waiting publish and join", async () => {
  // A socket that never opens: the client stays connecting until closed.
  class Never {
    close() {}
  }
  const relay = new EdgeRelay({ token: "t", WebSocket: Never, transport: "websocket", webSocketUrl: "ws://x/v1/ws", networkEvents: false });
  const connecting = relay.connect();
  const publish = relay.publish("chat:lobby", { text: "queued" });
  const join = relay.join("chat:lobby");
  assert.equal(relay.unacked, 1);
  relay.close();
  await assert.rejects(connecting, (err) => err instanceof StateError && err.message === "closed before it connected");
  await assert.rejects(publish, (err) => err instanceof StateError && err.code === "closed");
  await assert.rejects(join, (err) => err instanceof StateError && err.code === "closed");
  assert.equal(relay.state, "closed");
});

test("index.d.ts declares exactly the values the package exports", () => {
  const types = readFileSync(new URL("../index.d.ts", import.meta.url), "utf8");
  const declared = [...types.matchAll(/^export (?:declare )?(?:class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(sdk).sort());
});

const hasLocks = Boolean(globalThis.navigator?.locks) && typeof BroadcastChannel === "function";
test("SharedRelay without Web Locks says so instead of failing later", { skip: hasLocks && "this Node has Web Locks" }, async () => {
  const { SharedRelay } = await import("../src/index.js");
  const shared = new SharedRelay({ shareKey: "alice", token: "t", webSocketUrl: "ws://x/v1/ws" });
  await assert.rejects(shared.connect(), (err) => err instanceof StateError && err.code === "unsupported");
  await assert.rejects(shared.join("chat:lobby"), (err) => err instanceof StateError && err.code === "not_connected");
});

test("react.d.ts declares exactly the hooks @edgerelay/client/react exports", async () => {
  const react = await import("../src/react.js");
  const types = readFileSync(new URL("../react.d.ts", import.meta.url), "utf8");
  const declared = [...types.matchAll(/^export function (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(react).sort());
});

test("every error code of docs/protocol.md has its name", () => {
  const doc = readFileSync(new URL("../../../docs/protocol.md", import.meta.url), "utf8");
  const codes = [...doc.matchAll(/^\| (\d{3}) \| `(\w+)` \|/gm)];
  assert.ok(codes.length > 70, `${codes.length} codes`);
  // Codes added to the docs later (other branches) may be unnamed until errors.js lists them:
  // never named wrongly, and every code of this SDK's time named.
  const named = codes.filter(([, code]) => new RelayError(Number(code), "x").codeName !== null);
  for (const [, code, name] of named) assert.equal(new RelayError(Number(code), "x").codeName, name, code);
  assert.ok(named.length >= 78, `${named.length} named`);
  assert.equal(new RelayError(999, "x").codeName, null);
});

test("topic filters evaluate as the relay's do, and refuse what it refuses with the byte", () => {
  const t = { region: "eu", qty: "12", tier: "gold" };
  const passes = (filter, tags = t) => compileFilter(filter)(tags);
  for (const f of ["region = eu", "region = 'eu'", "region != us", "missing != x", "tier in (silver, gold)", "qty > 10 and qty <= 12", "qty = 12.0", "has tier", "NOT (region = us) AND qty >= 12"]) {
    assert.equal(passes(f), true, f);
  }
  for (const f of ["region = us", "missing = x", "tier in ('bronze')", "qty < 12", "region > 1", "has price", "qty = '12.0'", "has toString"]) {
    assert.equal(passes(f), false, f);
  }
  assert.equal(passes(null), true, "no filter: everything");
  const ab = { a: "1", b: "2" };
  assert.equal(passes("a = 1 or a = 2 and b = 3", ab), true, "and binds tighter than or");
  assert.equal(passes("(a = 1 or a = 2) and b = 3", ab), false);
  assert.equal(passes("not not a = 1", ab), true);
  assert.equal(passes('x = "a \\"q\\""', { x: 'a "q"' }), true);
  const refused = [
    ["", 0, "expected a tag name"],
    ["region", 6, "expected an operator"],
    ["region = ", 9, "expected a value"],
    ["a = 1 and", 9, "expected a tag name"],
    ["(a = 1", 6, 'expected ")"'],
    ["a = 1)", 5, "unexpected"],
    ["a < eu", 4, "< needs a number"],
    ["a in 1", 5, 'expected "("'],
    ["a in (1 2)", 8, 'expected "," or ")"'],
    ["a ! 1", 2, 'expected "!="'],
    ["a = 'open", 4, "unexpected"],
    ["a = 1 # x", 6, "unexpected"],
    ["and = 1", 0, "expected a tag name"],
    ["x = 'ü' and", 12, "expected a tag name"], // offsets in UTF-8 bytes, as the relay's
    [`${"(".repeat(40)}a = 1${")".repeat(40)}`, 16, "nested deeper than 16"],
    [Array(70).fill("a = 1").join(" or "), 576, "more than 64 comparisons"],
    ["a".repeat(2000), 1024, "longer than 1024 bytes"],
  ];
  for (const [filter, at, what] of refused) {
    assert.throws(
      () => compileFilter(filter),
      (err) => err instanceof RelayError && err.code === 186 && err.message.includes(`bad filter at byte ${at}: ${what}`),
      filter.slice(0, 20),
    );
  }
});
