"""Interop tests: an independent Python client (written from docs/protocol.md) against the real
relay binary, over raw QUIC and WebSocket, JSON codec.

The relay binary defaults to target/debug/edgerelay (build it first: `cargo build`); set
EDGERELAY_BIN to test another one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import edgerelay_client as er

REPO = Path(__file__).resolve().parents[2]
BANNER_TIMEOUT = 30.0
TEST_TIMEOUT = 20.0
TENANT = "acme"
TURN_URLS = ["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"]
STUN_URLS = ["stun:127.0.0.1:3478"]
TURN_SECRET = "interop-turn-secret"


# ---------------------------------------------------------------------------------------------
# The relay under test
# ---------------------------------------------------------------------------------------------


@dataclass
class Relay:
    binary: Path
    data_dir: Path
    env: dict
    udp_port: int
    ws_url: str
    http_base: str
    cert_sha256: str
    log_path: Path

    @property
    def cafile(self) -> str:
        return str(self.data_dir / "dev-cert.pem")

    def token(self, sub: str, *rooms: str, tenant: str = TENANT, ttl: str = "1h",
              join: tuple = (), publish: tuple = (), call: tuple = ()) -> str:
        """Mint a dev token with the relay's CLI (same data dir, hence the same dev secret)."""
        args = [str(self.binary), "token", "--sub", sub, "--tenant", tenant, "--ttl", ttl]
        for pattern in rooms:
            args += ["--room", pattern]
        for pattern in join:
            args += ["--join", pattern]
        for pattern in publish:
            args += ["--publish", pattern]
        for pattern in call:
            args += ["--call", pattern]
        out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=15,
                             check=True).stdout
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        assert lines and lines[-1].count(".") == 2, f"no JWT in `edgerelay token` output: {out!r}"
        return lines[-1]

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no relay log)"


BANNER_PATTERNS = {
    "udp": re.compile(r"QUIC \(raw, ALPN edgerelay/1\)\s+udp://127\.0\.0\.1:(\d+)"),
    "ws": re.compile(r"WebSocket\s+(ws://127\.0\.0\.1:\d+/v1/ws)"),
    "sha": re.compile(r"certificate sha256 \(hex\)\s+([0-9a-fA-F]{64})"),
}


@pytest.fixture(scope="session")
def relay(tmp_path_factory):
    binary = Path(os.environ.get("EDGERELAY_BIN", REPO / "target" / "debug" / "edgerelay"))
    if not binary.exists():
        pytest.fail(f"relay binary {binary} not found: run `cargo build` first")
    data_dir = tmp_path_factory.mktemp("edgerelay-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERELAY_")}
    env.update({
        "EDGERELAY_DATA_DIR": str(data_dir),
        "EDGERELAY_LISTEN__UDP": "127.0.0.1:0",
        "EDGERELAY_LISTEN__TCP": "127.0.0.1:0",
        "EDGERELAY_LOG": "info",
        "EDGERELAY_PRESENCE__REFRESH_MS": "300",
        # ICE servers (docs/operations.md, [turn]): no TURN server runs; the credentials are
        # checked here with Python's hmac, as coturn computes them.
        "EDGERELAY_TURN__URLS": json.dumps(TURN_URLS),
        "EDGERELAY_TURN__STUN_URLS": json.dumps(STUN_URLS),
        "EDGERELAY_TURN__SECRET": TURN_SECRET,
        "NO_COLOR": "1",
    })
    log_path = data_dir / "relay.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(binary), "serve"], env=env, cwd=data_dir,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                            text=True, start_new_session=True, preexec_fn=_die_with_parent)
    lines: queue.Queue = queue.Queue()

    def pump():  # keep draining stdout so the relay never blocks on a full pipe
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    found: dict[str, str] = {}
    banner: list[str] = []
    deadline = time.monotonic() + BANNER_TIMEOUT
    try:
        while len(found) < len(BANNER_PATTERNS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("relay banner incomplete")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"relay exited with {proc.wait(5)} before its banner")
            banner.append(line)
            for key, pattern in BANNER_PATTERNS.items():
                m = pattern.search(line)
                if m:
                    found[key] = m.group(1)
    except Exception as exc:
        _stop(proc)
        log.close()
        pytest.fail(f"could not start the relay: {exc}\nstdout:\n{''.join(banner)}\n"
                    f"log:\n{log_path.read_text(errors='replace')[-4000:]}")
    ws_url = found["ws"]
    r = Relay(binary=binary, data_dir=data_dir, env=env, udp_port=int(found["udp"]),
              ws_url=ws_url, http_base=ws_url.replace("ws://", "http://").rsplit("/v1/ws", 1)[0],
              cert_sha256=found["sha"].lower(), log_path=log_path)
    try:
        yield r
    finally:
        code = _stop(proc)
        log.close()
        if code not in (0, -signal.SIGTERM):
            print(f"relay exited with {code}; log tail:\n{r.log_tail()}")


