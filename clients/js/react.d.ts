// Types of @edgerelay/client/react (src/react.js), checked by test/types-check.ts.
import type { ConnectionState, Message, PresenceEntry, Room, RoomClient, TransportKind, TypingState } from "./index.js";

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
