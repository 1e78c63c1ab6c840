// The group-call page served at `/call/` (docs/media.md, "Browser"): camera and microphone from
// getUserMedia, encoded with WebCodecs (VP8 in simulcast layers, Opus in 20 ms frames), sent to the
// relay as groups on WebTransport unidirectional streams; everyone else's tracks received,
// decoded to a canvas per tile and played through one AudioContext; the relay's dominant speaker
// highlighted. Nothing here is a debug view, but `window.callStats()` reports what the page
// decoded, for tests and for the curious.
//
// URL fragment: `token`, `room` (default `call:lobby`), `layers` (how many simulcast layers to
// send, 1-2, default 2), `maxLayer` (the highest layer to receive, default the best; 0 for
// the smallest, as on a slow link), `cert` (base64 certificate hashes to pin instead of `/v1/cert`'s),
// `wtPort` (the UDP port to reach the relay's WebTransport at instead of `/v1/endpoints`' one,
// e.g. a proxy in front of it).
//
// Sending follows the relay's rules: every video group starts at a keyframe (one every 2 s, and
// at once on `keyframe_request`); an audio group is 5 Opus frames; each frame carries the RFC 6464
// level of its audio; layers missing from `layers_wanted` are not encoded at all.

import { EdgeRelay, endpointUrls } from "/sdk/edgerelay.js";
import { LEVEL_SILENCE, audioLevel } from "/sdk/media.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));

const FPS = 15;
const KEYFRAME_EVERY_MS = 2000;
const AUDIO_GROUP_FRAMES = 5;
const AUDIO_BITRATE = 32_000;
const ALL_LAYERS = [
  { width: 320, height: 180, bitrate: 250_000 },
  { width: 640, height: 360, bitrate: 800_000 },
];
const LAYERS = ALL_LAYERS.slice(0, Math.min(ALL_LAYERS.length, Math.max(1, Number(params.get("layers") ?? ALL_LAYERS.length))));
const MAX_LAYER = params.has("maxLayer") ? Math.max(0, Number(params.get("maxLayer"))) : Infinity;
// Send order: audio before video, the base layer before higher ones (the relay does the same
// towards subscribers).
const SEND_ORDER_AUDIO = 100;
const sendOrderVideo = (layer) => 50 - layer;
// Remote audio is scheduled this far ahead, to absorb jitter.
const AUDIO_LEAD_S = 0.06;
// The Opus frame length this page sends; received audio is checked for gaps against it.
const AUDIO_FRAME_US = 20_000;
// A jump in received audio timestamps longer than this is a pause (a muted microphone), not loss.
const AUDIO_PAUSE_US = 1_000_000;

/** Everything the page knows, and what tests read. */
const call = {
  client: null,
  user: null,
  room: null,
  state: "idle",
  joinedAt: null,
  mic: { enabled: true, track: null, sender: null },
  camera: { enabled: true, track: null, sender: null },
  // Remote participants by user: their tile and decoders.
  tiles: new Map(),
  // Track id → {info, tile} of remote tracks.
  tracks: new Map(),
  dominant: null,
  audioContext: null,
  errors: [],
};
window.call = call;

