// The type test (not run, only type-checked): every public API used as the README shows it, through the package's own
// `exports` (as an app imports it). `npm run typecheck` (tsc --noEmit) must pass; the
// `@ts-expect-error` lines must fail to type-check, or tsc reports them unused.
import { SessionConflict, applyPatch, session } from "@edgerelay/client/sessions";
import { YjsProvider } from "@edgerelay/client/yjs";
import { notifications, type Notification } from "@edgerelay/client/notifications";
import * as Y from "yjs";
import {
  Call,
  Subscription,
  topicMatches,
  type TopicEvent,
  EdgeRelay,
  Outbox,
  PresenceView,
  RelayError,
  Room,
  SharedRelay,
  StateError,
  TimeoutError,
  TypingDebounce,
  backoffDelay,
  binary,
  decodeJson,
  encodeJson,
  endpointUrls,
  messageId,
  payloadBytes,
  presenceDigest,
  refreshDelay,
  rtcIceServers,
  tokenExpiry,
  typingText,
  validRoomName,
  webTransportUnavailable,
  type ConnectionState,
  type HistoryPage,
  type Message,
  type Position,
  type PresenceEntry,
  type RoomReceipts,
  type StatusDetail,
  type Unread,
  type WebSocketConstructor,
} from "@edgerelay/client";

declare const NodeWebSocket: WebSocketConstructor;

async function chat(): Promise<void> {
  const relay = new EdgeRelay({
    getToken: async () => "jwt",
    ...endpointUrls(location, { webtransport_port: 4433, webtransport_path: "/v1/wt", websocket_path: "/v1/ws" }),
    certHashes: () => fetch("/v1/cert").then((r) => r.json()).then((c: { hashes: string[] }) => c.hashes),
    transport: "auto",
    WebSocket: NodeWebSocket,
    backoff: { baseMs: 100, capMs: 5000 },
    refreshBeforeMs: 30_000,
    typing: { startEveryMs: 3000, quietMs: 5000 },
  });
  relay.addEventListener("status", (e) => {
    const detail: StatusDetail = e.detail;
    const state: ConnectionState = detail.state;
    if (state === "reconnecting" && detail.retryAt !== undefined) console.log(new Date(detail.retryAt));
    if (state === "open") console.log(detail.transport, detail.fallbackReason);
  });
  const welcome = await relay.connect();
  const me: string = welcome.user;

  const room: Room = await relay.join("chat:lobby");
  room.addEventListener("message", (e) => {
    const m: Message = e.detail;
    const at: Position = m.position;
    console.log(m.from, m.data, at.offset, me);
  });
  room.addEventListener("presence", (e) => e.detail.members.map((p: PresenceEntry) => p.status));
  room.addEventListener("typing", (e) => console.log(e.detail.text, e.detail.users, e.detail.total));
  room.addEventListener("history", (e) => console.log(e.detail.messages.length, e.detail.hasEarlier));
  room.addEventListener("gap", (e) => console.log(e.detail.position.epoch));

  const position: Position = await room.publish({ text: "hi" });
  await relay.publish("chat:lobby", { text: "again" }, { id: messageId() });
  await relay.publish("chat:lobby", binary(new Uint8Array([0, 255])));
  // Unread badges and ticks (docs/receipts.md).
  const unread: Unread = await relay.syncUnread();
  relay.addEventListener("unread", (e) => console.log(e.detail.total, e.detail.rooms.get("chat:lobby")?.unread, unread.mentions));
  relay.addEventListener("receipts", (e) => e.detail.members.map((m) => m.read ?? m.delivered));
  await relay.markRead([{ room: "chat:lobby", position }]);
  const status: RoomReceipts = await relay.receiptStatus("chat:lobby");
  await relay.shareReads(true);
  console.log(status.delivered_all >= position.offset, await relay.publishWithMentions("chat:lobby", { text: "@bob" }, ["bob"]));
  const earlier: Message[] = await room.loadEarlier(50);
  const page: HistoryPage = await room.history({ before: position.offset, limit: 20 });
  console.log(earlier.length, page.first, room.hasEarlier, room.members, room.typing.text, room.status("bob"));
  room.keystroke();
  room.stopTyping();
  await room.setTyping(false);
  await relay.setStatus("away", "lunch");
  await relay.activity();
  await relay.privacy({ hideTyping: true });
  const rtt: number = await relay.ping();
  const expiresAt: number = await relay.refresh();
  console.log(rtt, expiresAt, relay.unacked, relay.rooms.length, relay.state, relay.retryAt);

  const call: Call = await relay.call("bob", { media: "audio", stream: null });
  call.addEventListener("state", (e) => console.log(e.detail.state, e.detail.reason));
  relay.addEventListener("ring", (e) => e.detail.answer({ stream: null }));
  await call.hangUp();
  const sub: Subscription = await relay.subscribe("orders.*.created", { filter: "qty >= 10" });
  sub.addEventListener("event", (e) => {
    const event: TopicEvent = e.detail;
    console.log(event.topic, event.tags.qty, event.position?.offset, topicMatches(sub.pattern, event.topic));
  });
  const exact = await relay.subscribe("orders.eu.created", { since: { epoch: 1, offset: 17 } });
  console.log(exact.position, exact.recovered, relay.subscriptions.length);
  await sub.unsubscribe();
  // @ts-expect-error a filter is text
  await relay.subscribe("orders.>", { filter: 10 });
  const board = session<{ title: string; cards: Record<string, { text: string }> }>(relay, "doc:board");
  await board.create({ title: "", cards: {} }, { defaultRole: "editor" });
  board.addEventListener("patched", (e) => console.log(e.detail.version, e.detail.doc.title));
  board.addEventListener("cursor", (e) => console.log(e.detail.user, e.detail.data));
  try {
    const { version, rebased }: { version: number; rebased: boolean } = await board.patch([{ op: "replace", path: "/title", value: "Plan" }]);
    console.log(version, rebased, board.doc?.cards, board.members.get("bob")?.present);
  } catch (err) {
    if (err instanceof SessionConflict) console.log(err.missed, err.conflicting);
  }
  // @ts-expect-error a remove has no value and needs a path
  await board.patch([{ op: "remove" }]);
  await board.cursor({ x: 1 });
  await board.leave();
  console.log(applyPatch({ a: 1 }, [{ op: "remove", path: "/a" }]));
  const { iceServers } = await relay.iceServers();
  new RTCPeerConnection({ iceServers });
  await room.leave();
  relay.close();

  try {
    await relay.join("chat:lobby");
  } catch (err) {
    if (err instanceof StateError) {
      const code: "not_connected" | "closed" | "no_websocket" | "unsupported" = err.code;
      console.log(code);
    } else if (err instanceof RelayError) {
      console.log(err.code, err.codeName);
    } else if (err instanceof TimeoutError) {
      console.log(err.message);
    }
  }

  // @ts-expect-error: a transport that does not exist
  new EdgeRelay({ transport: "carrier-pigeon" });
  // @ts-expect-error: a message id is a string
  await room.publish({ text: "x" }, { id: 5 });
  // @ts-expect-error: no such status
  await relay.setStatus("sleeping");
  // @ts-expect-error: presence details are entries, not strings
  room.addEventListener("presence", (e) => e.detail.members.map((p) => p.toUpperCase()));
}

