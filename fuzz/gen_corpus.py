#!/usr/bin/env python3
"""Write the seed corpora in fuzz/corpus/<target>/ (committed; rerun to refresh).

Seeds are built with independent encoders (Python's zlib for permessage-deflate,
hand-written frame/varint/capsule encoders) so they do not just mirror the
engine's own encoders. Inputs whose layout starts with fuzzer-chosen settings
(ws_decoder, inflate, wt_capsule, json_route) get a small prefix; see each
target's doc comment.
"""
import hashlib
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- http_head ---------------------------------------------------------------
UPGRADE = (
    "GET /ws/rooms?room=general&room=b%20c HTTP/1.1\r\n"
    "Host: 127.0.0.1:8080\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: json, chat\r\n"
    "{ext}"
    "\r\n"
)
for ext in [
    "",
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; "
    "client_no_context_takeover, permessage-deflate\r\n",
    "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=9; "
    "server_no_context_takeover\r\n",
    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=08\r\n",
]:
    put("http_head", UPGRADE.format(ext=ext))
put(
    "http_head",
    "GET /sse?room=a&room=b HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
    "Last-Event-ID: a=18c3f2a1b:42;b%3Dc=0:7\r\n\r\n",
)
put(
    "http_head",
    "POST /publish?room=general HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    "Authorization: Bearer abc.def.ghi\r\n\r\nhello",
)
put("http_head", "GET / HTTP/1.0\r\n\r\n")
put("http_head", "GET /metrics HTTP/1.1\nHost: x\n\n")
put("http_head", "GET /x HTTP/1.1\r\nHost: x\r\n" + "X-A: b\r\n" * 70 + "\r\n")

# --- ws_decoder --------------------------------------------------------------
def ws_frame(opcode, payload, fin=True, rsv1=False, mask=b"\x37\xfa\x21\x3d"):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def deflate(payload, wbits=15):
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# raw mode: byte 0 even; then limits (3 + 3 bytes), deflate on (odd),
# context takeover (even), window (7 -> 15), no chunk list (0); then the wire.
RAW = bytes([0x00, 0x01, 0x00, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00, 0x07, 0x00])
text = "héllo wörld ✓ ".encode() * 3
z = deflate(b'{"action":"chat.message","room":"general","text":"hi"}' * 4)
wires = [
    ws_frame(0x1, b"hello"),
    ws_frame(0x2, bytes(range(256))),
    ws_frame(0x1, text[:7], fin=False) + ws_frame(0x9, b"ping!")
    + ws_frame(0x0, text[7:20], fin=False) + ws_frame(0x0, text[20:]),
    ws_frame(0x1, z, rsv1=True),
    ws_frame(0x2, z[:10], fin=False, rsv1=True) + ws_frame(0xA, b"")
    + ws_frame(0x0, z[10:]),
    ws_frame(0x8, struct.pack(">H", 1000) + b"bye"),
    ws_frame(0x8, b""),
    ws_frame(0x1, b"x" * 300) + ws_frame(0x2, b"y" * 70000),
    ws_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
    ws_frame(0x9, b"p" * 125),
]
for w in wires:
    put("ws_decoder", RAW + w)
# model mode: byte 0 odd; the rest scripts the client.
for i in range(6):
    put("ws_decoder", bytes([0x01]) + hashlib.sha256(bytes([i])).digest() * (i + 1))

# --- inflate -----------------------------------------------------------------
# Prefix: window (7 -> 15), context takeover (even), deflater window, no prefix;
# then per message: limit kind + limit, then the message choice.
for payload in [b"", b"a", b"hello hello hello hello", bytes(range(256)) * 8,
                json.dumps({"action": "x", "data": list(range(100))}).encode()]:
    for wbits in (9, 15):
        put("inflate", bytes([0x07, 0x00, 0x07, 0x00, 0x02, 0xff, 0xff, 0x00]) + deflate(payload, wbits))