def _die_with_parent() -> None:
    """Linux: SIGTERM the relay if pytest itself dies without running the teardown."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def run(coro, timeout: float = TEST_TIMEOUT):
    """Run one test's coroutine with a hard upper bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def connect(relay: Relay, transport: str):
    if transport == "quic":
        return await er.QuicClient.connect("127.0.0.1", relay.udp_port, cafile=relay.cafile,
                                           cert_sha256=relay.cert_sha256)
    if transport == "quic-shared":  # all rooms on the control stream (docs, QUIC streams #3)
        return await er.QuicClient.connect("127.0.0.1", relay.udp_port, cafile=relay.cafile,
                                           cert_sha256=relay.cert_sha256, room_streams=False)
    if transport == "ws":
        return await er.WsClient.connect(relay.ws_url)
    if transport == "webtransport":  # the same UDP port, ALPN h3, session at /v1/wt
        return await er.WebTransportClient.connect("127.0.0.1", relay.udp_port, cafile=relay.cafile,
                                                   cert_sha256=relay.cert_sha256)
    raise ValueError(transport)


def fatal_close_code(transport: str, code: int) -> int:
    """QUIC: application error code = error code; WebSocket: 4000 + error code."""
    return 4000 + code if transport == "ws" else code


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_position(pos):
    assert isinstance(pos, dict) and set(pos) == {"epoch", "offset"}, pos
    assert isinstance(pos["epoch"], int) and 0 <= pos["epoch"] < 2**53, pos
    assert isinstance(pos["offset"], int) and pos["offset"] >= 0, pos


# ---------------------------------------------------------------------------------------------
# Wire format
# ---------------------------------------------------------------------------------------------


def test_golden_json_vectors():
    """Our encoder reproduces the golden client frames byte for byte; server frames decode
    to the documented field lists, in the documented order."""
    vectors = json.loads((REPO / "tests" / "golden" / "frames-v1.json").read_text())
    clients = servers = 0
    for name, vec in vectors.items():
        kind, body = er.decode_frame(vec["json"])
        if vec["direction"] == "client":
            assert list(body) == list(er.CLIENT_FIELDS[kind]), name
            assert er.encode_frame(kind, **body).decode() == vec["json"], name
            clients += 1
        else:
            assert vec["direction"] == "server", name
            assert list(body) == list(er.SERVER_FIELDS[kind]), name
            servers += 1
        if kind == "call":
            # The nested action or event: {"<name>": {fields in order}}.
            if "action" in body:
                nested, table = body["action"], er.CALL_ACTION_FIELDS
            else:
                nested, table = body["event"], er.CALL_EVENT_FIELDS
            ((what, fields),) = nested.items()
            assert list(fields) == list(table[what]), name
            for p in fields.get("participants", []):
                assert list(p) == list(er.GROUP_PARTICIPANT_FIELDS), name
    assert clients >= len(er.CLIENT_FIELDS) and servers >= len(er.SERVER_FIELDS) - 1
    # The documented payload examples.
    assert er.binary(bytes([0x00, 0xFF, 0x01])) == {"$binary": "AP8B"}
    assert er.payload_bytes({"$binary": "AP8B"}) == b"\x00\xff\x01"


def test_certificate_pin(relay):
    """The banner's hash is the SHA-256 of the dev certificate's DER, also served at /v1/cert,
    and is what the QUIC handshake presents."""
    pem = Path(relay.cafile).read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert hashlib.sha256(der).hexdigest() == relay.cert_sha256
    with urllib.request.urlopen(relay.http_base + "/v1/cert", timeout=5) as resp:
        info = json.loads(resp.read())
    assert info["sha256_hex"].lower() == relay.cert_sha256
    assert base64.b64decode(info["sha256_base64"]) == bytes.fromhex(relay.cert_sha256)
    assert info["dev"] is True
    assert 0 < info["not_after"] - time.time() <= 14 * 86400 + 3600

    async def main():
        async with await connect(relay, "quic") as c:
            assert c.tls_peer_certificate_sha256 == relay.cert_sha256
        # A wrong pin is refused even though the CA check passes.
        with pytest.raises(ConnectionError):
            await er.QuicClient.connect("127.0.0.1", relay.udp_port, cafile=relay.cafile,
                                        cert_sha256="00" * 32)

    run(main())


# ---------------------------------------------------------------------------------------------
# One client: hello, join, publish, receive
# ---------------------------------------------------------------------------------------------

PAYLOADS = [
    {"text": "hi"},
    {"text": "unicode ✓ ünïcödé", "n": [1, 2.5, None, True]},
    "a bare string",
    42,
    [1, {"nested": {"deep": []}}],
]