function pureHelpers(): void {
  const view = new PresenceView();
  view.apply({ user: "alice", status: "online", custom: null, version: 1, last_seen: 0 });
  view.applySnapshot([]);
  const sync: boolean = view.needsSync(1, presenceDigest(view.members));
  view.applyTyping({ users: ["alice"], others: 0, version: 1, ttl_ms: 6000 }, Date.now());
  const line: string = view.typingText(Date.now(), "bob") + typingText(["a", "b"], 3);
  const debounce = new TypingDebounce();
  const signal: "start" | null = debounce.keystroke(0);
  const outbox = new Outbox();
  const { promise } = outbox.add("chat:lobby", messageId(), { text: "x" });
  promise.then((p: Position) => p.offset);
  const delay: number = backoffDelay(3) + refreshDelay(tokenExpiry("a.b.c") ?? 0, Date.now());
  const frame = decodeJson(encodeJson({ type: "ping", req: 1 }));
  const bytes: Uint8Array = payloadBytes({ text: "hi" });
  console.log(sync, line, signal, delay, frame.type, bytes, validRoomName("chat:x"), webTransportUnavailable(undefined));
  console.log(rtcIceServers({ servers: [], expires_at: 0 }).expiresAt);
}

async function tabs(): Promise<void> {
  const shared = new SharedRelay({ shareKey: "alice", token: "jwt", webSocketUrl: "ws://x/v1/ws", gatherMs: 100 });
  shared.addEventListener("status", (e) => console.log(e.detail.state, e.detail.leader));
  shared.addEventListener("notify", (e) => new Notification(e.detail.from, { body: String(e.detail.position.offset) }));
  await shared.connect();
  const room: Room = await shared.join("chat:lobby");
  const position: Position = await shared.publish("chat:lobby", { text: "hi" });
  console.log(room.members, position, shared.isLeader);
  // Sessions, topics and calls through the shared connection, as on EdgeRelay.
  const board = session<{ cards: Record<string, string> }>(shared, "doc:board");
  await board.join();
  const orders: Subscription = await shared.subscribe("orders.eu", { since: null });
  orders.addEventListener("event", (e) => console.log(e.detail.topic));
  shared.addEventListener("ring", (e) => e.detail.answer({ stream: null }));
  const call: Call = await shared.call("bob", { media: "audio" });
  console.log(call.inCall, shared.calls.length, shared.subscriptions.length, shared.fallbackReason);
  // Receipts through the leader, as on EdgeRelay.
  const counts: Unread = await shared.syncUnread();
  shared.addEventListener("unread", (e) => console.log(e.detail.total, counts.rooms.get("chat:lobby")?.mentions));
  shared.addEventListener("receipts", (e) => console.log(e.detail.read_all));
  await shared.markRead([{ room: "chat:lobby", position }]);
  const ticks: RoomReceipts = await shared.receiptStatus("chat:lobby");
  await shared.shareReads(false);
  // Presence, tokens and rooms as on EdgeRelay; media are EdgeRelay's only.
  await shared.setStatus("busy", "in a meeting");
  await shared.privacy({ hideTyping: true });
  await shared.activity();
  const rtt: number = await shared.ping();
  const expiry: number = await shared.refresh();
  shared.networkChanged();
  await shared.leave("chat:lobby");
  console.log(rtt, expiry, shared.unacked, shared.rooms.length, shared.closeReason ?? "open");
  const onEither = async (client: EdgeRelay | SharedRelay) => client.setStatus("away");
  await onEither(shared);
  shared.publishTrack("chat:lobby", {}).catch((err: unknown) => console.log(err));
  const mentioned: Position = await shared.publishWithMentions("chat:lobby", { text: "@bob" }, ["bob"], { id: "m-1" });
  console.log(ticks.members.map((m) => [m.user, m.delivered, m.read ?? "hidden"]), mentioned, shared.unread?.total);
  // @ts-expect-error: marks need a position
  await shared.markRead([{ room: "chat:lobby" }]);
  // @ts-expect-error: a status is one of four
  shared.setStatus("asleep");
}

