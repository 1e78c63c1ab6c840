// Yjs through the relay (`@edgerelay/client/yjs`, docs/sessions.md "Yjs sessions") with the npm
// `yjs` and `y-protocols` packages: two clients type into one Y.Text at once and converge, a third
// joins late and gets the whole text, awareness reaches the others, and a viewer's edit is
// refused with `read_only`. Run: node --test clients/js/test/.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as Y from "yjs";
import { Awareness } from "y-protocols/awareness";
import { YjsProvider } from "../src/yjs.js";
import { Cuttable, nextEvent, startRelay, until, wsClient } from "./relay.mjs";

const EDIT = ["--session", "notes:*"];
const READ = ["--session-read", "notes:*"];

async function peer(relay, user, args, create = false, options = {}) {
  const client = wsClient(relay, async () => relay.cliToken(user, args), options);
  await client.connect();
  const doc = new Y.Doc();
  const awareness = new Awareness(doc);
  const provider = new YjsProvider(client, "notes:1", doc, { awareness, create });
  await provider.ready;
  return { client, doc, awareness, provider, text: doc.getText("t") };
}

test("two Yjs clients edit a text at once and converge; a late joiner gets it all; a viewer cannot edit", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const peers = [];
  try {
    const alice = await peer(relay, "alice", EDIT, true);
    const bob = await peer(relay, "bob", EDIT);
    peers.push(alice, bob);

    // Both type at once: every keystroke a transaction of its own, as an editor makes them.
    const typing = (p, prefix, front) =>
      (async () => {
        for (let i = 0; i < 20; i++) {
          p.text.insert(front ? 0 : p.text.length, `${prefix}${i} `);
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      })();
    await Promise.all([typing(alice, "a", true), typing(bob, "b", false)]);
    const complete = (p) => [...Array(20).keys()].every((i) => p.text.toString().includes(`a${i} `) && p.text.toString().includes(`b${i} `));
    await until(() => complete(alice) && complete(bob), "both have every edit");
    await until(() => alice.text.toString() === bob.text.toString(), "both hold the same text");
    const text = alice.text.toString();
    assert.equal(text.trim().split(" ").length, 40, "every word once");

    // Awareness: alice's state reaches bob.
    const seen = new Promise((resolve) => bob.awareness.on("change", () => {
      const states = [...bob.awareness.getStates().values()];
      if (states.some((s) => s.user?.name === "alice")) resolve(states);
    }));
    alice.awareness.setLocalStateField("user", { name: "alice" });
    await seen;

    // Carol joins late as a viewer: the whole text; her edit is refused.
    const carol = await peer(relay, "carol", READ);
    peers.push(carol);
    assert.equal(carol.text.toString(), text, "the late joiner gets the full state");
    const refused = nextEvent(carol.provider, "error");
    carol.text.insert(0, "sneaky ");
    const err = await refused;
    assert.equal(err.code, 174, "read_only");
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(alice.text.toString(), text, "the others never saw it");
  } finally {
    for (const p of peers) {
      await p.provider.destroy();
      p.awareness.destroy(); // Its outdated-state timer would keep Node running.
      p.client.close();
    }
    await relay.stop();
  }
});

test("a Yjs client that lost its connection sends what it typed meanwhile and gets what it missed", { timeout: 30_000 }, async () => {
  const relay = await startRelay();
  const peers = [];
  try {
    const alice = await peer(relay, "alice", EDIT, true);
    const bob = await peer(relay, "bob", EDIT, false, { WebSocket: Cuttable, backoff: { baseMs: 300, capMs: 300 } });
    peers.push(alice, bob);
    alice.text.insert(0, "one ");
    await until(() => bob.text.toString() === "one ", "bob has the first word");

    // Bob's connection drops; both type while he is away.
    const reconnecting = nextEvent(bob.client, "status", (s) => s.state === "reconnecting");
    Cuttable.current.terminate();
    await reconnecting;
    alice.text.insert(alice.text.length, "two ");
    bob.text.insert(0, "zero ");
    const synced = nextEvent(bob.provider, "synced");
    await synced;
    await until(() => alice.text.toString() === bob.text.toString() && alice.text.toString().includes("zero"), "both converge");
    assert.deepEqual(alice.text.toString().split(" ").filter(Boolean).sort(), ["one", "two", "zero"]);
  } finally {
    for (const p of peers) {
      await p.provider.destroy();
      p.awareness.destroy();
      p.client.close();
    }
    await relay.stop();
  }
});
