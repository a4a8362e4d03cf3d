"""GET /metrics read by an independent parser (prometheus_client's strict
OpenMetrics parser: names, types, escaping and the final `# EOF`): the whole
exposition parses, every family has the type it says, the latency
histogram is well-formed per shard, and the counters follow real WebSocket room
traffic."""

from __future__ import annotations

import asyncio
import math
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from corecast_harness import Server, run

STEP = 10.0



def fetch(addr: str, path: str = "/metrics", method: str = "GET"):
    req = urllib.request.Request(f"http://{addr}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=STEP) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def families(text: str) -> dict:
    # The parser is lazy: list() makes it parse everything (and raise on any error).
    parsed = list(text_string_to_metric_families(text))
    by_name = {f.name: f for f in parsed}
    assert len(by_name) == len(parsed), "a family appears twice"
    return by_name


def total(fams: dict, name: str, **labels: str) -> float:
    fam = fams[name]
    return sum(
        s.value
        for s in fam.samples
        if all(s.labels.get(k) == v for k, v in labels.items())
        and s.name in (name, name + "_total")
    )


def check_histogram(fam) -> int:
    """Buckets cumulative and ascending per shard, +Inf == _count; returns the count."""
    assert fam.type == "histogram"
    buckets = defaultdict(list)
    counts, sums = {}, {}
    for s in fam.samples:
        shard = s.labels["shard"]
        if s.name.endswith("_bucket"):
            buckets[shard].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            counts[shard] = s.value
        elif s.name.endswith("_sum"):
            sums[shard] = s.value
    assert buckets and set(buckets) == set(counts) == set(sums)
    grand = 0
    for shard, bs in buckets.items():
        les = [le for le, _ in bs]
        assert les == sorted(les), f"shard {shard}: buckets out of order {les}"
        assert math.isinf(les[-1]), f"shard {shard}: no +Inf bucket"
        values = [v for _, v in bs]
        assert all(a <= b for a, b in zip(values, values[1:])), (
            f"shard {shard}: buckets not cumulative {values}"
        )
        assert values[-1] == counts[shard], f"shard {shard}: +Inf != _count"
        assert sums[shard] >= 0
        grand += counts[shard]
    return int(grand)


@run
async def test_exposition_parses_and_follows_room_traffic():
    members, messages = 5, 4
    with Server(shards=2) as server:
        status, ctype, text = fetch(server.addr)
        assert status == 200
        assert ctype.startswith("application/openmetrics-text") and "version=1.0.0" in ctype
        fams = families(text)
        assert fams["corecast_connections"].type == "gauge"
        assert fams["corecast_deliveries"].type == "counter"
        assert check_histogram(fams["corecast_publish_to_write_seconds"]) == 0

        url = server.url("/ws/chat?room=py-metrics")
        clients = [await connect(url) for _ in range(members)]
        for i in range(messages):
            await clients[0].send(f"m{i}")
        for ws in clients:
            for i in range(messages):
                assert await asyncio.wait_for(ws.recv(), STEP) == f"m{i}"

        fams = families(fetch(server.addr)[2])
        assert total(fams, "corecast_connections", transport="websocket") == members
        transports = {s.labels["transport"] for s in fams["corecast_connections"].samples}
        assert transports == {"websocket", "sse", "webtransport"}
        shards = {s.labels["shard"] for s in fams["corecast_deliveries"].samples}
        assert shards == {"0", "1"}
        assert total(fams, "corecast_deliveries") == members * messages
        assert total(fams, "corecast_broadcasts") == messages
        assert total(fams, "corecast_messages_received") == messages
        assert check_histogram(fams["corecast_publish_to_write_seconds"]) >= members

        for ws in clients:
            await ws.close()
        for _ in range(100):
            fams = families(fetch(server.addr)[2])
            if (total(fams, "corecast_connections") == 0
                    and total(fams, "corecast_outbound_queued_bytes") == 0):
                break
            await asyncio.sleep(0.05)
        assert total(fams, "corecast_connections") == 0
        assert total(fams, "corecast_outbound_queued_bytes") == 0


def test_post_is_405():
    with Server() as server:
        status, _, _ = fetch(server.addr, method="POST")
        assert status == 405
