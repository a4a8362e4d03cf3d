"""Limits (docs/SECURITY.md ("Limits")) seen by the `websockets` library, an independent client:
header-count 431, the per-address connection cap (503 + Retry-After), fragments per
message (1009), the inbound rate limit (error frame / 1008) and the WebSocket origin
allow-list (403 before the upgrade)."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from corecast_harness import Server, run

STEP = 10.0


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), STEP)


@run
async def test_too_many_headers_get_431_naming_the_limit():
    with Server(limits__max_headers="16") as server:
        headers = [(f"X-H{i}", "v") for i in range(20)]
        with pytest.raises(InvalidStatus) as e:
            async with connect(server.url("/ws/echo"), additional_headers=headers):
                pass
        assert e.value.response.status_code == 431
        assert b"limits.max_headers (16)" in e.value.response.body
        async with connect(server.url("/ws/echo"), additional_headers=headers[:4]) as ws:
            await ws.send("fits")
            assert await recv(ws) == "fits"


@run
async def test_per_address_cap_answers_503_with_retry_after():
    with Server(shards=2, limits__max_connections_per_ip="2") as server:
        a = await connect(server.url("/ws/echo"))
        b = await connect(server.url("/ws/echo"))
        with pytest.raises(InvalidStatus) as e:
            async with connect(server.url("/ws/echo")):
                pass
        assert e.value.response.status_code == 503
        assert e.value.response.headers["Retry-After"] == "1"
        await a.close()
        for _ in range(50):
            try:
                c = await connect(server.url("/ws/echo"))
                break
            except InvalidStatus:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the closed connection's slot was not released")
        await c.send("again")
        assert await recv(c) == "again"
        await b.close()
        await c.close()


@run
async def test_more_fragments_than_max_fragments_close_1009():
    with Server(websocket__max_fragments="4") as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            # websockets sends each item as a frame, then an empty final frame:
            # three items are four frames (the limit), four items are five.
            await ws.send(["a", "b", "c"])
            assert await recv(ws) == "abc"
            with pytest.raises(ConnectionClosedError) as e:
                # The close may already interrupt the send.
                await ws.send(["a", "b", "c", "d"])
                await recv(ws)
            assert e.value.rcvd.code == 1009


@run
async def test_rate_limit_error_drops_with_an_error_frame():
    with Server(
        websocket__rate_limit="{messages_per_second: 3, burst: 1s, action: error}"
    ) as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            for i in range(10):
                await ws.send(f"m{i}")
            assert [await recv(ws) for _ in range(3)] == ["m0", "m1", "m2"]
            err = json.loads(await recv(ws))
            assert err["type"] == "error" and err["error"] == "rate_limited", err
            # Nothing else was sent for the other refused messages.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            await asyncio.sleep(1.0)
            await ws.send("later")
            assert await recv(ws) == "later"


@run
async def test_rate_limit_close_closes_1008():
    with Server(
        websocket__rate_limit="{messages_per_second: 2, burst: 1s, action: close}"
    ) as server:
        async with connect(server.url("/ws/echo"), compression=None) as ws:
            for i in range(5):
                await ws.send(f"m{i}")
            assert [await recv(ws) for _ in range(2)] == ["m0", "m1"]
            with pytest.raises(ConnectionClosedError) as e:
                await recv(ws)
            assert (e.value.rcvd.code, e.value.rcvd.reason) == (1008, "rate limit")


@run
async def test_websocket_origin_allow_list():
    with Server(websocket__allowed_origins='["https://good.example"]') as server:
        with pytest.raises(InvalidStatus) as e:
            async with connect(server.url("/ws/echo"), origin="https://evil.example"):
                pass
        assert e.value.response.status_code == 403
        async with connect(server.url("/ws/echo"), origin="https://good.example") as ws:
            await ws.send("ok")
            assert await recv(ws) == "ok"
