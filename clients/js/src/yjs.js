// A Yjs provider on edgerelay (docs/sessions.md "Yjs sessions"; wire: docs/protocol.md "Yjs
// sessions"): keeps a `Y.Doc` (and optionally a y-protocols `Awareness`) in sync with a `yjs`
// session, so off-the-shelf Yjs editor bindings (y-prosemirror, y-codemirror, y-quill...) work
// through the relay with its tokens, roles, persistence and catch-up. A separate entry point
// (`@edgerelay/client/yjs`) because it imports `yjs`, `y-protocols` and `lib0` (peer
// dependencies an app that uses Yjs already has).
//
// Why it is shaped like this: it is y-websocket's provider with the socket replaced by `yjs`
// session frames. After every (re)join it sends sync step 1 and applies the relay's step 2, and
// answers the relay's step 1 with what the relay misses, so edits made offline are sent when the
// connection comes back. Local updates go out as they happen; the relay answers `applied` once
// it stored them.

import * as decoding from "lib0/decoding";
import * as encoding from "lib0/encoding";
import * as awarenessProtocol from "y-protocols/awareness";
import * as syncProtocol from "y-protocols/sync";

import { binary, payloadBytes } from "./codec.js";

const MESSAGE_SYNC = 0;
const MESSAGE_AWARENESS = 1;

/**
 * Syncs `doc` with the `yjs` session `id` of `relay`. Options: `awareness` (a y-protocols
 * `Awareness` of `doc` to share), `create` (create the session when it does not exist: `true`
 * or `{maxBytes, defaultRole}`). Events: `synced` (after each (re)join's sync step 2),
 * `error` (an update or rejoin refused: `RelayError`, e.g. `read_only` for a viewer's edit).
 */
export class YjsProvider extends EventTarget {
  #relay;
  #onFrame;
  #onStatus;
  #onUpdate;
  #onAwareness;
  #destroyed = false;

  constructor(relay, id, doc, { awareness = null, create = false } = {}) {
    super();
    this.#relay = relay;
    this.id = id;
    this.doc = doc;
    this.awareness = awareness;
    /** Synced with the relay on the current connection. */
    this.synced = false;
    /** The highest version the relay acknowledged for this provider's updates. */
    this.version = null;
    this.#onFrame = (e) => {
      const frame = e.detail;
      if (frame.type === "session" && frame.session === id && !frame.req && frame.event?.yjs) {
        this.#receive(payloadBytes(frame.event.yjs.message));
      }
    };
    this.#onStatus = (e) => {
      if (e.detail.state === "open") this.#join(false).catch((err) => this.#fail(err));
      else this.synced = false;
    };
    this.#onUpdate = (update, origin) => {
      if (origin === this) return;
      const encoder = encoding.createEncoder();
      encoding.writeVarUint(encoder, MESSAGE_SYNC);
      syncProtocol.writeUpdate(encoder, update);
      this.#send(encoding.toUint8Array(encoder));
    };
    this.#onAwareness = ({ added, updated, removed }, origin) => {
      if (origin === this) return;
      const changed = added.concat(updated, removed);
      const encoder = encoding.createEncoder();
      encoding.writeVarUint(encoder, MESSAGE_AWARENESS);
      encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed));
      this.#send(encoding.toUint8Array(encoder), false);
    };
    relay.addEventListener("frame", this.#onFrame);
    relay.addEventListener("status", this.#onStatus);
    doc.on("update", this.#onUpdate);
    awareness?.on("update", this.#onAwareness);
    /** Resolves once joined (or created) and synced the first time. */
    this.ready = this.#join(create);
  }

  /** Stops syncing: leaves the session (the others see this awareness go) and unhooks the doc. */
  async destroy() {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#relay.removeEventListener("frame", this.#onFrame);
    this.#relay.removeEventListener("status", this.#onStatus);
    this.doc.off("update", this.#onUpdate);
    this.awareness?.off("update", this.#onAwareness);
    if (this.#relay.state === "open") await this.#action({ leave: {} }).catch(() => {});
  }

  async #join(create) {
    if (this.#destroyed) return;
    this.synced = false;
    try {
      await this.#action({ join: { version: null } });
    } catch (err) {
      if (!create || err?.code !== 170) throw err; // 170: unknown_session.
      const options = create === true ? {} : create;
      try {
        await this.#action({ create_yjs: { max_bytes: options.maxBytes ?? null, default_role: options.defaultRole ?? "editor" } });
      } catch (again) {
        if (again?.code !== 171) throw again; // 171: session_exists (someone else made it).
        await this.#action({ join: { version: null } });
      }
    }
    // Sync step 1: the relay answers with step 2 (what this doc misses).
    const encoder = encoding.createEncoder();
    encoding.writeVarUint(encoder, MESSAGE_SYNC);
    syncProtocol.writeSyncStep1(encoder, this.doc);
    const answer = await this.#action({ yjs: { message: binary(encoding.toUint8Array(encoder)) } });
    if (answer.yjs) this.#receive(payloadBytes(answer.yjs.message));
    if (this.awareness?.getLocalState() != null) {
      this.#onAwareness({ added: [this.doc.clientID], updated: [], removed: [] }, null);
    }
    this.synced = true;
    this.dispatchEvent(new CustomEvent("synced", { detail: { synced: true } }));
  }

  #action(action) {
    return this.#relay
      .request({ type: "session", session: this.id, action })
      .then((frame) => frame.event ?? {});
  }

  /** Sends one message: sync messages as requests (answered `applied`), awareness without. */
  #send(bytes, answered = true) {
    if (this.#destroyed || this.#relay.state !== "open") return; // The next sync sends it.
    const frame = { type: "session", session: this.id, action: { yjs: { message: binary(bytes) } } };
    if (!answered) {
      this.#relay.send({ ...frame, req: 0 }).catch(() => {});
      return;
    }
    this.#relay.request(frame).then(
      (answer) => {
        const version = answer.event?.applied?.version;
        if (typeof version === "number" && (this.version === null || version > this.version)) this.version = version;
      },
      (err) => this.#fail(err),
    );
  }

  /** A message from the relay: sync (applied to the doc; its step 1 answered) or awareness. */
  #receive(bytes) {
    const decoder = decoding.createDecoder(bytes);
    const type = decoding.readVarUint(decoder);
    if (type === MESSAGE_SYNC) {
      const encoder = encoding.createEncoder();
      encoding.writeVarUint(encoder, MESSAGE_SYNC);
      syncProtocol.readSyncMessage(decoder, encoder, this.doc, this);
      // Only a step 1 writes an answer (step 2: what the relay misses).
      if (encoding.length(encoder) > 1) this.#send(encoding.toUint8Array(encoder));
    } else if (type === MESSAGE_AWARENESS && this.awareness) {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this);
    }
  }

  #fail(err) {
    if (err?.code === "not_connected") return; // The next connection syncs again.
    this.dispatchEvent(new CustomEvent("error", { detail: err }));
  }
}