/** What the page sent and decoded, per remote participant. */
window.callStats = () => {
  const tiles = {};
  for (const [user, tile] of call.tiles) {
    tiles[user] = {
      videoFrames: tile.videoFrames,
      audioFrames: tile.audioFrames,
      audioGapFrames: tile.audioGapFrames,
      videoLayer: tile.videoLayer,
      videoSize: tile.canvas.width ? `${tile.canvas.width}x${tile.canvas.height}` : null,
      joinToFirstFrameMs: tile.joinToFirstFrameMs,
      subscribeToFirstFrameMs: tile.subscribeToFirstFrameMs,
      speaking: tile.element.classList.contains("speaking"),
      micMuted: tile.audio?.muted ?? true,
      cameraOff: tile.video?.muted ?? true,
    };
  }
  return {
    user: call.user,
    room: call.room,
    state: call.state,
    transport: call.client?.transport ?? null,
    participants: call.tiles.size + (call.user ? 1 : 0),
    dominant: call.dominant,
    selfSpeaking: call.self?.classList.contains("speaking") ?? false,
    sent: {
      audioFrames: call.mic.sender?.frames ?? 0,
      // Frames missing from what this page encoded itself (see countAudioGap).
      audioGapFrames: call.mic.sender?.gaps.audioGapFrames ?? 0,
      videoFrames: call.camera.sender?.layers.map((l) => l.frames) ?? [],
      videoLayersWanted: call.camera.sender?.layers.map((l) => l.wanted) ?? [],
    },
    tiles,
    errors: call.errors.slice(-5),
  };
};

function notice(text) {
  call.errors.push(text);
  const box = $("notice");
  box.textContent = text;
  box.classList.add("shown");
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => box.classList.remove("shown"), 6000);
}

function setStatus(text, kind) {
  const pill = $("status");
  pill.textContent = text;
  pill.className = `pill ${kind ?? ""}`;
}

function updateCount() {
  const count = call.tiles.size + 1;
  $("count").textContent = `${count} in call`;
  // As square a grid as the tiles allow: 1, 2, 2x2, 3x2, 3x3...
  const columns = Math.ceil(Math.sqrt(count));
  const rows = Math.ceil(count / columns);
  const grid = $("grid");
  grid.style.setProperty("--columns", columns);
  // Tiles as wide as fits, but short enough for every row to show (16:9 tiles, gaps, padding).
  grid.style.setProperty("--tile-width", `calc((100vh - 10rem - ${rows - 1} * .8rem) / ${rows} * 16 / 9)`);
}

// --- tiles ---

function tileElement(label, media) {
  const element = document.createElement("div");
  element.className = "tile no-video";
  const avatar = document.createElement("div");
  avatar.className = "avatar";
  const initial = document.createElement("span");
  initial.textContent = (label.trim()[0] ?? "?").toUpperCase();
  avatar.append(initial);
  const name = document.createElement("div");
  name.className = "name";
  // A crossed-out microphone (no emoji: not every system has a font for it).
  name.insertAdjacentHTML(
    "beforeend",
    `<svg viewBox="0 0 24 24" fill="none" stroke="#f2a49c" stroke-width="2" stroke-linecap="round" aria-label="microphone muted">
       <rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M4 4l16 16"/></svg>`,
  );
  const text = document.createElement("span");
  text.textContent = label;
  name.append(text);
  element.append(media, avatar, name);
  $("grid").append(element);
  return element;
}

function remoteTile(user) {
  let tile = call.tiles.get(user);
  if (tile) return tile;
  const canvas = document.createElement("canvas");
  tile = {
    user,
    element: tileElement(user, canvas),
    canvas,
    context: canvas.getContext("2d"),
    video: null,
    audio: null,
    videoDecoder: null,
    audioDecoder: null,
    videoGroup: -1,
    videoIndex: 0,
    needKey: true,
    videoFrames: 0,
    audioFrames: 0,
    // Audio frames missing between those received (a gap heard), net of late ones filling in.
    audioGapFrames: 0,
    lastAudioUs: null,
    videoLayer: null,
    subscribedAt: null,
    joinToFirstFrameMs: null,
    subscribeToFirstFrameMs: null,
    nextAudioTime: 0,
  };
  tile.element.dataset.user = user;
  tile.element.classList.add("mic-muted");
  call.tiles.set(user, tile);
  updateCount();
  highlight();
  return tile;
}

function dropTile(tile) {
  for (const decoder of [tile.videoDecoder, tile.audioDecoder]) {
    if (decoder && decoder.state !== "closed") decoder.close();
  }
  tile.element.remove();
  call.tiles.delete(tile.user);
  updateCount();
}

