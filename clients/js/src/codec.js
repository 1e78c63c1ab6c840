// edgerelay protocol v1 frames for JavaScript (browsers and Node), written from docs/protocol.md
// and checked against tests/golden/frames-v1.json by clients/js/test/codec.test.mjs.
//
// A frame is a plain object `{type, ...fields}`, e.g. `{type: "publish", req: 4, room: "chat:lobby",
// id: "m-1", data: {text: "hi"}}`. On the wire (JSON codec) it is `{"publish": {fields}}` with the
// fields in the protocol's order, which is why every type lists its fields here.
//
// Payloads (`data`) are JSON values. Bytes that are not JSON travel as `{"$binary": "<base64>"}`;
// `binary()` and `payloadBytes()` convert.

/** Field order of the frame types this client encodes and relies on (docs/protocol.md). */
export const FIELDS = {
  // client → relay
  hello: ["version", "token", "client"],
  join: ["req", "room", "since"],
  leave: ["req", "room"],
  publish: ["req", "room", "id", "data"],
  ping: ["req"],
  refresh: ["req", "token"],
  set_status: ["status", "custom"],
  activity: [],
  typing: ["room", "typing"],
  presence_sync: ["req", "room"],
  privacy: ["hide_presence", "hide_typing"],
  history: ["req", "room", "before", "limit"],
  rooms: ["req"],
  cursor: ["room", "position"],
  track_publish: ["req", "room", "name", "kind", "codec", "layers"],
  track_unpublish: ["req", "track"],
  track_subscribe: ["req", "track", "max_layer", "paused"],
  track_unsubscribe: ["req", "track"],
  track_mute: ["req", "track", "muted"],
  ice_servers: ["req"],
  call: ["req", "call", "action"],
  subscribe: ["req", "pattern", "filter", "since"],
  unsubscribe: ["req", "pattern"],
  session: ["req", "session", "action"],
  // `action`: `{sync: {}}`, `{read: {marks: [{room, position}]}}`, `{status: {room}}`,
  // `{privacy: {share_read}}` (docs/protocol.md "Receipts and unread counts")
  receipts: ["req", "action"],
  publish_mentions: ["req", "room", "id", "data", "mentions"],
  // `action`: `{feed: {before, limit}}`, `{mark_read: {id, up_to}}`, `{prefs: {set}}`,
  // `{register_device: {device, platform, token}}`, `{unregister_device: {device}}`,
  // `{background: {background}}` (docs/protocol.md "Notifications")
  notifications: ["req", "action"],
  history_after: ["req", "room", "after", "limit"],
  // relay → client
  welcome: ["version", "session", "user", "server_time", "limits"],
  joined: ["req", "room", "position", "recovered"],
  left: ["req", "room"],
  ack: ["req", "room", "id", "position"],
  message: ["room", "position", "from", "time", "id", "data"],
  pong: ["req", "server_time"],
  error: ["req", "code", "message"],
  go_away: ["code", "reason", "reconnect_after_ms"],
  refreshed: ["req", "expires_at"],
  presence: ["room", "entry"],
  presence_snapshot: ["req", "room", "users"],
  presence_refresh: ["room", "count", "digest"],
  presence_batch: ["room", "entries"],
  track_published: ["req", "room", "track"],
  track_ok: ["req", "track"],
  tracks: ["room", "tracks", "ended"],
  layer: ["track", "layer"],
  speakers: ["room", "speakers", "dominant"],
  keyframe_request: ["track", "layer"],
  layers_wanted: ["track", "layers"],
  subscribed: ["req", "pattern", "position", "recovered"],
  unsubscribed: ["req", "pattern"],
  event: ["topic", "position", "time", "id", "tags", "data"],
};

/** Relay → client frames whose type name a client frame also has (with other fields). */
export const SERVER_FIELDS = {
  typing: ["room", "users", "others", "version", "ttl_ms"],
  history: ["req", "room", "position", "first", "messages"],
  rooms: ["req", "rooms"],
  ice_servers: ["req", "servers", "expires_at"],
  call: ["req", "call", "event"],
  session: ["req", "session", "event"],
  // `event`: `{ok: {}}`, `{unread: {full, rooms: [{room, read, top, unread, mentions}], total,
  // mentions}}`, `{receipts: {room, epoch, delivered_all, read_all, count, members: [{user,
  // delivered, read}]}}`
  receipts: ["req", "event"],
  // `event`: `{ok: {}}`, `{page: {notifications, unread, next}}`, `{new: {notification, unread}}`,
  // `{read: {id, up_to, unread}}`, `{prefs: {prefs}}`
  notifications: ["req", "event"],
};

/** The field order of `type` in `direction` (`"client"`: client → relay, or `"server"`). */
export function fieldsOf(type, direction = "client") {
  return (direction === "server" && SERVER_FIELDS[type]) || FIELDS[type];
}

