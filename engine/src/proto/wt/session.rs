//! The HTTP/3 + WebTransport session layer of one QUIC connection.
//!
//! quiche's own HTTP/3 module parses every client bidirectional stream as a request
//! and drains unknown unidirectional stream types, so WebTransport streams would
//! never reach us through it. [`WtConn`] instead sits directly on the QUIC
//! connection: it recognises each new stream by its first bytes (control, QPACK,
//! WebTransport `0x54`/`0x41` preambles, or an HTTP/3 request), parses SETTINGS,
//! extended CONNECT requests and the capsules of every session, and leaves the data
//! of WebTransport streams in quiche for the application to read with
//! back-pressure.
//!
//! It owns no socket and reads no clock: the caller hands it the connection after
//! feeding packets and drains [`WtEvent`]s.

use std::collections::{HashMap, VecDeque};

use quiche::Shutdown;

use super::capsule::{self, Capsule, CapsuleReader};
use super::frame::{self, FrameEvent, FrameReader};
use super::varint;

/// Unidirectional stream type: HTTP/3 control stream.
pub const STREAM_CONTROL: u64 = 0x00;
/// Unidirectional stream type: QPACK encoder stream.
pub const STREAM_QPACK_ENCODER: u64 = 0x02;
/// Unidirectional stream type: QPACK decoder stream.
pub const STREAM_QPACK_DECODER: u64 = 0x03;
/// Unidirectional stream type: WebTransport stream.
pub const STREAM_WT_UNI: u64 = 0x54;
/// Signal value opening a WebTransport bidirectional stream.
pub const SIGNAL_WT_BIDI: u64 = 0x41;

/// H3_NO_ERROR.
pub const H3_NO_ERROR: u64 = 0x100;
/// H3_STREAM_CREATION_ERROR.
pub const H3_STREAM_CREATION_ERROR: u64 = 0x103;
/// H3_CLOSED_CRITICAL_STREAM.
pub const H3_CLOSED_CRITICAL_STREAM: u64 = 0x104;
/// H3_FRAME_UNEXPECTED.
pub const H3_FRAME_UNEXPECTED: u64 = 0x105;
/// H3_FRAME_ERROR.
pub const H3_FRAME_ERROR: u64 = 0x106;
/// H3_EXCESSIVE_LOAD.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// H3_SETTINGS_ERROR.
pub const H3_SETTINGS_ERROR: u64 = 0x109;
/// H3_MISSING_SETTINGS.
pub const H3_MISSING_SETTINGS: u64 = 0x10a;
/// H3_REQUEST_CANCELLED.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// H3_MESSAGE_ERROR.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
/// WEBTRANSPORT_BUFFERED_STREAM_REJECTED: a stream for a session we do not have.
pub const WT_BUFFERED_STREAM_REJECTED: u64 = 0x3994_bd84;
/// WEBTRANSPORT_SESSION_GONE: the stream's session has ended.
pub const WT_SESSION_GONE: u64 = 0x170d_7b68;

const APP_CODE_FIRST: u64 = 0x52e4_a40f_a8db;

/// HTTP/3 error code carrying WebTransport application code `e`.
pub fn app_code_to_h3(e: u32) -> u64 {
    let e = u64::from(e);
    APP_CODE_FIRST + e + e / 0x1e
}

/// The WebTransport application code inside HTTP/3 code `h`, if it is one (reserved
/// "grease" points inside the range carry none).
pub fn h3_to_app_code(h: u64) -> Option<u32> {
    let last = app_code_to_h3(u32::MAX);
    if !(APP_CODE_FIRST..=last).contains(&h) || (h - 0x21).is_multiple_of(0x1f) {
        return None;
    }
    let shifted = h - APP_CODE_FIRST;
    u32::try_from(shifted - shifted / 0x1f).ok()
}