@pytest.mark.parametrize("transport", ["quic", "quic-shared", "ws"])
def test_hello_join_publish_receive(relay, transport):
    sub = unique("alice-")
    room = unique("chat:solo-")
    token = relay.token(sub, "chat:*")

    async def main():
        async with await connect(relay, transport) as c:
            t0 = now_ms()
            welcome = await c.hello(token, client="pytest-interop/1")
            assert welcome["version"] == 1
            assert welcome["user"] == sub
            assert isinstance(welcome["session"], str) and welcome["session"]
            assert abs(welcome["server_time"] - t0) < 60_000
            assert set(welcome["limits"]) == {
                "max_frame_bytes", "max_payload_bytes", "max_rooms", "publish_rate",
                "publish_burst", "ping_interval_ms", "idle_timeout_ms"}
            assert all(isinstance(v, int) and v > 0 for v in welcome["limits"].values())

            joined = await c.join(room)
            assert joined["room"] == room
            # docs leave `recovered` for a first join (since: null) unspecified; relay says true
            assert isinstance(joined["recovered"], bool)
            assert_position(joined["position"])
            assert joined["position"]["offset"] == 0, "a fresh room starts empty"
            epoch = joined["position"]["epoch"]

            acks = []
            for i, data in enumerate(PAYLOADS):
                ack = await c.publish(room, f"m-{i}", data)
                assert ack["room"] == room and ack["id"] == f"m-{i}"
                assert ack["position"] == {"epoch": epoch, "offset": i + 1}
                acks.append(ack)
            assert len({a["req"] for a in acks}) == len(acks)

            msgs = await c.messages(room, len(PAYLOADS))
            for i, (msg, data) in enumerate(zip(msgs, PAYLOADS)):
                assert list(msg) == list(er.SERVER_FIELDS["message"])
                assert msg["room"] == room
                assert msg["position"] == {"epoch": epoch, "offset": i + 1}
                assert msg["from"] == sub
                assert msg["id"] == f"m-{i}"
                assert msg["data"] == data
                assert abs(msg["time"] - t0) < 60_000

            if isinstance(c, er.QuicClient) and c.room_streams:
                # welcome on the control stream, everything about the room on its own stream
                assert c.control_stream == 0
                room_sid = c.room_stream[room]
                assert room_sid != c.control_stream
                kinds = [k for k, _ in c.frames_by_stream[room_sid]]
                # the room's presence snapshot follows `joined` on the room's stream
                assert kinds[:2] == ["joined", "presence_snapshot"]
                assert set(kinds) == {"joined", "presence_snapshot", "ack", "message"}
                assert [k for k, _ in c.frames_by_stream[0]] == ["welcome"]

            pong = await c.ping()
            assert abs(pong["server_time"] - now_ms()) < 60_000

            left = await c.leave(room)
            assert left["room"] == room
            if isinstance(c, er.QuicClient) and c.room_streams:
                # after `left` the relay finishes the room's stream
                for _ in range(100):
                    if room_sid in c.stream_finished_by_relay:
                        break
                    await asyncio.sleep(0.02)
                assert room_sid in c.stream_finished_by_relay

            # Publishing does not require joining; we no longer receive the room.
            ack = await c.publish(room, "after-leave", {"x": 1})
            assert ack["position"]["offset"] == len(PAYLOADS) + 1
            with pytest.raises(asyncio.TimeoutError):
                await c.next_message(room, timeout=0.5)

            # Rejoin with the last position seen: the one missed message is replayed from history.
            last = msgs[-1]["position"]
            rejoined = await c.join(room, since=last)
            assert rejoined["recovered"] is True
            assert rejoined["position"] == {"epoch": epoch, "offset": len(PAYLOADS) + 1}
            (missed,) = await c.messages(room, 1)
            assert missed["id"] == "after-leave"
            assert missed["position"] == {"epoch": epoch, "offset": len(PAYLOADS) + 1}
            await c.leave(room)
            # Rejoin from another epoch: history cannot tell what was missed -> not recovered.
            rejoined = await c.join(room, since={"epoch": epoch ^ 1, "offset": 1})
            assert rejoined["recovered"] is False
            await c.leave(room)
            # Rejoin at the top: nothing missed -> recovered.
            rejoined = await c.join(room, since=rejoined["position"])
            assert rejoined["recovered"] is True
            await c.leave(room)
            assert not c.is_closed and not c.unsolicited and not c.connection_errors

    run(main())


# ---------------------------------------------------------------------------------------------
# QUIC and WebSocket clients together
# ---------------------------------------------------------------------------------------------


