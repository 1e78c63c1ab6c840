// React bindings (`@edgerelay/client/react`, React 18 or later as a peer dependency): hooks over
// an `EdgeRelay` (or `SharedRelay`) the app creates once and passes down. They only subscribe to
// the SDK's events; the SDK does the joining, resuming and retrying, so a component sees the
// same room across reconnects.
// - Rooms, sessions and topics are joined (subscribed) by the first component that uses them and
//   left when the last one unmounts (counted per client), so mounting twice (StrictMode) joins
//   once.
// - Every hook unsubscribes on unmount and when its client, room, session or pattern changes.

import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react";
import { session as sessionOf } from "./sessions.js";

// Client → key (a room name; "session <id>", "topic <pattern>": a space is in no room name) →
// how many mounted hooks hold it.
const holders = new WeakMap();
// Rooms whose first page `useMessages` asked for already (StrictMode mounts effects twice).
const firstPage = new WeakSet();
// Sessions being joined by a hook (StrictMode mounts effects twice: one join).
const joining = new WeakMap();

/** Counts a hook holding `key` of `client`; the returned release runs `end()` after the last. */
function hold(client, key, end) {
  let held = holders.get(client);
  if (!held) holders.set(client, (held = new Map()));
  held.set(key, (held.get(key) ?? 0) + 1);
  return () => {
    const left = held.get(key) - 1;
    if (left > 0) return held.set(key, left);
    held.delete(key);
    // Wait a tick: a StrictMode remount (or a quick re-render with the same key) takes it again.
    setTimeout(() => {
      if (!held.has(key) && client.state === "open") Promise.resolve(end()).catch(() => {});
    }, 0);
    return undefined;
  };
}

/** A value of `target` that changes on `types` events (one or a list): `read()` taken at each. */
function useEventValue(target, types, read) {
  const cache = useRef({ target: null, value: undefined });
  const key = [types].flat().join(" ");
  const subscribe = useCallback(
    (notify) => {
      if (!target) return () => {};
      const on = () => {
        cache.current = { target, value: read(target) };
        notify();
      };
      for (const type of key.split(" ")) target.addEventListener(type, on);
      return () => {
        for (const type of key.split(" ")) target.removeEventListener(type, on);
      };
    },
    // `read` is a stable getter per hook.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [target, key],
  );
  const snapshot = () => {
    if (cache.current.target !== target) cache.current = { target, value: target ? read(target) : undefined };
    return cache.current.value;
  };
  return useSyncExternalStore(subscribe, snapshot, snapshot);
}

const readStatus = (client) => ({
  state: client.state,
  transport: client.transport,
  retryAt: client.retryAt ?? null,
  fallbackReason: client.fallbackReason ?? null,
});

/** The connection's state: `{state, transport, retryAt, fallbackReason}`, re-rendered on change. */
export function useConnectionState(client) {
  return useEventValue(client, "status", readStatus);
}

/**
 * Joins `name` while mounted (from the first component on) and returns `{room, joined, error}`;
 * `room` is the SDK's `Room` (its methods: `publish`, `loadEarlier`, `keystroke`...).
 */
export function useRoom(client, name) {
  const room = client && name ? client.room(name) : null;
  const [state, setState] = useState({ joined: false, error: null });
  useEffect(() => {
    if (!room) return undefined;
    let live = true;
    const release = hold(client, name, () => client.leave(name));
    const onJoined = () => live && setState({ joined: true, error: null });
    room.addEventListener("joined", onJoined);
    client.join(name).then(onJoined, (error) => live && setState({ joined: false, error }));
    return () => {
      live = false;
      room.removeEventListener("joined", onJoined);
      release();
    };
  }, [client, name, room]);
  return { room, ...state };
}

/**
 * The room's messages in offset order, live and loaded with `loadEarlier` (the latest `initial`
 * page is loaded once joined): `{messages, loadEarlier, hasEarlier}`.
 */