/// An extended CONNECT (or any other) request head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:protocol` (extended CONNECT).
    pub protocol: Option<String>,
    /// `:scheme`.
    pub scheme: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
    /// `:path`, query included.
    pub path: Option<String>,
    /// `origin`.
    pub origin: Option<String>,
    /// The client sent `sec-webtransport-http3-draft02: 1`.
    pub draft02: bool,
    /// Every regular (non-pseudo) header field, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn from_fields(fields: &[(String, String)]) -> Self {
        let mut r = Request::default();
        for (name, value) in fields {
            match name.as_str() {
                ":method" => r.method = value.clone(),
                ":protocol" => r.protocol = Some(value.clone()),
                ":scheme" => r.scheme = Some(value.clone()),
                ":authority" => r.authority = Some(value.clone()),
                ":path" => r.path = Some(value.clone()),
                "origin" => r.origin = Some(value.clone()),
                "sec-webtransport-http3-draft02" => r.draft02 = true,
                _ => {}
            }
            if !name.starts_with(':') {
                r.headers.push((name.clone(), value.clone()));
            }
        }
        r
    }

    /// True for `CONNECT` with `:protocol webtransport`.
    pub fn is_webtransport(&self) -> bool {
        self.method == "CONNECT" && self.protocol.as_deref() == Some("webtransport")
    }
}

/// What happened on the connection, for the application.
#[derive(Debug, PartialEq, Eq)]
pub enum WtEvent {
    /// A request head arrived: answer with [`WtConn::accept`] or [`WtConn::reject`].
    Request {
        /// The request stream (the session id once accepted).
        stream_id: u64,
        /// The request.
        request: Request,
    },
    /// The peer opened a WebTransport stream on `session`; its data waits in quiche.
    Stream {
        /// The session.
        session: u64,
        /// The stream.
        stream_id: u64,
        /// Bidirectional.
        bidi: bool,
    },
    /// A WebTransport stream has data (or a FIN, or a reset) to read.
    Readable {
        /// The stream.
        stream_id: u64,
    },
    /// A datagram for `session`.
    Datagram {
        /// The session.
        session: u64,
        /// The datagram without its quarter stream id.
        payload: Vec<u8>,
    },
    /// The peer asked to wind `session` down.
    Drain {
        /// The session.
        session: u64,
    },
    /// `session` ended from the peer's side (close capsule, FIN or reset of its
    /// CONNECT stream, or a malformed capsule). Its streams have been reset.
    SessionClosed {
        /// The session.
        session: u64,
        /// The peer's code (0 without a close capsule).
        code: u32,
        /// The peer's reason, or why we ended it.
        reason: String,
        /// The streams the session had.
        streams: Vec<u64>,
    },
}

/// Why a local stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// No such session (closed).
    NoSession,
    /// The peer's stream limit is reached for now.
    StreamLimit,
}

/// How far a stream's opening bytes have been read.
#[derive(Debug)]
struct Preamble {
    bidi: bool,
    partial: Vec<u8>,
    first: Option<u64>,
}

#[derive(Debug)]
enum Stream {
    /// A new peer stream whose type is not known yet.
    Preamble(Preamble),
    /// The peer's control stream.
    Control { reader: FrameReader, settings: bool },
    /// Read and dropped (QPACK streams, unknown types, rejected requests).
    Discard,
    /// A request stream before its HEADERS.
    Request(FrameReader),
    /// A request waiting for the application's answer (not read meanwhile).
    Awaiting(FrameReader),
    /// An accepted session's CONNECT stream.
    Connect,
    /// A WebTransport stream whose session's CONNECT is not answered yet.
    Parked { session: u64, bidi: bool },
    /// A WebTransport stream: its data belongs to the application.
    App { session: u64 },
}

#[derive(Debug, Default)]
struct Session {
    frames: FrameReader,
    capsules: CapsuleReader,
    streams: Vec<u64>,
}

/// The session layer's state for one QUIC connection.
#[derive(Debug)]
pub struct WtConn {
    max_sessions: usize,
    settings_sent: bool,
    /// Next server-initiated unidirectional / bidirectional stream id.
    next_uni: u64,
    next_bidi: u64,
    peer_control: Option<u64>,
    /// The peer's SETTINGS, once received.
    peer_settings: Option<Vec<(u64, u64)>>,
    streams: HashMap<u64, Stream>,
    sessions: HashMap<u64, Session>,
    /// Bytes of control data quiche could not take yet, per stream (+ FIN).
    unsent: HashMap<u64, (Vec<u8>, bool)>,
    events: VecDeque<WtEvent>,
    scratch: Vec<u8>,
    goaway_sent: bool,
    highest_request: u64,
}

