"""corecast's WebTransport over HTTP/3 driven by aioquic (an independent client,
tests/python/wt_client.py), checked against docs/PROTOCOL.md, section
"WebTransport over HTTP/3": session establishment and refusals, echo streams and
datagrams, rooms (reliable and datagram delivery, across two shards and across
transports), session close, stream resets, malformed input and shutdown.

Every test starts its own server (corecast_harness.Server) and bounds every wait.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import json
import os
import re
import signal
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect as ws_connect

from corecast_harness import Server, SseClient
from wt_client import (
    CAPSULE_CLOSE,
    CAPSULE_DRAIN,
    H3_MESSAGE_ERROR,
    H3_STREAM_CREATION_ERROR,
    KIND_BINARY,
    KIND_TEXT,
    RECORD_INVALID_UTF8,
    RECORD_MALFORMED,
    RECORD_TOO_LARGE,
    SETTING_ENABLE_CONNECT_PROTOCOL,
    SETTING_ENABLE_WEBTRANSPORT,
    SETTING_H3_DATAGRAM,
    SETTING_H3_DATAGRAM_DRAFT04,
    SETTING_WEBTRANSPORT_MAX_SESSIONS,
    WEBTRANSPORT_BUFFERED_STREAM_REJECTED,
    Record,
    Session,
    WTConnection,
    binary_record,
    capsule,
    client_datagram_record,
    client_record,
    close_capsule,
    connect_quic,
    h3_to_wt,
    parse_datagram_record,
    text_record,
    varint,
    wt_to_h3,
)

TEST_TIMEOUT = 60.0
STEP = 10.0  # one wait for something that should happen
SILENCE = 0.5  # how long "nothing arrives" is watched
PROBE = b"sync:"

WT_LINE = re.compile(r"corecast webtransport on https://(\S+):(\d+) \(udp\b")
CERT_HASH = re.compile(r"\bcert sha256 ([0-9a-fA-F]{64})\b")


def run(fn=None, *, timeout: float = TEST_TIMEOUT):
    """Run an async test with an overall timeout (`@run` or `@run(timeout=...)`)."""

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return asyncio.run(asyncio.wait_for(f(*args, **kwargs), timeout))

        return wrapper

    return deco(fn) if fn is not None else deco


# --- helpers ---------------------------------------------------------------


def wt_endpoint(server: Server) -> tuple[str, int, str]:
    """(host, udp port, cert sha256 hex) from the server's start-up line."""
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        for line in list(server.output):
            m = WT_LINE.search(line)
            h = CERT_HASH.search(line)
            if m and h:
                host = m.group(1).strip("[]")
                return host, int(m.group(2)), h.group(1).lower()
        time.sleep(0.05)
    raise AssertionError(
        "no `corecast webtransport on https://HOST:PORT (udp; cert sha256 HEX)` line:\n"
        + "".join(server.output)
    )