function showTrackState(tile) {
  tile.element.classList.toggle("no-video", !tile.video || tile.video.muted || tile.videoFrames === 0);
  tile.element.classList.toggle("mic-muted", !tile.audio || tile.audio.muted);
  const badge = tile.element.querySelector(".badge");
  if (tile.videoLayer !== null && tile.video && tile.video.layers.length > 1) {
    const layer = tile.video.layers[tile.videoLayer];
    const text = layer ? `${layer.height}p` : `layer ${tile.videoLayer}`;
    if (badge) badge.textContent = text;
    else tile.element.append(Object.assign(document.createElement("span"), { className: "badge", textContent: text }));
  }
}

function highlight() {
  for (const tile of call.tiles.values()) tile.element.classList.toggle("speaking", tile.user === call.dominant);
  call.self?.classList.toggle("speaking", call.dominant !== null && call.dominant === call.user);
}

// --- receiving ---

function onTracks({ tracks, ended }) {
  for (const info of tracks) {
    // Own tracks (listed to everyone, the publisher too) are the preview tile. The `tracks` frame
    // may come before `track_published` was handled, so they are known by the user.
    if (info.user === call.user) continue;
    const tile = remoteTile(info.user);
    const known = call.tracks.get(info.track);
    call.tracks.set(info.track, { info, tile });
    if (info.kind === "video") tile.video = info;
    else if (info.kind === "audio") tile.audio = info;
    else continue; // Screen sharing is not shown by this page.
    showTrackState(tile);
    if (!known) subscribe(info, tile);
  }
  for (const track of ended) {
    const entry = call.tracks.get(track);
    if (!entry) continue;
    call.tracks.delete(track);
    const { tile } = entry;
    if (tile.video?.track === track) {
      tile.video = null;
      tile.videoGroup = -1;
      tile.needKey = true;
    }
    if (tile.audio?.track === track) tile.audio = null;
    if (!tile.video && !tile.audio) dropTile(tile);
    else showTrackState(tile);
  }
}

async function subscribe(info, tile) {
  if (info.kind === "video") tile.subscribedAt = performance.now();
  try {
    const maxLayer = Math.min(MAX_LAYER, info.layers.length - 1);
    await call.client.subscribeTrack(info.track, { maxLayer, paused: false });
  } catch (err) {
    notice(`could not receive ${info.user}'s ${info.kind}: ${err.message}`);
  }
}

function videoDecoder(tile) {
  if (tile.videoDecoder && tile.videoDecoder.state !== "closed") return tile.videoDecoder;
  tile.needKey = true;
  tile.videoDecoder = new VideoDecoder({
    output: (frame) => {
      const { canvas } = tile;
      if (canvas.width !== frame.displayWidth || canvas.height !== frame.displayHeight) {
        canvas.width = frame.displayWidth;
        canvas.height = frame.displayHeight;
      }
      tile.context.drawImage(frame, 0, 0);
      frame.close();
      tile.videoFrames += 1;
      if (tile.videoFrames === 1) {
        const now = performance.now();
        tile.joinToFirstFrameMs = Math.round(now - call.joinedAt);
        tile.subscribeToFirstFrameMs = tile.subscribedAt === null ? null : Math.round(now - tile.subscribedAt);
        showTrackState(tile);
      }
    },
    error: (err) => notice(`video from ${tile.user}: ${err.message}`),
  });
  tile.videoDecoder.configure({ codec: tile.video?.codec || "vp8", optimizeForLatency: true });
  return tile.videoDecoder;
}

function audioDecoder(tile) {
  if (tile.audioDecoder && tile.audioDecoder.state !== "closed") return tile.audioDecoder;
  tile.audioDecoder = new AudioDecoder({
    output: (data) => {
      tile.audioFrames += 1;
      play(tile, data);
    },
    error: (err) => notice(`audio from ${tile.user}: ${err.message}`),
  });
  tile.audioDecoder.configure({ codec: "opus", sampleRate: 48_000, numberOfChannels: 1 });
  return tile.audioDecoder;
}