/// The control stream id a server opens first.
const SERVER_CONTROL_STREAM: u64 = 3;

impl WtConn {
    /// Layer state for a connection allowing `max_sessions` sessions at once.
    pub fn new(max_sessions: usize) -> Self {
        Self {
            max_sessions,
            settings_sent: false,
            next_uni: SERVER_CONTROL_STREAM + 4,
            next_bidi: 1,
            peer_control: None,
            peer_settings: None,
            streams: HashMap::new(),
            sessions: HashMap::new(),
            unsent: HashMap::new(),
            events: VecDeque::new(),
            scratch: vec![0; 16 * 1024],
            goaway_sent: false,
            highest_request: 0,
        }
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The peer's SETTINGS, once its control stream delivered them.
    pub fn peer_settings(&self) -> Option<&[(u64, u64)]> {
        self.peer_settings.as_deref()
    }

    /// Next event for the application.
    pub fn next_event(&mut self) -> Option<WtEvent> {
        self.events.pop_front()
    }

    /// Process everything quiche has for us: send SETTINGS once, read new and control
    /// streams, request heads, capsules and datagrams.
    pub fn poll(&mut self, conn: &mut quiche::Connection) {
        if !conn.is_established() || conn.is_closed() {
            return;
        }
        if !self.settings_sent {
            self.settings_sent = true;
            let mut bytes = Vec::new();
            varint::encode(STREAM_CONTROL, &mut bytes);
            bytes.extend(frame::server_settings(self.max_sessions as u64));
            self.send_all(conn, SERVER_CONTROL_STREAM, bytes, false);
        }
        self.flush_unsent(conn);
        // Request streams before the streams that may name them as their session.
        let mut readable: Vec<u64> = conn.readable().collect();
        readable.sort_unstable();
        for id in readable {
            self.on_readable(conn, id);
        }
        self.recv_datagrams(conn);
    }

    fn on_readable(&mut self, conn: &mut quiche::Connection, id: u64) {
        let state = match self.streams.remove(&id) {
            Some(s) => s,
            None if id.is_multiple_of(2) => Stream::Preamble(Preamble {
                bidi: id.is_multiple_of(4),
                partial: Vec::new(),
                first: None,
            }),
            // A server stream the application dropped: drain what the peer sends.
            None => Stream::Discard,
        };
        let next = match state {
            Stream::Preamble(p) => self.read_preamble(conn, id, p),
            Stream::Control { reader, settings } => self.read_control(conn, id, reader, settings),
            Stream::Discard => {
                let done = self.drain_stream(conn, id);
                (!done).then_some(Stream::Discard)
            }
            Stream::Request(reader) => self.read_request(conn, id, reader),
            s @ (Stream::Awaiting(_) | Stream::Parked { .. }) => Some(s),
            Stream::Connect => self.read_connect(conn, id),
            s @ Stream::App { .. } => {
                self.events.push_back(WtEvent::Readable { stream_id: id });
                Some(s)
            }
        };
        if let Some(s) = next {
            self.streams.insert(id, s);
        }
    }

    /// Read up to `want` bytes of `id` into `out`; `Err(())` when the stream ended
    /// (FIN, reset, gone) before.
    fn read_some(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        want: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, ()> {
        let want = want.min(self.scratch.len());
        match conn.stream_recv(id, &mut self.scratch[..want]) {
            Ok((n, fin)) => {
                out.extend_from_slice(&self.scratch[..n]);
                Ok(fin)
            }
            Err(quiche::Error::Done) => Ok(false),
            Err(_) => Err(()),
        }
    }

    /// Read one varint of a preamble byte by byte (never past it).
    fn read_varint(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        partial: &mut Vec<u8>,
    ) -> Result<Option<u64>, ()> {
        loop {
            let need = match partial.first() {
                None => 1,
                Some(b) => varint::len_from_first(*b),
            };
            if partial.len() == need {
                let v = varint::decode(partial).map(|(v, _)| v);
                partial.clear();
                return Ok(v);
            }
            let before = partial.len();
            let fin = self.read_some(conn, id, need - before, partial)?;
            if partial.len() == before {
                return if fin { Err(()) } else { Ok(None) };
            }
        }
    }

    fn read_preamble(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        mut p: Preamble,
    ) -> Option<Stream> {
        if p.first.is_none() {
            match self.read_varint(conn, id, &mut p.partial) {
                Ok(Some(v)) => p.first = Some(v),
                Ok(None) => return Some(Stream::Preamble(p)),
                Err(()) => return None,
            }
        }
        let first = p.first.unwrap_or_default();
        let wt = if p.bidi {
            first == SIGNAL_WT_BIDI
        } else {
            first == STREAM_WT_UNI
        };
        if wt {
            let session = match self.read_varint(conn, id, &mut p.partial) {
                Ok(Some(v)) => v,
                Ok(None) => return Some(Stream::Preamble(p)),
                Err(()) => return None,
            };
            return self.bind_stream(conn, id, session, p.bidi);
        }
        if p.bidi {
            // An HTTP/3 request: the varint was its first frame's type.
            let mut head = Vec::new();
            varint::encode(first, &mut head);
            let mut reader = FrameReader::default();
            if reader.feed(&head, &mut Vec::new()).is_err() {
                return None;
            }
            self.highest_request = self.highest_request.max(id);
            return self.read_request(conn, id, reader);
        }
        match first {
            STREAM_CONTROL if self.peer_control.is_none() => {
                self.peer_control = Some(id);
                self.read_control(conn, id, FrameReader::default(), false)
            }
            STREAM_CONTROL => {
                self.fail(conn, H3_STREAM_CREATION_ERROR, "second control stream");
                None
            }
            STREAM_QPACK_ENCODER | STREAM_QPACK_DECODER => {
                // No dynamic table: nothing on these streams matters to us.
                let done = self.drain_stream(conn, id);
                (!done).then_some(Stream::Discard)
            }
            _ => {
                let _ = conn.stream_shutdown(id, Shutdown::Read, H3_STREAM_CREATION_ERROR);
                None
            }
        }
    }

    /// A WebTransport stream named `session`: hand it to the application, park it
    /// until the session's CONNECT is answered, or refuse it.
    fn bind_stream(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        session: u64,
        bidi: bool,
    ) -> Option<Stream> {
        if self.sessions.contains_key(&session) {
            self.attach(id, session, bidi);
            return Some(Stream::App { session });
        }
        if matches!(
            self.streams.get(&session),
            Some(Stream::Awaiting(_) | Stream::Request(_))
        ) {
            return Some(Stream::Parked { session, bidi });
        }
        refuse_stream(conn, id, bidi, WT_BUFFERED_STREAM_REJECTED);
        None
    }

    fn attach(&mut self, id: u64, session: u64, bidi: bool) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.streams.push(id);
        }
        self.events.push_back(WtEvent::Stream {
            session,
            stream_id: id,
            bidi,
        });
        self.events.push_back(WtEvent::Readable { stream_id: id });
    }