def test_quic_and_websocket_clients_exchange(relay):
    room = unique("chat:mixed-")
    alice, bob = unique("alice-"), unique("bob-")
    ta, tb = relay.token(alice, "chat:*"), relay.token(bob, "chat:*")

    async def main():
        async with await connect(relay, "quic") as qa, await connect(relay, "ws") as wb:
            await qa.hello(ta)
            await wb.hello(tb)
            ja = await qa.join(room)
            jb = await wb.join(room)
            assert ja["position"] == jb["position"]
            epoch = ja["position"]["epoch"]

            # Turn-taking: QUIC -> WS -> QUIC ...
            expected = []
            for i in range(6):
                sender, who = (qa, alice) if i % 2 == 0 else (wb, bob)
                data = {"turn": i, "by": who}
                ack = await sender.publish(room, f"t-{i}", data)
                assert ack["position"] == {"epoch": epoch, "offset": i + 1}
                expected.append((i + 1, who, f"t-{i}", data))
            for c in (qa, wb):
                got = [(m["position"]["offset"], m["from"], m["id"], m["data"])
                       for m in await c.messages(room, len(expected))]
                assert got == expected, c.transport

            # Both publishing at once: every subscriber sees one contiguous order, the same
            # at both ends, each publisher's messages in its own order.
            n = 15

            async def burst(c, who):
                return [await c.publish(room, f"{who}-{k}", {"k": k}) for k in range(n)]

            acks_a, acks_b = await asyncio.gather(burst(qa, "a"), burst(wb, "b"))
            base = len(expected)
            seen = {}
            for c in (qa, wb):
                msgs = await c.messages(room, 2 * n)
                assert [m["position"]["offset"] for m in msgs] == list(range(base + 1, base + 2 * n + 1))
                seen[c.transport] = [(m["from"], m["id"]) for m in msgs]
                for who, prefix in ((alice, "a"), (bob, "b")):
                    mine = [m["id"] for m in msgs if m["from"] == who]
                    assert mine == [f"{prefix}-{k}" for k in range(n)]
            assert seen["quic"] == seen["ws"]
            ack_offsets = sorted(a["position"]["offset"] for a in acks_a + acks_b)
            assert ack_offsets == list(range(base + 1, base + 2 * n + 1))

    run(main())


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _tampered(token: str) -> str:
    head, claims, sig = token.split(".")
    sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    return ".".join((head, claims, sig))


@pytest.mark.parametrize("transport", ["quic", "ws"])
@pytest.mark.parametrize("bad", ["garbage", "bad-signature"])
def test_bad_token_is_fatal(relay, transport, bad):
    token = "not-a-jwt" if bad == "garbage" else _tampered(relay.token(unique("eve-"), "chat:*"))

    async def main():
        async with await connect(relay, transport) as c:
            with pytest.raises(er.RelayError) as info:
                await c.hello(token)
            assert info.value.code == er.TOKEN_INVALID and info.value.req == 0
            assert isinstance(info.value.message, str)
            assert await c.wait_closed() == fatal_close_code(transport, er.TOKEN_INVALID)
            assert c.welcome is None

    run(main())


@pytest.mark.parametrize("transport", ["quic", "ws"])
def test_frame_before_hello_is_fatal(relay, transport):
    async def main():
        async with await connect(relay, transport) as c:
            await c.send_raw("ping", req=1)
            err = await c.next_connection_error()
            assert err["code"] == er.HELLO_REQUIRED
            assert await c.wait_closed() == fatal_close_code(transport, er.HELLO_REQUIRED)

    run(main())


@pytest.mark.parametrize("transport", ["quic", "ws"])
def test_permission_denied_keeps_connection(relay, transport):
    sub = unique("carol-")
    token = relay.token(sub, "chat:*")
    room = unique("chat:ok-")
    forbidden = unique("secret:")

    async def main():
        async with await connect(relay, transport) as c:
            await c.hello(token)
            with pytest.raises(er.RelayError) as info:
                await c.publish(forbidden, "nope", {"x": 1})
            assert info.value.code == er.PERMISSION_DENIED and info.value.req > 0
            with pytest.raises(er.RelayError) as info:
                await c.join(forbidden)
            assert info.value.code == er.PERMISSION_DENIED
            assert not c.is_closed
            pong = await c.ping()
            assert pong["req"] > 0
            await c.join(room)
            ack = await c.publish(room, "yes", {"x": 2})
            assert ack["position"]["offset"] == 1
            msg = await c.next_message(room)
            assert msg["id"] == "yes" and msg["data"] == {"x": 2}
            assert not c.is_closed and not c.connection_errors

    run(main())


# ---------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["quic", "ws"])
def test_binary_payload_round_trip(relay, transport):
    sub = unique("dave-")
    token = relay.token(sub, "chat:*")
    room = unique("chat:bin-")
    blobs = [bytes([0x00, 0xFF, 0x01]), bytes(range(256)), b"\xc3\x28 not utf-8", b"{broken json"]

    async def main():
        async with await connect(relay, transport) as c, \
                await connect(relay, "ws" if transport != "ws" else "quic") as other:
            await c.hello(token)
            await other.hello(token)
            await c.join(room)
            await other.join(room)
            for i, blob in enumerate(blobs):
                await c.publish(room, f"b-{i}", er.binary(blob))
            # Bytes that are valid JSON text come back inline (docs, "Payloads").
            await c.publish(room, "b-json", er.binary(b'{"text":"hi"}'))
            for peer in (c, other):
                msgs = await peer.messages(room, len(blobs) + 1)
                for i, (msg, blob) in enumerate(zip(msgs, blobs)):
                    assert msg["id"] == f"b-{i}"
                    assert msg["data"] == er.binary(blob), peer.transport
                    assert er.payload_bytes(msg["data"]) == blob
                assert msgs[-1]["id"] == "b-json" and msgs[-1]["data"] == {"text": "hi"}

    run(main())