put("inflate", bytes([0x07, 0x00, 0x07, 0x00, 0x00, 0x10, 0x00]) + deflate(b"\x00" * 100000))
# A final block followed by trailing bytes, a stored block, garbage.
put("inflate", bytes([0x07, 0x01, 0x07, 0x00, 0x02, 0xff, 0xff, 0x00]) + zlib.compress(b"final", 9)[2:-4] + b"junk")
put("inflate", bytes([0x07, 0x00, 0x07, 0x00, 0x02, 0xff, 0xff, 0x00, 0x01, 0x05, 0x00, 0xfa, 0xff]) + b"plain")
put("inflate", bytes([0x03, 0x00, 0x01, 0x00, 0x02, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff]))

# --- sse_cursor --------------------------------------------------------------
for c in ["18c3f2a1b:42", "0:0", "FFFFFFFFFFFFFFFF:18446744073709551615",
          "10000000000000000:1", "1:18446744073709551616", "00ab:0042", ":1", "1:", "1",
          "", "general=18c3f2a1b:42", "a=1:2;b%3Dc=3:4;%25=5:6", "a=1:2;a=3:4",
          "a=1:2;;b=3:4", "a%zz=1:2", "r%C3%A9sum%C3%A9=ff:9", "a=1:2;b"]:
    put("sse_cursor", c)
# Generated mode: 0xff then fuzzer-chosen rooms and an event.
put("sse_cursor", b"\xff\x03\x05rooma\x01\x02\x03\x04\x05\x06\x07\x08" + bytes(16) + b"\x01\x03a;b")

# --- wt_capsule --------------------------------------------------------------
def varint(v, size=None):
    if size is None:
        size = 1 if v < 64 else 2 if v < 16384 else 4 if v < 2**30 else 8
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size] << (size * 8 - 2)
    return (prefix | v).to_bytes(size, "big")


def capsule(ty, body):
    return varint(ty) + varint(len(body)) + body


def h3_frame(ty, body):
    return varint(ty) + varint(len(body)) + body


wt_seeds = [
    capsule(0x2843, struct.pack(">I", 7) + "bye ✓".encode()),
    capsule(0x78AE, b""),
    capsule(0x17, b"unknown capsule skipped") + capsule(0x2843, struct.pack(">I", 0)),
    capsule(0x2843, b"\x00\x01"),
    capsule(0x2843, struct.pack(">I", 1) + b"x" * 1100),
    h3_frame(0x04, varint(0x08) + varint(1) + varint(0x33) + varint(1)
             + varint(0x2B603742) + varint(1) + varint(0xC671706A) + varint(16)),
    # HEADERS: QPACK prefix (0, 0) then ":method CONNECT" (static 15) etc.
    h3_frame(0x01, b"\x00\x00\xcf\xd1\xd7" + b"\x50\x09localhost" + b"\x51\x05/wt/x"),
    h3_frame(0x00, b"data bytes") + h3_frame(0x21, b"grease") + h3_frame(0x00, b"more"),
    h3_frame(0x07, varint(4)),
    varint(1 + 5) + b"\x00hello" + varint(1 + 3) + b"\x01\xff\x00\x01",
    varint(0x54) + varint(4),
    varint(0x41, 2) + varint(0, 8),
    b"\x00" + varint(7) + b"general" + b"payload",
    varint(5) + b"\x00\xc3\x28ab",
]
for i, s in enumerate(wt_seeds):
    put("wt_capsule", bytes([i * 37 % 256]) + s)

# --- json_route --------------------------------------------------------------
for mode, msg in [
    (0, {"action": "chat.message", "room": "general", "text": "hi", "id": 7}),
    (0, {"action": "join", "room": "general"}),
    (1, {"type": "ping", "id": "abc"}),
    (0, {"action": 5}),
    (0, {"text": "no action"}),
    (1, {"action": "wrong key"}),
    (0, {"action": "x", "nested": {"a": [1, 2.5, -3e10, None, True]}, "id": None}),
]:
    put("json_route", bytes([mode]) + json.dumps(msg).encode())
for mode, raw in [(0, b"[1,2,3]"), (0, b"not json"), (0, b'"str"'), (2, b'{"action":"x"}'),
                  (0, b'{"action":"a","action":"b"}'), (0, b"\xff\xfe"),
                  (0, b'{"action":"\\ud83d\\ude00"}'), (0, b"1e400")]:
    put("json_route", bytes([mode]) + raw)
