// Event topics through the SDK against a real relay (WebSocket, `ws` injected): subscribe with a
// wildcard and a filter, events published by the backend (POST /v1/api/events); after a lost
// connection an exact persistent topic resumes from the last position seen, with nothing lost
// and nothing twice. Run: node --test clients/js/test/ (after cargo build).
import { test } from "node:test";
import assert from "node:assert/strict";
import { RelayError, topicMatches } from "../src/index.js";
import { Cuttable, nextEvent, publishEvents, startRelay, until, wsClient } from "./relay.mjs";

const API_KEY = "sdk-test-api-key-0123456789";
const RELAY_ENV = { EDGERELAY_API__KEY: API_KEY, EDGERELAY_EVENTS__PERSISTENT: '["orders.>"]' };

function client(relay, user, options = {}) {
  const getToken = () => relay.token(user, { rooms: ["orders.*", "scores.*"] }).then((t) => t.token);
  return wsClient(relay, getToken, { WebSocket: Cuttable, ...options });
}

/** Publishes events through the server API. */
const publish = (relay, events) => publishEvents(relay, API_KEY, events);

test("topic patterns match as the relay's do", () => {
  assert.ok(topicMatches("orders.*.created", "orders.eu.created"));
  assert.ok(!topicMatches("orders.*.created", "orders.eu.x.created"));
  assert.ok(topicMatches("orders.>", "orders.eu.created"));
  assert.ok(!topicMatches("orders.>", "orders"));
  assert.ok(topicMatches(">", "a"));
  assert.ok(topicMatches("a.b", "a.b") && !topicMatches("a.b", "a.b.c") && !topicMatches("a.b.c", "a.b"));
});

test("wildcard and filtered subscriptions get their events; unsubscribe stops them; refusals reject", { timeout: 30_000 }, async () => {
  const relay = await startRelay(RELAY_ENV);
  const alice = client(relay, "alice");
  try {
    await alice.connect();
    const all = await alice.subscribe("scores.*");
    const big = await alice.subscribe("orders.*.created", { filter: "qty >= 10" });
    const scores = [];
    const orders = [];
    all.addEventListener("event", (e) => scores.push(e.detail.id));
    big.addEventListener("event", (e) => orders.push([e.detail.topic, e.detail.id, e.detail.tags.qty, e.detail.data]));
    await publish(relay, [
      { topic: "scores.m1", id: "s-1", data: { home: 1 } },
      { topic: "orders.eu.created", id: "o-1", tags: { qty: "3" }, data: { n: 1 } },
      { topic: "orders.us.created", id: "o-2", tags: { qty: "12" }, data: { n: 2 } },
      { topic: "scores.m2", id: "s-2", data: { home: 2 } },
    ]);
    await until(() => scores.length >= 2 && orders.length >= 1, "the events arrived");
    assert.deepEqual(scores, ["s-1", "s-2"]);
    assert.deepEqual(orders, [["orders.us.created", "o-2", "12", { n: 2 }]], "the filter kept qty 3 out");

    await all.unsubscribe();
    assert.deepEqual(alice.subscriptions.map((s) => s.pattern), ["orders.*.created"]);
    await publish(relay, [{ topic: "scores.m1", id: "s-3", data: {} }, { topic: "orders.eu.created", id: "o-3", tags: { qty: "50" }, data: {} }]);
    await until(() => orders.length >= 2, "the marker order arrived");
    assert.deepEqual(scores, ["s-1", "s-2"], "nothing after unsubscribe");

    await assert.rejects(alice.subscribe("orders.eu.created", { filter: "qty >" }), (err) => err instanceof RelayError && err.code === 186);
    await assert.rejects(alice.subscribe("inbox.>"), (err) => err instanceof RelayError && err.code === 120);
    assert.deepEqual(alice.subscriptions.map((s) => s.pattern), ["orders.*.created"], "refused ones are not kept");
  } finally {
    alice.close();
    await relay.stop();
  }
});

test("an exact persistent topic resumes after a reconnect from the last position: no loss, no duplicate", { timeout: 30_000 }, async () => {
  const relay = await startRelay(RELAY_ENV);
  const alice = client(relay, "alice", { backoff: { baseMs: 300, capMs: 300 } });
  try {
    await publish(relay, [{ topic: "orders.eu.created", id: "before", data: {} }]);
    await alice.connect();
    const sub = await alice.subscribe("orders.eu.created");
    const got = [];
    sub.addEventListener("event", (e) => got.push([e.detail.id, e.detail.position.offset]));
    assert.equal(sub.position.offset, 1, "starts after the topic's top");
    await publish(relay, [{ topic: "orders.eu.created", id: "e-1", data: {} }]);
    await until(() => got.length >= 1, "e-1 arrived");

    const reconnecting = nextEvent(alice, "status", (s) => s.state === "reconnecting");
    Cuttable.current.terminate();
    await reconnecting;
    // Published while alice is away: she gets them after the reconnect, once.
    await publish(relay, [
      { topic: "orders.eu.created", id: "e-2", data: {} },
      { topic: "orders.eu.created", id: "e-3", data: {} },
    ]);
    const resubscribed = await nextEvent(sub, "subscribed");
    assert.equal(resubscribed.recovered, true);
    await until(() => got.length >= 3, "e-2 and e-3 arrived");
    await publish(relay, [{ topic: "orders.eu.created", id: "e-4", data: {} }]);
    await until(() => got.length >= 4, "e-4 arrived");
    assert.deepEqual(got, [["e-1", 2], ["e-2", 3], ["e-3", 4], ["e-4", 5]]);
    assert.deepEqual(sub.position.offset, 5);
  } finally {
    alice.close();
    await relay.stop();
  }
});
