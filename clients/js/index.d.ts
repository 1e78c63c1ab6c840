// Types of @edgerelay/client (src/*.js), kept by hand next to the code and checked by
// `npm run typecheck` (test/types.test.ts uses every public API). The wire format is
// docs/protocol.md; what each call does is in README.md.

/** A room's log position: offsets are contiguous per epoch; a new epoch means history was lost. */
export interface Position {
  epoch: number;
  offset: number;
}

/** A payload: any JSON value, or bytes that are not JSON text as `{ $binary: base64 }`. */
export type Payload = unknown;

/** A room message (a `message` frame, or a history entry in the same shape). */
export interface Message<T = Payload> {
  type: "message";
  room: string;
  position: Position;
  /** The publisher's user id. */
  from: string;
  /** Unix ms, the relay's clock. */
  time: number;
  /** The publisher's message id. */
  id: string;
  data: T;
}

export type Status = "online" | "away" | "busy" | "offline";

export interface PresenceEntry {
  user: string;
  status: Status;
  custom: string | null;
  version: number;
  /** Unix ms the user was last seen online; 0 when unknown. */
  last_seen: number;
}

export interface TypingState {
  /** The first typists the relay lists (at most 3), without this client's own user. */
  users: string[];
  /** How many type in all (without this client's own user). */
  total: number;
  /** "Alice is typing…", or "" when nobody types. */
  text: string;
}