const POSITION = ["epoch", "offset"];
const LAYER = ["width", "height", "bitrate"];
const ICE_SERVER = ["urls", "username", "credential"];
const PRESENCE_ENTRY = ["user", "status", "custom", "version", "last_seen"];
const HISTORY_ENTRY = ["offset", "from", "time", "id", "data"];
const ROOM_CURSOR = ["room", "position"];
const LIMITS = [
  "max_frame_bytes",
  "max_payload_bytes",
  "max_rooms",
  "publish_rate",
  "publish_burst",
  "ping_interval_ms",
  "idle_timeout_ms",
];

// Fields holding a struct, or a list of them, with that struct's field order.
const NESTED = { position: POSITION, since: POSITION, limits: LIMITS, entry: PRESENCE_ENTRY };
const NESTED_LISTS = {
  layers: LAYER,
  servers: ICE_SERVER,
  users: PRESENCE_ENTRY, // a `typing` frame's `users` are strings, and stay as they are
  entries: PRESENCE_ENTRY,
  messages: HISTORY_ENTRY,
  rooms: ROOM_CURSOR,
};

/** Protocol version spoken by this client. */
export const PROTOCOL_VERSION = 1;

/** Error codes (docs/protocol.md) a reconnect can recover from without changing anything. */
// 183 `session_moved`: the node holding a joined session went away (Redis region); reconnecting
// joins it again with the version held.
export const RETRYABLE_CLOSE = new Set([0, 100, 105, 113, 130, 131, 132, 133, 183]);

export class FrameError extends Error {}

/** `object`'s fields `names` in that order, structs inside ordered too; null stays null. */
function ordered(object, names) {
  if (object === null || object === undefined) return null;
  const out = {};
  for (const name of names) out[name] = nested(name, object[name] ?? null);
  return out;
}

function nested(name, value) {
  if (value === null) return null;
  if (NESTED[name]) return ordered(value, NESTED[name]);
  if (NESTED_LISTS[name] && Array.isArray(value)) {
    return value.map((item) => (item !== null && typeof item === "object" ? ordered(item, NESTED_LISTS[name]) : item));
  }
  return value;
}

/** Encodes a frame with the JSON codec: the text of one WebSocket message or stream frame body.
 * `direction` is `"client"` (what a client sends) or `"server"` (the relay's frames, for tests). */
export function encodeJson(frame, direction = "client") {
  const names = fieldsOf(frame.type, direction);
  if (!names) throw new FrameError(`unknown frame type ${frame.type}`);
  const fields = ordered(frame, names);
  return JSON.stringify({ [frame.type]: fields });
}

/** Decodes a JSON-codec frame body (string) into `{type, ...fields}`. */
export function decodeJson(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new FrameError(`not JSON: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new FrameError("not an object");
  const keys = Object.keys(value);
  if (keys.length !== 1) throw new FrameError(`a frame has exactly one key, not ${keys.length}`);
  // Types this client does not know (appended in later protocol revisions) still decode; the
  // client passes them on instead of failing the connection.
  const type = keys[0];
  const fields = value[type];
  if (fields === null || typeof fields !== "object") throw new FrameError(`${type}: fields must be an object`);
  return { type, ...fields };
}

// --- Payload helpers ---

function toBase64(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

/** Standard base64 (with padding) to bytes, as `/v1/cert` gives certificate hashes. */
export function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** The payload form of bytes that are not JSON text. */
export function binary(bytes) {
  return { $binary: toBase64(bytes) };
}

/** The bytes a payload stands for: the JSON text of a value, or the bytes of a `$binary`. */
export function payloadBytes(data) {
  if (data && typeof data === "object" && Object.keys(data).length === 1 && typeof data.$binary === "string") {
    return fromBase64(data.$binary);
  }
  return new TextEncoder().encode(JSON.stringify(data));
}

// --- Stream framing: `[u32 big-endian length][body]` on QUIC and WebTransport streams ---

/** Prefixes a frame body with its length. */
export function lengthPrefixed(body) {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/** Splits a byte stream into frame bodies; refuses frames above `maxFrame` before buffering them. */
export class FrameReader {
  constructor(maxFrame = 16 << 20) {
    this.maxFrame = maxFrame;
    this.buffer = new Uint8Array(0);
  }

  /** Adds received bytes and returns every complete frame body now available. */
  push(chunk) {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    const frames = [];
    let at = 0;
    while (joined.length - at >= 4) {
      const length = new DataView(joined.buffer, joined.byteOffset + at, 4).getUint32(0);
      if (length > this.maxFrame) throw new FrameError(`frame of ${length} bytes exceeds ${this.maxFrame}`);
      if (joined.length - at - 4 < length) break;
      frames.push(joined.slice(at + 4, at + 4 + length));
      at += 4 + length;
    }
    this.buffer = joined.slice(at);
    return frames;
  }

  /** Bytes of an unfinished frame. */
  get pending() {
    return this.buffer.length;
  }
}