    /// Read and drop; true once the stream has ended.
    fn drain_stream(&mut self, conn: &mut quiche::Connection, id: u64) -> bool {
        loop {
            match conn.stream_recv(id, &mut self.scratch) {
                Ok((_, true)) | Err(quiche::Error::StreamReset(_)) => return true,
                Ok((_, false)) => continue,
                Err(quiche::Error::Done) => return false,
                Err(_) => return true,
            }
        }
    }

    /// Read a stream's available bytes; `(bytes, fin, reset)`.
    fn read_all(&mut self, conn: &mut quiche::Connection, id: u64) -> (Vec<u8>, bool, bool) {
        let mut out = Vec::new();
        loop {
            match conn.stream_recv(id, &mut self.scratch) {
                Ok((n, fin)) => {
                    out.extend_from_slice(&self.scratch[..n]);
                    if fin {
                        return (out, true, false);
                    }
                }
                Err(quiche::Error::Done) => return (out, false, false),
                Err(_) => return (out, true, true),
            }
        }
    }

    fn read_control(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        mut reader: FrameReader,
        mut settings: bool,
    ) -> Option<Stream> {
        let (bytes, fin, _) = self.read_all(conn, id);
        let mut frames = Vec::new();
        if reader.feed(&bytes, &mut frames).is_err() {
            self.fail(
                conn,
                H3_FRAME_ERROR,
                "oversized frame on the control stream",
            );
            return None;
        }
        for f in frames {
            let ty = match &f {
                FrameEvent::Frame { ty, .. } => *ty,
                FrameEvent::Data(_) => frame::DATA,
            };
            if !settings && ty != frame::SETTINGS {
                self.fail(
                    conn,
                    H3_MISSING_SETTINGS,
                    "control stream must start with SETTINGS",
                );
                return None;
            }
            match f {
                FrameEvent::Frame {
                    ty: frame::SETTINGS,
                    payload,
                } if !settings => {
                    let Some(parsed) = frame::parse_settings(&payload) else {
                        self.fail(conn, H3_SETTINGS_ERROR, "malformed SETTINGS");
                        return None;
                    };
                    self.peer_settings = Some(parsed);
                    settings = true;
                }
                // GOAWAY, MAX_PUSH_ID and CANCEL_PUSH need no action here (we
                // never push); unknown types never reach us (the reader skips them).
                FrameEvent::Frame {
                    ty: frame::GOAWAY | 0x03 | 0x0d,
                    ..
                } => {}
                _ => {
                    self.fail(
                        conn,
                        H3_FRAME_UNEXPECTED,
                        "unexpected frame on the control stream",
                    );
                    return None;
                }
            }
        }
        if fin {
            self.fail(conn, H3_CLOSED_CRITICAL_STREAM, "control stream closed");
            return None;
        }
        Some(Stream::Control { reader, settings })
    }

