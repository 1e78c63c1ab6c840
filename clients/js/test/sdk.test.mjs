// The SDK against a real relay (the relay binary, over WebSocket with the `ws` package injected
// as Node's WebSocket): rooms, presence, typing and history; a publish whose ack was lost is
// retried with its id and lands exactly once; the token is refreshed before it expires on the
// same connection. Run: node --test clients/js/test/ (after cargo build).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { Cuttable, nextEvent, startRelay, until, wsClient } from "./relay.mjs";

const client = wsClient;

const tokenOf = (relay, user, options) => () => relay.token(user, options).then((t) => t.token);

test("two users: messages, presence, typing and history paging through Room objects", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, tokenOf(relay, "alice"));
  const bob = client(relay, tokenOf(relay, "bob"));
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    const aliceRoom = alice.room("chat:sdk");
    const bothThere = nextEvent(aliceRoom, "presence", ({ members }) => members.length === 2);
    await alice.join("chat:sdk");
    const bobRoom = await bob.join("chat:sdk");
    assert.deepEqual((await bothThere).members.map((m) => [m.user, m.status]), [["alice", "online"], ["bob", "online"]]);

    // Typing, debounced on bob's side, shown on alice's without alice herself.
    const typing = nextEvent(aliceRoom, "typing", (t) => t.total === 1);
    bobRoom.keystroke();
    bobRoom.keystroke();
    assert.deepEqual(await typing, { users: ["bob"], total: 1, text: "bob is typing…" });
    const stopped = nextEvent(aliceRoom, "typing", (t) => t.total === 0);
    bobRoom.stopTyping();
    assert.equal((await stopped).text, "");

    const seen = [];
    aliceRoom.addEventListener("message", (e) => seen.push(e.detail.data.text));
    for (const text of ["one", "two", "three"]) await bobRoom.publish({ text });
    await until(() => seen.length >= 3, "alice has bob's three messages");
    assert.deepEqual(seen, ["one", "two", "three"]);

    // A user who comes later loads what was said, a page at a time, oldest first.
    const carol = client(relay, tokenOf(relay, "carol"));
    await carol.connect();
    const carolRoom = await carol.join("chat:sdk");
    const last = await carolRoom.loadEarlier(2);
    assert.deepEqual(last.map((m) => [m.position.offset, m.from, m.data.text]), [[2, "bob", "two"], [3, "bob", "three"]]);
    assert.equal(carolRoom.hasEarlier, true);
    const first = await carolRoom.loadEarlier(2);
    assert.deepEqual(first.map((m) => m.data.text), ["one"]);
    assert.equal(carolRoom.hasEarlier, false);
    assert.deepEqual(await carolRoom.loadEarlier(2), [], "nothing before offset 1");
    carol.close();

    // Leaving shows the member as gone.
    const gone = nextEvent(aliceRoom, "presence", ({ members }) => members.length === 1);
    await bob.leave("chat:sdk");
    assert.deepEqual((await gone).members.map((m) => m.user), ["alice"]);
  } finally {
    alice.close();
    bob.close();
    await relay.stop();
  }
});

/** `ws` that, after the first `publish` it sends, hears nothing more and dies 300 ms later:
 * the relay stores the message, but its ack never reaches the client. */
class LosesTheFirstAck extends WebSocket {
  static armed = true;
  #deaf = false;

  set onmessage(handler) {
    super.onmessage = (event) => {
      if (!this.#deaf) handler(event);
    };
  }

  get onmessage() {
    return super.onmessage;
  }

  send(data) {
    if (LosesTheFirstAck.armed && String(data).startsWith('{"publish"')) {
      LosesTheFirstAck.armed = false;
      this.#deaf = true;
      setTimeout(() => this.terminate(), 300);
    }
    super.send(data);
  }
}

test("a publish whose ack is lost is retried with its id after the reconnect, stored and delivered once", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, tokenOf(relay, "alice"), { WebSocket: LosesTheFirstAck });
  const bob = client(relay, tokenOf(relay, "bob"));
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    const aliceRoom = await alice.join("chat:retry");
    const bobRoom = await bob.join("chat:retry");
    const byAlice = [];
    const byBob = [];
    aliceRoom.addEventListener("message", (e) => byAlice.push(e.detail.id));
    bobRoom.addEventListener("message", (e) => byBob.push(e.detail.id));
    const states = [];
    alice.addEventListener("status", (e) => states.push(e.detail.state));

    const position = await alice.publish("chat:retry", { text: "exactly once" }, { id: "m-1" });
    assert.deepEqual(position, { epoch: position.epoch, offset: 1 });
    assert.ok(states.includes("reconnecting"), `the connection was lost in between: ${states}`);
    assert.equal(alice.unacked, 0);

    // A marker after it: once bob has it, anything doubled would have come before.
    await bob.publish("chat:retry", { text: "marker" }, { id: "b-1" });
    await until(() => byBob.includes("b-1") && byAlice.includes("b-1"), "the marker reached both");
    assert.deepEqual(byBob, ["m-1", "b-1"], "bob got it once");
    assert.deepEqual(byAlice, ["m-1", "b-1"], "alice got it once, by resuming the room");
    const page = await bob.history("chat:retry", { limit: 10 });
    assert.deepEqual(page.messages.map((m) => m.id), ["m-1", "b-1"], "stored once");
    // Forward from an offset: what a client missed after the last message it holds.
    const after = await bob.historyAfter("chat:retry", { after: 1 });
    assert.deepEqual(after.messages.map((m) => [m.id, m.position.offset]), [["b-1", 2]]);
    assert.deepEqual((await bob.historyAfter("chat:retry", { after: 2 })).messages, []);
    const metrics = await (await fetch(`${relay.base}/metrics`)).text();
    const duplicates = Number(/^edgerelay_duplicate_publishes_total (\S+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(duplicates >= 1, "the relay saw the retry and answered it with the original position");
  } finally {
    alice.close();
    bob.close();
    await relay.stop();
  }
});

