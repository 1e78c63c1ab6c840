// Types of @edgerelay/client/react (src/react.js), checked by test/types-check.ts.
import type { ConnectionState, Message, Payload, PresenceEntry, Room, RoomClient, Subscription, TopicEvent, TransportKind, TypingState } from "./index.js";
import type { PatchOperation, Session, SessionMember, SessionRole } from "./sessions.js";

type Client = RoomClient;

export function useConnectionState(client: Client | null): {
  state: ConnectionState;
  transport: TransportKind | null;
  retryAt: number | null;
  fallbackReason: string | null;
};
export function useRoom(client: Client | null, name: string | null): { room: Room | null; joined: boolean; error: Error | null };
export function useMessages(
  room: Room | null,
  options?: { initial?: number },
): { messages: Message[]; loadEarlier: (limit?: number) => Promise<Message[]> | undefined; hasEarlier: boolean | null };
export function usePresence(room: Room | null): PresenceEntry[];
export function useTyping(room: Room | null): TypingState;

/** What `useSession` returns: the session's state, re-rendered on every change. */
export interface SessionState<T = any> {
  session: Session<T> | null;
  doc: T | null;
  version: number | null;
  joined: boolean;
  role: SessionRole | null;
  status: "open" | "closed" | null;
  members: SessionMember[];
  /** User id → the user's last cursor. */
  cursors: Record<string, unknown>;
  error: Error | null;
  patch(operations: PatchOperation[], options?: { base?: number; id?: string }): Promise<{ version: number; rebased: boolean }>;
}
/** Joins session `id` (created already) while mounted; left after the last component unmounts. */
export function useSession<T = any>(client: Client | null, id: string | null): SessionState<T>;
/** Subscribes to a topic pattern while mounted: the last `limit` (50) events, oldest first. */
export function useTopic<T = Payload>(
  client: Client | null,
  pattern: string | null,
  options?: { filter?: string | null; limit?: number },
): { subscription: Subscription | null; events: TopicEvent<T>[]; error: Error | null };
