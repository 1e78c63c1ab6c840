"""A small edgerelay protocol v1 client (JSON codec), written from docs/protocol.md alone.

Two transports share one frame dispatcher:

* ``QuicClient``: raw QUIC via aioquic, ALPN ``edgerelay/1``. The first client-opened
  bidirectional stream is the control stream (``hello``, ``ping``, connection errors); each
  joined room gets its own bidirectional stream whose first frame is ``join`` (or, with
  ``room_streams=False``, everything shares the control stream). Frames on a stream are
  ``[u32 big-endian length][JSON body]``. Latest-wins frames may also travel as QUIC datagrams:
  one bare JSON body per datagram, no length prefix (``send_datagram``); datagrams from the
  relay are dispatched like stream frames and kept in ``datagrams_received``.
* ``WsClient``: WebSocket via ``websockets``, one text message per JSON frame.

Every JSON frame is ``{"<type>": {fields...}}`` with all fields present (``null`` for an
absent optional). Requests carry a non-zero ``req`` that the answer echoes; the client matches
answers to requests by ``req`` and queues ``message`` frames per room.

Usage::

    async with await QuicClient.connect("127.0.0.1", port, cafile=..., cert_sha256=...) as c:
        welcome = await c.hello(token)
        joined = await c.join("chat:lobby")
        ack = await c.publish("chat:lobby", "m-1", {"text": "hi"})
        msg = await c.next_message("chat:lobby")
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import ssl
import struct
from collections import defaultdict
from typing import Any

ALPN = "edgerelay/1"
PROTOCOL_VERSION = 1
DEFAULT_TIMEOUT = 5.0

# Error codes (docs/protocol.md, "Errors and close codes").
INTERNAL = 100
BAD_FRAME = 101
FRAME_TOO_LARGE = 102
HELLO_REQUIRED = 103
UNSUPPORTED_VERSION = 104
AUTH_TIMEOUT = 105
WRONG_STREAM = 106
TOKEN_INVALID = 110
TOKEN_EXPIRED = 111
TOKEN_NOT_YET_VALID = 112
TOO_MANY_CONNECTIONS = 113
PERMISSION_DENIED = 120
BAD_ROOM = 121
TOO_MANY_ROOMS = 122
ALREADY_JOINED = 123
NOT_JOINED = 124
PAYLOAD_TOO_LARGE = 125
RATE_LIMITED = 126
BAD_REQUEST = 127
UNKNOWN_TRACK = 128
MEDIA_LIMIT = 129
SLOW_CONSUMER = 130
GOING_AWAY = 131
IDLE_TIMEOUT = 132
NOT_PARTICIPANT = 150
CALL_ENDED = 151
ONLY_CALLER = 152
ONLY_CALLEE = 153
NOT_RINGING = 154
ALREADY_ANSWERED = 155
NOT_RECONNECTING = 156
TIMED_OUT = 157
SELF_CALL = 158
CROSS_TENANT = 159
NOT_CONNECTED = 160
NOT_HOST = 161
CALL_FULL = 162
ALREADY_INVITED = 163
NOT_INVITED = 164
NOT_IN_CALL = 165
REMOVED = 166
SELF_TARGET = 167

# Field order of every frame (the postcard order; JSON keeps it so encodings are canonical).
CLIENT_FIELDS = {
    "hello": ("version", "token", "client"),
    "join": ("req", "room", "since"),
    "leave": ("req", "room"),
    "publish": ("req", "room", "id", "data"),
    "ping": ("req",),
    "refresh": ("req", "token"),
    "set_status": ("status", "custom"),
    "activity": (),
    "typing": ("room", "typing"),
    "presence_sync": ("req", "room"),
    "privacy": ("hide_presence", "hide_typing"),
    "history": ("req", "room", "before", "limit"),
    "rooms": ("req",),
    "cursor": ("room", "position"),
    # Calls (docs/media.md).
    "track_publish": ("req", "room", "name", "kind", "codec", "layers"),
    "track_unpublish": ("req", "track"),
    "track_subscribe": ("req", "track", "max_layer", "paused"),
    "track_unsubscribe": ("req", "track"),
    "track_mute": ("req", "track", "muted"),
    # WebRTC (docs/protocol.md, ICE servers).
    "ice_servers": ("req",),
    # 1:1 calls (docs/protocol.md, Calls (1:1)): `action` is {"<action>": {fields}}.
    "call": ("req", "call", "action"),
    # The user's own call history (docs/calls.md, History).
    "call_history": ("req", "before", "limit"),
    # Collaborative sessions (docs/protocol.md, Sessions): `action` is {"<action>": {fields}}.
    "session": ("req", "session", "action"),
    # Event topics (docs/events.md): a pattern with `*` / `>`, an optional tag filter.
    "subscribe": ("req", "pattern", "filter", "since"),
    "unsubscribe": ("req", "pattern"),
    # Read marks, unread counts, receipts (docs/protocol.md, Receipts and unread counts).
    "receipts": ("req", "action"),
    "publish_mentions": ("req", "room", "id", "data", "mentions"),
    # In-app notifications (docs/notifications.md): `action` is {"<action>": {fields}}.
    "notifications": ("req", "action"),
    "history_after": ("req", "room", "after", "limit"),
}
SERVER_FIELDS = {
    "welcome": ("version", "session", "user", "server_time", "limits"),
    "joined": ("req", "room", "position", "recovered"),
    "left": ("req", "room"),
    "ack": ("req", "room", "id", "position"),
    "message": ("room", "position", "from", "time", "id", "data"),
    "pong": ("req", "server_time"),
    "error": ("req", "code", "message"),
    "go_away": ("code", "reason", "reconnect_after_ms"),
    "refreshed": ("req", "expires_at"),
    "presence": ("room", "entry"),
    "presence_snapshot": ("req", "room", "users"),
    "presence_refresh": ("room", "count", "digest"),
    "typing": ("room", "users", "others", "version", "ttl_ms"),
    "history": ("req", "room", "position", "first", "messages"),
    "rooms": ("req", "rooms"),
    "track_published": ("req", "room", "track"),
    "track_ok": ("req", "track"),
    "tracks": ("room", "tracks", "ended"),
    "layer": ("track", "layer"),
    "keyframe_request": ("track", "layer"),
    "layers_wanted": ("track", "layers"),
    "speakers": ("room", "speakers", "dominant"),
    "ice_servers": ("req", "servers", "expires_at"),
    "call": ("req", "call", "event"),
    # `calls`: history entries, JSON-shaped as the server API's (docs/calls.md, A history entry).
    "call_history": ("req", "calls", "next"),
    "session": ("req", "session", "event"),
    "subscribed": ("req", "pattern", "position", "recovered"),
    "unsubscribed": ("req", "pattern"),
    "event": ("topic", "position", "time", "id", "tags", "data"),
    "receipts": ("req", "event"),
    "presence_batch": ("room", "entries"),
    "notifications": ("req", "event"),
}
# The nested `action` / `event` of `call` frames (docs/protocol.md, Calls (1:1) and Calls
# (group)): name -> field order.
CALL_ACTION_FIELDS = {
    "initiate": ("callee", "media"),
    "answer": (),
    "reject": (),
    "cancel": (),
    "hang_up": (),
    "rejoin": (),
    "signal": ("data",),
    "create_group": ("media", "invite"),
    "invite": ("users",),
    "join": (),
    "decline": (),
    "leave": (),
    "remove": ("user",),
    "mute": ("user", "kind"),
    "unmute": ("kind",),
    "make_host": ("user",),
    "end": (),
    # Floats (JSON numbers; postcard: 8 bytes little-endian each).
    "quality": ("rtt_ms", "loss", "jitter_ms", "send_kbps", "recv_kbps"),
}
CALL_EVENT_FIELDS = {
    "ok": (),
    "state": ("caller", "callee", "media", "state"),
    "ring": ("caller", "media"),
    "answered_elsewhere": (),
    "signal": ("data",),
    "group": ("host", "media", "participants", "ended"),
    "invited": ("by", "media"),
    "invite_over": ("reason",),
    "removed": ("by",),
    "muted": ("by", "kind"),
    "quality_flag": ("user", "flag", "raised", "value"),
}
GROUP_PARTICIPANT_FIELDS = ("user", "role", "status", "muted_audio", "muted_video")
ICE_SERVER_FIELDS = ("urls", "username", "credential")
PRESENCE_ENTRY_FIELDS = ("user", "status", "custom", "version", "last_seen")


class RelayError(Exception):
    """The relay answered with an ``error`` frame."""

    def __init__(self, frame: dict):
        self.frame = frame
        self.req = frame.get("req")
        self.code = frame.get("code")
        self.message = frame.get("message")
        super().__init__(f"relay error {self.code} (req {self.req}): {self.message}")


class ConnectionClosed(Exception):
    """The connection closed before the awaited answer arrived."""

    def __init__(self, code: int | None, reason: str = ""):
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed (code {code}) {reason}".strip())


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------


def encode_frame(frame_type: str, /, **fields: Any) -> bytes:
    """Encode a client frame as compact JSON bytes, fields in protocol order (positional-only
    type: `track_publish` has a field named `kind`)."""
    order = CLIENT_FIELDS.get(frame_type)
    if order is None:
        raise ValueError(f"unknown client frame type {frame_type!r}")
    missing = set(order) - set(fields)
    extra = set(fields) - set(order)
    if missing or extra:
        raise ValueError(f"{frame_type}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    body = {name: fields[name] for name in order}
    return json.dumps({frame_type: body}, separators=(",", ":"), ensure_ascii=False).encode()


def decode_frame(raw: bytes | str) -> tuple[str, dict]:
    """Decode a JSON frame into (type, fields)."""
    obj = json.loads(raw)
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ValueError(f"a frame is an object with exactly one key, got {raw!r}")
    ((kind, body),) = obj.items()
    if not isinstance(body, dict):
        raise ValueError(f"frame body is not an object: {raw!r}")
    return kind, body


def binary(data: bytes) -> dict:
    """A payload that is not JSON text: ``{"$binary": "<base64>"}``."""
    return {"$binary": base64.b64encode(data).decode("ascii")}


def payload_bytes(value: Any) -> bytes:
    """The opaque bytes a JSON payload stands for."""
    if isinstance(value, dict) and set(value) == {"$binary"}:
        return base64.b64decode(value["$binary"])
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def presence_digest(entries) -> int:
    """Digest of a room's present users (docs/protocol.md, Presence): the low 53 bits of the
    wrapping sum of FNV-1a 64 over ``user 0x00 status 0x00 custom``."""
    total = 0
    for e in entries:
        h = 0xCBF29CE484222325
        for b in e["user"].encode() + b"\0" + e["status"].encode() + b"\0" + (e["custom"] or "").encode():
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        total = (total + h) & 0xFFFFFFFFFFFFFFFF
    return total & ((1 << 53) - 1)


# --- Media group streams (docs/media.md) -------------------------------------------------------

MEDIA_GROUP_STREAM = 0x01
FLAG_KEYFRAME = 0x01
RESET_DROPPED = 0x10


def varint(value: int) -> bytes:
    """LEB128, as every integer of the protocol."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes, at: int) -> tuple[int, int]:
    """(value, position after it)."""
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def group_header(track: int, layer: int, group: int, flags: int) -> bytes:
    return bytes([MEDIA_GROUP_STREAM]) + varint(track) + bytes([layer]) + varint(group) + bytes([flags])