function play(tile, data) {
  const context = call.audioContext;
  try {
    if (!context || context.state !== "running") return;
    const buffer = context.createBuffer(data.numberOfChannels, data.numberOfFrames, data.sampleRate);
    for (let channel = 0; channel < data.numberOfChannels; channel++) {
      data.copyTo(buffer.getChannelData(channel), { planeIndex: channel, format: "f32-planar" });
    }
    const now = context.currentTime;
    // Late (a gap) or too far ahead (drift): start again just ahead of now.
    if (tile.nextAudioTime < now || tile.nextAudioTime > now + 4 * AUDIO_LEAD_S) tile.nextAudioTime = now + AUDIO_LEAD_S;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    source.start(tile.nextAudioTime);
    tile.nextAudioTime += buffer.duration;
  } finally {
    data.close();
  }
}

function onMedia({ detail: event }) {
  const entry = call.tracks.get(event.track);
  if (!entry) return;
  const { info, tile } = entry;
  if (info.kind === "video") onVideo(tile, event);
  else if (info.kind === "audio" && event.type === "frame") {
    countAudioGap(tile, event.timestampUs);
    const decoder = audioDecoder(tile);
    decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: event.timestampUs, data: event.payload }));
  }
}

/** Counts audio frames missing between the received ones (groups travel on their own streams,
 * so a late frame may fill a gap counted before). */
function countAudioGap(tile, timestampUs) {
  const last = tile.lastAudioUs;
  if (last !== null && timestampUs < last) {
    if (tile.audioGapFrames > 0) tile.audioGapFrames -= 1;
    return;
  }
  const jump = last === null ? 0 : timestampUs - last;
  if (jump > 1.5 * AUDIO_FRAME_US && jump < AUDIO_PAUSE_US) tile.audioGapFrames += Math.round(jump / AUDIO_FRAME_US) - 1;
  tile.lastAudioUs = timestampUs;
}

function onVideo(tile, event) {
  if (event.type === "group") {
    // The newest group wins; an older one still arriving is ignored (docs/media.md step 4).
    if (event.group > tile.videoGroup) {
      tile.videoGroup = event.group;
      tile.videoIndex = 0;
      tile.groupKeyframe = event.keyframe;
      if (tile.videoLayer !== event.layer) {
        tile.videoLayer = event.layer;
        showTrackState(tile);
      }
    }
    return;
  }
  if (event.type !== "frame" || event.group !== tile.videoGroup) return;
  const key = tile.videoIndex === 0 && tile.groupKeyframe;
  tile.videoIndex += 1;
  const decoder = videoDecoder(tile);
  if (key) tile.needKey = false;
  // A decoder falling behind waits for the next keyframe instead of queueing old video.
  if (!key && (tile.needKey || decoder.decodeQueueSize > 8)) {
    tile.needKey = true;
    return;
  }
  decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: event.timestampUs, data: event.payload }));
}

// --- sending ---

/** Writes encoded chunks into groups, in order: a new group stream where `startsGroup` says. */
class GroupSender {
  constructor(track, layer, sendOrder) {
    this.track = track;
    this.layer = layer;
    this.sendOrder = sendOrder;
    this.group = 0;
    this.writer = null;
    this.frames = 0;
    this.chain = Promise.resolve();
  }

  send(chunk, level, startsGroup) {
    const bytes = new Uint8Array(chunk.byteLength);
    chunk.copyTo(bytes);
    const timestamp = chunk.timestamp;
    this.chain = this.chain
      .then(async () => {
        if (startsGroup) {
          this.writer?.finish();
          this.group += 1;
          this.writer = null;
          this.writer = await call.client.openGroup(this.track, this.layer, this.group, true, { sendOrder: this.sendOrder });
        }
        if (!this.writer) return; // Nothing until the next group start.
        this.writer.frame(timestamp, level, bytes).catch(() => {});
        this.frames += 1;
      })
      .catch((err) => {
        this.writer = null;
        if (call.state === "open") notice(`sending failed: ${err.message}`);
      });
  }

