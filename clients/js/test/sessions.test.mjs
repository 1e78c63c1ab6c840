// Collaborative sessions through the SDK (`@edgerelay/client/sessions`) against a real relay
// (WebSocket, `ws` injected): two clients converge on one document, a conflict names the
// versions missed, a viewer is refused, cursors are seen, and a client that lost its connection
// rejoins with the version it holds and catches up. Run: node --test clients/js/test/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RelayError } from "../src/index.js";
import { SessionConflict, applyPatch, session } from "../src/sessions.js";
import { Cuttable, nextEvent, startRelay, until, wsClient } from "./relay.mjs";

function client(relay, user, args, options = {}) {
  return wsClient(relay, async () => relay.cliToken(user, args), options);
}

const EDIT = ["--session", "doc:*"];

test("applyPatch follows RFC 6902 and applies whole or not at all", () => {
  const doc = { a: { b: [1, 2] }, "x/y": 1 };
  const out = applyPatch(doc, [
    { op: "add", path: "/a/b/-", value: 3 },
    { op: "replace", path: "/x~1y", value: 2 },
    { op: "move", from: "/a/b", path: "/list" },
    { op: "copy", from: "/list", path: "/copy" },
    { op: "remove", path: "/list/0" },
    { op: "test", path: "/copy", value: [1, 2, 3] },
  ]);
  assert.deepEqual(out, { a: {}, "x/y": 2, list: [2, 3], copy: [1, 2, 3] });
  assert.deepEqual(doc, { a: { b: [1, 2] }, "x/y": 1 }, "the input is left as it was");
  assert.throws(() => applyPatch(doc, [{ op: "add", path: "/n", value: 1 }, { op: "test", path: "/n", value: 2 }]), /test failed/);
  assert.throws(() => applyPatch(doc, [{ op: "remove", path: "/a/b/5" }]), /out of range/);
});

test("two clients converge; a stale patch is a conflict naming the versions missed; cursors are seen", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, "alice", EDIT);
  const bob = client(relay, "bob", EDIT);
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    const a = session(alice, "doc:board");
    const b = session(bob, "doc:board");
    assert.equal(session(alice, "doc:board"), a, "one Session per client and id");
    await a.create({ title: "", cards: {} });
    assert.deepEqual([a.myRole, a.version, a.doc], ["owner", 0, { title: "", cards: {} }]);
    const bobJoined = nextEvent(a, "member", (m) => m.user === "bob" && m.present);
    await b.join();
    await bobJoined;
    assert.deepEqual([b.myRole, b.version], ["editor", 0]);

    // Both edit at once, different paths: both apply (one rebased), both copies converge.
    const [one, two] = await Promise.all([
      a.patch([{ op: "add", path: "/cards/c1", value: { text: "from alice" } }]),
      b.patch([{ op: "add", path: "/cards/c2", value: { text: "from bob" } }]),
    ]);
    assert.deepEqual([one.version, two.version].sort(), [1, 2]);
    await until(() => a.version === 2 && b.version === 2, "both at version 2");
    assert.deepEqual(a.doc, b.doc);
    assert.deepEqual(Object.keys(a.doc.cards).sort(), ["c1", "c2"]);

    // A patch made against version 2 after alice wrote the same path at 3.
    await a.patch([{ op: "replace", path: "/title", value: "Plan" }]);
    await assert.rejects(b.patch([{ op: "replace", path: "/title", value: "Mine" }], { base: 2 }), (err) => {
      assert.ok(err instanceof SessionConflict, String(err));
      assert.deepEqual([err.base, err.version, err.missed, err.conflicting], [2, 3, [3], [3]]);
      return true;
    });
    await until(() => b.version === 3, "bob has version 3");
    assert.equal(b.doc.title, "Plan");

    // The owner makes bob a viewer: every device hears it; bob's patches are refused from then on.
    const demoted = nextEvent(b, "member", (m) => m.user === "bob" && m.role === "viewer");
    await a.role("bob", "viewer");
    await demoted;
    await assert.rejects(b.patch([{ op: "add", path: "/x", value: 1 }]), (err) => err instanceof RelayError && err.code === 174);

    // Bob's cursor reaches alice.
    const seen = nextEvent(a, "cursor", (c) => c.user === "bob");
    await b.cursor({ x: 10, y: 20 });
    assert.deepEqual(await seen, { user: "bob", data: { x: 10, y: 20 } });
    assert.deepEqual(a.cursors.get("bob"), { x: 10, y: 20 });

    // Closed: readable, no more patches; destroyed: everyone is told.
    const closed = nextEvent(b, "closed");
    await a.close();
    assert.deepEqual(await closed, { by: "alice" });
    await assert.rejects(a.patch([{ op: "add", path: "/x", value: 1 }]), (err) => err instanceof RelayError && err.code === 172);
    const ended = nextEvent(b, "ended");
    await a.destroy();
    assert.deepEqual(await ended, { reason: "destroyed", by: "alice" });
  } finally {
    alice.close();
    bob.close();
    await relay.stop();
  }
});

test("a viewer reads but its patches are refused with read_only", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, "alice", EDIT);
  const carol = client(relay, "carol", ["--session-read", "doc:*"]);
  try {
    await Promise.all([alice.connect(), carol.connect()]);
    const a = session(alice, "doc:read");
    await a.create({ n: 1 });
    await a.patch([{ op: "replace", path: "/n", value: 2 }]);
    const c = session(carol, "doc:read");
    await c.join();
    assert.deepEqual([c.myRole, c.version, c.doc], ["viewer", 1, { n: 2 }]);
    await assert.rejects(c.patch([{ op: "replace", path: "/n", value: 3 }]), (err) => err instanceof RelayError && err.code === 174);
    assert.deepEqual(c.doc, { n: 2 }, "nothing changed locally");
  } finally {
    alice.close();
    carol.close();
    await relay.stop();
  }
});

test("after a lost connection the session is joined again from the version held and catches up", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, "alice", EDIT);
  const bob = client(relay, "bob", EDIT, { WebSocket: Cuttable, backoff: { baseMs: 300, capMs: 300 } });
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    const a = session(alice, "doc:resume");
    const b = session(bob, "doc:resume");
    await a.create({ items: [] });
    await b.join();
    const applied = [];
    b.addEventListener("patched", (e) => applied.push(e.detail.version));
    await a.patch([{ op: "add", path: "/items/-", value: 1 }]);
    await until(() => b.version === 1, "bob at 1");

    const reconnecting = nextEvent(bob, "status", (s) => s.state === "reconnecting");
    Cuttable.current.terminate();
    await reconnecting;
    await a.patch([{ op: "add", path: "/items/-", value: 2 }]);
    await a.patch([{ op: "add", path: "/items/-", value: 3 }]);
    const rejoined = await nextEvent(b, "joined");
    assert.equal(rejoined.version, 3);
    assert.deepEqual(b.doc, { items: [1, 2, 3] });
    await a.patch([{ op: "add", path: "/items/-", value: 4 }]);
    await until(() => b.version === 4, "bob at 4");
    assert.deepEqual(b.doc, a.doc);
    assert.deepEqual(applied, [1, 4], "live patches announced once; the catch-up came with the join");
  } finally {
    alice.close();
    bob.close();
    await relay.stop();
  }
});
