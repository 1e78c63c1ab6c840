// SharedRelay beyond rooms, against a real relay (WebSocket, `ws` injected): three "tabs" of one
// user (SharedRelay objects in one process share a BroadcastChannel as tabs of an origin do; Node
// 20 has no Web Locks, so `navigator.locks` is a stand-in that queues as browsers do) hold one
// connection; sessions, event topics and calls go through the leader; when the leader tab goes,
// the next one takes over and sessions resume from the version each tab has, persistent topics
// from their position: nothing missed, nothing twice. Run: node --test clients/js/test/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SharedRelay } from "../src/index.js";
import { Holders, older, sessionVerb } from "../src/shared.js";
import { session } from "../src/sessions.js";
import { nextEvent, publishEvents, startRelay, until, wsClient, wsOptions } from "./relay.mjs";

/** Web Locks' exclusive `request` as browsers do it: one holder per name, the rest queue. */
class Locks {
  #queues = new Map();

  request(name, callback) {
    return new Promise((resolve, reject) => {
      const queue = this.#queues.get(name) ?? [];
      this.#queues.set(name, queue);
      const run = async () => {
        try {
          resolve(await callback({ name, mode: "exclusive" }));
        } catch (err) {
          reject(err);
        } finally {
          queue.shift();
          if (queue.length) queue[0]();
          else this.#queues.delete(name);
        }
      };
      queue.push(run);
      if (queue.length === 1) run();
    });
  }
}
if (!globalThis.navigator?.locks) {
  Object.defineProperty(globalThis, "navigator", { value: { ...globalThis.navigator, locks: new Locks() }, configurable: true });
}

const API_KEY = "sdk-shared-test-api-key-0123";
// A hand-over (a new connection, then rejoins) on a machine busy with other tests.
const SLOW = 20_000;
const RELAY_ENV = { EDGERELAY_API__KEY: API_KEY, EDGERELAY_EVENTS__PERSISTENT: '["orders.>"]' };

function tab(relay, shareKey, getToken) {
  return new SharedRelay(wsOptions(relay, getToken, { shareKey, gatherMs: 100 }));
}

/** Three tabs of `shareKey`, connected; resolves with them, the leader first. */
async function threeTabs(relay, shareKey, getToken) {
  const tabs = [];
  for (let i = 0; i < 3; i++) {
    const t = tab(relay, shareKey, getToken);
    await t.connect();
    tabs.push(t);
  }
  await until(() => tabs.filter((t) => t.isLeader).length === 1, "one leader");
  return [...tabs.filter((t) => t.isLeader), ...tabs.filter((t) => !t.isLeader)];
}

async function websockets(relay) {
  const metrics = await (await fetch(`${relay.base}/metrics`)).text();
  return Number(/^edgerelay_connections\{transport="websocket"\} (\S+)/m.exec(metrics)?.[1] ?? 0);
}

/** Closes the leader tab (as closing the page does), runs `meanwhile` at once, and waits until
 * another tab leads. */
async function handOver(tabs, meanwhile = async () => {}) {
  const [leader, ...rest] = tabs;
  leader.close();
  await meanwhile();
  await until(() => rest.some((t) => t.isLeader && t.state === "open"), "another tab took over", SLOW);
  return rest;
}

test("the leader's bookkeeping: holders end a key with its last tab; the oldest position wins", () => {
  const holders = new Holders();
  holders.add("s:doc", "tab-1");
  holders.add("s:doc", "tab-2");
  assert.equal(holders.remove("s:doc", "tab-1"), false, "tab-2 still holds it");
  assert.equal(holders.remove("s:doc", "tab-2"), true, "the last one: leave on the connection");
  assert.equal(holders.remove("s:other", "tab-1"), true, "a key nobody holds");
  assert.deepEqual(sessionVerb({ type: "session", session: "doc:a", action: { leave: {} } }), { key: "s:doc:a", verb: "leave" });
  assert.equal(sessionVerb({ type: "call", call: "x", action: {} }), null);
  const p = (offset, epoch = 1) => ({ epoch, offset });
  assert.deepEqual(older(null, p(3)), p(3));
  assert.deepEqual(older(p(3), p(2)), p(2));
  assert.deepEqual(older(p(2), null), p(2));
});