    fn read_request(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        mut reader: FrameReader,
    ) -> Option<Stream> {
        // Read only what a request head needs; body bytes stay in the reader.
        let (bytes, fin, reset) = self.read_all(conn, id);
        if reset {
            return None;
        }
        let mut frames = Vec::new();
        if reader.feed(&bytes, &mut frames).is_err() {
            refuse_stream(conn, id, true, H3_FRAME_ERROR);
            return None;
        }
        let mut frames = frames.into_iter();
        match frames.next() {
            None if fin => {
                refuse_stream(conn, id, true, H3_MESSAGE_ERROR);
                None
            }
            None => Some(Stream::Request(reader)),
            Some(FrameEvent::Frame {
                ty: frame::HEADERS,
                payload,
            }) => {
                let Some(fields) = frame::decode_fields(&payload) else {
                    refuse_stream(conn, id, true, H3_MESSAGE_ERROR);
                    return None;
                };
                // Anything after the head (capsules) is replayed into the reader
                // once the session is accepted.
                let mut rest = FrameReader::default();
                let mut leftover = Vec::new();
                for f in frames {
                    if let FrameEvent::Data(d) = f {
                        frame::encode_frame(frame::DATA, &d, &mut leftover);
                    }
                }
                let _ = rest.feed(&leftover, &mut Vec::new());
                self.events.push_back(WtEvent::Request {
                    stream_id: id,
                    request: Request::from_fields(&fields),
                });
                Some(Stream::Awaiting(rest))
            }
            Some(_) => {
                refuse_stream(conn, id, true, H3_FRAME_UNEXPECTED);
                None
            }
        }
    }

    /// Accept the request on `stream_id` as a WebTransport session.
    pub fn accept(&mut self, conn: &mut quiche::Connection, stream_id: u64) {
        // Sent whatever the client announced: draft-02 clients that omit their
        // header (aioquic) still look for ours, and others ignore it.
        let head = frame::encode_headers(&[
            (":status", "200"),
            ("sec-webtransport-http3-draft", "draft02"),
        ]);
        self.send_all(conn, stream_id, head, false);
        let pending = match self.streams.remove(&stream_id) {
            Some(Stream::Awaiting(reader)) => reader,
            _ => FrameReader::default(),
        };
        self.sessions.insert(
            stream_id,
            Session {
                frames: pending,
                ..Session::default()
            },
        );
        self.streams.insert(stream_id, Stream::Connect);
        // Streams that arrived before the answer belong to the session now.
        for (id, bidi) in self.parked_on(stream_id) {
            self.streams.insert(id, Stream::App { session: stream_id });
            self.attach(id, stream_id, bidi);
        }
        // Capsules that came with the request are read now.
        self.read_pending_connect(conn, stream_id);
    }

