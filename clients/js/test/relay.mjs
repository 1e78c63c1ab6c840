// A real relay for the SDK's Node tests: the relay binary (target/debug/edgerelay, or
// EDGERELAY_BIN) on free loopback ports with a data directory of its own, stopped by `stop()`.
// Tokens come from its dev token endpoint (POST /v1/dev/token), as the demo page gets them.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { EdgeRelay } from "../src/index.js";

const BIN = process.env.EDGERELAY_BIN ?? fileURLToPath(new URL("../../../target/debug/edgerelay", import.meta.url));

async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts a relay; `env` adds `EDGERELAY_*` settings. */
export async function startRelay(env = {}) {
  if (!existsSync(BIN)) throw new Error(`no relay binary at ${BIN}: run cargo build (or set EDGERELAY_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "edgerelay-sdk-"));
  const tcp = await freePort();
  const udp = await freePort();
  // EDGERELAY_BIN is this helper's, not a relay setting (the relay refuses unknown EDGERELAY_* keys).
  const { EDGERELAY_BIN: _bin, ...inherited } = process.env;
  const child = spawn(BIN, ["serve"], {
    stdio: ["ignore", "ignore", process.env.TEST_RELAY_LOGS ? "inherit" : "ignore"],
    env: {
      ...inherited,
      EDGERELAY_DATA_DIR: dir,
      EDGERELAY_LISTEN__UDP: `127.0.0.1:${udp}`,
      EDGERELAY_LISTEN__TCP: `127.0.0.1:${tcp}`,
      ...env,
    },
  });
  const base = `http://127.0.0.1:${tcp}`;
  const relay = {
    base,
    webSocketUrl: `ws://127.0.0.1:${tcp}/v1/ws`,
    /** A dev token: `{token, user, tenant, expires_at}`. */
    async token(user, options = {}) {
      const response = await fetch(`${base}/v1/dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user, ...options }),
      });
      if (!response.ok) throw new Error(`dev token: ${response.status} ${await response.text()}`);
      return response.json();
    },
    /** A token minted by `edgerelay token` with this relay's dev secret (tenant `demo`), for
     * grants the dev endpoint does not give: `args` like `["--session", "doc:*"]`. */
    cliToken(user, args = []) {
      const argv = ["token", "--data-dir", dir, "--sub", user, "--tenant", "demo", ...args];
      return execFileSync(BIN, argv, { encoding: "utf8", env: inherited, stdio: ["ignore", "pipe", "ignore"] }).trim();
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  // Ready within 10 s, or the test fails saying so.
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`relay exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${base}/readyz`)).ok) return relay;
    } catch {
      // Not listening yet.
    }
    if (i >= 200) {
      await relay.stop();
      throw new Error("relay not ready within 10 s");
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Resolves with the first `type` event of `target` whose detail passes `check` (bounded). */
export function nextEvent(target, type, check = () => true, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, on);
      reject(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    function on(event) {
      if (!check(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(type, on);
      resolve(event.detail);
    }
    target.addEventListener(type, on);
  });
}

/** Waits (polling, bounded) until `check()` is truthy. */
export async function until(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`never happened within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A client of `relay` over WebSocket (`ws` as Node's WebSocket), with a short backoff and no
 * network events; `options` override. */
export function wsClient(relay, getToken, options = {}) {
  return new EdgeRelay(wsOptions(relay, getToken, options));
}

/** The options of `wsClient` (also for a `SharedRelay`). */
export function wsOptions(relay, getToken, options = {}) {
  return {
    getToken,
    transport: "websocket",
    webSocketUrl: relay.webSocketUrl,
    WebSocket,
    backoff: { baseMs: 50, capMs: 200 },
    networkEvents: false,
    ...options,
  };
}

/** Publishes topic events through the server API (tenant `demo`, the dev tokens' tenant) with
 * the relay's `apiKey`; resolves with the answer. */
export async function publishEvents(relay, apiKey, events) {
  const response = await fetch(`${relay.base}/v1/api/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ tenant: "demo", events }),
  });
  if (response.status !== 200) throw new Error(`events: HTTP ${response.status} ${await response.text()}`);
  return response.json();
}

/** `ws` whose current socket the test can cut (as a network drop would). */
export class Cuttable extends WebSocket {
  static current = null;

  constructor(url) {
    super(url);
    Cuttable.current = this;
  }
}