@pytest.mark.parametrize("transport", ["quic", "ws"])
def test_refresh(relay, transport):
    sub = unique("erin-")

    async def main():
        async with await connect(relay, transport) as c:
            await c.hello(relay.token(sub, "chat:*", ttl="10m"))
            refreshed = await c.refresh(relay.token(sub, "chat:*", ttl="2h"))
            assert abs(refreshed["expires_at"] - (time.time() + 7200)) < 120
            await c.ping()
            # Another user's token: token_invalid, which is fatal.
            with pytest.raises(er.RelayError) as info:
                await c.refresh(relay.token(unique("mallory-"), "chat:*"))
            assert info.value.code == er.TOKEN_INVALID and info.value.req > 0
            assert await c.wait_closed() == fatal_close_code(transport, er.TOKEN_INVALID)

    run(main())


@pytest.mark.parametrize("transport", ["quic", "ws"])
def test_ice_servers(relay, transport):
    """``ice_servers`` answers with RTCIceServer-shaped entries: STUN without credentials, TURN
    with the TURN REST credential (docs/protocol.md), recomputed here independently."""
    sub = unique("ivy:")

    async def main():
        async with await connect(relay, transport) as c:
            await c.hello(relay.token(sub, "chat:*"))
            answer = await c.ice_servers()
            stun, turn = answer["servers"]
            assert list(stun) == list(er.ICE_SERVER_FIELDS) and list(turn) == list(er.ICE_SERVER_FIELDS)
            assert stun == {"urls": STUN_URLS, "username": None, "credential": None}
            assert turn["urls"] == TURN_URLS
            expires_at = answer["expires_at"]
            assert abs(expires_at - (time.time() + 86400)) < 120
            user_part = sub.replace("%", "%25").replace(":", "%3A").replace("#", "%23")
            assert turn["username"] == f"{expires_at}:{TENANT}/{user_part}"
            mac = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
            assert turn["credential"] == base64.b64encode(mac).decode()

    run(main())


def test_one_to_one_call(relay):
    """A 1:1 call written from docs/calls.md alone: Alice (QUIC) calls Bob (WebSocket), Bob's
    device rings and answers, an offer and an answer pass between them in order, a stranger's
    signal is refused with ``not_participant``, and Bob hangs up."""
    alice, bob, eve = unique("alice-"), unique("bob-"), unique("eve-")

    async def main():
        async with await connect(relay, "quic") as a, await connect(relay, "ws") as b, \
                await connect(relay, "ws") as e:
            await a.hello(relay.token(alice, call=("*",)))
            await b.hello(relay.token(bob, "chat:*"))
            await e.hello(relay.token(eve, call=("*",)))
            call = await a.call("initiate", callee=bob, media="video")
            assert len(call) == 16 and all(c in "0123456789abcdef" for c in call)
            state = {"caller": alice, "callee": bob, "media": "video", "state": {"ringing": {}}}
            assert await a.next_call_event() == (call, "state", state)
            assert await b.next_call_event() == (call, "state", state)
            assert await b.next_call_event() == (call, "ring", {"caller": alice, "media": "video"})
            await b.call("answer", call)
            connected = dict(state, state={"connected": {}})
            assert await a.next_call_event() == (call, "state", connected)
            assert await b.next_call_event() == (call, "state", connected)
            offer = json.dumps({"type": "offer", "sdp": "v=0\r\n"})
            await a.call("signal", call, data=offer)
            await a.call("signal", call, data='{"candidate":"c1"}')
            with pytest.raises(er.RelayError) as refused:
                await e.call("signal", call, data="intrusion")
            assert refused.value.code == er.NOT_PARTICIPANT
            assert await b.next_call_event() == (call, "signal", {"data": offer})
            assert await b.next_call_event() == (call, "signal", {"data": '{"candidate":"c1"}'})
            answer = json.dumps({"type": "answer", "sdp": "v=0\r\n"})
            await b.call("signal", call, data=answer)
            assert await a.next_call_event() == (call, "signal", {"data": answer})
            await b.call("hang_up", call)
            ended = dict(state, state={"ended": {"reason": "hangup", "side": "callee"}})
            assert await a.next_call_event() == (call, "state", ended)
            assert await b.next_call_event() == (call, "state", ended)
            assert e.call_events.empty()

    run(main())


