// The browser client's codec and helpers against the Rust side's golden vectors
// (tests/golden/frames-v1.json). Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { FrameError, fieldsOf, FrameReader, binary, decodeJson, encodeJson, lengthPrefixed, payloadBytes } from "../src/codec.js";
import { backoffDelay } from "../src/edgerelay.js";

const golden = JSON.parse(readFileSync(new URL("../../../tests/golden/frames-v1.json", import.meta.url), "utf8"));

test("every golden JSON vector decodes; the core v1 ones re-encode to the same bytes", () => {
  const names = Object.keys(golden);
  let encoded = 0;
  for (const name of names) {
    const { json, direction } = golden[name];
    const frame = decodeJson(json);
    assert.equal(frame.type, Object.keys(JSON.parse(json))[0], name);
    // Presence and typing frames (appended later) are passed on, not encoded, by this client.
    if (fieldsOf(frame.type, direction)) {
      assert.equal(encodeJson(frame, direction), json, name);
      encoded += 1;
    }
  }
  assert.ok(encoded >= 18, `every core frame type has a vector (${encoded})`);
});

test("frames built by hand encode like the relay's", () => {
  const publish = { type: "publish", req: 4, room: "chat:lobby", id: "m-1", data: { text: "hi" } };
  assert.equal(encodeJson(publish), golden["client.publish_json"].json);
  // Field order comes from the protocol, not from the object.
  const join = { since: { offset: 42, epoch: 7 }, room: "chat:lobby", req: 2, type: "join" };
  assert.equal(encodeJson(join), golden["client.join_since"].json);
  const bytes = { type: "publish", req: 5, room: "chat:lobby", id: "m-2", data: binary(new Uint8Array([0, 255, 1])) };
  assert.equal(encodeJson(bytes), golden["client.publish_binary"].json);
});

test("history_after and the other requests the SDK sends have their field order (an unknown type throws when sent)", () => {
  for (const type of ["history_after", "history", "join", "publish", "receipts", "notifications"]) {
    assert.ok(fieldsOf(type, "client"), type);
  }
  const after = { type: "history_after", limit: 100, after: 42, room: "chat:lobby", req: 12 };
  assert.equal(encodeJson(after), golden["client.history_after"].json);
});

test("payload bytes: JSON text for values, raw bytes for $binary", () => {
  const message = decodeJson(golden["server.message_binary"].json);
  assert.deepEqual([...payloadBytes(message.data)], [0, 255, 1]);
  assert.equal(new TextDecoder().decode(payloadBytes({ text: "hi" })), '{"text":"hi"}');
});

test("malformed frames are errors, not crashes", () => {
  for (const text of ["", "nope", "[]", "null", '{"a":1,"b":2}', '{"ack":3}']) {
    assert.throws(() => decodeJson(text), FrameError, text);
  }
  // A frame type added later decodes, so a newer relay does not break an older page.
  assert.deepEqual(decodeJson('{"teleport":{"to":"mars"}}'), { type: "teleport", to: "mars" });
  assert.throws(() => encodeJson({ type: "teleport" }), FrameError);
});

test("stream framing survives any split and refuses oversized frames up front", () => {
  const enc = new TextEncoder();
  const bodies = ['{"ping":{"req":1}}', "", '{"ping":{"req":22}}'].map((t) => enc.encode(t));
  const wire = new Uint8Array(bodies.reduce((n, b) => n + 4 + b.length, 0));
  let at = 0;
  for (const body of bodies) {
    wire.set(lengthPrefixed(body), at);
    at += 4 + body.length;
  }
  for (let step = 1; step <= wire.length; step++) {
    const reader = new FrameReader(1024);
    const got = [];
    for (let i = 0; i < wire.length; i += step) got.push(...reader.push(wire.slice(i, i + step)));
    assert.deepEqual(got.map((b) => [...b]), bodies.map((b) => [...b]), `chunks of ${step}`);
    assert.equal(reader.pending, 0);
  }
  const reader = new FrameReader(16);
  assert.throws(() => reader.push(new Uint8Array([0, 0, 0, 17])), FrameError);
});

test("backoff: full jitter below an exponential bound with a cap", () => {
  const options = { baseMs: 100, capMs: 5000 };
  assert.equal(backoffDelay(0, options, () => 0), 0);
  assert.equal(backoffDelay(0, options, () => 0.999999), 99);
  assert.equal(backoffDelay(3, options, () => 0.5), 400);
  assert.equal(backoffDelay(40, options, () => 0.999999), 4999, "capped, even for huge attempts");
  for (let attempt = 0; attempt < 12; attempt++) {
    const delay = backoffDelay(attempt, options);
    assert.ok(delay >= 0 && delay < Math.min(5000, 100 * 2 ** attempt), `attempt ${attempt}: ${delay}`);
  }
});
