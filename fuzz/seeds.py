#!/usr/bin/env python3
"""Writes a fuzz target's seed inputs, made from the golden vectors (tests/golden/frames-v1.json):

    python3 fuzz/seeds.py TARGET DIR

Each seed has the layout the target reads (see fuzz/fuzz_targets/TARGET.rs): most start with a
selector or split-size byte. The seeds are made afresh on every run; libFuzzer's corpus
(fuzz/corpus/TARGET) keeps what it found."""
import base64
import hashlib
import hmac
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = json.load(open(os.path.join(ROOT, "tests/golden/frames-v1.json")))
CLIENT = [v for v in GOLDEN.values() if v["direction"] == "client"]
SECRET = b"fuzzing-dev-secret"  # fuzz_targets/jwt.rs


def ws_frame(opcode, payload, fin=True, rsv1=False, mask=b"\x37\xfa\x21\x3d"):
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(claims):
    signing = b64(b'{"alg":"HS256","kid":"dev","typ":"JWT"}') + b"." + b64(claims)
    return signing + b"." + b64(hmac.new(SECRET, signing, hashlib.sha256).digest())


def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n == 0:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def seeds(target):
    if target == "client_frame":
        for v in CLIENT:
            yield b"\x00" + bytes.fromhex(v["postcard_hex"])
            yield b"\x01" + v["json"].encode()
    elif target == "stream_framing":
        bodies = [bytes.fromhex(v["postcard_hex"]) for v in CLIENT]
        yield b"\x03" + b"".join(struct.pack(">I", len(b)) + b for b in bodies[:20])
        yield b"\x01" + struct.pack(">I", 5000) + b"x" * 10
    elif target == "ws_framing":
        for i, v in enumerate(CLIENT[:40]):
            body = v["json"].encode()
            yield bytes([1 + i % 7]) + ws_frame(0x1, body)
            yield bytes([3]) + ws_frame(0x2, bytes.fromhex(v["postcard_hex"]), fin=False) + ws_frame(
                0x9, b"ping") + ws_frame(0x0, b"tail")
        yield b"\x05" + ws_frame(0x8, struct.pack(">H", 1000) + b"bye")
        # permessage-deflate: "Hello" compressed (RFC 7692 section 7.2.3.1), RSV1 set.
        yield b"\x05" + ws_frame(0x1, bytes.fromhex("f248cdc9c90700"), rsv1=True)
    elif target == "ws_handshake":
        base = (b"/v1/ws\nconnection: Upgrade\nupgrade: websocket\nsec-websocket-version: 13\n"
                b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\n")
        yield base
        yield base + b"sec-websocket-extensions: permessage-deflate; client_max_window_bits\n"
        yield base + (b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover; "
                      b"client_max_window_bits=10, permessage-deflate\n")
    elif target == "jwt":
        claims = {"sub": "alice", "tenant": "acme", "exp": 1_900_000_000, "aud": "relay",
                  "caps": {"join": ["room:*"], "publish": ["room:{sub}"]}}
        raw = json.dumps(claims).encode()
        yield b"\x01" + raw
        yield b"\x00" + token(raw)
        yield b"\x01" + json.dumps(dict(claims, nbf=1_799_999_990, iat=1, jti="t1", aud=["x", "relay"])).encode()
    elif target == "media":
        header = bytes([0x01]) + varint(7) + bytes([0]) + varint(300) + bytes([1])
        heads = [(varint(1000 * i) + bytes([i]), p) for i, p in enumerate([b"key", b"delta" * 20, b""])]
        frames = b"".join(varint(len(h) + len(p)) + h + p for h, p in heads)
        yield b"\x02" + header + frames
        yield b"\x07" + header
    else:
        raise SystemExit(f"unknown target {target}")


def main():
    target, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for seed in seeds(target):
        name = hashlib.sha1(seed).hexdigest()
        with open(os.path.join(out, name), "wb") as f:
            f.write(seed)


if __name__ == "__main__":
    main()
