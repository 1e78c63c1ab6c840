// The media plane's bytes for JavaScript (docs/media.md, "Group streams"): every group travels on
// its own WebTransport unidirectional stream as
//
//   group = 0x01 track:varint layer:u8 group:varint flags:u8 frame*
//   frame = length:varint timestamp_us:varint level:u8 payload   (length counts timestamp, level, payload)
//
// with LEB128 varints. Pure functions and an incremental reader, no I/O: `edgerelay.js` opens and
// reads the streams. Numbers are JavaScript numbers (exact up to 2^53, far beyond any track id,
// group number or timestamp a call reaches). Checked by clients/js/test/media.test.mjs.

/** First byte of every media unidirectional stream. */
export const STREAM_MEDIA_GROUP = 0x01;
/** `flags` bit 0: the group starts with a keyframe. */
export const FLAG_KEYFRAME = 0x01;
/** Reset code of a group the relay dropped for this subscriber (stale, queue full, track ended). */
export const RESET_DROPPED = 0x10;
/** Stop code of a publisher's group the relay refused. */
export const RESET_REFUSED = 0x11;
/** `level` of silence (RFC 6464: 127 -dBov, no voice activity), and of every video frame: 0. */
export const LEVEL_SILENCE = 127;

export class MediaError extends Error {}

/** Appends the LEB128 varint of `value` (a non-negative integer) to `out` (an array of bytes). */
export function putVarint(out, value) {
  if (!Number.isSafeInteger(value) || value < 0) throw new MediaError(`not a varint: ${value}`);
  for (;;) {
    // Division instead of `>>`: values above 2^31 must not wrap.
    const byte = value % 128;
    value = Math.floor(value / 128);
    if (value === 0) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

/** Reads a varint at `at` in `bytes`: `[value, length]`, or null when more bytes are needed. */
export function readVarint(bytes, at = 0) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10 && at + i < bytes.length; i++) {
    const byte = bytes[at + i];
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if ((byte & 0x80) === 0) return [value, i + 1];
  }
  if (bytes.length - at >= 10) throw new MediaError("varint longer than 10 bytes");
  return null;
}

/** The bytes that open a group stream. */
export function encodeGroupHeader({ track, layer, group, flags }) {
  if (!Number.isInteger(layer) || layer < 0 || layer > 255) throw new MediaError(`bad layer ${layer}`);
  const out = [STREAM_MEDIA_GROUP];
  putVarint(out, track);
  out.push(layer);
  putVarint(out, group);
  out.push(flags & 0xff);
  return Uint8Array.from(out);
}

/** One frame as it travels: length, timestamp, level, payload (`Uint8Array` or `ArrayBuffer`). */
export function encodeFrame(timestampUs, level, payload) {
  const body = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  const head = putVarint([], Math.round(timestampUs));
  head.push(level & 0xff);
  const length = putVarint([], head.length + body.length);
  const out = new Uint8Array(length.length + head.length + body.length);
  out.set(length, 0);
  out.set(head, length.length);
  out.set(body, length.length + head.length);
  return out;
}

/**
 * Splits a group stream into its header and frames as chunks arrive. `push(chunk)` returns what
 * became complete: `{header}` once (`{track, layer, group, flags, keyframe}`), then
 * `{frame: {timestampUs, level, payload}}` for each frame. Refuses a frame longer than
 * `maxFrame` before buffering it, like the relay.
 */
export class GroupReader {
  constructor(maxFrame = 512 * 1024) {
    this.maxFrame = maxFrame;
    this.buffer = new Uint8Array(0);
    this.header = null;
  }

  push(chunk) {
    if (this.buffer.length === 0) {
      this.buffer = chunk;
    } else {
      const joined = new Uint8Array(this.buffer.length + chunk.length);
      joined.set(this.buffer);
      joined.set(chunk, this.buffer.length);
      this.buffer = joined;
    }
    const out = [];
    let at = 0;
    const bytes = this.buffer;
    if (!this.header) {
      const parsed = GroupReader.#header(bytes);
      if (!parsed) return out;
      [this.header, at] = parsed;
      out.push({ header: this.header });
    }
    for (;;) {
      const length = readVarint(bytes, at);
      if (!length) break;
      const [size, n] = length;
      if (size > this.maxFrame) throw new MediaError(`media frame of ${size} bytes exceeds ${this.maxFrame}`);
      if (bytes.length - at - n < size) break;
      const body = bytes.subarray(at + n, at + n + size);
      const timestamp = readVarint(body, 0);
      if (!timestamp || timestamp[1] >= body.length) throw new MediaError("frame shorter than its header");
      const [timestampUs, t] = timestamp;
      out.push({ frame: { timestampUs, level: body[t], payload: body.subarray(t + 1) } });
      at += n + size;
    }
    this.buffer = at === bytes.length ? new Uint8Array(0) : bytes.slice(at);
    return out;
  }

  /** Bytes of an unfinished header or frame. */
  get pending() {
    return this.buffer.length;
  }

  static #header(bytes) {
    if (bytes.length === 0) return null;
    if (bytes[0] !== STREAM_MEDIA_GROUP) throw new MediaError(`unknown stream type ${bytes[0]}`);
    const track = readVarint(bytes, 1);
    if (!track) return null;
    const layerAt = 1 + track[1];
    if (bytes.length <= layerAt) return null;
    const group = readVarint(bytes, layerAt + 1);
    if (!group) return null;
    const flagsAt = layerAt + 1 + group[1];
    if (bytes.length <= flagsAt) return null;
    const flags = bytes[flagsAt];
    const header = { track: track[0], layer: bytes[layerAt], group: group[0], flags, keyframe: (flags & FLAG_KEYFRAME) !== 0 };
    return [header, flagsAt + 1];
  }
}

/**
 * The RFC 6464 level byte of a frame of audio samples (floats in [-1, 1]): bits 0-6 the level in
 * -dBov (the RMS relative to full scale 1.0: 0 loudest, 127 silence), bit 7 (voice activity) set
 * when the level is louder than `voiceDbov` (a simple guess, no speech detection).
 */
export function audioLevel(samples, { voiceDbov = 50 } = {}) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  const rms = samples.length ? Math.sqrt(sum / samples.length) : 0;
  const dbov = rms > 0 ? Math.min(127, Math.max(0, Math.round(-20 * Math.log10(rms)))) : 127;
  return dbov | (dbov < voiceDbov ? 0x80 : 0);
}

/** The -dBov magnitude (0 loudest, 127 silence) and voice activity of a level byte. */
export function parseLevel(level) {
  return { dbov: level & 0x7f, voice: (level & 0x80) !== 0 };
}