class Clients:
    """WebTransport connections opened by one test, all closed at its end."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.host, self.port, self.cert_hex = wt_endpoint(server)
        if self.host in ("0.0.0.0", "::", "localhost"):
            self.host = "127.0.0.1"
        self.conns: list[WTConnection] = []

    async def conn(self, **kw) -> WTConnection:
        c = await connect_quic(self.host, self.port, timeout=STEP, **kw)
        self.conns.append(c)
        return c

    async def session(
        self, path: str, origin: str | None = None, conn: WTConnection | None = None
    ) -> Session:
        """A session that must be accepted (200)."""
        c = conn or await self.conn()
        s = await c.open_session(path, origin, timeout=STEP)
        assert s.status == 200, f"CONNECT {path}: status {s.status}, {s!r}, body {bytes(s.body)!r}"
        return s

    async def __aenter__(self) -> "Clients":
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(c.aclose() for c in self.conns), return_exceptions=True)


async def assert_echo_works(sess: Session, size: int = 1000) -> None:
    """A bidi stream on an echo session comes back whole with FIN."""
    data = os.urandom(size)
    s = sess.open_bidi()
    s.send(data, end=True)
    got = await s.read_to_fin(STEP)
    assert got == data, f"echo on session {sess.id}: {len(got)} bytes back of {len(data)}"


async def assert_nothing(pred, conn: WTConnection, what: str, wait: float = SILENCE) -> None:
    try:
        await conn.wait_until(pred, wait, what)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected: {what}")


async def sync_room(publish, receivers: list[Session], room: str) -> None:
    """Publish probe records until every receiver session has one in `room`
    (reliably or as a datagram): all are then members. Probes are skipped by
    `recv_real`."""
    token = PROBE + os.urandom(4).hex().encode()
    pending = set(range(len(receivers)))
    deadline = time.monotonic() + STEP
    n = 0
    while pending:
        assert time.monotonic() < deadline, (
            f"{len(pending)} of {len(receivers)} sessions never received a record of room "
            f"{room!r} within {STEP}s"
        )
        await publish(token + b":%d" % n)
        n += 1
        await asyncio.sleep(0.1)
        for i in list(pending):
            sess = receivers[i]
            recs = sess.records_so_far() + [
                parse_datagram_record(d) for d in sess.datagrams
            ]
            if any(r.room == room and r.payload.startswith(token) for r in recs):
                pending.discard(i)


async def recv_real(sess: Session, n: int, timeout: float = STEP) -> list[Record]:
    """The next `n` reliable records that are not sync probes."""
    out: list[Record] = []
    while len(out) < n:
        r = await sess.recv_record_matching(lambda r: not r.payload.startswith(PROBE), timeout)
        out.append(r)
    return out


async def recv_payload(sess: Session, payload: bytes, timeout: float = STEP) -> Record:
    """Skip reliable records until the one carrying `payload`."""
    return await sess.recv_record_matching(lambda r: r.payload == payload, timeout)


def stream_publisher(sess: Session):
    """publish(payload) writing text records on one bidi stream of `sess`."""
    stream = sess.open_bidi()

    async def publish(payload: bytes, kind: int = KIND_TEXT) -> None:
        stream.send(client_record(kind, payload))

    publish.stream = stream  # type: ignore[attr-defined]
    return publish


def http_get(server: Server, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{server.addr}{path}", timeout=STEP) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@run
async def test_settings_and_datagram_transport_parameter():
    with Server() as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            settings = await conn.wait_settings(STEP)
            assert settings.get(SETTING_ENABLE_CONNECT_PROTOCOL) == 1, settings
            assert settings.get(SETTING_H3_DATAGRAM) == 1, settings
            assert settings.get(SETTING_H3_DATAGRAM_DRAFT04) == 1, settings
            assert settings.get(SETTING_ENABLE_WEBTRANSPORT) == 1, settings
            assert settings.get(SETTING_WEBTRANSPORT_MAX_SESSIONS) == 16, settings
            assert conn.remote_max_datagram_frame_size, "no max_datagram_frame_size"


@run
async def test_certificate_hash_is_pinned():
    with Server() as server:
        async with Clients(server) as cl:
            tcp_port = int(server.addr.rsplit(":", 1)[1])
            assert cl.port == tcp_port, f"WT port {cl.port} != TCP port {tcp_port} (listen: null)"
            conn = await cl.conn()
            await conn.wait_settings(STEP)
            der = conn.peer_certificate_der()
            presented = conn.peer_certificate_sha256()
            status, body = await asyncio.get_running_loop().run_in_executor(
                None, http_get, server, "/webtransport/cert-hash"
            )
            assert status == 200, (status, body)
            j = json.loads(body)
            assert j["sha256"] == presented, (j, presented)
            assert re.fullmatch(r"[0-9a-f]{64}", j["sha256"]), j
            assert base64.b64decode(j["base64"]) == bytes.fromhex(presented), j
            assert cl.cert_hex == presented, (cl.cert_hex, presented)

            # cert: auto = ECDSA P-256, 14 days, localhost / 127.0.0.1 / ::1.
            from cryptography import x509
            from cryptography.hazmat.primitives.asymmetric import ec
            import ipaddress

            cert = x509.load_der_x509_certificate(der)
            key = cert.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey), key
            assert key.curve.name == "secp256r1", key.curve.name
            days = cert.not_valid_after_utc - cert.not_valid_before_utc
            assert days <= datetime.timedelta(days=14), days
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert "localhost" in san.get_values_for_type(x509.DNSName), san
            ips = san.get_values_for_type(x509.IPAddress)
            assert ipaddress.ip_address("127.0.0.1") in ips, san
            assert ipaddress.ip_address("::1") in ips, san


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
@run
async def test_quic_retry_setting(retry):
    with Server(webtransport__retry="true" if retry else "false") as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            assert sess.conn._quic._retry_count == (1 if retry else 0)
            await assert_echo_works(sess)


@run
async def test_idle_timeout_is_advertised():
    with Server(webtransport__idle_timeout="1s") as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            conn = sess.conn
            assert conn._quic._remote_max_idle_timeout == pytest.approx(1.0), (
                conn._quic._remote_max_idle_timeout
            )
            # aioquic uses the smaller of the two idle timeouts: the connection ends.
            await conn.wait_until(lambda: conn.terminated, 5.0, "idle close")


# --- session establishment --------------------------------------------------


@run
async def test_session_accepted_on_echo():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            assert sess.header("sec-webtransport-http3-draft") == b"draft02", sess.headers
            assert not sess.fin and sess.reset_code is None
            await assert_echo_works(sess)


async def _assert_refused(sess: Session, status: int) -> None:
    assert sess.status == status, f"expected {status}, got {sess!r}"
    await sess.wait_response_end(STEP)
    assert sess.fin, f"error answer {status} did not end the stream with FIN: {sess!r}"
    ctype = sess.header("content-type") or b""
    assert ctype.startswith(b"text/plain"), sess.headers
    assert len(sess.body) > 0, "error answer without a body"


@run
async def test_unknown_path_is_404():
    with Server() as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            await _assert_refused(await conn.open_session("/wt/nope"), 404)
            # A WebSocket or SSE path is not a WebTransport endpoint either.
            await _assert_refused(await conn.open_session("/ws/chat?room=a"), 404)
            # The connection is still usable.
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))


@run
async def test_disallowed_origin_is_403():
    with Server(webtransport__allowed_origins='["https://good.example"]') as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            await _assert_refused(
                await conn.open_session("/wt/echo", origin="https://evil.example"), 403
            )
            # exact match: no prefix / suffix / case tricks
            for bad in ["https://good.example.evil", "https://GOOD.example", "http://good.example"]:
                await _assert_refused(await conn.open_session("/wt/echo", origin=bad), 403)
            ok = await cl.session("/wt/echo", origin="https://good.example", conn=conn)
            await assert_echo_works(ok)
            # No origin header at all: the check only applies to a present origin.
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))


@run
async def test_non_connect_requests_are_405():
    with Server() as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            await conn.wait_settings(STEP)
            auth = conn.authority.encode()
            get = await conn.request(
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", auth),
                    (b":path", b"/wt/echo"),
                ],
                end_stream=True,
                timeout=STEP,
            )
            await _assert_refused(get, 405)
            # Plain CONNECT (no :protocol) and CONNECT for another protocol.
            plain = await conn.request(
                [(b":method", b"CONNECT"), (b":authority", auth)], timeout=STEP
            )
            await _assert_refused(plain, 405)
            other = await conn.request(
                conn.connect_headers("/wt/echo")[:1]
                + [(b":protocol", b"websocket")]
                + conn.connect_headers("/wt/echo")[2:],
                timeout=STEP,
            )
            await _assert_refused(other, 405)
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))


@pytest.mark.parametrize("missing", [b":path", b":authority", b":scheme"])
@run
async def test_missing_pseudo_header_is_400(missing):
    with Server() as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            await conn.wait_settings(STEP)
            headers = [h for h in conn.connect_headers("/wt/echo") if h[0] != missing]
            await _assert_refused(await conn.request(headers, timeout=STEP), 400)
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))


@run
async def test_sessions_per_connection_limit_is_429():
    with Server(webtransport__max_sessions_per_connection="2") as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            settings = await conn.wait_settings(STEP)
            assert settings.get(SETTING_WEBTRANSPORT_MAX_SESSIONS) == 2, settings
            a = await cl.session("/wt/echo", conn=conn)
            b = await cl.session("/wt/echo", conn=conn)
            await _assert_refused(await conn.open_session("/wt/echo"), 429)
            # Another connection has its own budget.
            await assert_echo_works(await cl.session("/wt/echo"))
            # Closing one frees a place.
            a.close(0, "done")
            await a.wait_closed(STEP)
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))
            await assert_echo_works(b)


@run
async def test_connections_per_shard_limit_refuses_with_excessive_load():
    with Server(shards=1, webtransport__max_connections_per_shard="2") as server:
        async with Clients(server) as cl:
            first = await cl.session("/wt/echo")
            await cl.session("/wt/echo")
            # The third QUIC connection is closed after its handshake with
            # H3_EXCESSIVE_LOAD (0x107), before any session.
            third = await cl.conn()
            await third.wait_until(lambda: third.terminated, STEP, "the refusal")
            assert third.close_error is not None and third.close_error.error_code == 0x107, (
                third.close_error
            )
            # Those already in are unaffected, and closing one makes room again.
            await assert_echo_works(first)
            await cl.conns[0].aclose()
            await asyncio.sleep(0.5)
            await assert_echo_works(await cl.session("/wt/echo"))


# --- echo -------------------------------------------------------------------


@run
async def test_bidi_echo_several_kilobytes_with_fin():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            data = os.urandom(48 * 1024 + 17)
            s = sess.open_bidi()
            for i in range(0, len(data), 5000):
                s.send(data[i : i + 5000])
                await asyncio.sleep(0)
            # Part of it comes back before our FIN.
            first = await s.read_exactly(5000, STEP)
            assert first == data[:5000]
            assert not s.fin
            s.finish()
            rest = await s.read_to_fin(STEP)
            assert first + rest == data
            # Several streams at once, interleaved.
            streams = [(sess.open_bidi(), os.urandom(3000 + i)) for i in range(8)]
            for st, d in streams:
                st.send(d[:1000])
            for st, d in streams:
                st.send(d[1000:], end=True)
            for st, d in streams:
                assert await st.read_to_fin(STEP) == d
            # An empty stream: just FIN, echoed as just FIN.
            e = sess.open_bidi()
            e.finish()
            assert await e.read_to_fin(STEP) == b""


@run
async def test_uni_echo_comes_back_on_server_opened_uni_stream():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            data = os.urandom(20000)
            u = sess.open_uni()
            u.send(data, end=True)
            back = await sess.accept_uni(0, STEP)
            assert back.is_unidirectional and not back.is_client_initiated, back
            assert back.session_id == sess.id
            assert await back.read_to_fin(STEP) == data
            u2 = sess.open_uni()
            u2.send(b"second", end=True)
            back2 = await sess.accept_uni(1, STEP)
            assert await back2.read_to_fin(STEP) == b"second"


@run
async def test_more_uni_echoes_than_the_client_allows_at_once_all_come_back():
    # aioquic lets the server open 128 unidirectional streams at a time (the H3
    # control stream takes one): the echoes past that wait for MAX_STREAMS.
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            n = 200
            for i in range(n):
                sess.open_uni().send(b"u%03d" % i, end=True)
            got = set()
            for i in range(n):
                back = await sess.accept_uni(i, STEP)
                got.add(await back.read_to_fin(STEP))
            assert got == {b"u%03d" % i for i in range(n)}


@run
async def test_datagram_echo():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            for i, size in enumerate([1, 10, 100, 1000]):
                payload = bytes([i]) * size
                got = None
                for _ in range(3):  # datagrams may be lost; retry a little
                    sess.send_datagram(payload)
                    try:
                        got = await sess.recv_datagram(2.0)
                        break
                    except asyncio.TimeoutError:
                        continue
                assert got == payload, f"datagram of {size} bytes: got {got!r:.40}"
            assert not sess.conn.orphan_datagrams, sess.conn.orphan_datagrams


# --- rooms ------------------------------------------------------------------


@run
async def test_rooms_200_text_records_in_order_across_shards():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            a = await cl.session("/wt/chat?room=py-room")
            # B plus three more receivers on their own connections, so that with
            # two shards at least one is almost surely on the other shard.
            receivers = [await cl.session("/wt/chat?room=py-room") for _ in range(4)]
            publish = stream_publisher(a)
            await sync_room(publish, receivers, "py-room")
            sent = [f"msg-{i:03d} ✓" for i in range(200)]
            for m in sent:
                await publish(m.encode())
            publish.stream.finish()
            for n, r in enumerate(receivers):
                got = await recv_real(r, 200)
                assert all(x.room == "py-room" for x in got), f"receiver {n}: {got[:3]}"
                assert all(x.kind == KIND_TEXT for x in got), f"receiver {n}"
                texts = [x.text for x in got]
                assert texts == sent, f"receiver {n}: first difference at " + str(
                    next((i for i, (p, q) in enumerate(zip(texts, sent)) if p != q), None)
                )
                uni = [s for s in r.incoming if s.is_unidirectional]
                assert len(uni) == 1, f"receiver {n}: {len(uni)} server-opened uni streams"
            # The publisher's bidi stream: nothing back, finished after ours.
            assert await publish.stream.read_to_fin(STEP) == b""


@run
async def test_rooms_binary_kind_second_room_and_two_rooms_on_one_session():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            both = await cl.session("/wt/chat?room=r1&room=r2")
            x = await cl.session("/wt/chat?room=r1")
            y = await cl.session("/wt/chat?room=r2")
            px, py_ = stream_publisher(x), stream_publisher(y)
            await sync_room(px, [both, x], "r1")
            await sync_room(py_, [both, y], "r2")

            await px(b"to-r1")
            r = await recv_payload(both, b"to-r1")
            assert (r.kind, r.room) == (KIND_TEXT, "r1"), r

            blob = bytes(range(256)) + b"\xff\xfe\x00"
            await py_(blob, KIND_BINARY)
            r = await recv_payload(both, blob)
            assert (r.kind, r.room) == (KIND_BINARY, "r2"), r

            # A record from the two-room session reaches each room once.
            pb = stream_publisher(both)
            await pb(b"to-both")
            r = await recv_payload(x, b"to-both")
            assert (r.kind, r.room) == (KIND_TEXT, "r1"), r
            r = await recv_payload(y, b"to-both")
            assert (r.kind, r.room) == (KIND_TEXT, "r2"), r

            # Records on a unidirectional client stream are published too, in order.
            u = both.open_uni()
            u.send(text_record("via-uni") + binary_record(b"\x00\x01"), end=True)
            r = await recv_payload(x, b"via-uni")
            assert (r.kind, r.room) == (KIND_TEXT, "r1"), r
            r = (await recv_real(x, 1))[0]
            assert (r.kind, r.room, r.payload) == (KIND_BINARY, "r1", b"\x00\x01"), r

            # Isolation: nothing of r2 ever reached x, nothing of r1 reached y.
            await asyncio.sleep(SILENCE)
            assert all(rec.room == "r1" for rec in x.records_so_far()), x.records_so_far()
            assert all(rec.room == "r2" for rec in y.records_so_far()), y.records_so_far()


@run
async def test_datagram_delivery_format():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            dg = await cl.session("/wt/chat?room=ticks&datagram=ticks")
            mixed = await cl.session("/wt/chat?room=rel&room=ticks&datagram=ticks")
            every = await cl.session("/wt/chat?room=ticks&delivery=datagram")
            pub = await cl.session("/wt/chat?room=ticks&room=rel")
            publish = stream_publisher(pub)
            await sync_room(publish, [dg, mixed, every], "ticks")

            async def next_datagram(sess: Session, payload: bytes) -> Record:
                deadline = time.monotonic() + STEP
                while True:
                    d = await sess.recv_datagram(max(0.01, deadline - time.monotonic()))
                    rec = parse_datagram_record(d)
                    if rec.payload == payload:
                        return rec

            await publish(b"tick-1")
            for sess in (dg, mixed, every):
                rec = await next_datagram(sess, b"tick-1")
                assert (rec.kind, rec.room) == (KIND_TEXT, "ticks"), rec
            await publish(b"\x00\x01\x02", KIND_BINARY)
            rec = await next_datagram(dg, b"\x00\x01\x02")
            assert (rec.kind, rec.room) == (KIND_BINARY, "ticks"), rec

            # The reliable room of `mixed` still comes on its uni stream.
            r = (await recv_real(mixed, 1))[0]
            assert (r.kind, r.room, r.payload) == (KIND_TEXT, "rel", b"tick-1"), r
            # No reliable record of a datagram room, ever.
            await asyncio.sleep(SILENCE)
            for sess in (dg, mixed, every):
                bad = [r for r in sess.records_so_far() if r.room == "ticks"]
                assert not bad, f"session {sess.id}: datagram room delivered reliably: {bad[:3]}"
            # Datagrams carried the right session's quarter stream id.
            assert not any(c.orphan_datagrams for c in cl.conns)


@run
async def test_client_datagram_is_published():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            rx = await cl.session("/wt/chat?room=dgin")
            tx = await cl.session("/wt/chat?room=dgin")
            await sync_room(stream_publisher(tx), [rx], "dgin")
            body = client_datagram_record(KIND_TEXT, "via-datagram")
            deadline = time.monotonic() + STEP
            got = None
            while got is None and time.monotonic() < deadline:
                tx.send_datagram(body)
                try:
                    got = await rx.recv_record_matching(
                        lambda r: r.payload == b"via-datagram", 1.0
                    )
                except asyncio.TimeoutError:
                    pass
            assert got is not None, "a client datagram record was never published"
            assert (got.kind, got.room) == (KIND_TEXT, "dgin"), got


@run(timeout=120.0)
async def test_fifty_sessions_in_one_room_all_receive_one_publish():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            members = await asyncio.gather(
                *(cl.session("/wt/chat?room=fifty") for _ in range(50))
            )
            publisher = await cl.session("/wt/chat?room=fifty")
            publish = stream_publisher(publisher)
            await sync_room(publish, list(members), "fifty")
            await publish(b"hello fifty")
            for n, m in enumerate(members):
                r = (await recv_real(m, 1))[0]
                assert (r.kind, r.room, r.payload) == (KIND_TEXT, "fifty", b"hello fifty"), (
                    f"member {n}: {r}"
                )


@run
async def test_cross_transport_websocket_sse_and_webtransport():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            wt = await cl.session("/wt/chat?room=mix")
            ws = await ws_connect(server.url("/ws/chat?room=mix"), compression=None)
            sse = await SseClient().open(server.addr, "/sse?room=mix")
            ws_msgs: list = []

            async def ws_reader():
                async for m in ws:
                    ws_msgs.append(m)

            ws_task = asyncio.create_task(ws_reader())
            try:
                # Everyone a member: WebSocket probes reach WT; WT probes reach WS and SSE.
                async def ws_publish(p: bytes) -> None:
                    await ws.send(p.decode())

                await sync_room(ws_publish, [wt], "mix")
                wt_publish = stream_publisher(wt)
                deadline = time.monotonic() + STEP
                while not (
                    any(isinstance(m, str) and m.startswith("sync:wt") for m in ws_msgs)
                    and any(e["data"].startswith("sync:wt") for e in sse.events)
                ):
                    assert time.monotonic() < deadline, (ws_msgs[-3:], sse.events[-3:])
                    await wt_publish(b"sync:wt")
                    await asyncio.sleep(0.1)

                # WebSocket text -> WT text record, SSE data.
                await ws.send("from-ws ✓")
                r = (await recv_real(wt, 1))[0]
                assert (r.kind, r.room, r.payload) == (KIND_TEXT, "mix", "from-ws ✓".encode()), r
                await sse.wait_data(lambda e: e["data"] == "from-ws ✓")

                # WebSocket binary -> WT 0x01 record.
                await ws.send(b"\x00\xffbin")
                r = (await recv_real(wt, 1))[0]
                assert (r.kind, r.payload) == (KIND_BINARY, b"\x00\xffbin"), r

                # WT text record -> WebSocket text frame, SSE data.
                await wt_publish("from-wt ✓".encode())
                deadline = time.monotonic() + STEP
                while "from-wt ✓" not in ws_msgs:
                    assert time.monotonic() < deadline, f"WS never got it: {ws_msgs[-5:]}"
                    await asyncio.sleep(0.02)
                await sse.wait_data(lambda e: e["data"] == "from-wt ✓")

                # WT binary record -> WebSocket binary frame, SSE event: binary.
                await wt_publish(b"\x01\x02\xfe", KIND_BINARY)
                deadline = time.monotonic() + STEP
                while b"\x01\x02\xfe" not in ws_msgs:
                    assert time.monotonic() < deadline, f"WS never got it: {ws_msgs[-5:]}"
                    await asyncio.sleep(0.02)
                e = await sse.wait_data(
                    lambda e: e.get("event") == "binary"
                    and e["data"] == base64.b64encode(b"\x01\x02\xfe").decode()
                )
                assert e
                # A text record with line breaks becomes several data: lines.
                await wt_publish(b"line1\nline2")
                await sse.wait_data(lambda e: e["data"] == "line1\nline2")
            finally:
                ws_task.cancel()
                await asyncio.wait_for(ws.close(), STEP)
                await sse.close()


# --- close ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["capsule", "capsule-split", "fin-only"])
@run
async def test_client_close_finishes_session_and_others_survive(how):
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            s1 = await cl.session("/wt/echo", conn=conn)
            s2 = await cl.session("/wt/echo", conn=conn)
            # An open echo stream on s1, with the server's side active.
            b1 = s1.open_bidi()
            b1.send(b"x")
            assert await b1.read_exactly(1, STEP) == b"x"

            if how == "capsule":
                s1.close(4242, "bye")
            elif how == "capsule-split":
                cap = close_capsule(4242, "bye")
                s1.send_capsule_bytes(cap[:3])
                await asyncio.sleep(0.05)
                s1.send_capsule_bytes(cap[3:], end=True)
            else:
                s1.finish()

            await conn.wait_until(
                lambda: s1.fin or s1.reset_code is not None, STEP, "server's end of CONNECT stream"
            )
            assert s1.fin and s1.reset_code is None, (
                f"server should finish (FIN) the CONNECT stream, not reset it: {s1!r}"
            )
            if s1.close_info is not None:
                # If the server answers with its own capsule, it is well-formed.
                code, _reason = s1.close_info
                assert 0 <= code <= 0xFFFFFFFF
            # The server's streams of that session are reset.
            await conn.wait_until(
                lambda: b1.reset_code is not None, STEP, "reset of the closed session's stream"
            )
            # The session is gone: a new stream naming it is refused, its datagrams unanswered.
            late = conn.open_wt_bidi(s1.id)
            late.send(b"late")
            await late.wait_refused(STEP)
            assert WEBTRANSPORT_BUFFERED_STREAM_REJECTED in (
                late.reset_code,
                late.stop_sending_code,
            ), f"stream for closed session {s1.id}: {late!r}"
            s1.send_datagram(b"anyone?")
            await assert_nothing(lambda: s1.datagrams, conn, "datagram echo on closed session")

            # The other session of the connection, and a new one, still work.
            assert not s2.closed, s2
            await assert_echo_works(s2)
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))
            assert not conn.terminated


@pytest.mark.parametrize("how", ["reset", "stop_sending"])
@pytest.mark.parametrize("code", [7, 0x1E + 5, 0xFFFFFFFF], ids=["7", "35", "max"])
@run
async def test_echo_stream_reset_code_comes_back(how, code):
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            b = sess.open_bidi()
            b.send(b"abc")
            assert await b.read_exactly(3, STEP) == b"abc"
            if how == "reset":
                b.reset(code)
            else:
                b.stop_sending(code)
            got = await b.wait_reset(STEP)
            assert h3_to_wt(got) == code, (
                f"{how} with WT code {code} ({wt_to_h3(code):#x}): server reset its side "
                f"with {got:#x} (WT code {h3_to_wt(got)})"
            )
            await assert_echo_works(sess)


# --- malformed input --------------------------------------------------------


@pytest.mark.parametrize(
    "cap",
    [
        # CLOSE_WEBTRANSPORT_SESSION must hold at least a u32 code: length 2 is malformed.
        varint(CAPSULE_CLOSE) + varint(2) + b"\x00\x01",
        # the reason is at most 1024 bytes
        close_capsule(1, b"r" * 1025),
        # the reason is UTF-8
        close_capsule(1, b"\xc3\x28 bad"),
    ],
    ids=["length-2", "reason-1025-bytes", "reason-invalid-utf8"],
)
@run
async def test_malformed_close_capsule_resets_only_that_session(cap):
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            bad = await cl.session("/wt/echo", conn=conn)
            good = await cl.session("/wt/echo", conn=conn)
            other = await cl.session("/wt/echo")
            bad.send_capsule_bytes(cap)
            await conn.wait_until(
                lambda: bad.reset_code is not None or bad.fin or conn.terminated,
                STEP,
                "reaction to a malformed capsule",
            )
            assert not conn.terminated, f"connection closed: {conn.close_error}"
            assert bad.reset_code == H3_MESSAGE_ERROR, (
                f"CONNECT stream should be reset with H3_MESSAGE_ERROR (0x10e): {bad!r}"
            )
            await assert_echo_works(good)
            await assert_echo_works(other)
            await assert_echo_works(await cl.session("/wt/echo", conn=conn))


@run
async def test_unknown_capsule_is_ignored():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            sess.send_capsule_bytes(capsule(0x17, b"grease me") + capsule(0x3FFF, b""))
            await assert_echo_works(sess)
            await assert_nothing(lambda: sess.closed, sess.conn, "session closed")
            # A capsule after the unknown ones is still understood.
            sess.close(5, "after unknown")
            await sess.wait_closed(STEP)
            assert sess.fin and sess.reset_code is None, sess


@run
async def test_unknown_uni_stream_type_is_stopped_and_ignored():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            conn = sess.conn
            raw = conn.open_raw_uni(varint(0x21) + os.urandom(64))  # no FIN yet
            code = await raw.wait_stop_sending(STEP)
            assert code == H3_STREAM_CREATION_ERROR, f"STOP_SENDING code {code:#x}"
            raw2 = conn.open_raw_uni(varint(0x21) + b"\xff" * 500, end=True)
            await conn.ping_roundtrip(STEP)
            assert not conn.terminated
            await assert_echo_works(sess)
            assert raw2.reset_code is None


@run
async def test_stream_for_unknown_session_is_refused():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            conn = sess.conn
            data_stream = sess.open_bidi()
            data_stream.send(b"hi")
            assert await data_stream.read_exactly(2, STEP) == b"hi"
            for bogus in [sess.id + 4 * 100, data_stream.id]:
                b = conn.open_wt_bidi(bogus)
                b.send(b"to nowhere")
                u = conn.open_wt_uni(bogus)
                u.send(b"to nowhere")
                for s in (b, u):
                    await s.wait_refused(STEP)
                    codes = {s.reset_code, s.stop_sending_code} - {None}
                    assert codes == {WEBTRANSPORT_BUFFERED_STREAM_REJECTED}, (
                        f"stream {s.id} naming session {bogus}: "
                        f"reset={s.reset_code and hex(s.reset_code)} "
                        f"stop_sending={s.stop_sending_code and hex(s.stop_sending_code)}"
                    )
            await conn.ping_roundtrip(STEP)
            assert not conn.terminated, conn.close_error
            await assert_echo_works(sess)


@pytest.mark.parametrize(
    "record,code",
    [
        (varint(1 + 4) + bytes([KIND_TEXT]) + b"\xce\xba\xff\xfe", RECORD_INVALID_UTF8),
        (varint(0), RECORD_MALFORMED),
        (varint(1 + 1025) + bytes([KIND_BINARY]) + b"a" * 1025, RECORD_TOO_LARGE),
    ],
    ids=["invalid-utf8", "empty-record", "too-large"],
)
@run
async def test_bad_record_resets_stream_session_stays(record, code):
    with Server(
        shards=2, websocket__max_message_size="1024", websocket__max_frame_size="1024"
    ) as server:
        async with Clients(server) as cl:
            tx = await cl.session("/wt/chat?room=bad")
            rx = await cl.session("/wt/chat?room=bad")
            await sync_room(stream_publisher(tx), [rx], "bad")
            # A record of exactly the largest size is fine.
            s = tx.open_bidi()
            s.send(binary_record(b"b" * 1024) + record)
            await s.wait_refused(STEP)
            wt_codes = {h3_to_wt(c) for c in (s.reset_code, s.stop_sending_code) if c is not None}
            assert wt_codes == {code}, (
                f"expected the stream reset with WT code {code}: {s!r} (WT codes {wt_codes})"
            )
            assert s.reset_code is not None, f"server did not reset (RESET_STREAM) {s!r}"
            # The session stays: a new stream publishes normally.
            good = tx.open_bidi()
            good.send(text_record("still-ok"), end=True)
            got = await recv_real(rx, 2)
            assert [(r.kind, r.payload) for r in got] == [
                (KIND_BINARY, b"b" * 1024),
                (KIND_TEXT, b"still-ok"),
            ], got
            assert not tx.closed


@run
async def test_uni_stream_bad_record_gets_stop_sending():
    with Server() as server:
        async with Clients(server) as cl:
            tx = await cl.session("/wt/chat?room=ubad")
            u = tx.open_uni()
            u.send(varint(1 + 2) + bytes([KIND_TEXT]) + b"\xff\xfe")
            code = await u.wait_stop_sending(STEP)
            assert h3_to_wt(code) == RECORD_INVALID_UTF8, f"STOP_SENDING {code:#x} ({h3_to_wt(code)})"
            assert not tx.closed
            rx = await cl.session("/wt/chat?room=ubad")
            publish = stream_publisher(tx)
            await sync_room(publish, [rx], "ubad")
            await publish(b"fine")
            assert (await recv_payload(rx, b"fine")).room == "ubad"


@run
async def test_records_fed_byte_by_byte():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            tx = await cl.session("/wt/chat?room=drip")
            rx = await cl.session("/wt/chat?room=drip")
            await sync_room(stream_publisher(tx), [rx], "drip")
            big = "é" * 100  # 200 bytes: a 2-byte record length, and split characters
            wire = text_record("a") + binary_record(b"\x00" * 70) + text_record(big)
            s = tx.open_bidi()
            for i in range(len(wire)):
                s.send(wire[i : i + 1])
                if i % 16 == 0:
                    await asyncio.sleep(0.005)
            s.finish()
            got = await recv_real(rx, 3)
            assert [(r.kind, r.payload) for r in got] == [
                (KIND_TEXT, b"a"),
                (KIND_BINARY, b"\x00" * 70),
                (KIND_TEXT, big.encode()),
            ], got
            assert await s.read_to_fin(STEP) == b""


@run
async def test_two_sessions_on_one_connection_in_one_room():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            conn = await cl.conn()
            a = await cl.session("/wt/chat?room=pair", conn=conn)
            b = await cl.session("/wt/chat?room=pair", conn=conn)
            pub = await cl.session("/wt/chat?room=pair")
            publish = stream_publisher(pub)
            await sync_room(publish, [a, b], "pair")
            await publish(b"to-pair")
            for sess in (a, b):
                r = await recv_payload(sess, b"to-pair")
                assert (r.kind, r.room) == (KIND_TEXT, "pair"), r
            ua = [s.id for s in a.incoming if s.is_unidirectional]
            ub = [s.id for s in b.incoming if s.is_unidirectional]
            assert len(ua) == 1 and len(ub) == 1 and ua != ub, (ua, ub)


@run
async def test_abrupt_connection_loss_does_not_harm_the_room():
    with Server(shards=2) as server:
        async with Clients(server) as cl:
            gone = [await cl.session("/wt/chat?room=rough") for _ in range(3)]
            stay = await cl.session("/wt/chat?room=rough")
            pub = await cl.session("/wt/chat?room=rough")
            publish = stream_publisher(pub)
            await sync_room(publish, gone + [stay], "rough")
            # One connection closes with an error, one just goes silent
            # (its socket closed, no CONNECTION_CLOSE), one closes normally.
            gone[0].conn.close(error_code=0x1, reason_phrase="boom")
            gone[1].conn._transport.close()
            await gone[2].conn.aclose()
            for i in range(20):
                await publish(b"after-%d" % i)
            got = await recv_real(stay, 20)
            assert [r.payload for r in got] == [b"after-%d" % i for i in range(20)]


@run
async def test_oversized_datagram_is_dropped_and_counted():
    with Server() as server:
        async with Clients(server) as cl:
            small = await cl.conn(max_datagram_frame_size=300)
            rx = await cl.session("/wt/chat?room=dgbig&datagram=dgbig", conn=small)
            tx = await cl.session("/wt/chat?room=dgbig")
            publish = stream_publisher(tx)
            await sync_room(publish, [rx], "dgbig")
            await publish(b"x" * 1000)
            await publish(b"small-after")
            deadline = time.monotonic() + STEP
            seen = []
            while b"small-after" not in seen:
                d = await rx.recv_datagram(max(0.01, deadline - time.monotonic()))
                seen.append(parse_datagram_record(d).payload)
            assert b"x" * 1000 not in seen
            status, body = await asyncio.get_running_loop().run_in_executor(
                None, http_get, server, "/stats"
            )
            assert status == 200, (status, body)
            stats = json.loads(body)
            assert stats.get("wt_datagrams_dropped", 0) >= 1, stats


@run
async def test_datagram_for_unknown_session_is_ignored():
    with Server() as server:
        async with Clients(server) as cl:
            sess = await cl.session("/wt/echo")
            conn = sess.conn
            conn.send_raw_datagram(varint(1000) + b"nobody")  # quarter stream id 1000
            conn.send_raw_datagram(b"\x40")  # truncated quarter stream id varint
            await conn.ping_roundtrip(STEP)
            assert not conn.terminated, conn.close_error
            await assert_echo_works(sess)
            sess.send_datagram(b"still here")
            assert await sess.recv_datagram(STEP) == b"still here"



# --- shutdown ---------------------------------------------------------------


@run
async def test_sigterm_drains_then_closes_1001():
    with Server(shards=2, shutdown__drain_timeout_ms="3000") as server:
        async with Clients(server) as cl:
            chat = await cl.session("/wt/chat?room=bye")
            echo = await cl.session("/wt/echo")
            await assert_echo_works(echo)
            t0 = time.monotonic()
            server.signal(signal.SIGTERM)
            for sess in (chat, echo):
                await sess.wait_capsule(CAPSULE_DRAIN, 5.0)
            for sess in (chat, echo):
                await sess.conn.wait_until(
                    lambda: sess.close_info is not None or sess.conn.terminated,
                    6.0,
                    "close after drain",
                )
                if sess.close_info is not None:
                    assert sess.close_info == (1001, "server shutting down"), sess.close_info
                    await sess.wait_closed(STEP)
                # order: DRAIN before CLOSE
                types = [t for t, _ in sess.capsules]
                if CAPSULE_CLOSE in types:
                    assert types.index(CAPSULE_DRAIN) < types.index(CAPSULE_CLOSE), types
            assert time.monotonic() - t0 < 3.0 + 2.0
            rc = await asyncio.get_running_loop().run_in_executor(None, server.wait, 8.0)
            assert rc == 0, "".join(server.output[-20:])
