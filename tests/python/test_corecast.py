"""corecast driven by the `websockets` library (an independent implementation):
echo, rooms across shards, permessage-deflate, ping/pong, close codes and
graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

from corecast_harness import Server, run

STEP = 10.0



async def recv(ws):
    return await asyncio.wait_for(ws.recv(), STEP)


# --- echo -----------------------------------------------------------------


@run
async def test_echo_text_binary_and_empty():
    with Server() as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            for msg in ["hello", "ünïcødé ✓", "", b"\x00\x01\xff", b""]:
                await ws.send(msg)
                assert await recv(ws) == msg


@run
async def test_echo_one_mebibyte():
    with Server(shards=2) as server:
        async with connect(server.url("/ws/echo"), max_size=2**21, compression=None) as ws:
            data = os.urandom(1 << 20)
            await ws.send(data)
            assert await recv(ws) == data


@run
async def test_echo_fragmented_message_from_iterable():
    with Server() as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            # websockets sends an iterable as one fragmented message.
            await ws.send(["frag", "ment", "ed ✓"])
            assert await recv(ws) == "fragmented ✓"


# --- rooms ----------------------------------------------------------------


@run
async def test_room_broadcast_reaches_all_members_on_two_shards():
    with Server(shards=2) as server:
        url = server.url("/ws/chat?room=py")
        members = [await connect(url, compression=None) for _ in range(24)]
        try:
            sent = []
            for i, ws in enumerate(members[:3]):
                for k in range(5):
                    msg = f"m{i}-{k}"
                    await ws.send(msg)
                    sent.append(msg)
            for n, ws in enumerate(members):
                got = [await recv(ws) for _ in sent]
                assert sorted(got) == sorted(sent), f"member {n}"
                # Per-publisher order is preserved.
                for i in range(3):
                    mine = [m for m in got if m.startswith(f"m{i}-")]
                    assert mine == [f"m{i}-{k}" for k in range(5)], f"member {n}"
        finally:
            await asyncio.gather(*(ws.close() for ws in members), return_exceptions=True)


@run
async def test_rooms_are_isolated():
    with Server() as server:
        async with connect(server.url("/ws/chat?room=x"), compression=None) as x, connect(
            server.url("/ws/chat?room=y"), compression=None
        ) as y:
            await x.send("for-x")
            assert await recv(x) == "for-x"
            await y.send("for-y")
            assert await recv(y) == "for-y"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(y.recv(), 0.3)


# --- compression ----------------------------------------------------------


class CountingDeflateFactory(ClientPerMessageDeflateFactory):
    """Offers permessage-deflate and counts compressed frames received."""

    def __init__(self) -> None:
        super().__init__(client_max_window_bits=True)
        self.compressed_frames = 0

    def process_response_params(self, params, accepted_extensions) -> PerMessageDeflate:
        ext = super().process_response_params(params, accepted_extensions)
        decode = ext.decode
        factory = self

        def counting_decode(frame, *, max_size=None):
            if frame.rsv1:
                factory.compressed_frames += 1
            return decode(frame, max_size=max_size)

        ext.decode = counting_decode
        return ext


@run
async def test_compression_negotiated_and_messages_round_trip():
    with Server() as server:
        factory = CountingDeflateFactory()
        async with connect(
            server.url("/ws/echo"), compression=None, extensions=[factory]
        ) as ws:
            exts = ws.protocol.extensions
            assert len(exts) == 1 and isinstance(exts[0], PerMessageDeflate), exts
            # server_no_context_takeover, as the server always answers.
            assert exts[0].remote_no_context_takeover, exts[0]
            texts = ["compress me " * 500, "ünïcødé " * 300, "short"]
            for text in texts:
                await ws.send(text)  # sent compressed (RSV1) by the client
                assert await recv(ws) == text
            blob = bytes(range(256)) * 400
            await ws.send(blob)
            assert await recv(ws) == blob
        assert factory.compressed_frames >= 2, "server never compressed a reply"


@run
async def test_compression_not_negotiated_when_disabled():
    with Server(websocket__enable_compression="false") as server:
        async with connect(server.url("/ws/echo"), compression="deflate") as ws:
            assert ws.protocol.extensions == []
            await ws.send("plain " * 100)
            assert await recv(ws) == "plain " * 100


# --- ping / close ---------------------------------------------------------


@run
async def test_ping_gets_matching_pong():
    with Server() as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            for payload in [b"", b"abc", bytes(125)]:
                pong = await ws.ping(payload)
                await asyncio.wait_for(pong, STEP)


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
@run
async def test_close_code_is_echoed(code):
    with Server() as server:
        ws = await connect(server.url("/ws/echo"), compression=None)
        await asyncio.wait_for(ws.close(code, "bye"), STEP)
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == code


@run
async def test_invalid_utf8_text_closes_1007():
    with Server() as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            await ws.send(b"\xce\xba\xff", text=True)
            with pytest.raises(ConnectionClosedError):
                await recv(ws)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1007


@run
async def test_message_over_limit_closes_1009():
    with Server(websocket__max_message_size="4096", websocket__max_frame_size="4096") as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            await ws.send("a" * 4096)
            assert await recv(ws) == "a" * 4096
            await ws.send("a" * 4097)
            with pytest.raises(ConnectionClosedError):
                await recv(ws)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009


async def _raw_upgrade(addr: str, path: str):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _read_close_code(reader) -> int | None:
    """Read server frames until a close frame; return its code."""
    while True:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), STEP)
        assert not b1 & 0x80, "server frame is masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await asyncio.wait_for(reader.readexactly(n), STEP)
        if b0 & 0x0F == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


@pytest.mark.parametrize(
    "frame,code",
    [
        (bytes([0x81, 0x02]) + b"hi", 1002),  # unmasked text frame
        (bytes([0x83, 0x80, 1, 2, 3, 4]), 1002),  # reserved opcode 3, masked
        (bytes([0xC1, 0x80, 1, 2, 3, 4]), 1002),  # RSV1 without extension
        (bytes([0x88, 0x81, 0, 0, 0, 0, 0x03]), 1002),  # 1-byte close payload
        (bytes([0x88, 0x82, 0, 0, 0, 0]) + struct.pack("!H", 1005), 1002),
    ],
    ids=["unmasked", "reserved-opcode", "rsv1", "close-1-byte", "close-1005"],
)
@run
async def test_protocol_violation_close_code(frame, code):
    with Server() as server:
        reader, writer = await _raw_upgrade(server.addr, "/ws/echo")
        writer.write(frame)
        await writer.drain()
        assert await _read_close_code(reader) == code
        # Failing the connection means closing TCP too (RFC 6455 7.1.7),
        # without waiting for our close frame.
        rest = await asyncio.wait_for(reader.read(), STEP)
        assert rest == b"", f"data after the close frame: {rest[:32]!r}"
        writer.close()


# --- shutdown -------------------------------------------------------------


@run
async def test_sigterm_sends_1001_to_every_client_and_exits_zero():
    with Server(shards=2, shutdown__drain_timeout_ms="3000") as server:
        clients = [
            await connect(server.url("/ws/chat?room=bye"), compression=None) for _ in range(10)
        ]
        server.signal(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
        rc = await asyncio.get_running_loop().run_in_executor(None, server.wait, 6.0)
        assert rc == 0
