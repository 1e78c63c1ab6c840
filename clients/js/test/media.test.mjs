// The media plane's byte layout (clients/js/src/media.js) against the pinned example of docs/media.md,
// which `the_layout_is_pinned_byte_for_byte` in src/proto/media.rs checks on the Rust side.
// Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { decodeJson, encodeJson } from "../src/codec.js";
import {
  FLAG_KEYFRAME,
  GroupReader,
  MediaError,
  audioLevel,
  encodeFrame,
  encodeGroupHeader,
  parseLevel,
  putVarint,
  readVarint,
} from "../src/media.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex").replace(/(..)(?!$)/g, "$1 ");

test("the example of docs/media.md, byte for byte", () => {
  const header = encodeGroupHeader({ track: 300, layer: 2, group: 5, flags: FLAG_KEYFRAME });
  assert.equal(hex(header), "01 ac 02 02 05 01");
  const frame = encodeFrame(33_333, 0, Uint8Array.from([0xaa, 0xbb]));
  assert.equal(hex(frame), "06 b5 84 02 00 aa bb");
  // And the document says so: the bytes quoted in docs/media.md are these.
  const doc = readFileSync(new URL("../../../docs/media.md", import.meta.url), "utf8");
  assert.ok(doc.includes("`01 ac 02 02 05 01` then `06 b5 84 02 00 aa bb`"), "docs/media.md quotes the same bytes");
});

test("varints: LEB128 up to 2^53, too long refused, incomplete waits", () => {
  for (const value of [0, 1, 127, 128, 300, 16_383, 16_384, 2 ** 31, 2 ** 32 + 5, Number.MAX_SAFE_INTEGER]) {
    const bytes = Uint8Array.from(putVarint([], value));
    assert.deepEqual(readVarint(bytes), [value, bytes.length], String(value));
    assert.equal(readVarint(bytes.subarray(0, bytes.length - 1)), null, `${value} cut short`);
  }
  assert.deepEqual(putVarint([], 300), [0xac, 0x02]);
  assert.throws(() => readVarint(new Uint8Array(10).fill(0x80)), MediaError);
  assert.throws(() => putVarint([], -1), MediaError);
});

test("a group stream read back in chunks of every size", () => {
  const frames = [
    [0, 0x80 | 12, Uint8Array.from([1, 2, 3])],
    [20_000, 127, new Uint8Array(300).fill(7)],
    [40_000, 5, new Uint8Array(0).fill(0)],
  ];
  // An empty payload is allowed: the frame still has its timestamp and level.
  const parts = [encodeGroupHeader({ track: 9, layer: 0, group: 1234, flags: FLAG_KEYFRAME })];
  for (const [ts, level, payload] of frames) parts.push(encodeFrame(ts, level, payload));
  const stream = Buffer.concat(parts);
  for (const size of [1, 2, 3, 7, 64, stream.length]) {
    const reader = new GroupReader();
    const out = [];
    for (let at = 0; at < stream.length; at += size) out.push(...reader.push(Uint8Array.from(stream.subarray(at, at + size))));
    assert.equal(reader.pending, 0, `chunks of ${size}`);
    assert.deepEqual(out[0].header, { track: 9, layer: 0, group: 1234, flags: 1, keyframe: true });
    const got = out.slice(1).map(({ frame }) => [frame.timestampUs, frame.level, Uint8Array.from(frame.payload)]);
    assert.deepEqual(got, frames, `chunks of ${size}`);
  }
});

test("bad group streams are refused like the relay refuses them", () => {
  assert.throws(() => new GroupReader().push(Uint8Array.from([0x02])), /unknown stream type/);
  const oversized = new GroupReader(100);
  assert.throws(() => oversized.push(Uint8Array.from([...encodeGroupHeader({ track: 1, layer: 0, group: 1, flags: 0 }), 0xff, 0x01])), /exceeds 100/);
  const empty = new GroupReader();
  assert.throws(() => empty.push(Uint8Array.from([...encodeGroupHeader({ track: 1, layer: 0, group: 1, flags: 0 }), 0x00])), /shorter than its header/);
  assert.throws(() => encodeGroupHeader({ track: 1, layer: 256, group: 1, flags: 0 }), MediaError);
});

test("audio levels: RFC 6464 -dBov with the voice bit", () => {
  assert.equal(audioLevel(new Float32Array(960)), 127, "silence: 127, no voice");
  assert.equal(audioLevel(new Float32Array(960).fill(1)), 0x80 | 0, "full scale: 0 -dBov, voice");
  const quiet = audioLevel(new Float32Array(960).fill(0.001));
  assert.deepEqual(parseLevel(quiet), { dbov: 60, voice: false });
  const speech = audioLevel(new Float32Array(960).fill(0.1));
  assert.deepEqual(parseLevel(speech), { dbov: 20, voice: true });
});

test("track frames encode with the relay's field order (tests/golden/frames-v1.json)", () => {
  const golden = JSON.parse(readFileSync(new URL("../../../tests/golden/frames-v1.json", import.meta.url), "utf8"));
  // Layers given in any key order still go out as width, height, bitrate.
  const publish = {
    type: "track_publish",
    req: 12,
    room: "call:standup",
    name: "cam",
    kind: "video",
    codec: "vp8",
    layers: [
      { bitrate: 150000, width: 320, height: 180 },
      { height: 720, width: 1280, bitrate: 1500000 },
    ],
  };
  assert.equal(encodeJson(publish), golden["client.track_publish"].json);
  const subscribe = { type: "track_subscribe", req: 14, track: 5, max_layer: 1, paused: false };
  assert.equal(encodeJson(subscribe), golden["client.track_subscribe"].json);
  assert.deepEqual(decodeJson(golden["server.speakers"].json), {
    type: "speakers",
    room: "call:standup",
    speakers: [{ user: "alice", level: 87 }],
    dominant: "alice",
  });
});