  /** Ends the group in progress; nothing more is sent until the next group starts. */
  stop() {
    this.chain = this.chain.then(() => {
      this.writer?.finish();
      this.writer = null;
    });
  }
}

/** Reads a camera or microphone track frame by frame (`VideoFrame` or `AudioData`). */
async function readTrack(track, onFrame) {
  const processor = new MediaStreamTrackProcessor({ track });
  const reader = processor.readable.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    try {
      onFrame(value);
    } catch (err) {
      notice(`capture: ${err.message}`);
    } finally {
      value.close();
    }
  }
}

class VideoSender {
  constructor(track, source) {
    this.track = track;
    this.lastFrameUs = -Infinity;
    this.layers = LAYERS.map((info, index) => {
      const layer = {
        info,
        wanted: true,
        wantKey: true,
        lastKeyAt: -Infinity,
        frames: 0,
        sender: new GroupSender(track, index, sendOrderVideo(index)),
        canvas: new OffscreenCanvas(info.width, info.height),
      };
      layer.context = layer.canvas.getContext("2d");
      layer.encoder = new VideoEncoder({
        output: (chunk) => {
          layer.frames += 1;
          layer.sender.send(chunk, 0, chunk.type === "key");
        },
        error: (err) => notice(`video encoder: ${err.message}`),
      });
      layer.encoder.configure({
        codec: "vp8",
        width: info.width,
        height: info.height,
        bitrate: info.bitrate,
        framerate: FPS,
        latencyMode: "realtime",
      });
      return layer;
    });
    readTrack(source, (frame) => this.#capture(frame));
  }

  #capture(frame) {
    if (!call.camera.enabled) return;
    // The camera may run faster than the call needs.
    if (frame.timestamp - this.lastFrameUs < 1e6 / FPS - 5000) return;
    this.lastFrameUs = frame.timestamp;
    const now = performance.now();
    for (const layer of this.layers) {
      if (!layer.wanted || layer.encoder.state !== "configured") continue;
      // A busy encoder skips frames rather than falling behind.
      if (layer.encoder.encodeQueueSize > 2) continue;
      const keyFrame = layer.wantKey || now - layer.lastKeyAt >= KEYFRAME_EVERY_MS;
      layer.context.drawImage(frame, 0, 0, layer.info.width, layer.info.height);
      const scaled = new VideoFrame(layer.canvas, { timestamp: frame.timestamp, duration: frame.duration ?? undefined });
      layer.encoder.encode(scaled, { keyFrame });
      scaled.close();
      if (keyFrame) {
        layer.wantKey = false;
        layer.lastKeyAt = now;
      }
    }
  }

  keyframe(index) {
    const layer = this.layers[index];
    if (layer) layer.wantKey = true;
  }

  /** `layers_wanted`: encode only the layers somebody receives; a resumed one starts at a keyframe. */
  want(bits) {
    this.layers.forEach((layer, index) => {
      const wanted = (bits & (1 << index)) !== 0;
      if (wanted && !layer.wanted) layer.wantKey = true;
      if (!wanted && layer.wanted) layer.sender.stop();
      layer.wanted = wanted;
    });
  }

  /** Camera off: the group in progress ends; turning it on starts with a keyframe. */
  pause() {
    for (const layer of this.layers) {
      layer.sender.stop();
      layer.wantKey = true;
    }
  }
}

