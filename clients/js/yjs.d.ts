// Types of @edgerelay/client/yjs (src/yjs.js), checked by test/types-check.ts.
import type { Doc } from "yjs";
import type { Awareness } from "y-protocols/awareness";
import type { EdgeRelay, RelayError } from "./index.js";

export interface YjsProviderEvents {
  /** After each (re)join's sync: the doc holds everything the relay has. */
  synced: { synced: true };
  /** An update or rejoin refused (e.g. `read_only`, code 174, for a viewer's edit). */
  error: RelayError | Error;
}

/** Keeps a Y.Doc (and an Awareness) in sync with a `yjs` session of the relay. */
export class YjsProvider extends EventTarget {
  constructor(
    relay: EdgeRelay,
    id: string,
    doc: Doc,
    options?: { awareness?: Awareness | null; create?: boolean | { maxBytes?: number | null; defaultRole?: "editor" | "viewer" } },
  );
  readonly id: string;
  readonly doc: Doc;
  readonly awareness: Awareness | null;
  /** Synced with the relay on the current connection. */
  readonly synced: boolean;
  /** The highest version the relay acknowledged (stored) for this provider's updates. */
  readonly version: number | null;
  /** Resolves once joined (or created) and synced the first time. */
  readonly ready: Promise<void>;
  addEventListener<K extends keyof YjsProviderEvents>(
    type: K,
    listener: (event: CustomEvent<YjsProviderEvents[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  /** Leaves the session (the others see this awareness go) and unhooks the doc. */
  destroy(): Promise<void>;
}