def test_group_call(relay):
    """A group call written from docs/calls.md "Group calls" alone: Alice (QUIC) creates it
    inviting Bob (WebSocket), whose device rings; Bob joins; his token allows no room, yet he
    joins the call's media room while a stranger whose token allows every room is refused;
    Alice mutes Bob; Bob leaves with ``hang_up`` and loses the room, which ends the call when
    Alice leaves too."""
    alice, bob, eve = unique("alice-"), unique("bob-"), unique("eve-")

    def roster(fields):
        return {p["user"]: p["status"] for p in fields["participants"]}

    async def main():
        async with await connect(relay, "quic") as a, await connect(relay, "ws") as b, \
                await connect(relay, "ws") as e:
            await a.hello(relay.token(alice, call=("*",)))
            # Bob's token grants no room (and calling nobody): the call is his right to its room.
            await b.hello(relay.token(bob, call=("nobody",)))
            await e.hello(relay.token(eve, "*"))
            call = await a.call("create_group", media="audio", invite=[bob])
            _, name, fields = await a.next_call_event()
            assert name == "group" and fields["host"] == alice and fields["ended"] is None
            assert roster(fields) == {alice: "joined", bob: "invited"}
            assert list(fields["participants"][0]) == list(er.GROUP_PARTICIPANT_FIELDS)
            assert (await b.next_call_event())[1] == "group"
            assert await b.next_call_event() == (call, "invited", {"by": alice, "media": "audio"})
            room = f"call:{call}"
            for c in (b, e):
                with pytest.raises(er.RelayError) as refused:
                    await c.join(room)
                assert refused.value.code == er.PERMISSION_DENIED
            await b.call("join", call)
            assert roster((await b.next_call_event())[2]) == {alice: "joined", bob: "joined"}
            assert await b.next_call_event() == (call, "invite_over", {"reason": "joined"})
            await b.join(room)
            with pytest.raises(er.RelayError) as refused:
                await b.call("mute", call, user=alice, kind="audio")
            assert refused.value.code == er.NOT_HOST
            await a.call("mute", call, user=bob, kind="audio")
            assert await b.next_call_event() == (call, "muted", {"by": alice, "kind": "audio"})
            _, _, fields = await b.next_call_event()
            assert [p["muted_audio"] for p in fields["participants"]] == [False, True]
            await b.call("hang_up", call)
            _, _, fields = await b.next_call_event()
            assert roster(fields)[bob] == "left" and fields["ended"] is None
            evicted = ("left", {"req": 0, "room": room})
            await wait_until(lambda: evicted in b.received, what="bob out of the media room")
            await a.call("leave", call)
            while True:
                _, name, fields = await a.next_call_event()
                if name == "group" and fields["ended"] is not None:
                    break
            assert fields["ended"] == "all_left"

    run(main())


def test_quic_wrong_stream_is_fatal(relay):
    """A frame for room A on room B's stream is `wrong_stream` (106), fatal."""
    sub = unique("frank-")
    room_a, room_b = unique("chat:a-"), unique("chat:b-")

    async def main():
        async with await connect(relay, "quic") as c:
            await c.hello(relay.token(sub, "chat:*"))
            await c.join(room_a)
            frame = er.encode_frame("publish", req=99, room=room_b, id="x", data={"x": 1})
            c.send_on_stream(c.room_stream[room_a], frame)
            err = await c.next_connection_error()
            assert err["code"] == er.WRONG_STREAM
            # fatal errors travel on the control stream
            assert ("error", err) in c.frames_by_stream[c.control_stream]
            assert await c.wait_closed() == er.WRONG_STREAM

    run(main())


@pytest.mark.parametrize("transport", ["quic", "webtransport"])
def test_quic_ping_datagram_gets_pong_datagram(relay, transport):
    """A `ping` sent as a QUIC (or WebTransport) datagram is answered by a `pong` datagram
    (docs: Datagrams)."""
    sub = unique("gina-")

    async def main():
        async with await connect(relay, transport) as c:
            await c.hello(relay.token(sub, "chat:*"))
            pong = None
            for _ in range(5):  # a datagram may be lost by design; loopback rarely does
                try:
                    pong = await c.ping_datagram(timeout=1.0)
                    break
                except asyncio.TimeoutError:
                    continue
            assert pong is not None and pong["server_time"] > 0
            assert ("pong", pong) in c.datagrams_received
            # Nothing arrived on a stream for it.
            assert all(kind != "pong" for frames in c.frames_by_stream.values() for kind, _ in frames)
            # Garbage datagrams are dropped, not fatal: the connection still answers. (On
            # WebTransport the garbage goes inside a datagram of the session.)
            c.send_datagram_bytes(b"\xff not a frame")
            await c.ping()
            assert not c.is_closed

    run(main())


def fade_probes_sent(relay: Relay) -> float:
    """The relay's ``edgerelay_quic_fade_probes_total`` (docs/operations.md)."""
    with urllib.request.urlopen(relay.http_base + "/metrics", timeout=5) as resp:
        page = resp.read().decode()
    for line in page.splitlines():
        if line.startswith("edgerelay_quic_fade_probes_total "):
            return float(line.split()[1])
    raise AssertionError("edgerelay_quic_fade_probes_total missing from /metrics")


