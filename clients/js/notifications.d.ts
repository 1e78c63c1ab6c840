// Types of @edgerelay/client/notifications (src/notifications.js), checked by test/types-check.ts.
import type { Payload, RoomClient } from "./index.js";

export type Priority = "low" | "normal" | "high" | "urgent";

export interface Notification<T = Payload> {
  /** Per user, increasing: newer notifications have higher ids. */
  id: number;
  /** Unix ms when the relay took it. */
  time: number;
  type: string;
  priority: Priority;
  title: string;
  body: string;
  data: T;
  room: string | null;
  read: boolean;
  /** The user's preferences held it back from pushes; it still counts. */
  silent: boolean;
}

export interface FeedPage {
  notifications: Notification[];
  unread: number;
  /** The `before` of the next (older) page; null at the end. */
  next: number | null;
}

export interface NotifyPrefs {
  mutes: { room: string; until: number | null }[];
  /** `HH:MM` wall-clock times in an IANA time zone. */
  quiet_hours: { start: string; end: string; tz: string } | null;
  min_priority: Priority;
  skip_types: string[];
}

export interface NotificationsEvents {
  new: { notification: Notification; unread: number };
  read: { id: number; up_to: boolean; unread: number };
  prefs: NotifyPrefs;
  /** The first page again after a reconnect. */
  page: FeedPage;
}

export class Notifications extends EventTarget {
  /** The feed's unread count, as last told by the relay. */
  unread: number;
  prefs: NotifyPrefs | null;
  feed(options?: { before?: number | null; limit?: number }): Promise<FeedPage>;
  markRead(id: number, options?: { upTo?: boolean }): Promise<number>;
  preferences(set?: NotifyPrefs | null): Promise<NotifyPrefs>;
  registerDevice(device: string, platform: "fcm" | "apns", token: string): Promise<void>;
  unregisterDevice(device: string): Promise<void>;
  setBackground(background: boolean): Promise<void>;
  addEventListener<K extends keyof NotificationsEvents>(
    type: K,
    listener: (event: CustomEvent<NotificationsEvents[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** The `Notifications` of `relay` (one per client; nothing is sent until used). */
export function notifications(relay: RoomClient): Notifications;