class AudioSender {
  constructor(track, source) {
    this.track = track;
    this.wanted = true;
    this.sender = new GroupSender(track, 0, SEND_ORDER_AUDIO);
    this.encoder = null;
    this.encoded = 0;
    this.restart = false;
    // Gaps in what this page encoded (capture that never reached the encoder), counted as the
    // receivers count theirs: `lastAudioUs`, `audioGapFrames`.
    this.gaps = { lastAudioUs: null, audioGapFrames: 0 };
    // Levels of the captured audio not yet in an encoded frame (capture chunks are often 10 ms,
    // Opus frames 20 ms): a frame gets the loudest.
    this.levels = [];
    readTrack(source, (data) => this.#capture(data));
  }

  get frames() {
    return this.sender.frames;
  }

  #configure(data) {
    this.encoder = new AudioEncoder({
      output: (chunk) => {
        const level = this.levels.length ? Math.min(...this.levels.map((l) => l & 0x7f)) : LEVEL_SILENCE;
        const voice = this.levels.some((l) => l & 0x80);
        this.levels = [];
        countAudioGap(this.gaps, chunk.timestamp);
        const starts = this.encoded % AUDIO_GROUP_FRAMES === 0 || this.restart;
        this.encoded += 1;
        this.restart = false;
        this.sender.send(chunk, level | (voice ? 0x80 : 0), starts);
      },
      error: (err) => notice(`audio encoder: ${err.message}`),
    });
    this.encoder.configure({
      codec: "opus",
      sampleRate: data.sampleRate,
      numberOfChannels: data.numberOfChannels,
      bitrate: AUDIO_BITRATE,
      opus: { frameDuration: 20_000 },
    });
  }

  #capture(data) {
    if (!call.mic.enabled || !this.wanted) return;
    if (!this.encoder) this.#configure(data);
    const samples = new Float32Array(data.numberOfFrames);
    data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
    this.levels.push(audioLevel(samples));
    this.encoder.encode(data);
  }

  want(bits) {
    const wanted = (bits & 1) !== 0;
    if (!wanted && this.wanted) this.pause();
    this.wanted = wanted;
  }

  pause() {
    this.sender.stop();
    this.restart = true;
  }
}

async function startSending() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      video: { width: 640, height: 360, frameRate: FPS },
    });
  } catch (err) {
    notice(`no camera or microphone (${err.message}): you can still watch and listen`);
    return;
  }
  const [mic] = stream.getAudioTracks();
  const [camera] = stream.getVideoTracks();
  if (camera) {
    call.preview.srcObject = new MediaStream([camera]);
    call.self.classList.remove("no-video");
    const id = await call.client.publishTrack(call.room, {
      name: "cam",
      kind: "video",
      codec: "vp8",
      layers: LAYERS,
    });
    call.camera.track = id;
    call.camera.sender = new VideoSender(id, camera);
  }
  if (mic) {
    const id = await call.client.publishTrack(call.room, {
      name: "mic",
      kind: "audio",
      codec: "opus",
      layers: [{ width: 0, height: 0, bitrate: AUDIO_BITRATE }],
    });
    call.mic.track = id;
    call.mic.sender = new AudioSender(id, mic);
    call.self.classList.remove("mic-muted");
  }
  $("mic").disabled = !mic;
  $("camera").disabled = !camera;
}

// --- controls ---

function resumeAudio() {
  if (call.audioContext?.state === "suspended") call.audioContext.resume().catch(() => {});
}

async function setMic(enabled) {
  call.mic.enabled = enabled;
  $("mic").textContent = enabled ? "Mute mic" : "Unmute mic";
  $("mic").classList.toggle("off", !enabled);
  call.self.classList.toggle("mic-muted", !enabled);
  if (!enabled) call.mic.sender?.pause();
  if (call.mic.track !== null) await call.client.muteTrack(call.mic.track, !enabled);
}

async function setCamera(enabled) {
  call.camera.enabled = enabled;
  $("camera").textContent = enabled ? "Stop camera" : "Start camera";
  $("camera").classList.toggle("off", !enabled);
  call.self.classList.toggle("no-video", !enabled);
  if (!enabled) call.camera.sender?.pause();
  if (call.camera.track !== null) await call.client.muteTrack(call.camera.track, !enabled);
}
call.setMic = setMic;
call.setCamera = setCamera;