@pytest.mark.parametrize("transport", ["quic", "webtransport"])
def test_relay_heartbeats_probe_an_outage_only_for_clients_that_sent_one(relay, transport):
    """docs/protocol.md, QUIC datagrams: a datagram of zero bytes is a heartbeat; the relay
    sends its own only to a client that sent one, while its data to that client goes
    unacknowledged. Each subscriber in turn stops hearing the relay for 2.5 s while messages
    are published: the relay probes the one that sent a heartbeat and not the other, and both
    then get every message once, in order (what the relay's heartbeats reach is ignored)."""
    room = unique("chat:probed-")
    pub, ann, ben = unique("pub-"), unique("ann-"), unique("ben-")

    async def outage(p, c, other, first: int) -> float:
        """Publishes 3 messages while ``c`` hears nothing for 2.5 s (``other`` hears them); the
        probes sent meanwhile."""
        before = fade_probes_sent(relay)
        c.set_deaf(True)
        acks = [await p.publish(room, f"m-{first + i}", {"i": first + i}) for i in range(3)]
        # Past the relay's 1 s stall, into its quick probes (every 50 ms for a young stall).
        await asyncio.sleep(2.5)
        probes = fade_probes_sent(relay) - before
        c.set_deaf(False)
        for subscriber in (c, other):
            msgs = await subscriber.messages(room, len(acks), timeout=15.0)
            assert [m["position"] for m in msgs] == [ack["position"] for ack in acks]
        return probes

    async def main():
        async with await connect(relay, "quic") as p, await connect(relay, transport) as a, \
                await connect(relay, transport) as b:
            for c, user in ((p, pub), (a, ann), (b, ben)):
                await c.hello(relay.token(user, "chat:*"))
            a.send_datagram_bytes(b"")  # a heartbeat: this client takes the relay's
            await a.join(room)
            await b.join(room)
            assert await outage(p, b, a, 0) == 0, "the relay probed a client that never sent a heartbeat"
            # About 30 in the stall's first 1.5 s; 3 or 4 if they came every 0.5 s.
            assert await outage(p, a, b, 3) >= 10, "the relay did not probe a young stall quickly"
            for c in (a, b):
                await c.ping()
                assert not c.is_closed
            assert b.relay_heartbeats == 0

    run(main())