export function useMessages(room, { initial = 30 } = {}) {
  const [messages, setMessages] = useState([]);
  const [hasEarlier, setHasEarlier] = useState(null);
  useEffect(() => {
    if (!room) return undefined;
    setMessages([]);
    setHasEarlier(null);
    const onMessage = ({ detail }) => setMessages((list) => [...list, detail]);
    const onHistory = ({ detail }) => {
      setMessages((list) => [...detail.messages, ...list]);
      setHasEarlier(detail.hasEarlier);
    };
    const onJoinedFirst = () => {
      if (initial > 0 && !firstPage.has(room)) {
        firstPage.add(room);
        room.loadEarlier(initial).catch(() => firstPage.delete(room));
      }
    };
    room.addEventListener("message", onMessage);
    room.addEventListener("history", onHistory);
    room.addEventListener("joined", onJoinedFirst, { once: true });
    if (room.joined) onJoinedFirst();
    return () => {
      room.removeEventListener("message", onMessage);
      room.removeEventListener("history", onHistory);
      room.removeEventListener("joined", onJoinedFirst);
    };
  }, [room, initial]);
  const loadEarlier = useCallback((limit = initial || 30) => room?.loadEarlier(limit), [room, initial]);
  return { messages, loadEarlier, hasEarlier };
}

const readMembers = (room) => room.members;
const readTyping = (room) => room.typing;

/** The room's present members (`[{user, status, custom, ...}]`). */
export function usePresence(room) {
  return useEventValue(room, "presence", readMembers) ?? [];
}

/** Who types in the room, without this user: `{users, total, text}`. */
export function useTyping(room) {
  return useEventValue(room, "typing", readTyping) ?? { users: [], total: 0, text: "" };
}

const EMPTY_SESSION = { doc: null, version: null, joined: false, role: null, status: null, members: [], cursors: {} };
const readSession = (s) => ({
  doc: s.doc,
  version: s.version,
  joined: s.joined,
  role: s.myRole,
  status: s.status,
  members: [...s.members.values()].sort((a, b) => (a.user < b.user ? -1 : 1)),
  cursors: Object.fromEntries(s.cursors),
});

/**
 * Joins collaborative session `id` (created already) while mounted, and returns its state,
 * re-rendered on every change: `{session, doc, version, joined, role, status, members, cursors,
 * error, patch}`. `members`: `[{user, role, present}]`; `cursors`: user → data; `patch(ops,
 * options)` is `session.patch` (the document changes when the relay applied it). The session
 * is left after the last component using it unmounts; the SDK rejoins it after reconnects.
 */
export function useSession(client, id) {
  const session = client && id ? sessionOf(client, id) : null;
  const [error, setError] = useState(null);
  useEffect(() => {
    if (!session) return undefined;
    let live = true;
    setError(null);
    const release = hold(client, `session ${id}`, () => session.leave());
    if (!session.joined && !joining.has(session)) {
      const join = session.join().finally(() => joining.delete(session));
      joining.set(session, join);
    }
    joining.get(session)?.catch((err) => live && setError(err));
    return () => {
      live = false;
      release();
    };
  }, [client, id, session]);
  const view = useEventValue(session, ["joined", "patched", "member", "cursor", "closed", "ended"], readSession);
  const patch = useCallback((operations, options) => session.patch(operations, options), [session]);
  return { session, ...(view ?? EMPTY_SESSION), error, patch };
}

/**
 * Subscribes to a topic pattern while mounted (`filter`: on the events' tags) and returns
 * `{subscription, events, error}`: the last `limit` events (50) since the component mounted,
 * oldest first. Unsubscribed after the last component using the pattern unmounts.
 */
export function useTopic(client, pattern, { filter = null, limit = 50 } = {}) {
  const [state, setState] = useState({ subscription: null, events: [], error: null });
  useEffect(() => {
    if (!client || !pattern) return undefined;
    let live = true;
    let subscription = null;
    setState({ subscription: null, events: [], error: null });
    const onEvent = ({ detail }) => setState((s) => ({ ...s, events: [...s.events, detail].slice(-limit) }));
    const release = hold(client, `topic ${pattern}`, () => client.subscriptions.find((s) => s.pattern === pattern)?.unsubscribe());
    client.subscribe(pattern, { filter }).then(
      (sub) => {
        if (!live) return;
        subscription = sub;
        sub.addEventListener("event", onEvent);
        setState((s) => ({ ...s, subscription: sub, error: null }));
      },
      (error) => live && setState((s) => ({ ...s, error })),
    );
    return () => {
      live = false;
      subscription?.removeEventListener("event", onEvent);
      release();
    };
  }, [client, pattern, filter, limit]);
  return state;
}