test("with getToken the token is refreshed before it expires, on the same connection", { timeout: 30_000 }, async () => {
  // No leeway: a token that is not refreshed ends the connection the second it expires.
  const relay = await startRelay({ EDGERELAY_AUTH__LEEWAY_SECS: "0" });
  let minted = 0;
  const alice = client(
    relay,
    async () => {
      minted += 1;
      return (await relay.token("alice", { ttl_secs: 3 })).token;
    },
    { refreshBeforeMs: 1000 },
  );
  const states = [];
  alice.addEventListener("status", (e) => states.push(e.detail.state));
  try {
    const welcome = await alice.connect();
    const session = welcome.session;
    // Two lifetimes of the token.
    await new Promise((resolve) => setTimeout(resolve, 6500));
    assert.ok(minted >= 3, `tokens asked for: ${minted}`);
    assert.deepEqual(states, ["connecting", "open"], "never reconnected");
    assert.equal(alice.welcome.session, session);
    assert.ok((await alice.ping()) >= 0);
    // `refresh()` by hand answers with the new expiry.
    const expiresAt = await alice.refresh();
    assert.ok(Math.abs(expiresAt - (Date.now() / 1000 + 3)) < 2, `${expiresAt}`);
  } finally {
    alice.close();
    await relay.stop();
  }
});

test("join and publish while reconnecting wait for the connection; rooms come back without doubles", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, tokenOf(relay, "alice"), { WebSocket: Cuttable, backoff: { baseMs: 300, capMs: 300 } });
  const bob = client(relay, tokenOf(relay, "bob"));
  const errors = [];
  alice.addEventListener("error", (e) => errors.push(e.detail));
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    const got = [];
    for (const name of ["chat:one", "chat:two"]) {
      alice.room(name).addEventListener("message", (e) => got.push([name, e.detail.data.text]));
    }
    const first = await alice.join("chat:one");
    const reconnecting = nextEvent(alice, "status", (s) => s.state === "reconnecting");
    Cuttable.current.terminate();
    await reconnecting;
    // Both made while the client waits to reconnect.
    const second = alice.join("chat:two");
    const sent = alice.publish("chat:two", { text: "from the outbox" }, { id: "q-1" });
    assert.equal((await second).name, "chat:two");
    assert.equal((await sent).offset, 1);
    assert.ok(first.joined, "the first room was rejoined too");
    assert.deepEqual(errors, [], "no already_joined or other errors");
    // Both rooms are live: alice's own message and bob's reach alice in each, once.
    await bob.publish("chat:one", { text: "one" });
    await bob.publish("chat:two", { text: "two" });
    await until(() => got.length >= 3, "three messages at alice");
    assert.deepEqual(got, [["chat:two", "from the outbox"], ["chat:one", "one"], ["chat:two", "two"]]);
  } finally {
    alice.close();
    bob.close();
    await relay.stop();
  }
});

test("a publish too large for the relay rejects with a clear code and the connection stays up", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, tokenOf(relay, "alice"));
  try {
    await alice.connect();
    const room = await alice.join("chat:big");
    const { max_frame_bytes: maxFrame, max_payload_bytes: maxPayload } = alice.welcome.limits;
    const statuses = [];
    alice.addEventListener("status", ({ detail }) => statuses.push(detail.state));
    // Over the frame limit: refused before it is sent (the relay would close the connection).
    await assert.rejects(room.publish({ text: "x".repeat(maxFrame) }), (err) => err.name === "RelayError" && err.code === 102 && err.codeName === "frame_too_large");
    // Over the payload limit but within a frame: the relay's own answer.
    await assert.rejects(room.publish({ text: "y".repeat(maxPayload) }), (err) => err.code === 125 && err.codeName === "payload_too_large");
    await assert.rejects(alice.request({ type: "session", session: "board:x", action: { create: { doc: "z".repeat(maxFrame) } } }), (err) => err.code === 102);
    assert.equal((await room.publish({ text: "still connected" })).offset, 1, "the first message stored");
    assert.deepEqual(statuses, [], "no reconnect");
    assert.equal(alice.unacked, 0);
  } finally {
    alice.close();
    await relay.stop();
  }
});

test("leave while reconnecting resolves and the room is not rejoined", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const alice = client(relay, tokenOf(relay, "alice"), { WebSocket: Cuttable, backoff: { baseMs: 300, capMs: 300 } });
  const bob = client(relay, tokenOf(relay, "bob"));
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join("chat:gone");
    await alice.join("chat:kept");
    const bobRoom = await bob.join("chat:gone");
    await until(() => bobRoom.members.some((m) => m.user === "alice"), "alice in chat:gone");
    const reconnecting = nextEvent(alice, "status", (s) => s.state === "reconnecting");
    Cuttable.current.terminate();
    await reconnecting;
    await alice.leave("chat:gone");
    assert.equal(alice.room("chat:gone").wanted, false);
    await nextEvent(alice, "status", (s) => s.state === "open");
    await until(() => alice.room("chat:kept").joined, "chat:kept rejoined");
    await until(() => !bobRoom.members.some((m) => m.user === "alice"), "alice gone from chat:gone for good");
    assert.equal(alice.room("chat:gone").joined, false);
  } finally {
    alice.close();
    bob.close();
    await relay.stop();
  }
});