/** A stand-in for the leader's `EdgeRelay` (the `EdgeRelay` option): open at once; answers
 * every request on a later task, and right behind the answer, in the same task (as frames that
 * came in one read), an unrequested session frame. */
class ScriptedInner extends EventTarget {
  static sent = [];
  state = "idle";
  transport = null;
  welcome = null;
  subscriptions = [];

  connect() {
    Object.assign(this, { state: "open", transport: "websocket", welcome: { user: "alice", session: "conn-1" } });
    this.dispatchEvent(new CustomEvent("status", { detail: { state: "open", transport: "websocket" } }));
    return Promise.resolve(this.welcome);
  }

  request(frame, onAnswer) {
    ScriptedInner.sent.push(frame);
    const answer = { type: "session", req: 9, session: frame.session, event: { ok: {} } };
    return new Promise((resolve) => {
      setTimeout(() => {
        onAnswer?.(answer);
        resolve(answer);
        const patched = { type: "session", req: 0, session: frame.session, event: { patched: { patch: { version: 1 } } } };
        this.dispatchEvent(new CustomEvent("frame", { detail: patched }));
      }, 0);
    });
  }

  close() {}
}

test("a tab gets its answer before the frames behind it; a session is left on the connection with its last tab", async () => {
  const make = () => new SharedRelay({ shareKey: "scripted", token: "t", EdgeRelay: ScriptedInner, gatherMs: 0 });
  const leader = make();
  await leader.connect();
  const follower = make();
  await follower.connect();
  try {
    assert.deepEqual([leader.isLeader, follower.isLeader], [true, false]);
    const order = [];
    follower.addEventListener("frame", ({ detail }) => order.push(`frame ${Object.keys(detail.event)[0]}`));
    const frame = (verb) => ({ type: "session", session: "doc:x", action: { [verb]: {} } });
    await follower.request(frame("join"), () => order.push("answer"));
    await until(() => order.length >= 2, "the frame behind the answer");
    assert.deepEqual(order, ["answer", "frame patched"], "the answer first, as on the connection");

    await leader.request(frame("join"));
    await follower.request(frame("leave"));
    assert.deepEqual(ScriptedInner.sent.map((f) => Object.keys(f.action)[0]), ["join", "join"], "the leader's tab is still in it");
    await leader.request(frame("leave"));
    assert.deepEqual(ScriptedInner.sent.map((f) => Object.keys(f.action)[0]), ["join", "join", "leave"], "the last tab's leave is sent");
  } finally {
    follower.close();
    leader.close();
  }
});