    /// Streams waiting for the answer to the request on `request`: `(id, bidi)`.
    fn parked_on(&self, request: u64) -> Vec<(u64, bool)> {
        self.streams
            .iter()
            .filter_map(|(id, s)| match s {
                Stream::Parked { session, bidi } if *session == request => Some((*id, *bidi)),
                _ => None,
            })
            .collect()
    }

    fn read_pending_connect(&mut self, conn: &mut quiche::Connection, id: u64) {
        if let Some(Stream::Connect) = self.streams.remove(&id) {
            if let Some(s) = self.read_connect(conn, id) {
                self.streams.insert(id, s);
            }
        }
    }

    /// Answer the request on `stream_id` with `status` and a text body, and end it.
    pub fn reject(
        &mut self,
        conn: &mut quiche::Connection,
        stream_id: u64,
        status: u16,
        body: &str,
    ) {
        let status = status.to_string();
        let mut bytes = frame::encode_headers(&[
            (":status", status.as_str()),
            ("content-type", "text/plain; charset=utf-8"),
        ]);
        frame::encode_frame(frame::DATA, body.as_bytes(), &mut bytes);
        self.send_all(conn, stream_id, bytes, true);
        let _ = conn.stream_shutdown(stream_id, Shutdown::Read, H3_NO_ERROR);
        self.streams.remove(&stream_id);
        for (id, bidi) in self.parked_on(stream_id) {
            self.streams.remove(&id);
            refuse_stream(conn, id, bidi, WT_BUFFERED_STREAM_REJECTED);
        }
    }

    fn read_connect(&mut self, conn: &mut quiche::Connection, id: u64) -> Option<Stream> {
        let (bytes, fin, reset) = self.read_all(conn, id);
        let session = self.sessions.get_mut(&id)?;
        let mut frames = Vec::new();
        let mut capsules = Vec::new();
        let mut broken = session.frames.feed(&bytes, &mut frames).is_err();
        for f in frames {
            match f {
                FrameEvent::Data(d) => {
                    if let Err(e) = session.capsules.feed(&d, &mut capsules) {
                        broken = true;
                        capsules.push(Capsule::Close {
                            code: 0,
                            reason: e.to_string(),
                        });
                        break;
                    }
                }
                // Trailers or other frames after the head carry nothing for us.
                FrameEvent::Frame { .. } => {}
            }
        }
        for c in capsules {
            match c {
                Capsule::Drain => self.events.push_back(WtEvent::Drain { session: id }),
                Capsule::Close { code, reason } => {
                    if broken {
                        refuse_stream(conn, id, true, H3_MESSAGE_ERROR);
                    } else {
                        // Our side of the CONNECT stream ends too.
                        self.send_all(conn, id, Vec::new(), true);
                    }
                    self.end_session(conn, id, code, reason);
                    return None;
                }
            }
        }
        if broken {
            refuse_stream(conn, id, true, H3_MESSAGE_ERROR);
            self.end_session(conn, id, 0, "malformed CONNECT stream".into());
            return None;
        }
        if fin || reset {
            if !reset {
                self.send_all(conn, id, Vec::new(), true);
            }
            let reason = if reset { "CONNECT stream reset" } else { "" };
            self.end_session(conn, id, 0, reason.into());
            return None;
        }
        Some(Stream::Connect)
    }