def media_frame(timestamp_us: int, level: int, payload: bytes) -> bytes:
    body = varint(timestamp_us) + bytes([level]) + payload
    return varint(len(body)) + body


def parse_group(stream: bytes) -> tuple[dict, list[dict]]:
    """A whole group stream: its header and its frames."""
    if stream[0] != MEDIA_GROUP_STREAM:
        raise ValueError(f"not a media group stream: {stream[0]:#x}")
    track, at = read_varint(stream, 1)
    layer = stream[at]
    group, at = read_varint(stream, at + 1)
    flags = stream[at]
    at += 1
    header = {"track": track, "layer": layer, "group": group, "keyframe": bool(flags & FLAG_KEYFRAME)}
    frames = []
    while at < len(stream):
        length, start = read_varint(stream, at)
        timestamp_us, body_at = read_varint(stream, start)
        frames.append({"timestamp_us": timestamp_us, "level": stream[body_at],
                       "payload": bytes(stream[body_at + 1:start + length])})
        at = start + length
    return header, frames


def length_prefix(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------------------------------------
# Transport-independent session logic
# ---------------------------------------------------------------------------------------------


class _Client:
    """Request/answer matching and message queues shared by both transports."""

    transport = "?"

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._next_req = 1
        self._pending: dict[int, asyncio.Future] = {}
        self._hello: asyncio.Future | None = None
        self._messages: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self._closed = asyncio.Event()
        self.received: list[tuple[str, dict]] = []  # every frame, in arrival order
        self.connection_errors: list[dict] = []  # error frames no request was waiting for
        self.unsolicited: list[tuple[str, dict]] = []  # answers nobody waited for
        self.go_away: dict | None = None
        self.welcome: dict | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        # Presence views per room: user -> entry (present users), and every user's version.
        self.presence: dict[str, dict[str, dict]] = defaultdict(dict)
        self.presence_versions: dict[str, dict[str, int]] = defaultdict(dict)
        self.presence_refreshes: dict[str, dict] = {}
        self.typing_views: dict[str, dict] = {}
        # Call events, 1:1 and group (``call`` frames with req 0), in arrival order.
        self.call_events: asyncio.Queue = asyncio.Queue()

    # -- to implement per transport --------------------------------------------------------

    async def _send(self, kind: str, frame: bytes, room: str | None) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- context manager -------------------------------------------------------------------

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- dispatch --------------------------------------------------------------------------

    def _on_frame(self, raw: bytes | str) -> None:
        kind, body = decode_frame(raw)
        self.received.append((kind, body))
        if kind == "welcome":
            self.welcome = body
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(body)
            else:
                self.unsolicited.append((kind, body))
        elif kind == "message":
            self._messages[body["room"]].put_nowait(body)
        elif kind == "go_away":
            self.go_away = body
        elif kind == "presence":
            self._apply_presence(body["room"], body["entry"])
        elif kind == "presence_batch":
            for entry in body["entries"]:
                self._apply_presence(body["room"], entry)
        elif kind == "presence_refresh":
            self.presence_refreshes[body["room"]] = body
        elif kind == "call" and body["req"] == 0:
            self.call_events.put_nowait(body)
        elif kind == "typing":
            held = self.typing_views.get(body["room"])
            if held is None or body["version"] >= held["version"]:
                self.typing_views[body["room"]] = body
        elif kind == "presence_snapshot":
            room = body["room"]
            self.presence[room] = {e["user"]: e for e in body["users"]}
            for e in body["users"]:
                versions = self.presence_versions[room]
                versions[e["user"]] = max(versions.get(e["user"], 0), e["version"])
            fut = self._pending.pop(body["req"], None) if body["req"] else None
            if fut is not None and not fut.done():
                fut.set_result((kind, body))
        elif kind == "error":
            req = body.get("req", 0)
            fut = self._pending.pop(req, None) if req else None
            if fut is not None and not fut.done():
                fut.set_exception(RelayError(body))
            else:
                # About the connection (req 0), or a fatal error about a frame nobody awaits
                # (e.g. `wrong_stream`, which comes on the control stream with the frame's req).
                self.connection_errors.append(body)
                if self._hello is not None and not self._hello.done():
                    self._hello.set_exception(RelayError(body))
        else:
            fut = self._pending.pop(body.get("req"), None)
            if fut is None or fut.done():
                self.unsolicited.append((kind, body))
            else:
                fut.set_result((kind, body))

    def _apply_presence(self, room: str, entry: dict) -> None:
        """Apply an update only when newer than what is held (late datagrams never roll back)."""
        versions = self.presence_versions[room]
        if entry["version"] <= versions.get(entry["user"], 0):
            return
        versions[entry["user"]] = entry["version"]
        if entry["status"] == "offline":
            self.presence[room].pop(entry["user"], None)
        else:
            self.presence[room][entry["user"]] = entry

    def presence_in_sync(self, room: str) -> bool:
        """Whether the last ``presence_refresh`` of ``room`` agrees with this client's view."""
        refresh = self.presence_refreshes.get(room)
        view = list(self.presence[room].values())
        return refresh is not None and refresh["count"] == len(view) \
            and refresh["digest"] == presence_digest(view)

    def _on_closed(self, code: int | None, reason: str = "") -> None:
        if self._closed.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        self._closed.set()
        exc = ConnectionClosed(code, reason)
        for fut in list(self._pending.values()) + [self._hello]:
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be awaiting it
        self._pending.clear()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait for the relay to close the connection; returns the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_code

    # -- requests --------------------------------------------------------------------------

    def _req(self) -> int:
        req = self._next_req
        self._next_req += 1
        return req

    async def _request(self, kind: str, expect: str, route: str | None, timeout: float, **fields):
        if self.is_closed:
            raise ConnectionClosed(self.close_code, self.close_reason)

        async def send(req: int) -> None:
            await self._send(kind, encode_frame(kind, req=req, **fields), route)

        return await self._exchange(kind, expect, send, timeout)

    async def _exchange(self, kind: str, expect: str, send, timeout: float) -> dict:
        """Take a fresh ``req``, ``await send(req)`` and wait for the answer, of type ``expect``."""
        req = self._req()
        fut = self._loop.create_future()
        self._pending[req] = fut
        try:
            await send(req)
            got, body = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req, None)
        if got != expect:
            raise AssertionError(f"{kind} req {req}: expected {expect}, got {got} {body}")
        return body

    async def track_publish(self, room: str, name: str, track_kind: str, codec: str, layers: list,
                            timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Publish a media track in a joined room; returns ``track_published``."""
        async def send(req: int) -> None:
            frame = encode_frame("track_publish", req=req, room=room, name=name, kind=track_kind,
                                 codec=codec, layers=layers)
            await self._send("track_publish", frame, room)

        return await self._exchange("track_publish", "track_published", send, timeout)

    async def track_subscribe(self, track: int, max_layer: int = 2, paused: bool = False,
                              timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await self._request("track_subscribe", "track_ok", None, timeout, track=track,
                                   max_layer=max_layer, paused=paused)

    async def send_raw(self, kind: str, route: str | None = None, **fields) -> None:
        """Send any client frame as is (for protocol-violation tests); ``route`` is the room
        whose stream carries it on QUIC (None: the control stream)."""
        await self._send(kind, encode_frame(kind, **fields), route)

    async def hello(self, token: str, client: str = "edgerelay-py/1",
                    version: int = PROTOCOL_VERSION, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Send ``hello``; returns ``welcome`` or raises RelayError / ConnectionClosed."""
        self._hello = self._loop.create_future()
        await self._send("hello", encode_frame("hello", version=version, token=token, client=client), None)
        return await asyncio.wait_for(self._hello, timeout)

    async def join(self, room: str, since: dict | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await self._request("join", "joined", room, timeout, room=room, since=since)

    async def leave(self, room: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await self._request("leave", "left", room, timeout, room=room)

    async def publish(self, room: str, id: str, data: Any,
                      timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Publish and wait for the ``ack`` (returns it)."""
        return await self._request("publish", "ack", room, timeout, room=room, id=id, data=data)

    async def ping(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await self._request("ping", "pong", None, timeout)

    async def ice_servers(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The STUN and TURN servers with fresh TURN credentials (``ice_servers``)."""
        return await self._request("ice_servers", "ice_servers", None, timeout)

    async def call(self, action: str, call: str = "", timeout: float = DEFAULT_TIMEOUT, **fields) -> str:
        """A 1:1 call action (docs/calls.md) on the control stream, e.g. ``call("initiate",
        callee="bob", media="video")`` or ``call("answer", call_id)``; returns the call's id from
        the ``ok`` answer (raises RelayError)."""
        body = await self._request("call", "call", None, timeout, call=call, action={action: fields})
        assert body["event"] == {"ok": {}}, body
        return body["call"]

    async def call_history(self, before: str | None = None, limit: int = 50,
                           timeout: float = DEFAULT_TIMEOUT) -> dict:
        """A page of this user's call history, newest first (``call_history``): ``calls`` and
        ``next`` (pass it as ``before`` for the next page; ``None`` at the end)."""
        return await self._request("call_history", "call_history", None, timeout, before=before, limit=limit)

    async def next_call_event(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, str, dict]:
        """The next call event: (call id, event name, event fields)."""
        body = await asyncio.wait_for(self.call_events.get(), timeout)
        ((name, fields),) = body["event"].items()
        return body["call"], name, fields

    async def refresh(self, token: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await self._request("refresh", "refreshed", None, timeout, token=token)

    async def presence_sync(self, room: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Ask for the room's presence snapshot again; returns it (it also replaces the view)."""
        return await self._request("presence_sync", "presence_snapshot", room, timeout, room=room)

    async def next_message(self, room: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The next ``message`` of ``room`` (raises ConnectionClosed / TimeoutError)."""
        queue = self._messages[room]
        if not queue.empty():
            return queue.get_nowait()
        if self.is_closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        get = asyncio.ensure_future(queue.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait({get, closed}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not get.done():
                get.cancel()
        if get in done:
            return get.result()
        if closed in done:
            raise ConnectionClosed(self.close_code, self.close_reason)
        raise asyncio.TimeoutError(f"no message in {room} within {timeout}s")

    async def messages(self, room: str, count: int, timeout: float = DEFAULT_TIMEOUT) -> list:
        return [await self.next_message(room, timeout) for _ in range(count)]

    async def next_connection_error(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The first ``error`` no request was waiting for, waiting for it if needed."""
        deadline = self._loop.time() + timeout
        while not self.connection_errors:
            if self._loop.time() > deadline:
                raise asyncio.TimeoutError("no connection error frame")
            if self.is_closed:
                await asyncio.sleep(0.05)  # frames that raced the close
                if not self.connection_errors:
                    raise ConnectionClosed(self.close_code, self.close_reason)
            await asyncio.sleep(0.01)
        return self.connection_errors[0]


# ---------------------------------------------------------------------------------------------
# Raw QUIC
# ---------------------------------------------------------------------------------------------


def _quic_protocol_class():
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events

    class EdgeRelayQuicProtocol(QuicConnectionProtocol):
        """Reassembles length-prefixed frames per stream and hands them to the client."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.client: QuicClient | None = None
            self._buffers: dict[int, bytearray] = defaultdict(bytearray)
            self.finished_by_peer: set[int] = set()
            self.terminated: events.ConnectionTerminated | None = None
            # Tests: while set, every UDP datagram from the relay is dropped unread (an outage
            # on the way in; the client sends nothing it would not send in one).
            self.deaf = False

        def datagram_received(self, data, addr) -> None:
            if not self.deaf:
                super().datagram_received(data, addr)

        def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
            if stream_id & 0x3 == 0x3:
                # A unidirectional stream the relay opened: one media group.
                self._buffers[stream_id] += data
                if ended and self.client is not None:
                    self.client.media_groups.append(parse_group(bytes(self._buffers.pop(stream_id))))
                return
            buf = self._buffers[stream_id]
            buf += data
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                body = bytes(buf[4:4 + n])
                del buf[:4 + n]
                if self.client is not None:
                    self.client._on_stream_frame(stream_id, body)
            if ended:
                self.finished_by_peer.add(stream_id)
                if self.client is not None:
                    self.client._on_stream_finished(stream_id)

        def quic_event_received(self, event) -> None:
            if isinstance(event, events.StreamDataReceived):
                self.stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.DatagramFrameReceived):
                if self.client is not None:
                    self.client._on_datagram(event.data)
            elif isinstance(event, events.StreamReset) and event.stream_id & 0x3 == 0x3:
                self._buffers.pop(event.stream_id, None)
                if self.client is not None:
                    self.client.media_resets.append(event.error_code)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = event
                if self.client is not None:
                    self.client._on_closed(event.error_code, event.reason_phrase)

        def connection_lost(self, exc) -> None:
            super().connection_lost(exc)
            if self.client is not None:
                self.client._on_closed(None, f"transport lost: {exc}")

    return EdgeRelayQuicProtocol


class QuicClient(_Client):
    transport = "quic"
    alpn = ALPN

    def __init__(self, protocol, udp_transport, room_streams: bool = True):
        super().__init__()
        self._protocol = protocol
        self._udp = udp_transport
        self.room_streams = room_streams
        self.control_stream: int | None = None
        self.room_stream: dict[str, int] = {}
        self.frames_by_stream: dict[int, list[tuple[str, dict]]] = defaultdict(list)
        self.datagrams_received: list[tuple[str, dict]] = []
        self.relay_heartbeats = 0
        # Media groups the relay forwarded (header, frames), complete ones only, and the
        # reset codes of the ones it dropped.
        self.media_groups: list[tuple[dict, list[dict]]] = []
        self.media_resets: list[int] = []
        protocol.client = self

    @classmethod
    async def connect(cls, host: str, port: int, *, cafile: str | None = None,
                      cert_sha256: str | None = None, server_name: str = "localhost",
                      room_streams: bool = True, timeout: float = DEFAULT_TIMEOUT) -> QuicClient:
        """Connect and complete the TLS handshake.

        The server certificate is verified against ``cafile`` (the relay's self-signed
        dev-cert.pem) for ``server_name``; when ``cert_sha256`` (hex) is given the peer
        certificate's SHA-256 must also match it (the pinning rule of the docs).
        """
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        config = QuicConfiguration(is_client=True, alpn_protocols=[cls.alpn],
                                   server_name=server_name, idle_timeout=30.0,
                                   max_datagram_frame_size=65536)
        if cafile is not None:
            config.verify_mode = ssl.CERT_REQUIRED
            config.load_verify_locations(cafile=cafile)
        elif cert_sha256 is not None:
            config.verify_mode = ssl.CERT_NONE  # pinned below instead
        else:
            raise ValueError("need cafile or cert_sha256 to authenticate the relay")

        loop = asyncio.get_running_loop()
        # Bind an IPv4 socket on loopback ourselves (aioquic's connect() binds [::]).
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1" if host.startswith("127.") else "0.0.0.0", 0))
        protocol_cls = cls._protocol_class()
        udp, protocol = await loop.create_datagram_endpoint(
            lambda: protocol_cls(QuicConnection(configuration=config)), sock=sock)
        client = cls(protocol, udp, room_streams=room_streams)
        try:
            protocol.connect((host, port))
            await asyncio.wait_for(protocol.wait_connected(), timeout)
            if protocol._quic.tls.alpn_negotiated != cls.alpn:
                raise ConnectionError(f"ALPN {protocol._quic.tls.alpn_negotiated!r}")
            if cert_sha256 is not None:
                got = client.tls_peer_certificate_sha256
                if got is None:
                    raise ConnectionError("no peer certificate to check the pin against")
                if got != cert_sha256.lower():
                    raise ConnectionError(f"certificate sha256 {got} != pinned {cert_sha256}")
            await client._established(host, port, timeout)
        except BaseException:
            protocol.close()
            udp.close()
            raise
        return client

    @staticmethod
    def _protocol_class():
        return _quic_protocol_class()

    async def _established(self, host: str, port: int, timeout: float) -> None:
        """After the QUIC handshake: nothing more for raw QUIC."""

    @property
    def tls_peer_certificate_sha256(self) -> str | None:
        """Hex SHA-256 of the relay's certificate (DER), once the handshake has set it."""
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = self._protocol._quic.tls._peer_certificate
        return None if cert is None else hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    def _new_stream(self) -> int:
        return self._protocol._quic.get_next_available_stream_id(is_unidirectional=False)

    def _stream_for(self, kind: str, room: str | None) -> int:
        if self.control_stream is None:
            # The first client-opened bidirectional stream is the control stream.
            self.control_stream = self._new_stream()
        if not self.room_streams or room is None:
            return self.control_stream
        if kind == "join":
            if room not in self.room_stream:
                self.room_stream[room] = self._new_stream()
            return self.room_stream[room]
        # publish / leave travel on the room's stream when joined, else on the control stream
        return self.room_stream.get(room, self.control_stream)

    async def _send(self, kind: str, frame: bytes, room: str | None) -> None:
        self.send_on_stream(self._stream_for(kind, room), frame)

    def send_on_stream(self, stream_id: int, frame: bytes, end_stream: bool = False) -> None:
        """Write one length-prefixed frame on a stream (raw access for tests)."""
        if self.is_closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        self._protocol._quic.send_stream_data(stream_id, length_prefix(frame), end_stream=end_stream)
        self._protocol.transmit()

    def send_group(self, header: bytes, frames: list[bytes]) -> None:
        """Publish one media group: a new unidirectional stream, its header, its frames, FIN."""
        quic = self._protocol._quic
        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(stream_id, header + b"".join(frames), end_stream=True)
        self._protocol.transmit()

    def send_datagram(self, kind: str, **fields) -> None:
        """Send one client frame as a datagram (a bare body: no length prefix)."""
        self.send_datagram_bytes(encode_frame(kind, **fields))

    def set_deaf(self, deaf: bool) -> None:
        """Drop (or stop dropping) everything the relay sends: a simulated outage (tests)."""
        self._protocol.deaf = deaf

    def send_datagram_bytes(self, body: bytes) -> None:
        """Send ``body`` as it is in one QUIC datagram (raw access for tests)."""
        if self.is_closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        self._protocol._quic.send_datagram_frame(body)
        self._protocol.transmit()

    async def ping_datagram(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """``ping`` as a datagram; the relay answers with a ``pong`` datagram. Either may be
        lost, so this raises TimeoutError then."""

        async def send(req: int) -> None:
            self.send_datagram("ping", req=req)

        return await self._exchange("ping", "pong", send, timeout)

    def _on_datagram(self, body: bytes) -> None:
        if not any(body):
            # A heartbeat from the relay (it probes a fade); it carries nothing. The relay only
            # sends them after this client sent one.
            self.relay_heartbeats += 1
            return
        self.datagrams_received.append(decode_frame(body))
        self._on_frame(body)

    def finish_stream(self, stream_id: int) -> None:
        if not self.is_closed:
            self._protocol._quic.send_stream_data(stream_id, b"", end_stream=True)
            self._protocol.transmit()

    def _on_stream_frame(self, stream_id: int, body: bytes) -> None:
        kind, fields = decode_frame(body)
        self.frames_by_stream[stream_id].append((kind, fields))
        self._on_frame(body)

    def _on_stream_finished(self, stream_id: int) -> None:
        for room, sid in list(self.room_stream.items()):
            if sid == stream_id:
                # After `left` or a refused `join` the relay finishes the room's stream.
                del self.room_stream[room]
                self.finish_stream(stream_id)

    @property
    def stream_finished_by_relay(self) -> set[int]:
        return set(self._protocol.finished_by_peer)

    def _drop_room_stream(self, room: str) -> None:
        """Finish and forget the room's stream, so that a rejoin opens a fresh one even if the
        relay's FIN has not arrived yet."""
        sid = self.room_stream.pop(room, None) if self.room_streams else None
        if sid is not None:
            self.finish_stream(sid)

    async def join(self, room: str, since: dict | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> dict:
        try:
            return await super().join(room, since, timeout)
        except RelayError:
            self._drop_room_stream(room)
            raise

    async def leave(self, room: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        left = await super().leave(room, timeout)
        # The relay finishes the room's stream after `left`.
        self._drop_room_stream(room)
        return left

    async def close(self, code: int = 0, timeout: float = 2.0) -> None:
        if not self.is_closed:
            self._protocol.close(error_code=code)
        try:
            await asyncio.wait_for(self._protocol.wait_closed(), timeout)
        except asyncio.TimeoutError:
            pass
        self._udp.close()
        self._on_closed(code, "closed by client")


# ---------------------------------------------------------------------------------------------
# WebTransport (HTTP/3 over the same UDP port, session at /v1/wt)
# ---------------------------------------------------------------------------------------------

WEBTRANSPORT_PATH = "/v1/wt"


def _webtransport_protocol_class():
    from aioquic.h3.connection import H3Connection
    from aioquic.h3.events import DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
    from aioquic.quic import events

    base = _quic_protocol_class()

    class EdgeRelayWebTransportProtocol(base):
        """Runs QUIC events through aioquic's HTTP/3 layer; WebTransport stream data and
        datagrams then take the same path as on raw QUIC."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic, enable_webtransport=True)
            self.connect_response: asyncio.Future | None = None
            self.connect_stream: int | None = None

        def quic_event_received(self, event) -> None:
            if isinstance(event, events.ConnectionTerminated):
                if self.connect_response is not None and not self.connect_response.done():
                    self.connect_response.set_exception(
                        ConnectionError(f"closed before the CONNECT was answered: {event.reason_phrase}"))
                return super().quic_event_received(event)
            for h3 in self.http.handle_event(event):
                if isinstance(h3, HeadersReceived) and h3.stream_id == self.connect_stream:
                    if self.connect_response is not None and not self.connect_response.done():
                        self.connect_response.set_result(dict(h3.headers))
                elif isinstance(h3, WebTransportStreamDataReceived):
                    self.stream_data(h3.stream_id, h3.data, h3.stream_ended)
                elif isinstance(h3, DatagramReceived) and self.client is not None:
                    self.client._on_datagram(h3.data)

    return EdgeRelayWebTransportProtocol


class WebTransportClient(QuicClient):
    """Protocol v1 over a WebTransport session: exactly the raw QUIC client, with every
    bidirectional stream opened as a WebTransport stream and datagrams as HTTP/3 datagrams."""

    transport = "webtransport"
    alpn = "h3"
    path = WEBTRANSPORT_PATH  # a subclass may request another path

    session_id: int | None = None

    @staticmethod
    def _protocol_class():
        return _webtransport_protocol_class()

    async def _established(self, host: str, port: int, timeout: float) -> None:
        protocol = self._protocol
        session = protocol._quic.get_next_available_stream_id()
        protocol.connect_stream = session
        protocol.connect_response = self._loop.create_future()
        protocol.http.send_headers(session, [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", f"{host}:{port}".encode()),
            (b":path", self.path.encode()),
            (b"origin", b"https://edgerelay-py.test"),
        ])
        protocol.transmit()
        headers = await asyncio.wait_for(protocol.connect_response, timeout)
        self.connect_status = int(headers.get(b":status", b"0"))
        if self.connect_status != 200:
            raise ConnectionError(f"WebTransport CONNECT {self.path} answered {self.connect_status}")
        self.session_id = session

    def _new_stream(self) -> int:
        from aioquic.h3.connection import FrameType

        http = self._protocol.http
        stream_id = http.create_webtransport_stream(self.session_id, is_unidirectional=False)
        # aioquic 1.7 routes data arriving on a client-opened bidirectional stream as HTTP/3
        # frames unless the stream's state says it is a WebTransport stream: say so.
        with http._get_or_create_stream(stream_id) as stream:
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = self.session_id
        return stream_id

    def send_datagram_bytes(self, body: bytes) -> None:
        """Send ``body`` as it is in one WebTransport datagram of the session."""
        if self.is_closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        self._protocol.http.send_datagram(self.session_id, body)
        self._protocol.transmit()


# ---------------------------------------------------------------------------------------------
# WebSocket
# ---------------------------------------------------------------------------------------------


class WsClient(_Client):
    transport = "ws"

    def __init__(self, ws):
        super().__init__()
        self._ws = ws
        self.binary_messages: list[bytes] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, timeout: float = DEFAULT_TIMEOUT) -> WsClient:
        from websockets.asyncio.client import connect

        ws = await connect(url, open_timeout=timeout, close_timeout=2, max_size=2**20,
                           compression=None)
        return cls(ws)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed as WsClosed

        try:
            async for msg in self._ws:
                if isinstance(msg, bytes):
                    self.binary_messages.append(msg)  # JSON codec: never expected
                else:
                    self._on_frame(msg)
        except WsClosed:
            pass
        finally:
            code = self._ws.close_code
            self._on_closed(code, self._ws.close_reason or "")

    async def _send(self, kind: str, frame: bytes, room: str | None) -> None:
        from websockets.exceptions import ConnectionClosed as WsClosed

        if self.is_closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        try:
            await self._ws.send(frame.decode())  # one text message per JSON frame
        except WsClosed as exc:
            raise ConnectionClosed(self._ws.close_code, str(exc)) from exc

    async def close(self, timeout: float = 3.0) -> None:
        try:
            await asyncio.wait_for(self._ws.close(), timeout)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self._reader, timeout)
        except Exception:
            self._reader.cancel()
