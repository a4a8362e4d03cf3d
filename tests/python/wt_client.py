"""A small asyncio WebTransport-over-HTTP/3 (draft-02) client for the tests,
written against docs/PROTOCOL.md ("WebTransport over HTTP/3") on top of aioquic.

aioquic provides QUIC, TLS, QPACK and the HTTP/3 request layer (CONNECT stream
HEADERS/DATA, SETTINGS, datagrams with their quarter-stream-id prefix). The
WebTransport stream layer is done here instead of through aioquic's helpers,
because aioquic's client misparses the server's reply bytes on a client-opened
bidirectional WebTransport stream (it reads them as HTTP/3 frames): every
stream this client opens itself is kept away from the H3Connection and its
QUIC events are handled here directly. Server-opened streams (type 0x54
unidirectional) go through aioquic's H3Connection as usual.

Everything waits with explicit timeouts; nothing here can block forever.

    conn = await connect_quic("127.0.0.1", port)
    session = await conn.open_session("/wt/echo")
    assert session.status == 200
    s = session.open_bidi()
    s.send(b"hello", end=True)
    assert await s.read_to_fin() == b"hello"
    await conn.aclose()
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import (
    DataReceived,
    DatagramReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion

DEFAULT_TIMEOUT = 10.0

# --- protocol constants (PROTOCOL.md, "WebTransport over HTTP/3") ----------

FRAME_WEBTRANSPORT_STREAM = 0x41  # client bidi stream signal
STREAM_TYPE_WEBTRANSPORT = 0x54  # uni stream type

CAPSULE_CLOSE = 0x2843  # CLOSE_WEBTRANSPORT_SESSION: u32 code + reason
CAPSULE_DRAIN = 0x78AE  # DRAIN_WEBTRANSPORT_SESSION

H3_STREAM_CREATION_ERROR = 0x103
H3_MESSAGE_ERROR = 0x10E
H3_REQUEST_CANCELLED = 0x10C
WEBTRANSPORT_BUFFERED_STREAM_REJECTED = 0x3994BD84
WEBTRANSPORT_SESSION_GONE = 0x170D7B68

SETTING_ENABLE_CONNECT_PROTOCOL = 0x08
SETTING_H3_DATAGRAM = 0x33
SETTING_H3_DATAGRAM_DRAFT04 = 0xFFD277
SETTING_ENABLE_WEBTRANSPORT = 0x2B603742
SETTING_WEBTRANSPORT_MAX_SESSIONS = 0xC671706A

KIND_TEXT = 0x00
KIND_BINARY = 0x01

# Record reset codes on /wt/chat client streams (WebTransport application codes).
RECORD_MALFORMED = 1
RECORD_TOO_LARGE = 2
RECORD_INVALID_UTF8 = 3

_WT_CODE_FIRST = 0x52E4A40FA8DB
_WT_CODE_LAST = 0x52E5AC983162


def wt_to_h3(e: int) -> int:
    """WebTransport application error code (u32) -> HTTP/3 error code."""
    assert 0 <= e <= 0xFFFFFFFF
    return _WT_CODE_FIRST + e + e // 0x1E


def h3_to_wt(h: int) -> int | None:
    """HTTP/3 error code -> WebTransport application code, None when outside the
    WebTransport range or a reserved (GREASE) code point."""
    if not _WT_CODE_FIRST <= h <= _WT_CODE_LAST:
        return None
    shifted = h - _WT_CODE_FIRST
    if (h - 0x21) % 0x1F == 0:
        return None
    return shifted - shifted // 0x1F


# --- varints, capsules, records ---------------------------------------------


def varint(v: int) -> bytes:
    return encode_uint_var(v)


def read_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, new position), or None when `data` ends inside the varint."""
    if pos >= len(data):
        return None
    first = data[pos]
    n = 1 << (first >> 6)
    if pos + n > len(data):
        return None
    v = first & 0x3F
    for b in data[pos + 1 : pos + n]:
        v = (v << 8) | b
    return v, pos + n


def capsule(ctype: int, payload: bytes) -> bytes:
    return varint(ctype) + varint(len(payload)) + payload


def close_capsule(code: int, reason: str | bytes = b"") -> bytes:
    if isinstance(reason, str):
        reason = reason.encode()
    return capsule(CAPSULE_CLOSE, code.to_bytes(4, "big") + reason)