$("mic").addEventListener("click", () => {
  resumeAudio();
  setMic(!call.mic.enabled).catch((err) => notice(err.message));
});
$("camera").addEventListener("click", () => {
  resumeAudio();
  setCamera(!call.camera.enabled).catch((err) => notice(err.message));
});
$("leave").addEventListener("click", () => {
  call.client?.close();
  for (const tile of [...call.tiles.values()]) dropTile(tile);
  call.state = "left";
  setStatus("left the call");
  $("controls").hidden = true;
  $("grid").replaceChildren(Object.assign(document.createElement("p"), { textContent: "You left the call. Reload to join again." }));
});
document.addEventListener("click", resumeAudio);

// --- joining ---

const pinned = params.get("cert")?.replaceAll(" ", "+").split(",").filter(Boolean);

async function join(token, room) {
  call.room = room;
  $("room-name").textContent = room;
  $("join").classList.remove("shown");
  $("grid").hidden = false;
  $("controls").hidden = false;
  call.audioContext = new AudioContext({ sampleRate: 48_000, latencyHint: "interactive" });
  resumeAudio();

  const endpoints = await fetch("/v1/endpoints").then((r) => r.json());
  if (params.get("wtPort")) endpoints.webtransport_port = Number(params.get("wtPort"));
  const client = new EdgeRelay({
    token,
    transport: "webtransport",
    ...endpointUrls(location, endpoints),
    certHashes: pinned ?? (() => fetch("/v1/cert").then((r) => r.json()).then((cert) => cert.hashes)),
    clientName: "edgerelay-call/1",
  });
  call.client = client;
  client.addEventListener("status", ({ detail }) => {
    call.state = detail.state;
    if (detail.state === "open") setStatus(`connected · ${detail.transport}`, "ok");
    else if (detail.state === "reconnecting") setStatus("reconnecting…", "bad");
    else if (detail.state === "closed") setStatus(`disconnected${detail.reason ? `: ${detail.reason}` : ""}`, "bad");
    else setStatus(detail.state);
  });
  client.addEventListener("tracks", ({ detail }) => onTracks(detail));
  client.addEventListener("media", onMedia);
  client.addEventListener("speakers", ({ detail }) => {
    call.dominant = detail.dominant ?? null;
    highlight();
  });
  client.addEventListener("keyframe_request", ({ detail }) => {
    if (detail.track === call.camera.track) call.camera.sender?.keyframe(detail.layer);
  });
  client.addEventListener("layers_wanted", ({ detail }) => {
    if (detail.track === call.camera.track) call.camera.sender?.want(detail.layers);
    if (detail.track === call.mic.track) call.mic.sender?.want(detail.layers);
  });

  const welcome = await client.connect();
  call.user = welcome.user;
  call.preview = Object.assign(document.createElement("video"), { muted: true, autoplay: true, playsInline: true });
  call.preview.className = "mirror";
  call.self = tileElement(`${welcome.user} (you)`, call.preview);
  call.self.classList.add("self", "mic-muted");
  updateCount();
  call.joinedAt = performance.now();
  await client.join(room);
  await startSending();
}

if (params.get("token")) {
  const room = params.get("room") ?? "call:lobby";
  join(params.get("token"), room).catch((err) => {
    setStatus("could not join", "bad");
    notice(`could not join ${room}: ${err.message}`);
  });
} else {
  $("join").classList.add("shown");
  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    const room = $("room").value.trim();
    history.replaceState(null, "", `#room=${encodeURIComponent(room)}`);
    join(token, room).catch((err) => {
      setStatus("could not join", "bad");
      notice(`could not join ${room}: ${err.message}`);
    });
  });
}
