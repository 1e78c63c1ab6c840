// React bindings (`@edgerelay/client/react`, React 18 or later as a peer dependency): hooks over
// an `EdgeRelay` (or `SharedRelay`) the app creates once and passes down. They only subscribe to
// the SDK's events; the SDK does the joining, resuming and retrying, so a component sees the
// same room across reconnects.
// - Rooms are joined by the first component that uses them and left when the last one
//   unmounts (counted per client and room), so mounting twice (StrictMode) joins once.
// - Every hook unsubscribes on unmount and when its client or room changes.

import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react";

// Client → room name → how many mounted `useRoom`s hold it.
const holders = new WeakMap();
// Rooms whose first page `useMessages` asked for already (StrictMode mounts effects twice).
const firstPage = new WeakSet();

function hold(client, name) {
  let rooms = holders.get(client);
  if (!rooms) holders.set(client, (rooms = new Map()));
  rooms.set(name, (rooms.get(name) ?? 0) + 1);
  return () => {
    const left = rooms.get(name) - 1;
    if (left > 0) return rooms.set(name, left);
    rooms.delete(name);
    // Wait a tick: a StrictMode remount (or a quick re-render with the same room) takes it again.
    setTimeout(() => {
      if (!rooms.has(name) && client.state === "open") client.leave(name).catch(() => {});
    }, 0);
    return undefined;
  };
}

/** A value of `target` that changes on `type` events: `read()` taken at each one. */
function useEventValue(target, type, read) {
  const cache = useRef({ target: null, value: undefined });
  const subscribe = useCallback(
    (notify) => {
      if (!target) return () => {};
      const on = () => {
        cache.current = { target, value: read(target) };
        notify();
      };
      target.addEventListener(type, on);
      return () => target.removeEventListener(type, on);
    },
    // `read` is a stable getter per hook.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [target, type],
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
    const release = hold(client, name);
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