async def wait_until(check, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("transport", ["quic", "ws"])
def test_presence_and_typing(relay, transport):
    """Snapshot on join, status and typing updates (datagrams on QUIC), the refresh digest
    computed independently from docs/protocol.md, and leave."""
    room = unique("chat:presence-")
    ann, ben = unique("ann-"), unique("ben-")

    async def main():
        a = await connect(relay, transport)
        b = await connect(relay, transport)
        try:
            await a.hello(relay.token(ann, "chat:*"))
            await b.hello(relay.token(ben, "chat:*"))
            await a.join(room)
            await b.join(room)
            # b's snapshot (reliable, right after `joined`) lists a and b.
            await wait_until(lambda: set(b.presence[room]) == {ann, ben}, what="snapshot")
            async def send(kind, **fields):
                if transport == "quic":
                    a.send_datagram(kind, **fields)
                else:
                    await a.send_raw(kind, **fields)

            for _ in range(5):  # datagrams may be lost; the relay coalesces repeats
                await send("set_status", status="busy", custom="in a call")
                await send("typing", room=room, typing=True)
                try:
                    await wait_until(lambda: b.presence[room].get(ann, {}).get("status") == "busy"
                                     and ann in b.typing_views.get(room, {}).get("users", []),
                                     timeout=1.0, what="status and typing")
                    break
                except AssertionError:
                    continue
            entry = b.presence[room][ann]
            assert entry["custom"] == "in a call" and list(entry) == list(er.PRESENCE_ENTRY_FIELDS)
            assert b.typing_views[room]["ttl_ms"] > 0
            # The periodic refresh agrees with b's view, digest computed here.
            await wait_until(lambda: b.presence_in_sync(room), what="refresh digest match")
            snapshot = await b.presence_sync(room)
            assert {e["user"] for e in snapshot["users"]} == {ann, ben}
            await a.leave(room)
            await wait_until(lambda: ann not in b.presence[room], what="leave propagates")
        finally:
            await a.close()
            await b.close()

    run(main())


# ---------------------------------------------------------------------------------------------
# WebTransport (aioquic's HTTP/3 client, session at /v1/wt on the QUIC port)
# ---------------------------------------------------------------------------------------------


def test_webtransport_client_shares_a_room_with_quic_and_websocket(relay):
    """Protocol v1 over a WebTransport session is raw QUIC's: control stream, a stream per
    room, and it shares rooms with the other transports (docs: Connecting)."""
    room = unique("chat:wt-")
    subs = [unique("wt-"), unique("quic-"), unique("ws-")]

    async def main():
        clients = [await connect(relay, t) for t in ("webtransport", "quic", "ws")]
        try:
            for c, sub in zip(clients, subs):
                await c.hello(relay.token(sub, "chat:*"))
                await c.join(room)
            sent = []
            for rnd in range(3):
                for c, sub in zip(clients, subs):
                    ack = await c.publish(room, f"{sub}-{rnd}", {"text": f"{sub} {rnd}"})
                    sent.append((ack["position"]["offset"], sub, f"{sub}-{rnd}"))
            assert [s[0] for s in sent] == list(range(1, len(sent) + 1))
            for c in clients:
                msgs = await c.messages(room, len(sent))
                assert [(m["position"]["offset"], m["from"], m["id"]) for m in msgs] == sent
            wt = clients[0]
            room_sid = wt.room_stream[room]
            assert room_sid != wt.control_stream
            assert [k for k, _ in wt.frames_by_stream[wt.control_stream]] == ["welcome"]
            kinds = [k for k, _ in wt.frames_by_stream[room_sid]]
            # (the room's presence snapshot travels on the room stream too)
            assert kinds[0] == "joined" and {"ack", "message"} <= set(kinds)
            await wt.ping()
            assert not any(c.is_closed for c in clients)
        finally:
            for c in clients:
                await c.close()

    run(main())


@pytest.mark.parametrize("transport", ["quic", "webtransport"])
def test_history_after_on_a_stream_of_its_own(relay, transport):
    """After a network change a client asks for what it missed with `history_after` on a new
    stream, and pads its first packets with datagrams of zero bytes, which the relay takes as
    heartbeats (docs: Catching up in one round trip after a network change)."""
    room = unique("chat:after-")

    async def main():
        clients = [await connect(relay, transport) for _ in range(2)]
        try:
            publisher, subscriber = clients
            await publisher.hello(relay.token(unique("pat-"), "chat:*"))
            await subscriber.hello(relay.token(unique("sam-"), "chat:*"))
            await publisher.join(room)
            for i in range(5):
                await publisher.publish(room, f"m{i}", {"i": i})
            subscriber.send_datagram_bytes(bytes(1100))
            subscriber.send_datagram_bytes(bytes(1100))
            stream = subscriber._new_stream()

            async def send(req: int) -> None:
                frame = er.encode_frame("history_after", req=req, room=room, after=2, limit=100)
                subscriber.send_on_stream(stream, frame)

            page = await subscriber._exchange("history_after", "history", send, er.DEFAULT_TIMEOUT)
            assert [(m["offset"], m["id"]) for m in page["messages"]] == [(3, "m2"), (4, "m3"), (5, "m4")]
            assert page["position"]["offset"] == 5
            assert [k for k, _ in subscriber.frames_by_stream[stream]] == ["history"], "answered on its stream"
            await subscriber.ping()
            assert not subscriber.is_closed
        finally:
            for c in clients:
                await c.close()

    run(main())


def test_webtransport_elsewhere_than_v1_wt_is_refused(relay):
    """The relay answers 404 and keeps its HTTP/3 control streams open until the connection
    ends (closing one is a connection error, RFC 9114 §6.2.1), so the client reads the 404."""
    class Elsewhere(er.WebTransportClient):
        path = "/v1/elsewhere"

    async def main():
        with pytest.raises(ConnectionError, match="answered 404"):
            await Elsewhere.connect("127.0.0.1", relay.udp_port, cafile=relay.cafile,
                                    cert_sha256=relay.cert_sha256)

    run(main())


def test_media_group_layout_and_forwarding_over_raw_quic(relay):
    """docs/media.md, written against by hand: the pinned example bytes, then a track published
    by one aioquic client reaches another through the relay as the same frames, with the
    subscriber's own group number."""
    assert er.group_header(300, 2, 5, er.FLAG_KEYFRAME) == bytes.fromhex("01ac02020501")
    assert er.media_frame(33_333, 0, b"\xaa\xbb") == bytes.fromhex("06b5840200aabb")

    async def main():
        room = unique("call:py-")
        alice, bob = await connect(relay, "quic"), await connect(relay, "quic")
        try:
            await alice.hello(relay.token(unique("alice-"), "call:*"))
            await bob.hello(relay.token(unique("bob-"), "call:*"))
            await alice.join(room)
            await bob.join(room)
            published = await alice.track_publish(
                room, "cam", "video", "vp8", [{"width": 640, "height": 360, "bitrate": 500_000}])
            track = published["track"]
            ok = await bob.track_subscribe(track, max_layer=0)
            assert ok["track"] == track
            frames = [er.media_frame(n * 33_333, 0, bytes([n]) * 900) for n in range(4)]
            alice.send_group(er.group_header(track, 0, 41, er.FLAG_KEYFRAME), frames)
            deadline = time.monotonic() + 10
            while not bob.media_groups and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert bob.media_groups, f"no group forwarded (resets: {bob.media_resets})"
            header, got = bob.media_groups[0]
            assert header == {"track": track, "layer": 0, "group": 1, "keyframe": True}
            assert [(f["timestamp_us"], f["payload"]) for f in got] == \
                [(n * 33_333, bytes([n]) * 900) for n in range(4)]
        finally:
            await alice.close()
            await bob.close()

    run(main())