def drain_capsule() -> bytes:
    return capsule(CAPSULE_DRAIN, b"")


def parse_capsules(data: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete capsules at the start of `data` and how many bytes they span."""
    out, pos = [], 0
    while True:
        t = read_varint(data, pos)
        if t is None:
            break
        ln = read_varint(data, t[1])
        if ln is None or ln[1] + ln[0] > len(data):
            break
        out.append((t[0], bytes(data[ln[1] : ln[1] + ln[0]])))
        pos = ln[1] + ln[0]
    return out, pos


def client_record(kind: int, payload: bytes | str) -> bytes:
    """client -> server record: varint(L) kind payload, L = 1 + len(payload)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(1 + len(payload)) + bytes([kind]) + payload


def text_record(text: str) -> bytes:
    return client_record(KIND_TEXT, text.encode())


def binary_record(data: bytes) -> bytes:
    return client_record(KIND_BINARY, data)


@dataclass(frozen=True)
class Record:
    kind: int
    room: str
    payload: bytes

    @property
    def text(self) -> str:
        assert self.kind == KIND_TEXT, self
        return self.payload.decode()


class RecordError(ValueError):
    pass


def _parse_room_payload(body: bytes) -> Record:
    if not body:
        raise RecordError("empty record")
    kind = body[0]
    r = read_varint(body, 1)
    if r is None or r[1] + r[0] > len(body):
        raise RecordError(f"room length overruns the record: {body[:32]!r}")
    room = body[r[1] : r[1] + r[0]].decode()
    return Record(kind, room, body[r[1] + r[0] :])


def parse_server_records(data: bytes | bytearray) -> tuple[list[Record], int]:
    """Records `varint(L) kind varint(roomlen) room payload` (L counts all after
    it) at the start of `data`, and how many bytes they span."""
    out, pos = [], 0
    while True:
        ln = read_varint(data, pos)
        if ln is None or ln[1] + ln[0] > len(data):
            break
        out.append(_parse_room_payload(bytes(data[ln[1] : ln[1] + ln[0]])))
        pos = ln[1] + ln[0]
    return out, pos


def parse_datagram_record(data: bytes) -> Record:
    """A server datagram after its quarter stream id: kind varint(roomlen) room payload."""
    return _parse_room_payload(data)


def client_datagram_record(kind: int, payload: bytes | str) -> bytes:
    """client -> server datagram body (after the quarter stream id): kind payload."""
    if isinstance(payload, str):
        payload = payload.encode()
    return bytes([kind]) + payload


# --- streams and sessions ---------------------------------------------------


class Stream:
    """One QUIC stream as this client sees it (client- or server-opened)."""

    def __init__(self, conn: "WTConnection", stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.session_id: int | None = None
        self.data = bytearray()
        self.fin = False
        self.reset_code: int | None = None  # peer's RESET_STREAM (HTTP/3 code)
        self.stop_sending_code: int | None = None  # peer's STOP_SENDING (HTTP/3 code)
        self._read = 0  # bytes consumed by read_* helpers

    @property
    def is_unidirectional(self) -> bool:
        return bool(self.id & 2)

    @property
    def is_client_initiated(self) -> bool:
        return not self.id & 1

    @property
    def reset_wt_code(self) -> int | None:
        return None if self.reset_code is None else h3_to_wt(self.reset_code)

    @property
    def stop_sending_wt_code(self) -> int | None:
        return None if self.stop_sending_code is None else h3_to_wt(self.stop_sending_code)

    # sending
    def send(self, data: bytes, end: bool = False) -> None:
        self.conn._quic.send_stream_data(self.id, data, end)
        self.conn.transmit()

    def finish(self) -> None:
        self.send(b"", end=True)

    def reset(self, wt_code: int | None = None, *, h3_code: int | None = None) -> None:
        """RESET_STREAM with WebTransport code `wt_code` (mapped) or a raw `h3_code`."""
        code = h3_code if h3_code is not None else wt_to_h3(wt_code or 0)
        self.conn._quic.reset_stream(self.id, code)
        self.conn.transmit()

    def stop_sending(self, wt_code: int | None = None, *, h3_code: int | None = None) -> None:
        code = h3_code if h3_code is not None else wt_to_h3(wt_code or 0)
        self.conn._quic.stop_stream(self.id, code)
        self.conn.transmit()

    # receiving
    @property
    def ended(self) -> bool:
        return self.fin or self.reset_code is not None

    async def read_exactly(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        await self.conn.wait_until(
            lambda: len(self.data) - self._read >= n or self.ended,
            timeout,
            f"{n} bytes on stream {self.id}",
        )
        if len(self.data) - self._read < n:
            raise EOFError(
                f"stream {self.id} ended (fin={self.fin}, reset={self.reset_code}) after "
                f"{len(self.data) - self._read} of {n} bytes"
            )
        out = bytes(self.data[self._read : self._read + n])
        self._read += n
        return out

    async def read_to_fin(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        await self.conn.wait_until(lambda: self.ended, timeout, f"FIN on stream {self.id}")
        if self.reset_code is not None:
            raise EOFError(f"stream {self.id} was reset with {self.reset_code:#x}")
        out = bytes(self.data[self._read :])
        self._read = len(self.data)
        return out

    async def wait_reset(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the peer's RESET_STREAM and return its (HTTP/3) code."""
        await self.conn.wait_until(
            lambda: self.reset_code is not None, timeout, f"RESET_STREAM on stream {self.id}"
        )
        assert self.reset_code is not None
        return self.reset_code

    async def wait_stop_sending(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        await self.conn.wait_until(
            lambda: self.stop_sending_code is not None,
            timeout,
            f"STOP_SENDING on stream {self.id}",
        )
        assert self.stop_sending_code is not None
        return self.stop_sending_code

    async def wait_refused(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for a RESET_STREAM or a STOP_SENDING from the peer."""
        await self.conn.wait_until(
            lambda: self.reset_code is not None or self.stop_sending_code is not None,
            timeout,
            f"RESET_STREAM or STOP_SENDING on stream {self.id}",
        )

    def __repr__(self) -> str:
        return (
            f"<Stream {self.id} session={self.session_id} bytes={len(self.data)} "
            f"fin={self.fin} reset={self.reset_code} stop={self.stop_sending_code}>"
        )


class Session:
    """An HTTP/3 request stream; a WebTransport session when `status == 200`."""

    def __init__(self, conn: "WTConnection", stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id  # session id = CONNECT stream id
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.status: int | None = None
        self.body = bytearray()  # DATA bytes on the CONNECT stream (capsules)
        self._capsule_pos = 0
        self.capsules: list[tuple[int, bytes]] = []
        self.fin = False  # the server finished the CONNECT stream
        self.reset_code: int | None = None  # the server reset the CONNECT stream
        self.stop_sending_code: int | None = None
        self.incoming: list[Stream] = []  # server-opened WebTransport streams
        self.datagrams: list[bytes] = []  # payloads after the quarter stream id
        self._datagram_read = 0
        self._record_pos: dict[int, int] = {}
        self._records: list[Record] = []
        self._records_read = 0

    # -- response
    def header(self, name: bytes | str) -> bytes | None:
        if isinstance(name, str):
            name = name.encode()
        for k, v in self.headers or []:
            if k == name:
                return v
        return None

    @property
    def accepted(self) -> bool:
        return self.status == 200

    # -- capsules / close
    def _feed_body(self, data: bytes) -> None:
        self.body += data
        caps, n = parse_capsules(self.body[self._capsule_pos :])
        self.capsules.extend(caps)
        self._capsule_pos += n

    @property
    def close_info(self) -> tuple[int, str] | None:
        """(code, reason) of the server's CLOSE_WEBTRANSPORT_SESSION capsule."""
        for t, p in self.capsules:
            if t == CAPSULE_CLOSE:
                return int.from_bytes(p[:4], "big"), p[4:].decode("utf-8", "replace")
        return None

    @property
    def drained(self) -> bool:
        return any(t == CAPSULE_DRAIN for t, _ in self.capsules)

    @property
    def closed(self) -> bool:
        return self.fin or self.reset_code is not None or self.conn.terminated

    def send_capsule_bytes(self, data: bytes, end: bool = False) -> None:
        """Raw bytes in one DATA frame on the CONNECT stream."""
        self.conn._h3.send_data(self.id, data, end)
        self.conn.transmit()

    def send_capsule(self, ctype: int, payload: bytes, end: bool = False) -> None:
        self.send_capsule_bytes(capsule(ctype, payload), end)

    def close(self, code: int = 0, reason: str | bytes = b"") -> None:
        """CLOSE_WEBTRANSPORT_SESSION then FIN on the CONNECT stream."""
        self.send_capsule_bytes(close_capsule(code, reason), end=True)

    def finish(self) -> None:
        """Close by FIN alone (code 0)."""
        self.send_capsule_bytes(b"", end=True)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.conn.wait_until(lambda: self.closed, timeout, f"session {self.id} close")

    async def wait_capsule(self, ctype: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        def find() -> Any:
            for t, p in self.capsules:
                if t == ctype:
                    return (p,)
            if self.closed:
                return ("closed",)
            return None

        got = await self.conn.wait_until(find, timeout, f"capsule {ctype:#x} on {self.id}")
        if got == ("closed",) and not any(t == ctype for t, _ in self.capsules):
            raise EOFError(f"session {self.id} closed without capsule {ctype:#x}")
        return got[0]

    async def wait_response_end(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the server to end (FIN or reset) the request stream."""
        await self.conn.wait_until(
            lambda: self.fin or self.reset_code is not None or self.conn.terminated,
            timeout,
            f"end of stream {self.id}",
        )

    # -- streams
    def open_bidi(self) -> Stream:
        return self.conn.open_wt_bidi(self.id)

    def open_uni(self) -> Stream:
        return self.conn.open_wt_uni(self.id)

    async def accept_uni(self, index: int = 0, timeout: float = DEFAULT_TIMEOUT) -> Stream:
        """The server-opened unidirectional stream number `index` of this session."""
        await self.conn.wait_until(
            lambda: len(self.incoming) > index,
            timeout,
            f"server-opened stream #{index} on session {self.id}",
        )
        return self.incoming[index]

    # -- records (rooms endpoint)
    def _parse_records(self) -> None:
        for s in self.incoming:
            if not s.is_unidirectional:
                continue
            pos = self._record_pos.get(s.id, 0)
            recs, n = parse_server_records(s.data[pos:])
            if recs:
                self._records.extend(recs)
                self._record_pos[s.id] = pos + n

    def records_so_far(self) -> list[Record]:
        self._parse_records()
        return list(self._records)

    async def recv_records(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Record]:
        """The next `n` reliable records (server-opened uni streams)."""

        def ready() -> bool:
            self._parse_records()
            return len(self._records) - self._records_read >= n

        await self.conn.wait_until(
            ready, timeout, f"{n} records on session {self.id} (have "
            f"{len(self._records) - self._records_read})"
        )
        out = self._records[self._records_read : self._records_read + n]
        self._records_read += n
        return out

    async def recv_record(self, timeout: float = DEFAULT_TIMEOUT) -> Record:
        return (await self.recv_records(1, timeout))[0]

    async def recv_record_matching(
        self, pred: Callable[[Record], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> Record:
        """Skip reliable records until one matches `pred`."""

        def find() -> Any:
            self._parse_records()
            while self._records_read < len(self._records):
                r = self._records[self._records_read]
                self._records_read += 1
                if pred(r):
                    return (r,)
            return None

        return (await self.conn.wait_until(find, timeout, "matching record"))[0]

    # -- datagrams
    def send_datagram(self, payload: bytes) -> None:
        """A datagram for this session (aioquic adds the quarter stream id)."""
        self.conn._h3.send_datagram(self.id, payload)
        self.conn.transmit()

    async def recv_datagram(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        await self.conn.wait_until(
            lambda: len(self.datagrams) > self._datagram_read,
            timeout,
            f"datagram on session {self.id}",
        )
        d = self.datagrams[self._datagram_read]
        self._datagram_read += 1
        return d

    def __repr__(self) -> str:
        return (
            f"<Session {self.id} status={self.status} fin={self.fin} "
            f"reset={self.reset_code} capsules={self.capsules}>"
        )


class WTConnection(QuicConnectionProtocol):
    """One QUIC connection with an HTTP/3 (WebTransport-enabled) layer."""

    def __init__(self, quic: QuicConnection, authority: str = "localhost") -> None:
        super().__init__(quic)
        self._h3 = H3Connection(quic, enable_webtransport=True)
        self.authority = authority
        self.sessions: dict[int, Session] = {}
        self.streams: dict[int, Stream] = {}
        self._own_streams: set[int] = set()  # kept away from the H3Connection
        self.orphan_datagrams: list[tuple[int, bytes]] = []
        self.terminated = False
        self.close_error: qe.ConnectionTerminated | None = None
        self._waiters: list[asyncio.Future[None]] = []

    # -- waiting
    def _notify(self) -> None:
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        self._waiters.clear()

    async def wait_until(self, pred: Callable[[], Any], timeout: float, what: str = "") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            v = pred()
            if v:
                return v
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError(f"timed out after {timeout}s waiting for {what}")
            f = loop.create_future()
            self._waiters.append(f)
            try:
                await asyncio.wait_for(f, left)
            except asyncio.TimeoutError:
                pass

    # -- events
    def _stream(self, stream_id: int) -> Stream:
        s = self.streams.get(stream_id)
        if s is None:
            s = self.streams[stream_id] = Stream(self, stream_id)
        return s

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        try:
            self._handle(event)
        finally:
            self._notify()

    def _handle(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.ConnectionTerminated):
            self.terminated = True
            self.close_error = event
            return
        sid = getattr(event, "stream_id", None)
        if sid is not None and sid in self._own_streams:
            s = self._stream(sid)
            if isinstance(event, qe.StreamDataReceived):
                s.data += event.data
                s.fin = s.fin or event.end_stream
            elif isinstance(event, qe.StreamReset):
                s.reset_code = event.error_code
            elif isinstance(event, qe.StopSendingReceived):
                s.stop_sending_code = event.error_code
            return
        if isinstance(event, qe.StreamReset):
            if sid in self.sessions:
                self.sessions[sid].reset_code = event.error_code
            else:
                self._stream(sid).reset_code = event.error_code
        elif isinstance(event, qe.StopSendingReceived):
            if sid in self.sessions:
                self.sessions[sid].stop_sending_code = event.error_code
            else:
                self._stream(sid).stop_sending_code = event.error_code
        for h in self._h3.handle_event(event):
            self._h3_event(h)

    def _h3_event(self, h: Any) -> None:
        if isinstance(h, HeadersReceived):
            sess = self.sessions.get(h.stream_id)
            if sess is None:
                return
            if sess.headers is None:
                sess.headers = list(h.headers)
                status = sess.header(b":status")
                sess.status = int(status) if status is not None else None
            if h.stream_ended:
                sess.fin = True
        elif isinstance(h, DataReceived):
            sess = self.sessions.get(h.stream_id)
            if sess is None:
                return
            if h.data:
                sess._feed_body(h.data)
            if h.stream_ended:
                sess.fin = True
        elif isinstance(h, WebTransportStreamDataReceived):
            s = self._stream(h.stream_id)
            if s.session_id is None:
                s.session_id = h.session_id
                sess = self.sessions.get(h.session_id)
                if sess is not None:
                    sess.incoming.append(s)
            s.data += h.data
            s.fin = s.fin or h.stream_ended
        elif isinstance(h, DatagramReceived):
            sess = self.sessions.get(h.stream_id)
            if sess is None:
                self.orphan_datagrams.append((h.stream_id, h.data))
            else:
                sess.datagrams.append(h.data)

    # -- settings / TLS
    async def wait_settings(self, timeout: float = DEFAULT_TIMEOUT) -> dict[int, int]:
        await self.wait_until(
            lambda: self._h3.received_settings is not None or self.terminated,
            timeout,
            "server SETTINGS",
        )
        if self._h3.received_settings is None:
            raise ConnectionError(f"connection closed before SETTINGS: {self.close_error}")
        return self._h3.received_settings

    @property
    def settings(self) -> dict[int, int] | None:
        return self._h3.received_settings

    @property
    def remote_max_datagram_frame_size(self) -> int | None:
        return self._quic._remote_max_datagram_frame_size

    def peer_certificate_der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = self._quic.tls._peer_certificate
        assert cert is not None, "no peer certificate (handshake not complete?)"
        return cert.public_bytes(Encoding.DER)

    def peer_certificate_sha256(self) -> str:
        return hashlib.sha256(self.peer_certificate_der()).hexdigest()

    # -- requests and sessions
    def send_request(
        self, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> Session:
        sid = self._quic.get_next_available_stream_id()
        sess = Session(self, sid)
        self.sessions[sid] = sess
        self._h3.send_headers(sid, headers, end_stream=end_stream)
        self.transmit()
        return sess

    async def request(
        self,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Session:
        """Send a request and wait for its response HEADERS (or the stream's end)."""
        sess = self.send_request(headers, end_stream)
        await self.wait_until(
            lambda: sess.status is not None
            or sess.reset_code is not None
            or sess.fin
            or self.terminated,
            timeout,
            f"response on stream {sess.id}",
        )
        return sess

    def connect_headers(
        self,
        path: str,
        origin: str | None = None,
        authority: str | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", (authority or self.authority).encode()),
            (b":path", path.encode()),
        ]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        return headers + (extra or [])

    async def open_session(
        self,
        path: str,
        origin: str | None = None,
        *,
        authority: str | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Session:
        """Extended CONNECT for WebTransport on `path`; check `.status` (200 = open)."""
        await self.wait_settings(timeout)
        return await self.request(
            self.connect_headers(path, origin, authority, extra), timeout=timeout
        )

    # -- WebTransport and raw streams (kept away from the H3Connection)
    def open_wt_bidi(self, session_id: int) -> Stream:
        sid = self._quic.get_next_available_stream_id()
        self._own_streams.add(sid)
        s = self._stream(sid)
        s.session_id = session_id
        self._quic.send_stream_data(sid, varint(FRAME_WEBTRANSPORT_STREAM) + varint(session_id))
        self.transmit()
        return s

    def open_wt_uni(self, session_id: int) -> Stream:
        sid = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._own_streams.add(sid)
        s = self._stream(sid)
        s.session_id = session_id
        self._quic.send_stream_data(sid, varint(STREAM_TYPE_WEBTRANSPORT) + varint(session_id))
        self.transmit()
        return s

    def open_raw_uni(self, data: bytes, end: bool = False) -> Stream:
        """A raw QUIC unidirectional stream starting with `data` (e.g. an unknown type)."""
        sid = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._own_streams.add(sid)
        s = self._stream(sid)
        self._quic.send_stream_data(sid, data, end)
        self.transmit()
        return s

    def open_raw_bidi(self, data: bytes, end: bool = False) -> Stream:
        sid = self._quic.get_next_available_stream_id()
        self._own_streams.add(sid)
        s = self._stream(sid)
        self._quic.send_stream_data(sid, data, end)
        self.transmit()
        return s

    def send_raw_datagram(self, data: bytes) -> None:
        """A QUIC DATAGRAM frame exactly as given (no quarter stream id added)."""
        self._quic.send_datagram_frame(data)
        self.transmit()

    async def ping_roundtrip(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """A QUIC PING answered: the connection is alive."""
        await asyncio.wait_for(self.ping(), timeout)

    async def aclose(self, timeout: float = 2.0) -> None:
        if not self.terminated:
            self.close()
            try:
                await asyncio.wait_for(self.wait_closed(), timeout)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        if self._transport is not None:
            self._transport.close()


async def connect_quic(
    host: str,
    port: int,
    *,
    server_name: str = "localhost",
    max_datagram_frame_size: int = 65536,
    idle_timeout: float = 30.0,
    timeout: float = DEFAULT_TIMEOUT,
) -> WTConnection:
    """A QUIC v1 connection with ALPN h3, certificate not verified."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        verify_mode=ssl.CERT_NONE,
        server_name=server_name,
        max_datagram_frame_size=max_datagram_frame_size,
        idle_timeout=idle_timeout,
        supported_versions=[QuicProtocolVersion.VERSION_1],
    )
    loop = asyncio.get_running_loop()
    quic = QuicConnection(configuration=config)
    authority = f"{server_name}:{port}"
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: WTConnection(quic, authority), local_addr=("127.0.0.1", 0)
    )
    assert isinstance(protocol, WTConnection)
    try:
        protocol.connect((host, port))
        await asyncio.wait_for(protocol.wait_connected(), timeout)
    except BaseException:
        transport.close()
        raise
    return protocol


async def connect(
    host: str,
    port: int,
    path: str,
    origin: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    **kw: Any,
) -> tuple[WTConnection, Session]:
    """A new connection and one session on `path`; the session's `.status` says
    whether it was accepted (200) or rejected (4xx/5xx)."""
    conn = await connect_quic(host, port, timeout=timeout, **kw)
    try:
        sess = await conn.open_session(path, origin, timeout=timeout)
    except BaseException:
        await conn.aclose()
        raise
    return conn, sess
