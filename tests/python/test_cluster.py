"""Cluster mode across transports, with independent clients: a Python `websockets`
publisher on node A, an SSE reader (raw asyncio socket) on node B and a
WebTransport session (aioquic, wt_client.py) on node C must receive everything,
in order, with the same ids; an SSE stream resumes on C with the Last-Event-ID it
had on B. Three `corecast serve` nodes share one real redis-server
(corecast_harness.RedisServer, the `redis_server` fixture). WebTransport is on in
the default config with `listen: null`, i.e. each node's UDP port is its own TCP
port number. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import urllib.request

from websockets.asyncio.client import connect as ws_connect

from corecast_harness import RedisServer, Server, SseClient
from test_webtransport import Clients
from wt_client import KIND_TEXT

TEST_TIMEOUT = 90.0
STEP = 10.0
DELIVERY = 20.0
QUIET = 0.4
PROBE = "probe-"


def run(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return wrapper


def cluster_yaml(redis: RedisServer, node_id: str) -> str:
    return (
        "\ncluster:\n  broker: redis\n"
        f"  url: {redis.url()}\n  node_id: {node_id}\n  key_prefix: pytest\n"
        "  heartbeat: 200ms\n  node_timeout: 1s\n"
        "  reconnect_min: 50ms\n  reconnect_max: 500ms\n"
    )


def node(redis: RedisServer, node_id: str, shards: int) -> Server:
    return Server(
        shards=shards, append=cluster_yaml(redis, node_id), sse__keep_alive_interval="1h"
    )


def stats(server: Server) -> dict:
    with urllib.request.urlopen(f"http://{server.addr}/stats", timeout=STEP) as r:
        return json.loads(r.read())


def wait_connected(server: Server) -> None:
    deadline = time.monotonic() + 15
    while True:
        cluster = stats(server).get("cluster")
        assert isinstance(cluster, dict), f"/stats has no cluster object: {stats(server)}"
        if cluster.get("connected") in (True, 1):
            return
        assert time.monotonic() < deadline, f"never connected to redis: {cluster}"
        time.sleep(0.05)


async def wait_for(pred, what: str, timeout: float = DELIVERY) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout}s: {what}"
        await asyncio.sleep(0.02)


def split_id(i: str) -> tuple[str, int]:
    epoch, _, seq = i.partition(":")
    return epoch, int(seq)


@run
async def test_sse_on_b_and_webtransport_on_c_receive_a_websockets_publisher_on_a(redis_server):
    room = "py-cluster"
    with node(redis_server, "a", 2) as a, node(redis_server, "b", 1) as b, node(
        redis_server, "c", 2
    ) as c:
        for s in (a, b, c):
            wait_connected(s)
        sse_b = await SseClient().open(b.addr, f"/sse?room={room}")
        async with Clients(c) as wt:
            sess = await wt.session(f"/wt/chat?room={room}")
            async with ws_connect(a.url(f"/ws/chat?room={room}"), open_timeout=STEP) as pub:
                # The publisher is a member too: drain what it receives.
                own: list[str] = []

                async def drain_own() -> None:
                    async for m in pub:
                        own.append(m)

                drainer = asyncio.create_task(drain_own())

                # Probes until both remote members see one (their nodes subscribed).
                def wt_seen_probe() -> bool:
                    return any(r.payload.startswith(PROBE.encode()) for r in sess.records_so_far())

                def sse_seen_probe() -> bool:
                    return any(e["data"].startswith(PROBE) for e in sse_b.events)

                deadline = time.monotonic() + DELIVERY
                k = 0
                while not (wt_seen_probe() and sse_seen_probe()):
                    assert time.monotonic() < deadline, (
                        f"members never saw a probe: sse {sse_b.events[-3:]}, "
                        f"wt {sess.records_so_far()[-3:]}"
                    )
                    await pub.send(f"{PROBE}{k}")
                    k += 1
                    await asyncio.sleep(0.1)

                n = 40
                sent = [f"from python {i} \u00e9" for i in range(n)]
                for m in sent:
                    await pub.send(m)

                def real_sse() -> list[dict[str, str]]:
                    return [e for e in sse_b.events if not e["data"].startswith(PROBE)]

                def real_wt() -> list[str]:
                    return [
                        r.payload.decode()
                        for r in sess.records_so_far()
                        if not r.payload.startswith(PROBE.encode())
                    ]

                await wait_for(lambda: len(real_sse()) >= n, f"{n} SSE events on B")
                await wait_for(lambda: len(real_wt()) >= n, f"{n} WebTransport records on C")
                await wait_for(
                    lambda: len([m for m in own if not m.startswith(PROBE)]) >= n,
                    f"the publisher's own {n} copies on A",
                )
                await asyncio.sleep(QUIET)
                assert [e["data"] for e in real_sse()] == sent, "SSE on B: all, in order, once"
                assert real_wt() == sent, "WebTransport on C: all, in order, once"
                assert [m for m in own if not m.startswith(PROBE)] == sent, "publisher on A"
                for r in sess.records_so_far():
                    assert r.room == room and r.kind == KIND_TEXT, r

                # SSE ids from the first probe on: one epoch, consecutive seqs.
                first = next(i for i, e in enumerate(sse_b.events) if e["data"].startswith(PROBE))
                ids = [split_id(e["id"]) for e in sse_b.events[first:]]
                assert len({e for e, _ in ids}) == 1, ids
                seqs = [s for _, s in ids]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs

                # Move the SSE reader from B to C: exactly the missed messages.
                last_id = sse_b.events[-1]["id"]
                await sse_b.close()
                missed = [f"missed {i}" for i in range(7)]
                for m in missed:
                    await pub.send(m)
                await wait_for(lambda: real_wt()[-1:] == missed[-1:], "C got the missed ones live")
                sse_c = await SseClient().open(c.addr, f"/sse?room={room}", last_event_id=last_id)
                await wait_for(lambda: len(sse_c.events) >= len(missed), "SSE resume on C")
                await asyncio.sleep(QUIET)
                assert [e["data"] for e in sse_c.events] == missed, sse_c.events
                resumed = [split_id(e["id"]) for e in sse_c.events]
                epoch, last_seq = split_id(last_id)
                assert resumed == [(epoch, last_seq + 1 + i) for i in range(len(missed))]
                # Then live.
                await pub.send("live")
                await wait_for(lambda: len(sse_c.events) > len(missed), "live event on C")
                assert sse_c.events[-1]["data"] == "live"
                assert split_id(sse_c.events[-1]["id"]) == (epoch, last_seq + len(missed) + 1)
                await sse_c.close()
                drainer.cancel()
                with contextlib.suppress(BaseException):
                    await drainer
