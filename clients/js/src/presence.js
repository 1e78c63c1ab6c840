// A client's view of one room's presence and typing, without IO (`nowMs` passed in): what the
// relay's `presence`, `presence_snapshot`, `presence_refresh` and `typing` frames add up to in
// whatever order and with whatever losses they arrive (docs/protocol.md, "Presence and typing").
// The same rules as the Rust client's `RoomPresence`:
// - an update applies only with a version above the one held for that user, and versions of
//   users who went offline are kept, so a late datagram never rolls anything back;
// - a snapshot replaces the present set (an entry held at a higher version wins);
// - a refresh whose count or digest differs from the view means something was lost: ask for a
//   snapshot (`needsSync`); digest 0 with a count above 0 is a quiet room's refresh: members
//   are counted (`count`), not listed;
// - a `presence_batch` is its entries applied one by one;
// - a typing view replaces the previous one unless older, and shows until `ttl_ms` after it came.

const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const U64 = (1n << 64n) - 1n;
const DIGEST_MASK = (1n << 53n) - 1n;
const utf8 = new TextEncoder();

function entryHash({ user, status, custom }) {
  let hash = FNV_OFFSET;
  for (const byte of utf8.encode(`${user}\0${status}\0${custom ?? ""}`)) {
    hash = ((hash ^ BigInt(byte)) * FNV_PRIME) & U64;
  }
  return hash;
}

/** The digest `presence_refresh` carries for these entries (a number below 2^53). */
export function presenceDigest(entries) {
  let sum = 0n;
  for (const entry of entries) sum = (sum + entryHash(entry)) & U64;
  return Number(sum & DIGEST_MASK);
}

/** "Alice is typing…", "Alice and Bob are typing…", "Alice, Bob and 2 others are typing…". */
export function typingText(names, total = names.length) {
  total = Math.max(total, names.length);
  const [a, b, c] = names;
  if (names.length === 0) return "";
  if (total === 1) return `${a} is typing…`;
  if (total === 2 && b !== undefined) return `${a} and ${b} are typing…`;
  if (total === 3 && c !== undefined) return `${a}, ${b} and ${c} are typing…`;
  const shown = names.slice(0, 2);
  const rest = total - shown.length;
  return `${shown.join(", ")} and ${rest} ${rest === 1 ? "other is" : "others are"} typing…`;
}

export class PresenceView {
  #present = new Map();
  #versions = new Map();
  #count = 0;
  #typing = { users: [], others: 0, version: 0, untilMs: 0 };

  /** Applies a `presence` entry; false when stale. */
  apply(entry) {
    if (!entry || typeof entry.user !== "string") return false;
    const version = Number(entry.version) || 0;
    if (version <= (this.#versions.get(entry.user) ?? 0)) return false;
    this.#versions.set(entry.user, version);
    if (entry.status === "offline") this.#present.delete(entry.user);
    else this.#present.set(entry.user, entry);
    return true;
  }

  /** Applies a `presence_snapshot`'s users. */
  applySnapshot(users) {
    const present = new Map();
    for (const entry of Array.isArray(users) ? users : []) {
      if (!entry || typeof entry.user !== "string") continue;
      const held = this.#present.get(entry.user);
      const version = Number(entry.version) || 0;
      this.#versions.set(entry.user, Math.max(this.#versions.get(entry.user) ?? 0, version));
      present.set(entry.user, held && held.version > version ? held : entry);
    }
    this.#present = present;
  }

  /** Whether a `presence_refresh` disagrees with this view. A quiet room's refresh (digest 0
   * with members) lists nobody: only its count is kept. */
  needsSync(count, digest) {
    if (digest === 0 && count > 0) return this.#present.size > 0;
    return this.#present.size !== count || presenceDigest(this.#present.values()) !== digest;
  }

  /** Applies a `presence_refresh`: keeps its count; true when the view needs a snapshot. */
  applyRefresh(count, digest) {
    this.#count = Number(count) || 0;
    return this.needsSync(count, digest);
  }

  /** How many members the room has: the latest refresh's count, or how many the view lists
   * (quiet rooms list nobody but are counted). */
  get count() {
    return Math.max(this.#count, this.#present.size);
  }

  /** Present members, sorted by user id. */
  get members() {
    return [...this.#present.values()].sort((x, y) => (x.user < y.user ? -1 : x.user > y.user ? 1 : 0));
  }

  /** A user's status here (`offline` when not present). */
  status(user) {
    return this.#present.get(user)?.status ?? "offline";
  }

  /** Applies a `typing` view received at `nowMs`; false when older than the one held. */
  applyTyping({ users, others, version, ttl_ms }, nowMs) {
    if (!(version >= this.#typing.version)) return false;
    const names = Array.isArray(users) ? users.filter((u) => typeof u === "string") : [];
    this.#typing = { users: names, others: Number(others) || 0, version, untilMs: nowMs + (Number(ttl_ms) || 0) };
    return true;
  }

  /** Who types at `nowMs` (leaving out `me`): the names the relay listed, the total, and when
   * the view expires (`untilMs`, null when nobody types). */
  typing(nowMs, me = null) {
    const { users, others, untilMs } = this.#typing;
    if (nowMs >= untilMs) return { users: [], total: 0, untilMs: null };
    const names = users.filter((u) => u !== me);
    return { users: names, total: names.length + others, untilMs };
  }

  /** The line to show at `nowMs`, leaving out `me`. */
  typingText(nowMs, me = null) {
    const { users, total } = this.typing(nowMs, me);
    return typingText(users, total);
  }
}