    /// Forget a session the peer ended and reset its streams.
    fn end_session(&mut self, conn: &mut quiche::Connection, id: u64, code: u32, reason: String) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        for s in &session.streams {
            self.streams.insert(*s, Stream::Discard);
            reset_stream(conn, *s, WT_SESSION_GONE);
        }
        self.events.push_back(WtEvent::SessionClosed {
            session: id,
            code,
            reason,
            streams: session.streams,
        });
    }

    /// Close `session` from our side: close capsule + FIN, its streams reset.
    /// Returns the streams it had (empty if it was already gone).
    pub fn close_session(
        &mut self,
        conn: &mut quiche::Connection,
        session: u64,
        code: u32,
        reason: &str,
    ) -> Vec<u64> {
        let Some(s) = self.sessions.remove(&session) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        frame::encode_frame(
            frame::DATA,
            &capsule::encode_close(code, reason),
            &mut bytes,
        );
        self.send_all(conn, session, bytes, true);
        // Whatever else the peer sends on the CONNECT stream is dropped.
        self.streams.insert(session, Stream::Discard);
        for id in &s.streams {
            self.streams.insert(*id, Stream::Discard);
            reset_stream(conn, *id, WT_SESSION_GONE);
        }
        s.streams
    }

    /// Ask the peer to wind `session` down (DRAIN capsule), and send GOAWAY once per
    /// connection.
    pub fn drain_session(&mut self, conn: &mut quiche::Connection, session: u64) {
        if !self.sessions.contains_key(&session) {
            return;
        }
        let mut bytes = Vec::new();
        frame::encode_frame(frame::DATA, &capsule::encode_drain(), &mut bytes);
        self.send_all(conn, session, bytes, false);
        if !self.goaway_sent {
            self.goaway_sent = true;
            let mut id = Vec::new();
            varint::encode(self.highest_request + 4, &mut id);
            let mut goaway = Vec::new();
            frame::encode_frame(frame::GOAWAY, &id, &mut goaway);
            self.send_all(conn, SERVER_CONTROL_STREAM, goaway, false);
        }
    }

    /// Open a WebTransport stream on `session` and write its preamble.
    pub fn open_stream(
        &mut self,
        conn: &mut quiche::Connection,
        session: u64,
        bidi: bool,
    ) -> Result<u64, OpenError> {
        if !self.sessions.contains_key(&session) {
            return Err(OpenError::NoSession);
        }
        let left = if bidi {
            conn.peer_streams_left_bidi()
        } else {
            conn.peer_streams_left_uni()
        };
        if left == 0 {
            return Err(OpenError::StreamLimit);
        }
        let next = if bidi {
            &mut self.next_bidi
        } else {
            &mut self.next_uni
        };
        let id = *next;
        *next += 4;
        let mut preamble = Vec::new();
        varint::encode(
            if bidi { SIGNAL_WT_BIDI } else { STREAM_WT_UNI },
            &mut preamble,
        );
        varint::encode(session, &mut preamble);
        self.send_all(conn, id, preamble, false);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.streams.push(id);
        }
        self.streams.insert(id, Stream::App { session });
        Ok(id)
    }

    /// The application dropped stream `id`. Unread data is refused (STOP_SENDING
    /// with WebTransport code 0) and whatever still arrives is drained, never
    /// mistaken for a new stream's preamble.
    pub fn forget_stream(&mut self, conn: &mut quiche::Connection, id: u64) {
        let Some(Stream::App { session }) = self.streams.get(&id) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(session) {
            s.streams.retain(|x| *x != id);
        }
        if !conn.stream_finished(id) {
            let _ = conn.stream_shutdown(id, Shutdown::Read, app_code_to_h3(0));
        }
        self.streams.insert(id, Stream::Discard);
    }

    /// Whether WebTransport stream `id`'s preamble has been fully written, so its
    /// application data may follow.
    pub fn stream_ready(&self, id: u64) -> bool {
        !self.unsent.contains_key(&id)
    }

    /// Send a datagram on `session`. With `latest_prefix`, queued datagrams of the
    /// same session starting with that body prefix are dropped first (latest wins).
    /// Returns how many queued datagrams were replaced.
    pub fn send_datagram(
        &mut self,
        conn: &mut quiche::Connection,
        session: u64,
        body: &[u8],
        latest_prefix: Option<usize>,
    ) -> Result<usize, quiche::Error> {
        let mut dgram = Vec::with_capacity(body.len() + 8);
        varint::encode(session / 4, &mut dgram);
        let head = dgram.len();
        dgram.extend_from_slice(body);
        let mut replaced = 0;
        if let Some(p) = latest_prefix {
            let prefix = &dgram[..head + p.min(body.len())];
            let before = conn.dgram_send_queue_len();
            conn.dgram_purge_outgoing(|d| d.starts_with(prefix));
            replaced = before - conn.dgram_send_queue_len();
        }
        conn.dgram_send(&dgram).map(|()| replaced)
    }

    fn recv_datagrams(&mut self, conn: &mut quiche::Connection) {
        loop {
            let n = match conn.dgram_recv(&mut self.scratch) {
                Ok(n) => n,
                // Larger than our scratch (we advertise 1500-byte UDP payloads, so
                // only a misbehaving peer): quiche has dropped it; go on.
                Err(quiche::Error::BufferTooShort) => continue,
                Err(_) => return,
            };
            let buf = &self.scratch;
            let Some((qsid, len)) = varint::decode(&buf[..n]) else {
                continue;
            };
            let session = qsid.saturating_mul(4);
            if self.sessions.contains_key(&session) {
                self.events.push_back(WtEvent::Datagram {
                    session,
                    payload: buf[len..n].to_vec(),
                });
            }
        }
    }

    /// Write control bytes fully, keeping what quiche cannot take yet.
    fn send_all(&mut self, conn: &mut quiche::Connection, id: u64, bytes: Vec<u8>, fin: bool) {
        if let Some((queued, queued_fin)) = self.unsent.get_mut(&id) {
            queued.extend_from_slice(&bytes);
            *queued_fin |= fin;
            return;
        }
        match conn.stream_send(id, &bytes, fin) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => {
                self.unsent.insert(id, (bytes[n..].to_vec(), fin));
            }
            Err(quiche::Error::Done) => {
                self.unsent.insert(id, (bytes, fin));
            }
            Err(_) => {}
        }
    }

    /// Retry control bytes that did not fit before.
    pub fn flush_unsent(&mut self, conn: &mut quiche::Connection) {
        if self.unsent.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.unsent.keys().copied().collect();
        for id in ids {
            let Some((bytes, fin)) = self.unsent.remove(&id) else {
                continue;
            };
            self.send_all(conn, id, bytes, fin);
        }
    }

    fn fail(&mut self, conn: &mut quiche::Connection, code: u64, reason: &str) {
        let _ = conn.close(true, code, reason.as_bytes());
    }
}

