"""The TLS listener (`tls:`) driven by independent clients: Python `websockets`
over the standard library's ssl (OpenSSL) for wss:// echo, a 1 MiB message and
permessage-deflate; http.client over ssl for an SSE stream over https://."""

from __future__ import annotations

import asyncio
import http.client
import os
import ssl
import subprocess
import tempfile
from pathlib import Path

from websockets.asyncio.client import connect

from corecast_harness import (
    ROOT,
    TEST_IO_MEMORY,
    corecast_bin,
    free_port,
    run,
    set_yaml_value,
    spawn_and_wait,
)

STEP = 10.0


class TlsServer:
    """A two-shard corecast with a `tls:` section and a self-signed certificate
    from `corecast cert` (localhost, 127.0.0.1)."""

    def __enter__(self) -> "TlsServer":
        self._dir = tempfile.TemporaryDirectory(prefix="corecast-pytest-tls-")
        d = Path(self._dir.name)
        subprocess.run(
            [str(corecast_bin()), "cert", "--out", str(d), "--host", "localhost",
             "--host", "127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )
        self.cert = d / "cert.pem"
        port, tls_port = free_port(), free_port()
        text = (ROOT / "config.yaml").read_text()
        text = set_yaml_value(text, "listen", f"127.0.0.1:{port}")
        text = set_yaml_value(text, "shards", "2")
        text = set_yaml_value(text, "runtime.io_memory", str(TEST_IO_MEMORY))
        text += (
            f"\ntls:\n  listen: 127.0.0.1:{tls_port}\n"
            f"  cert: {d / 'cert.pem'}\n  key: {d / 'key.pem'}\n"
        )
        config = d / "corecast.yaml"
        config.write_text(text)
        self.output: list[str] = []
        self.proc, self.tls_addr = spawn_and_wait(
            [str(corecast_bin()), "serve", "--config", str(config)],
            r"tls on wss://(\S+)",
            self.output,
        )
        self.port = int(self.tls_addr.rsplit(":", 1)[1])
        return self

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx

    def url(self, path: str) -> str:
        return f"wss://localhost:{self.port}{path}"

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # this child's own PID only
        self.proc.wait(10)
        self._dir.cleanup()


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), STEP)


@run
async def test_wss_echo_large_message_and_compression():
    with TlsServer() as server:
        ctx = server.ssl_context()
        async with connect(server.url("/ws/echo"), ssl=ctx, compression=None,
                           max_size=2**21) as ws:
            for msg in ["hello", "ünïcødé ✓", "", b"\x00\x01\xff"]:
                await ws.send(msg)
                assert await recv(ws) == msg
            data = os.urandom(1 << 20)
            await ws.send(data)
            assert await recv(ws) == data
        async with connect(server.url("/ws/echo"), ssl=ctx, max_size=2**21) as ws:
            # permessage-deflate negotiated over TLS.
            assert ws.response.headers.get("Sec-WebSocket-Extensions", "").startswith(
                "permessage-deflate"
            ), ws.response.headers
            text = "compressible " * 50_000
            await ws.send(text)
            assert await recv(ws) == text


@run
async def test_wss_rooms_across_shards():
    with TlsServer() as server:
        ctx = server.ssl_context()
        url = server.url("/ws/chat?room=py-tls")
        members = [await connect(url, ssl=ctx) for _ in range(6)]
        try:
            for i in range(10):
                await members[0].send(f"m{i}")
            for ws in members:
                got = [await recv(ws) for _ in range(10)]
                assert got == [f"m{i}" for i in range(10)]
        finally:
            for ws in members:
                await ws.close()


def _read_sse(server: TlsServer, ready: asyncio.Event | None = None) -> list[str]:
    conn = http.client.HTTPSConnection(
        "localhost", server.port, context=server.ssl_context(), timeout=STEP
    )
    conn.request("GET", "/sse?room=py-news", headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    lines: list[str] = []
    while True:
        line = resp.fp.readline().decode()
        assert line, f"stream ended: {lines}"
        lines.append(line.rstrip("\n"))
        if line.startswith("data: news-"):
            break
    conn.close()
    return lines


@run
async def test_sse_over_https():
    with TlsServer() as server:
        loop = asyncio.get_running_loop()
        reader = loop.run_in_executor(None, _read_sse, server)
        ctx = server.ssl_context()
        async with connect(server.url("/ws/chat?room=py-news"), ssl=ctx) as pub:
            # Publish until the stream (opened concurrently) has one.
            for i in range(50):
                await pub.send(f"news-{i}")
                done, _ = await asyncio.wait({reader}, timeout=0.2)
                if done:
                    break
            lines = await asyncio.wait_for(reader, STEP)
        assert any(l.startswith("retry:") for l in lines), lines
        assert any(l.startswith("id: ") for l in lines), lines
        assert lines[-1].startswith("data: news-"), lines


@run
async def test_wrong_trust_is_refused_and_server_keeps_serving():
    with TlsServer() as server:
        strict = ssl.create_default_context()  # system roots: our cert is not there
        try:
            async with connect(server.url("/ws/echo"), ssl=strict):
                raise AssertionError("handshake should fail without trusting the cert")
        except ssl.SSLCertVerificationError:
            pass
        async with connect(server.url("/ws/echo"), ssl=server.ssl_context()) as ws:
            await ws.send("ok")
            assert await recv(ws) == "ok"