export interface HistoryPage<T = Payload> {
  /** Oldest first. */
  messages: Message<T>[];
  /** The room's top. */
  position: Position;
  /** The lowest offset retained. */
  first: number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "offline" | "closed";
export type TransportKind = "webtransport" | "websocket";

export interface StatusDetail {
  state: ConnectionState;
  transport: TransportKind | null;
  /** `open` over WebSocket when WebTransport was wanted: why it was not used. */
  fallbackReason?: string;
  /** `reconnecting`/`offline`: the wait before the next attempt, and when it starts (unix ms). */
  delayMs?: number;
  retryAt?: number;
  /** Why the last connection ended: the relay's code (null: the network) and reason. */
  code?: number | null;
  reason?: string;
}

export interface Welcome {
  type: "welcome";
  version: number;
  session: string;
  user: string;
  server_time: number;
  limits: Record<string, number> | null;
}

/** Anything a `WebSocket` constructor call returns that the client uses (browsers', `ws`'s). */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface EdgeRelayOptions {
  /** A JWT; or use `getToken`. */
  token?: string;
  /** Called for a token on every connect and, before the current one expires, to refresh it. */
  getToken?: () => string | Promise<string>;
  /** `https://host:4433/v1/wt` */
  webTransportUrl?: string;
  /** `ws://host:8080/v1/ws` */
  webSocketUrl?: string;
  /** Base64 SHA-256 hashes of the relay's dev certificates (`/v1/cert`'s `hashes`), or a function
   * fetching them before every WebTransport attempt. Omit with a real certificate. */
  certHashes?: string[] | (() => string[] | Promise<string[]>);
  /** Default `auto`: WebTransport, else WebSocket. */
  transport?: "auto" | TransportKind;
  /** The WebSocket constructor (default: the global one; e.g. `ws`'s under Node < 22). */
  WebSocket?: WebSocketConstructor;
  /** How long WebTransport gets before the WebSocket fallback (3000). */
  webTransportTimeoutMs?: number;
  /** How long a request waits for its answer (10000). */
  requestTimeoutMs?: number;
  /** Reconnect backoff: full jitter below `min(capMs, baseMs·2^attempt)` (250, 10000). */
  backoff?: { baseMs?: number; capMs?: number };
  /** Refresh the token this long before it expires (60000; halfway for short tokens). */
  refreshBeforeMs?: number;
  /** A connection that does not answer a ping this long after a network change is replaced (3000). */
  networkProbeMs?: number;
  /** Where `online` and `visibilitychange` come from (the page's window and document); false: nowhere. */
  networkEvents?: { online?: EventTarget; visibility?: EventTarget & { visibilityState?: string } } | false;
  /** The typing debounce of every room (3000, 5000). */
  typing?: { startEveryMs?: number; quietMs?: number };
  /** Sent in `hello` (`edgerelay-js/1`). */
  clientName?: string;
}

export interface RelayErrorFrame {
  req?: number;
  room?: string;
  code: number | null;
  message: string;
}

export interface MediaEvent {
  type: "group" | "frame" | "end";
  track: number;
  layer: number;
  group: number;
  [field: string]: unknown;
}

/** An EventTarget whose events carry typed `detail`s (a declaration only: at run time it is
 * EventTarget itself). */
declare class TypedEventTarget<Events> extends EventTarget {
  addEventListener<K extends keyof Events>(
    type: K,
    listener: (event: CustomEvent<Events[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof Events>(
    type: K,
    listener: (event: CustomEvent<Events[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export interface EdgeRelayEvents {
  status: StatusDetail;
  message: Message;
  joined: { room: string; recovered: boolean; position: Position };
  error: RelayErrorFrame;
  /** Presence and typing frames after their room handled them, and frame types added later. */
  frame: { type: string; [field: string]: unknown };
  datagram: Uint8Array;
  call: Call;
  ring: Call;
  media: MediaEvent;
  tracks: Record<string, unknown>;
  layer: Record<string, unknown>;
  speakers: Record<string, unknown>;
  keyframe_request: Record<string, unknown>;
  layers_wanted: Record<string, unknown>;
  /** Every event that reached this connection: subscribed ones and those sent to the user. */
  event: TopicEvent;
  /** Each call event (`req` 0) as it came, before its `Call` handles it (what `SharedRelay`
   * forwards to the tabs). */
  call_event: CallEventFrame;
  /** After `syncUnread()`: the unread counts changed (the whole `relay.unread`). */
  unread: Unread;
  /** After `syncUnread()`: a room's delivery and read progress moved (`members`: those that moved). */
  receipts: RoomReceipts;
}

/** One room's entry of the unread counts (docs/receipts.md). */
export interface RoomUnread {
  room: string;
  /** The user's read mark (offset 0: nothing read in this epoch). */
  read: Position;
  /** The room's last message. */
  top: Position;
  unread: number;
  mentions: number;
}

/** The user's unread counts over every followed room: `rooms` by name, totals always complete. */
export interface Unread {
  rooms: Map<string, RoomUnread>;
  total: number;
  mentions: number;
}

/** A member's progress in a room; `read` absent (null) when the member hides reads. */
export interface MemberReceipt {
  user: string;
  delivered: number;
  read?: number | null;
}

/** A room's receipts: every member has received up to `delivered_all` and read (of those who
 * share reads) up to `read_all`, offsets of `epoch`. `members` is empty above
 * `receipts.max_detailed_members`. */
export interface RoomReceipts {
  room: string;
  epoch: number;
  delivered_all: number;
  read_all: number;
  count: number;
  members: MemberReceipt[];
}

/** Read marks, unread counts and receipts (docs/receipts.md), on `EdgeRelay` and `SharedRelay`. */
export interface ReceiptsClient {
  /** The counts after `syncUnread()` (kept live by `unread` events), else null. */
  readonly unread: Unread | null;
  /** Resolves with the counts of every followed room; from then on `unread` and `receipts`
   * events, and the client confirms delivery of the messages it receives (`cursor`). */
  syncUnread(): Promise<Unread>;
  /** Marks each room read up to and including `position`; resolves once durable. */
  markRead(marks: { room: string; position: Position }[]): Promise<void>;
  /** A followed room's receipts, every member included. */
  receiptStatus(room: string): Promise<RoomReceipts>;
  /** Whether other members see this user's reads (kept by the relay; default true). */
  shareReads(share: boolean): Promise<void>;
  /** `publish` naming the users it mentions; kept and retried like `publish`. */
  publishWithMentions<T = Payload>(room: string, data: T, mentions: string[], options?: { id?: string }): Promise<Position>;
}

/** A `call` frame with an event of a call (docs/protocol.md "Calls (1:1)"). */
export interface CallEventFrame {
  type: "call";
  req: 0;
  call: string;
  event: Record<string, unknown>;
}

export interface RoomEvents {
  message: Message;
  joined: { recovered: boolean; position: Position };
  gap: { position: Position };
  presence: { members: PresenceEntry[]; entry: PresenceEntry | null };
  typing: TypingState;
  history: { messages: Message[]; hasEarlier: boolean };
  left: null;
}

/** What `EdgeRelay` and `SharedRelay` both offer: the connection's life and its rooms. */
export interface RoomClient extends ReceiptsClient {
  readonly state: ConnectionState;
  readonly transport: TransportKind | null;
  readonly welcome: Welcome | null;
  connect(): Promise<Welcome>;
  close(): void;
  room(name: string): Room;
  join(name: string): Promise<Room>;
  leave(name: string): Promise<void>;
  publish<T = Payload>(room: string, data: T, options?: { id?: string }): Promise<Position>;
  history(room: string, options?: { before?: number | null; limit?: number }): Promise<HistoryPage>;
  /** Up to `limit` (1-100) messages after offset `after`, oldest first (on WebTransport on a stream of its own). */
  historyAfter(room: string, options?: { after?: number; limit?: number }): Promise<HistoryPage>;
  typing(room: string, typing: boolean): Promise<void>;
  readonly fallbackReason: string | null;
  /** Unix ms of the next attempt while reconnecting or offline, else null. */
  readonly retryAt: number | null;
  readonly calls: Call[];
  readonly subscriptions: Subscription[];
  /** Subscribes to a topic pattern, kept across reconnects (docs/events.md). */
  subscribe(pattern: string, options?: { filter?: string | null; since?: Position | null }): Promise<Subscription>;
  /** Sends a frame of docs/protocol.md with a fresh `req`; resolves with the answer frame. */
  request(frame: { type: string; [field: string]: unknown }, onAnswer?: (answer: { type: string; [field: string]: unknown }) => void): Promise<{ type: string; [field: string]: unknown }>;
  /** Sends a frame that has no answer. */
  send(frame: { type: string; [field: string]: unknown }): Promise<void>;
  iceServers(): Promise<{ iceServers: RTCIceServer[]; expiresAt: number }>;
  call(callee: string, options?: CallOptions & { media?: "video" | "audio" }): Promise<Call>;
  readonly connected: Promise<Welcome> | null;
  /** Publishes waiting for their ack (on a `SharedRelay`: this tab's). */
  readonly unacked: number;
  readonly rooms: Room[];
  networkChanged(): void;
  setStatus(status: Status, custom?: string | null): Promise<void>;
  activity(): Promise<void>;
  privacy(options?: { hidePresence?: boolean; hideTyping?: boolean }): Promise<void>;
  /** Round trip in milliseconds (on a `SharedRelay`: from this tab through the leader). */
  ping(): Promise<number>;
  /** Sends a new token (`token`, else one from `getToken`); resolves with its expiry (unix s). */
  refresh(token?: string): Promise<number>;
}

export interface EdgeRelay extends RoomClient {}
export interface SharedRelay extends RoomClient {}

export class EdgeRelay extends TypedEventTarget<EdgeRelayEvents> {
  constructor(options?: EdgeRelayOptions);
  readonly state: ConnectionState;
  readonly transport: TransportKind | null;
  readonly welcome: Welcome | null;
  readonly fallbackReason: string | null;
  /** Unix ms of the next attempt while reconnecting or offline, else null. */
  readonly retryAt: number | null;
  /** Why the client closed for good, when the relay or the runtime decided it. */
  readonly closeReason?: string;
  readonly calls: Call[];
  readonly subscriptions: Subscription[];

  iceServers(): Promise<{ iceServers: RTCIceServer[]; expiresAt: number }>;
  call(callee: string, options?: CallOptions & { media?: "video" | "audio" }): Promise<Call>;
  /** Subscribes to a topic pattern, kept across reconnects (docs/events.md). */
  subscribe(pattern: string, options?: { filter?: string | null; since?: Position | null }): Promise<Subscription>;
  /** Sends a frame of docs/protocol.md with a fresh `req`; resolves with the answer frame. */
  request(frame: { type: string; [field: string]: unknown }, onAnswer?: (answer: { type: string; [field: string]: unknown }) => void): Promise<{ type: string; [field: string]: unknown }>;
  /** Sends a frame that has no answer. */
  send(frame: { type: string; [field: string]: unknown }): Promise<void>;
  sendDatagram(bytes: Uint8Array): void;
  publishTrack(
    room: string,
    track: { name: string; kind: "audio" | "video" | "screen"; codec: string; layers: { width: number; height: number; bitrate: number }[] },
  ): Promise<number>;
  openGroup(track: number, layer: number, group: number, keyframe: boolean, options?: { sendOrder?: number }): Promise<GroupWriter>;
  subscribeTrack(track: number, options?: { maxLayer?: number; paused?: boolean }): Promise<void>;
  unsubscribeTrack(track: number): Promise<void>;
  muteTrack(track: number, muted?: boolean): Promise<void>;
  unpublishTrack(track: number): Promise<void>;
}

export class Room extends TypedEventTarget<RoomEvents> {
  readonly name: string;
  /** The last position delivered; null before the first join. */
  readonly position: Position | null;
  readonly recovered: boolean | null;
  readonly joined: boolean;
  readonly wanted: boolean;
  /** Whether older messages than those loaded are retained (null until known). */
  readonly hasEarlier: boolean | null;
  readonly members: PresenceEntry[];
  /** Members counted by the relay's latest refresh (quiet rooms are counted, not listed). */
  readonly memberCount: number;
  readonly typing: TypingState;
  join(): Promise<Room>;
  leave(): Promise<void>;
  publish<T = Payload>(data: T, options?: { id?: string }): Promise<Position>;
  history(options?: { before?: number | null; limit?: number }): Promise<HistoryPage>;
  loadEarlier(limit?: number): Promise<Message[]>;
  status(user: string): Status;
  setTyping(typing: boolean): Promise<void>;
  keystroke(): void;
  stopTyping(): void;
}

export interface SharedRelayOptions extends EdgeRelayOptions {
  /** Tabs with the same key share one connection: use one per user (default `"default"`). */
  shareKey?: string;
  /** How long a new leader gathers the tabs' positions before it rejoins a room (150 ms). */
  gatherMs?: number;
}

/** One connection for all tabs of an origin (per `shareKey`): a leader tab, elected with Web
 * Locks, holds it and relays for the others over a BroadcastChannel. */
export interface SharedRelayEvents {
  /** The leader's connection state, and whether this tab is the leader. */
  status: StatusDetail & { leader: boolean };
  /** A new message of a room some tab joined, fired in one tab per browser (for notifications). */
  notify: Message;
  /** As on `EdgeRelay`, forwarded by the leader to every tab. */
  error: RelayErrorFrame;
  frame: { type: string; [field: string]: unknown };
  event: TopicEvent;
  /** A call this tab learnt of; every tab has its own `Call` object for it. */
  call: Call;
  /** A call rings this user: in every tab, answered in one. */
  ring: Call;
  /** As on `EdgeRelay` (after `syncUnread()` in this tab). */
  unread: Unread;
  receipts: RoomReceipts;
}

export class SharedRelay extends TypedEventTarget<SharedRelayEvents> {
  constructor(options?: SharedRelayOptions);
  /** Whether this tab holds the connection. */
  readonly isLeader: boolean;
  readonly state: ConnectionState;
  readonly transport: TransportKind | null;
  readonly welcome: Welcome | null;
  /** Why the leader's connection closed for good (a refused token): every tab is closed then. */
  readonly closeReason?: string;
  /** Group-call media and datagrams use the connection's own WebTransport streams: on a
   * `SharedRelay` these always reject with a `StateError` `unsupported` (use an `EdgeRelay` in
   * the tab that sends or receives media). */
  publishTrack(room: string, track: unknown): Promise<never>;
  openGroup(track: number, layer: number, group: number, keyframe: boolean, options?: { sendOrder?: number }): Promise<never>;
  subscribeTrack(track: number, options?: { maxLayer?: number; paused?: boolean }): Promise<never>;
  unsubscribeTrack(track: number): Promise<never>;
  muteTrack(track: number, muted?: boolean): Promise<never>;
  unpublishTrack(track: number): Promise<never>;
  sendDatagram(bytes: Uint8Array): Promise<never>;
}

/** An event of a topic (docs/events.md). */
export interface TopicEvent<T = Payload> {
  type: "event";
  topic: string;
  /** Persistent topics only. */
  position: Position | null;
  /** Unix ms, relay clock. */
  time: number;
  /** The publisher's event id. */
  id: string;
  tags: Record<string, string>;
  data: T;
}

export interface SubscriptionEvents {
  event: TopicEvent;
  /** After each (re)subscribe: `position` is an exact persistent topic's top; `recovered` false
   * when `since` could not be resumed (events were missed). */
  subscribed: { position: Position | null; recovered: boolean };
  /** A resubscribe after a reconnect was refused: the subscription ended. */
  error: { pattern: string; code: number | string; message: string };
}

export class Subscription extends TypedEventTarget<SubscriptionEvents> {
  readonly pattern: string;
  readonly filter: string | null;
  /** No wildcard: the events share one position sequence (persistent topics). */
  readonly exact: boolean;
  /** The last position seen (exact persistent topics), resumed from after a reconnect. */
  readonly position: Position | null;
  /** Held by the relay on the current connection. */
  readonly active: boolean;
  readonly recovered: boolean | null;
  unsubscribe(): Promise<void>;
}

export interface CallOptions {
  stream?: MediaStream | null;
  iceTransportPolicy?: "all" | "relay";
  iceServers?: RTCIceServer[];
  RTCPeerConnection?: typeof RTCPeerConnection;
}

export interface CallEvents {
  state: { state: "ringing" | "connected" | "reconnecting" | "ended"; reason: string | null; side: string | null };
  ring: null;
  answered_elsewhere: null;
  signal: string;
  peer: RTCPeerConnection;
  track: RTCTrackEvent;
  error: Error;
}

export class Call extends TypedEventTarget<CallEvents> {
  readonly id: string;
  readonly caller: string;
  readonly callee: string;
  readonly media: "video" | "audio";
  readonly role: "caller" | "callee";
  readonly state: "ringing" | "connected" | "reconnecting" | "ended";
  readonly reason: string | null;
  readonly side: string | null;
  readonly ringing: boolean;
  readonly inCall: boolean;
  readonly away: boolean;
  readonly peer: RTCPeerConnection | null;
  readonly remoteStream: MediaStream | null;
  answer(options?: CallOptions): Promise<unknown>;
  rejoin(options?: CallOptions): Promise<unknown>;
  reject(): Promise<unknown>;
  cancel(): Promise<unknown>;
  hangUp(): Promise<unknown>;
  signal(data: string): Promise<unknown>;
}

export class GroupWriter {
  readonly closed: Promise<boolean>;
  frame(timestampUs: number, level: number, bytes: Uint8Array): Promise<void>;
  finish(): Promise<void>;
  abort(reason?: unknown): Promise<void>;
}

/** The relay's answer to a request, or why it closed the connection (docs/protocol.md codes). */
export class RelayError extends Error {
  constructor(code: number, message: string);
  readonly code: number;
  /** e.g. `permission_denied`; null for a code this SDK does not know. */
  readonly codeName: string | null;
}

/** A call made in a state where it cannot work. */
export class StateError extends Error {
  constructor(code: StateError["code"], message: string);
  readonly code: "not_connected" | "closed" | "no_websocket" | "unsupported";
}

export class TimeoutError extends Error {}

export class FrameError extends Error {}

/** A room's presence and typing as the frames add up, `nowMs` passed in. */
export class PresenceView {
  apply(entry: PresenceEntry): boolean;
  applySnapshot(users: PresenceEntry[]): void;
  needsSync(count: number, digest: number): boolean;
  applyRefresh(count: number, digest: number): boolean;
  readonly count: number;
  readonly members: PresenceEntry[];
  status(user: string): Status;
  applyTyping(frame: { users: string[]; others: number; version: number; ttl_ms: number }, nowMs: number): boolean;
  typing(nowMs: number, me?: string | null): { users: string[]; total: number; untilMs: number | null };
  typingText(nowMs: number, me?: string | null): string;
}

export class TypingDebounce {
  constructor(options?: { startEveryMs?: number; quietMs?: number });
  readonly startEveryMs: number;
  readonly quietMs: number;
  keystroke(nowMs: number): "start" | null;
  stop(): "stop" | null;
  poll(nowMs: number): "stop" | null;
  readonly deadline: number | null;
  readonly typing: boolean;
}

export interface OutboxEntry {
  room: string;
  id: string;
  data: Payload;
  attempts: number;
}

export class Outbox {
  add(room: string, id: string, data: Payload): { entry: OutboxEntry; fresh: boolean; promise: Promise<Position> };
  readonly entries: OutboxEntry[];
  readonly size: number;
  ack(room: string, id: string, position: Position): void;
  fail(room: string, id: string, error: Error): void;
  failAll(error: Error): void;
}

export function endpointUrls(
  location: { hostname: string; host: string; protocol: string },
  endpoints: { webtransport_port: number; webtransport_path: string; websocket_path: string },
): { webTransportUrl: string; webSocketUrl: string };
export function rtcIceServers(answer: unknown): { iceServers: RTCIceServer[]; expiresAt: number };
export function webTransportUnavailable(url: string | undefined, scope?: object): string | null;
export function topicMatches(pattern: string, topic: string): boolean;
export function validRoomName(name: unknown): name is string;
export function messageId(scope?: object): string;
export function presenceDigest(entries: Iterable<Pick<PresenceEntry, "user" | "status" | "custom">>): number;
export function typingText(names: string[], total?: number): string;
export function backoffDelay(attempt: number, options?: { baseMs?: number; capMs?: number }, random?: () => number): number;
export function refreshDelay(expiresAt: number, nowMs: number, beforeMs?: number): number;
export function tokenExpiry(token: string): number | null;
export function binary(bytes: Uint8Array): { $binary: string };
export function payloadBytes(data: Payload): Uint8Array;
export function encodeJson(frame: { type: string; [field: string]: unknown }, direction?: "client" | "server"): string;
export function decodeJson(text: string): { type: string; [field: string]: unknown };