/// Refuse a peer stream in both directions (only the receiving side of a
/// unidirectional one).
fn refuse_stream(conn: &mut quiche::Connection, id: u64, bidi: bool, code: u64) {
    let _ = conn.stream_shutdown(id, Shutdown::Read, code);
    if bidi {
        let _ = conn.stream_shutdown(id, Shutdown::Write, code);
    }
}

/// Reset whichever directions of stream `id` we take part in.
fn reset_stream(conn: &mut quiche::Connection, id: u64, code: u64) {
    let _ = conn.stream_shutdown(id, Shutdown::Read, code);
    let _ = conn.stream_shutdown(id, Shutdown::Write, code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_codes_map_both_ways_and_skip_grease() {
        for e in [0u32, 1, 7, 0x1d, 0x1e, 0x1f, 1000, 4242, u32::MAX] {
            assert_eq!(h3_to_app_code(app_code_to_h3(e)), Some(e), "code {e}");
        }
        assert_eq!(app_code_to_h3(0), 0x52e4_a40f_a8db);
        assert_eq!(app_code_to_h3(u32::MAX), 0x52e5_ac98_3162);
        assert_eq!(h3_to_app_code(0x100), None);
        // 0x52e4a40fa8f9 is a reserved grease point inside the range.
        assert_eq!(h3_to_app_code(0x52e4_a40f_a8f9), None);
    }

    #[test]
    fn request_fields_are_read_into_a_request() {
        let f = |n: &str, v: &str| (n.to_string(), v.to_string());
        let r = Request::from_fields(&[
            f(":method", "CONNECT"),
            f(":protocol", "webtransport"),
            f(":path", "/wt/chat?room=a"),
            f("origin", "https://a.example"),
            f("sec-webtransport-http3-draft02", "1"),
        ]);
        assert!(r.is_webtransport() && r.draft02);
        assert_eq!(r.path.as_deref(), Some("/wt/chat?room=a"));
        assert!(!Request::default().is_webtransport());
    }
}
