#!/usr/bin/env python3
"""permessage-deflate on chat-like JSON, end to end: the relay's CPU and bytes per delivery.

Starts the relay binary given (a release build) on loopback with permessage-deflate off, on
with context takeover, or on without it; S WebSocket subscribers (Python `websockets`, which
offers permessage-deflate like a browser) join one room; one publisher sends M chat messages
(JSON, 100-140 bytes of `data`) at a fixed rate. Reported per delivery: the relay's user+system
CPU (from /proc/<pid>/stat, over the publishing window and drain) and the WebSocket bytes it
wrote (`edgerelay_bytes_out_total{transport="websocket"}` from /metrics, after compression;
the publisher's acks are in it, about 1 byte per delivery). The publisher is a member too, so
deliveries are (S + 1) x M.

    cargo build --release --bin edgerelay
    .venv/bin/python benches/load/deflate_chat.py target/release/edgerelay off takeover no_takeover

Figures: docs/performance.md ("Compression on chat-like JSON").
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

SUBSCRIBERS = 50
MESSAGES = int(os.environ.get("MESSAGES", "2000"))
RATE = 200.0  # messages per second
PORT = 18_977
TOPICS = ["the weather", "lunch", "the release", "a bug", "the demo on friday"]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ws_bytes_out(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("edgerelay_bytes_out_total") and 'transport="websocket"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def connect(url: str, token: str):
    ws = await websockets.connect(url, compression="deflate", max_size=1 << 20)
    await ws.send(json.dumps({"hello": {"version": 1, "token": token, "client": "deflate_chat"}}))
    assert "welcome" in json.loads(await ws.recv())
    return ws


async def run(binary: str, mode: str) -> dict:
    data_dir = tempfile.mkdtemp(prefix="deflate-chat-")
    env = dict(os.environ)
    env.update(
        EDGERELAY_LISTEN__TCP=f"127.0.0.1:{PORT}",
        EDGERELAY_LISTEN__UDP=f"127.0.0.1:{PORT}",
        EDGERELAY_WEBSOCKET__PERMESSAGE_DEFLATE="false" if mode == "off" else "true",
        EDGERELAY_WEBSOCKET__SERVER_NO_CONTEXT_TAKEOVER="true" if mode == "no_takeover" else "false",
        EDGERELAY_LIMITS__MAX_CONNECTIONS_PER_USER="1000",
        EDGERELAY_LIMITS__PUBLISH_RATE="1000",
        EDGERELAY_LIMITS__PUBLISH_BURST="2000",
        RUST_LOG="warn",
    )
    relay = subprocess.Popen([binary, "--data-dir", data_dir, "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        token = subprocess.run(
            [binary, "--data-dir", data_dir, "token", "--sub", "u", "--tenant", "acme", "--room", "chat:*", "--ttl", "1h"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        url = f"ws://127.0.0.1:{PORT}/v1/ws"
        subs = [await connect(url, token) for _ in range(SUBSCRIBERS)]
        for i, ws in enumerate(subs):
            await ws.send(json.dumps({"join": {"req": 1, "room": "chat:lobby", "since": None}}))
            assert "joined" in json.loads(await ws.recv())
        # The publisher is a member too (and reads, so it is never a slow consumer).
        publisher = await connect(url, token)
        await publisher.send(json.dumps({"join": {"req": 1, "room": "chat:lobby", "since": None}}))
        await publisher.recv()
        subs.append(publisher)
        got = [0] * len(subs)

        async def read(i: int, ws) -> None:
            while got[i] < MESSAGES:
                frame = json.loads(await ws.recv())
                if "message" in frame:
                    got[i] += 1

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(subs)]
        bytes_before, cpu_before = ws_bytes_out(PORT), cpu_seconds(relay.pid)
        start = time.monotonic()
        for n in range(MESSAGES):
            await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
            text = f"message number {n} about {TOPICS[n % len(TOPICS)]}, see you at {n % 24}:00"
            data = {"text": text, "mentions": [f"user{n % 17}"], "client_time": 1_765_000_000_000 + n}
            await publisher.send(json.dumps({"publish": {"req": n + 2, "room": "chat:lobby", "id": f"m{n}", "data": data}}))
        await asyncio.wait_for(asyncio.gather(*readers), timeout=120)
        cpu = cpu_seconds(relay.pid) - cpu_before
        out = ws_bytes_out(PORT) - bytes_before
        extensions = subs[0].response.headers.get("Sec-WebSocket-Extensions")
        for ws in subs:
            await ws.close()
        deliveries = len(subs) * MESSAGES
        return {
            "mode": mode,
            "extensions": extensions,
            "deliveries": deliveries,
            "relay_cpu_s": round(cpu, 2),
            "cpu_us_per_delivery": round(cpu * 1e6 / deliveries, 2),
            "bytes_per_delivery": round(out / deliveries, 1),
            "load": open("/proc/loadavg").read().split()[:3],
        }
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    binary, modes = sys.argv[1], sys.argv[2:] or ["off", "takeover", "no_takeover"]
    for mode in modes:
        print(json.dumps(asyncio.run(run(binary, mode))), flush=True)


if __name__ == "__main__":
    main()