void chat;
void tabs;
void pureHelpers;

import { useConnectionState, useMessages, usePresence, useRoom, useSession, useTopic, useTyping } from "@edgerelay/client/react";

function ChatHooks(relay: EdgeRelay): string {
  const { state, transport, retryAt } = useConnectionState(relay);
  const { room, joined, error } = useRoom(relay, "chat:lobby");
  const { messages, loadEarlier, hasEarlier } = useMessages(room, { initial: 30 });
  const members: PresenceEntry[] = usePresence(room);
  const typing = useTyping(room);
  void loadEarlier(20);
  return `${state} ${transport} ${retryAt} ${joined} ${error?.message} ${messages.length} ${hasEarlier} ${members.length} ${typing.text}`;
}
void ChatHooks;

function BoardHooks(relay: SharedRelay): string {
  const { doc, version, members, cursors, joined, patch, error } = useSession<{ cards: string[] }>(relay, "doc:board");
  void patch([{ op: "add", path: "/cards/-", value: "x" }]);
  const { events, subscription } = useTopic<{ text: string }>(relay, "news.*", { filter: "lang = en", limit: 20 });
  // @ts-expect-error: a patch is a list of operations
  void patch({ op: "add" });
  return `${doc?.cards.length} ${version} ${members[0]?.present} ${Object.keys(cursors)} ${joined} ${error} ${events[0]?.data.text} ${subscription?.pattern}`;
}
void BoardHooks;

// Yjs: a provider on a Y.Doc; `ready`, `version`, events, `destroy`.
async function yjsProvider(relay: EdgeRelay) {
  const doc = new Y.Doc();
  const provider = new YjsProvider(relay, "notes:1", doc, { create: { defaultRole: "viewer" } });
  await provider.ready;
  const version: number | null = provider.version;
  provider.addEventListener("error", ({ detail }) => console.log(detail.message, version));
  await provider.destroy();
}
void yjsProvider;

// Notifications: the feed, reads, preferences, devices, and their events.
async function bell(relay: EdgeRelay) {
  const n = notifications(relay);
  const page = await n.feed({ limit: 20 });
  const first: Notification | undefined = page.notifications[0];
  const unread: number = await n.markRead(first?.id ?? 0, { upTo: true });
  await n.preferences({ mutes: [{ room: "chat:x", until: null }], quiet_hours: null, min_priority: "high", skip_types: [] });
  await n.registerDevice("phone-1", "apns", "token");
  await n.setBackground(true);
  n.addEventListener("new", ({ detail }) => console.log(detail.notification.title, detail.unread, unread, page.next));
  // @ts-expect-error: only fcm and apns
  await n.registerDevice("phone-1", "sms", "token");
}
void bell;

