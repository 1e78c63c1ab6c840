// Types of @edgerelay/client/sessions (src/sessions.js), checked by test/types-check.ts.
import type { Payload, RoomClient } from "./index.js";

export type SessionRole = "viewer" | "editor" | "owner";

/** One RFC 6902 operation. */
export type PatchOperation =
  | { op: "add" | "replace" | "test"; path: string; value: unknown }
  | { op: "remove"; path: string }
  | { op: "move" | "copy"; from: string; path: string };

/** A patch as the relay applied it. */
export interface SessionPatch {
  version: number;
  user: string;
  id: string;
  patch: PatchOperation[];
  /** Unix ms when the relay applied it. */
  time: number;
}

export interface SessionMember {
  user: string;
  role: SessionRole;
  /** A device of theirs is joined. */
  present: boolean;
}

export interface SessionEvents<T> {
  /** After each (re)join: `doc` and `version` are current (a catch-up came with it). */
  joined: { version: number; role: SessionRole; status: "open" | "closed" };
  patched: { patch: SessionPatch; doc: T; version: number };
  member: SessionMember;
  cursor: { user: string; data: Payload | null };
  closed: { by: string };
  ended: { reason: "destroyed" | "expired"; by: string | null };
  /** A rejoin after a reconnect was refused. */
  error: Error;
}

declare class TypedSessionTarget<T> extends EventTarget {
  addEventListener<K extends keyof SessionEvents<T>>(
    type: K,
    listener: (event: CustomEvent<SessionEvents<T>[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof SessionEvents<T>>(
    type: K,
    listener: (event: CustomEvent<SessionEvents<T>[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export class Session<T = any> extends TypedSessionTarget<T> {
  constructor(relay: RoomClient, id: string);
  readonly id: string;
  readonly doc: T | null;
  readonly version: number | null;
  /** This device's role (the session's role for the user, bounded by the token); follows the owner's role changes. */
  readonly myRole: SessionRole | null;
  readonly status: "open" | "closed" | null;
  readonly joined: boolean;
  readonly members: Map<string, SessionMember>;
  readonly cursors: Map<string, Payload>;
  create(doc: T, options?: { maxBytes?: number | null; defaultRole?: "editor" | "viewer"; schema?: object | null }): Promise<this>;
  join(): Promise<this>;
  leave(): Promise<void>;
  patch(operations: PatchOperation[], options?: { base?: number; id?: string }): Promise<{ version: number; rebased: boolean }>;
  role(user: string, role: SessionRole): Promise<unknown>;
  close(): Promise<unknown>;
  destroy(): Promise<unknown>;
  cursor(data: Payload): Promise<void>;
}

export class SessionConflict extends Error {
  readonly code: "conflict";
  readonly base: number;
  /** The session's version when the patch was refused. */
  readonly version: number;
  /** The versions the patch did not see (`base + 1 ..= version`). */
  readonly missed: number[];
  /** Those of them that touched the patch's paths. */
  readonly conflicting: number[];
}

export class PatchError extends Error {}

/** The session `id` of `relay` (one object per client and id; nothing is sent). */
export function session<T = any>(relay: RoomClient, id: string): Session<T>;
/** `doc` with an RFC 6902 patch applied (a new value); throws `PatchError`. */
export function applyPatch<T = unknown>(doc: T, patch: PatchOperation[]): T;