test("sessions through one shared connection: a hand-over resumes each tab from its version", { timeout: 60_000 }, async () => {
  const relay = await startRelay();
  const token = async (user) => relay.cliToken(user, ["--session", "doc:*"]);
  let tabs = await threeTabs(relay, "alice", () => token("alice"));
  const bob = wsClient(relay, () => token("bob"));
  try {
    await bob.connect();
    assert.equal(await websockets(relay), 2, "three tabs and bob: two connections");
    const [leader, one, two] = tabs;
    const boards = tabs.map((t) => session(t, "doc:plan"));
    const seen = tabs.map(() => []);
    boards.forEach((b, i) => b.addEventListener("patched", ({ detail }) => seen[i].push(detail.version)));
    await boards[1].create({ cards: {} });
    await Promise.all([boards[0].join(), boards[2].join()]);
    const bobs = session(bob, "doc:plan");
    await bobs.join();

    // A follower's patch goes through the leader; every tab applies it once.
    await boards[2].patch([{ op: "add", path: "/cards/a", value: 1 }]);
    await bobs.patch([{ op: "add", path: "/cards/b", value: 2 }]);
    await until(() => boards.every((b) => b.version === 2), "every tab at version 2");

    // One tab leaving does not take the others out (one device to the relay).
    await boards[0].leave();
    await bobs.patch([{ op: "add", path: "/cards/c", value: 3 }]);
    await until(() => boards[1].version === 3 && boards[2].version === 3, "the others still get patches");

    // The leader tab goes while bob keeps patching: the next leader connects, each tab rejoins
    // from the version it holds and catches up.
    tabs = await handOver(tabs, async () => {
      for (let i = 4; i <= 8; i++) await bobs.patch([{ op: "add", path: `/cards/n${i}`, value: i }]);
    });
    const rest = boards.slice(1);
    await until(() => rest.every((b) => b.version === 8 && b.joined), "both tabs caught up to 8", SLOW).catch((err) => {
      throw new Error(`${err.message}: ${JSON.stringify(rest.map((b) => [b.version, b.joined]))}`);
    });
    await boards[1].patch([{ op: "add", path: "/cards/last", value: "from a tab" }]);
    await until(() => rest.every((b) => b.version === 9) && bobs.version === 9, "everyone at 9");
    for (const b of rest) assert.deepEqual(b.doc, bobs.doc);
    for (const i of [1, 2]) {
      const versions = seen[i];
      // Patched events, or catch-up patches applied on a rejoin (no event): never one twice.
      assert.deepEqual(versions, [...new Set(versions)].sort((x, y) => x - y), `tab ${i}: ${versions}`);
      assert.equal(versions.at(-1), 9);
    }
    for (let i = 0; i < 100 && (await websockets(relay)) !== 2; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(await websockets(relay), 2, "one connection for the tabs again");
    assert.ok(one.isLeader || two.isLeader);
  } finally {
    for (const t of tabs) t.close();
    bob.close();
    await relay.stop();
  }
});

/** Publishes events through the server API. */
const publish = (relay, events) => publishEvents(relay, API_KEY, events);

test("a persistent topic through one shared connection: across a hand-over, every tab gets each event once", { timeout: 60_000 }, async () => {
  const relay = await startRelay(RELAY_ENV);
  const getToken = () => relay.token("alice", { rooms: ["orders.*"] }).then((t) => t.token);
  let tabs = await threeTabs(relay, "alice-events", getToken);
  try {
    const subs = await Promise.all(tabs.map((t) => t.subscribe("orders.eu")));
    const got = tabs.map(() => []);
    subs.forEach((s, i) => s.addEventListener("event", ({ detail }) => got[i].push(detail.id)));
    assert.equal(await websockets(relay), 1, "one connection");
    await publish(relay, [1, 2, 3].map((n) => ({ topic: "orders.eu", id: `e-${n}`, data: {} })));
    await until(() => got.every((g) => g.length >= 3), "every tab got 1-3");

    // One tab unsubscribing does not end the others' subscription.
    await subs[2].unsubscribe();
    tabs = await handOver(tabs, () => publish(relay, [4, 5, 6].map((n) => ({ topic: "orders.eu", id: `e-${n}`, data: {} }))));
    await until(() => got[1].length >= 6, "tab 1 got 4-6", SLOW).catch((err) => {
      throw new Error(`${err.message}: ${JSON.stringify(got)}`);
    });
    await publish(relay, [{ topic: "orders.eu", id: "e-7", data: {} }]);
    await until(() => got[1].length >= 7, "the marker arrived");
    assert.deepEqual(got[1], [1, 2, 3, 4, 5, 6, 7].map((n) => `e-${n}`), "once each, in order");
    assert.deepEqual(got[2], ["e-1", "e-2", "e-3"], "nothing after unsubscribe");
    assert.equal(subs[1].position.offset, 7);
  } finally {
    for (const t of tabs) t.close();
    await relay.stop();
  }
});

test("a call placed by a follower tab: the signaling goes through the leader to that tab only", { timeout: 60_000 }, async () => {
  const relay = await startRelay();
  const getToken = (user) => () => relay.token(user).then((t) => t.token);
  const tabs = await threeTabs(relay, "alice-calls", getToken("alice"));
  const bob = wsClient(relay, getToken("bob"));
  try {
    await bob.connect();
    const [leader, caller] = tabs;
    const ringing = nextEvent(bob, "ring");
    const call = await caller.call("bob", { media: "audio" });
    assert.deepEqual([call.role, call.inCall], ["caller", true]);
    const incoming = await ringing;
    await until(() => leader.calls.length === 1, "the leader's tab knows of the call too");
    const elsewhere = leader.calls[0];
    await incoming.answer();
    await until(() => call.state === "connected" && elsewhere.state === "connected", "connected in every tab");
    assert.equal(elsewhere.inCall, false, "only the tab that placed it is in it");

    // Signals both ways, to the tab in the call only.
    const heard = [];
    call.addEventListener("signal", ({ detail }) => heard.push(detail));
    elsewhere.addEventListener("signal", ({ detail }) => heard.push(`leader tab: ${detail}`));
    const toAlice = nextEvent(incoming, "signal");
    await call.signal("offer from a follower tab");
    assert.equal(await toAlice, "offer from a follower tab");
    await incoming.signal("answer from bob");
    await until(() => heard.length >= 1, "bob's signal reached the caller's tab");
    assert.deepEqual(heard, ["answer from bob"]);
    assert.ok((await caller.iceServers()).iceServers.length >= 0);

    const ended = nextEvent(incoming, "state", (s) => s.state === "ended");
    await call.hangUp();
    await ended;
    await until(() => tabs.every((t) => t.calls.length === 0), "every tab dropped the ended call");
  } finally {
    for (const t of tabs) t.close();
    bob.close();
    await relay.stop();
  }
});

test("receipts through one shared connection: a follower tab syncs, marks read and mentions through the leader", { timeout: 60_000 }, async () => {
  const relay = await startRelay({ EDGERELAY_RECEIPTS__INTERVAL_MS: "50" });
  const getToken = () => relay.token("alice").then((t) => t.token);
  const tabs = await threeTabs(relay, "alice-receipts", getToken);
  const follower = tabs[1];
  const bob = wsClient(relay, () => relay.token("bob").then((t) => t.token));
  try {
    await bob.connect();
    await follower.join("chat:shared");
    await bob.join("chat:shared");
    assert.equal((await follower.syncUnread()).total, 0);
    await bob.syncUnread();
    const counted = nextEvent(follower, "unread", (u) => u.mentions === 1);
    const position = await bob.publishWithMentions("chat:shared", { text: "@alice hi" }, ["alice"]);
    assert.equal((await counted).rooms.get("chat:shared").unread, 1);
    await follower.markRead([{ room: "chat:shared", position }]);
    await until(() => follower.unread.total === 0, "the follower's badge clears");
    const status = await bob.receiptStatus("chat:shared");
    assert.equal(status.members.find((m) => m.user === "alice")?.read, position.offset);
    // The follower's own mention of bob, through the leader's outbox.
    const bobCounted = nextEvent(bob, "unread", (u) => u.mentions === 1);
    await follower.publishWithMentions("chat:shared", { text: "@bob yes" }, ["bob"]);
    assert.equal((await bobCounted).rooms.get("chat:shared").unread, 1);
  } finally {
    bob.close();
    for (const t of tabs) t.close();
    await relay.stop();
  }
});

test("every EdgeRelay method through a follower tab: status, privacy, ping, refresh, leave counted per tab; media say why not", { timeout: 60_000 }, async () => {
  const relay = await startRelay();
  const getToken = (user) => () => relay.token(user).then((t) => t.token);
  const tabs = await threeTabs(relay, "alice-parity", getToken("alice"));
  const bob = wsClient(relay, getToken("bob"));
  try {
    await bob.connect();
    const [leader, follower] = tabs;
    const bobRoom = await bob.join("chat:parity");
    const aliceThere = nextEvent(bobRoom, "presence", ({ members }) => members.some((m) => m.user === "alice"));
    await Promise.all([leader.join("chat:parity"), follower.join("chat:parity")]);
    await aliceThere;
    assert.deepEqual(follower.rooms.map((r) => r.name), ["chat:parity"]);

    // The follower's status and privacy reach the relay through the leader.
    const busy = nextEvent(bobRoom, "presence", () => bobRoom.status("alice") === "busy");
    await follower.setStatus("busy", "in a meeting");
    await busy;
    assert.equal(bobRoom.members.find((m) => m.user === "alice").custom, "in a meeting");
    await follower.activity();
    await follower.privacy({ hidePresence: false, hideTyping: true });
    assert.ok((await follower.ping()) >= 0);
    const expiresAt = await follower.refresh();
    assert.ok(Number.isInteger(expiresAt) && expiresAt * 1000 > Date.now(), `expiry ${expiresAt}`);
    follower.networkChanged();
    assert.equal(follower.unacked, 0);

    // Media use the connection's own streams: a clear StateError, never a TypeError.
    for (const call of [() => follower.publishTrack("chat:parity", {}), () => leader.openGroup(1, 0, 0, true), () => follower.sendDatagram(new Uint8Array(1))]) {
      await assert.rejects(call(), (err) => err.name === "StateError" && err.code === "unsupported" && /EdgeRelay/.test(err.message));
    }

    // One tab leaving keeps the device in the room; the last one takes it out.
    await follower.leave("chat:parity");
    await bob.publish("chat:parity", { text: "still here?" });
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(bobRoom.members.some((m) => m.user === "alice"), "the leader's tab is still in the room");
    const gone = nextEvent(bobRoom, "presence", ({ members }) => !members.some((m) => m.user === "alice"));
    await leader.leave("chat:parity");
    await gone;
  } finally {
    bob.close();
    for (const t of tabs) t.close();
    await relay.stop();
  }
});

test("each tab's own topic filter applies on the shared connection; a bad filter is refused at once", { timeout: 60_000 }, async () => {
  const relay = await startRelay(RELAY_ENV);
  const getToken = () => relay.token("alice", { rooms: ["orders.*"] }).then((t) => t.token);
  const tabs = await threeTabs(relay, "alice-filters", getToken);
  try {
    const filters = ["region = eu", "region in (us, ap) and qty >= 10", null];
    const subs = await Promise.all(tabs.map((t, i) => t.subscribe("orders.*", { filter: filters[i] })));
    assert.deepEqual(subs.map((s) => s.filter), filters);
    const got = tabs.map(() => []);
    subs.forEach((s, i) => s.addEventListener("event", ({ detail }) => got[i].push(detail.id)));
    const order = (id, region, qty) => ({ topic: `orders.${region}`, id, tags: { region, qty: String(qty) }, data: {} });
    await publish(relay, [order("eu-1", "eu", 1), order("us-5", "us", 5), order("us-20", "us", 20), order("ap-10.0", "ap", "10.0"), order("eu-30", "eu", 30)]);
    await until(() => got[2].length >= 5, "the unfiltered tab got all five");
    assert.deepEqual(got[0], ["eu-1", "eu-30"]);
    assert.deepEqual(got[1], ["us-20", "ap-10.0"]);
    assert.equal(await websockets(relay), 1, "still one connection");
    await assert.rejects(tabs[1].subscribe("orders.>", { filter: "qty >" }), (err) => err.name === "RelayError" && err.code === 186 && /byte 5/.test(err.message));
  } finally {
    for (const t of tabs) t.close();
    await relay.stop();
  }
});

test("a refused token rejects connect() in every tab, as on EdgeRelay; close() while connecting rejects it too", { timeout: 60_000 }, async () => {
  const relay = await startRelay();
  const tabs = [0, 1].map(() => tab(relay, "refused", () => "not-a-token"));
  try {
    const results = await Promise.allSettled(tabs.map((t) => t.connect()));
    for (const result of results) {
      assert.equal(result.status, "rejected");
      assert.equal(result.reason.name, "RelayError");
      assert.equal(result.reason.codeName, "token_invalid");
    }
    assert.deepEqual(tabs.map((t) => t.state), ["closed", "closed"]);
    await assert.rejects(tabs[1].join("chat:x"), (err) => err.name === "StateError" && err.code === "closed");
    const early = tab(relay, "closed-early", () => relay.token("alice").then((t) => t.token));
    const connecting = early.connect();
    early.close();
    await assert.rejects(connecting, (err) => err.name === "StateError" && err.code === "closed");
  } finally {
    for (const t of tabs) t.close();
    await relay.stop();
  }
});
