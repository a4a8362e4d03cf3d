//! Sockets: file-descriptor limit, target and source-address planning,
//! connect + handshake with timeouts and failure classification, and the
//! read/write helpers shared by all modes.
//!
//! Reads go through one 64 KiB buffer per runtime thread (not per connection),
//! so 20k idle connections cost only their parser state.

use std::cell::RefCell;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};

use crate::loadgen::event_stream;
use crate::loadgen::stats::{self, ThreadStats, COUNTERS};
use crate::loadgen::ws::{self, Event, FrameReader, HandshakeError, ProtocolError, Rng};

/// Bytes read per `recv`.
pub const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(soft, hard)` after.
pub fn raise_nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    // rlim_t is u64 on 64-bit Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

/// One server to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header.
    pub host: String,
}

/// Resolves `host:port` strings.
pub fn resolve_targets(list: &[String]) -> Result<Vec<Target>, String> {
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        let addr = t
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve target '{t}': {e}"))?
            .next()
            .ok_or_else(|| format!("target '{t}' resolved to no address"))?;
        out.push(Target {
            addr,
            host: t.clone(),
        });
    }
    if out.is_empty() {
        return Err("no target address".into());
    }
    Ok(out)
}

/// How client sockets pick their source address.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// Connections per source address (0 = never bind).
    pub per_source: usize,
    /// Explicit source addresses (cycled); empty = automatic on loopback.
    pub sources: Vec<IpAddr>,
}

impl SourcePlan {
    /// Source address for connection `i` to `target`, if it should bind.
    pub fn source_for(&self, i: usize, target: &SocketAddr) -> Option<IpAddr> {
        if self.per_source == 0 {
            return None;
        }
        let block = i / self.per_source;
        if !self.sources.is_empty() {
            return Some(self.sources[block % self.sources.len()]);
        }
        match target {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                // 127.0.0.1, 127.0.0.2, ... (wrapping inside 127.0.0.0/8).
                let host = 1 + (block as u32 % 0x00FF_FFFE);
                Some(IpAddr::V4(Ipv4Addr::from(0x7F00_0000 | host)))
            }
            _ => None,
        }
    }

    /// Human description for the startup banner.
    pub fn describe(&self, n: usize, target: &SocketAddr) -> String {
        if n == 0 {
            return "no connections".into();
        }
        match (self.source_for(0, target), self.source_for(n - 1, target)) {
            (Some(a), Some(b)) if a == b => format!("source {a}"),
            (Some(a), Some(b)) => format!("sources {a}..{b} ({} conns each)", self.per_source),
            _ => "kernel-chosen source".into(),
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnError {
    /// TCP-level failure.
    Io(io::Error),
    /// Connect or handshake took longer than the timeout.
    Timeout(&'static str),
    /// Handshake failure.
    Handshake(HandshakeError),
}

static WARNED: [AtomicBool; 10] = [const { AtomicBool::new(false) }; 10];

fn warn_once(slot: usize, msg: impl FnOnce() -> String) {
    if !WARNED[slot].swap(true, Relaxed) {
        stats::log_line(format_args!("loadgen: {}", msg()));
    }
}

/// Counts a failed attempt by kind and prints the first one of each kind.
pub fn record_failure(err: &ConnError, target: &Target) {
    COUNTERS.failed.fetch_add(1, Relaxed);
    match err {
        ConnError::Io(e) => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => {
                COUNTERS.err_emfile.fetch_add(1, Relaxed);
                warn_once(0, || {
                    let (soft, hard) = raise_nofile_limit();
                    format!(
                        "EMFILE: out of file descriptors with {} connections open (RLIMIT_NOFILE soft={soft} hard={hard}); \
                         run more loadgen processes or raise the hard limit",
                        COUNTERS.live.load(Relaxed)
                    )
                });
            }
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => {
                COUNTERS.err_addr.fetch_add(1, Relaxed);
                warn_once(1, || {
                    format!(
                        "{e}: ephemeral ports exhausted? lower --per-source (connecting to {})",
                        target.host
                    )
                });
            }
            Some(libc::ECONNREFUSED) => {
                COUNTERS.err_refused.fetch_add(1, Relaxed);
                warn_once(2, || format!("connection refused by {}", target.host));
            }
            Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => {
                COUNTERS.err_reset.fetch_add(1, Relaxed);
                warn_once(3, || {
                    format!(
                        "connection reset by {} during connect/handshake",
                        target.host
                    )
                });
            }
            Some(libc::ETIMEDOUT) => {
                COUNTERS.err_timeout.fetch_add(1, Relaxed);
                warn_once(4, || format!("connect to {} timed out", target.host));
            }
            _ => {
                COUNTERS.err_other.fetch_add(1, Relaxed);
                warn_once(5, || format!("connect to {} failed: {e}", target.host));
            }
        },
        ConnError::Timeout(what) => {
            COUNTERS.err_timeout.fetch_add(1, Relaxed);
            warn_once(4, || format!("{what} with {} timed out", target.host));
        }
        ConnError::Handshake(HandshakeError::Rejected(code)) => {
            COUNTERS.err_rejected.fetch_add(1, Relaxed);
            warn_once(6, || {
                format!("{} answered the handshake with HTTP {code}", target.host)
            });
        }
        ConnError::Handshake(HandshakeError::Io(e)) => {
            record_failure_io_in_handshake(e, target);
        }
        ConnError::Handshake(h) => {
            COUNTERS.err_handshake.fetch_add(1, Relaxed);
            warn_once(7, || format!("handshake with {} failed: {h}", target.host));
        }
    }
}

fn record_failure_io_in_handshake(e: &io::Error, target: &Target) {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => {
            COUNTERS.err_reset.fetch_add(1, Relaxed);
            warn_once(3, || {
                format!("connection reset by {} during handshake", target.host)
            });
        }
        _ => {
            COUNTERS.err_handshake.fetch_add(1, Relaxed);
            warn_once(7, || format!("handshake with {} failed: {e}", target.host));
        }
    }
}

/// An open WebSocket connection right after the handshake.
#[derive(Debug)]
pub struct WsConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes received after the handshake response (start of the frame stream).
    pub leftover: Vec<u8>,
    /// Per-connection randomness (mask keys).
    pub rng: Rng,
}

/// Opens a TCP connection to `target` (non-blocking, `TCP_NODELAY`), bound to
/// `source` if given (port chosen at connect time), bounded by `timeout`.
pub async fn connect_tcp(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnError> {
    connect_tcp_with(target, source, timeout, None).await
}

/// [`connect_tcp`], optionally with a fixed `SO_RCVBUF` (no autotuning: a client
/// that does not read then really falls behind).
pub async fn connect_tcp_with(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
    recv_buffer: Option<usize>,
) -> Result<TcpStream, ConnError> {
    let domain = if target.addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(ConnError::Io)?;
    sock.set_nonblocking(true).map_err(ConnError::Io)?;
    sock.set_nodelay(true).map_err(ConnError::Io)?;
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).map_err(ConnError::Io)?;
    }
    if let Some(src) = source {
        if src.is_ipv4() {
            // Defer port choice to connect(): ports are then only unique per 4-tuple.
            let one: libc::c_int = 1;
            // SAFETY: valid fd owned by `sock`; the option value is a c_int on our stack.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        sock.bind(&SocketAddr::new(src, 0).into())
            .map_err(ConnError::Io)?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    match tokio::time::timeout(timeout, socket.connect(target.addr)).await {
        Ok(r) => r.map_err(ConnError::Io),
        Err(_) => Err(ConnError::Timeout("connect")),
    }
}

/// Reads an HTTP response head (at most 4 KiB); returns the buffer and the
/// position just past the blank line (bytes after it are the start of the body).
pub async fn read_head(stream: &TcpStream) -> Result<(Vec<u8>, usize), HandshakeError> {
    let mut buf = vec![0u8; 4096];
    let mut have = 0usize;
    loop {
        if have == buf.len() {
            return Err(HandshakeError::Bad("response head larger than 4 KiB"));
        }
        stream.readable().await.map_err(HandshakeError::Io)?;
        match stream.try_read(&mut buf[have..]) {
            Ok(0) => return Err(HandshakeError::Eof),
            Ok(n) => {
                have += n;
                if let Some(end) = ws::find_head_end(&buf[..have]) {
                    buf.truncate(have);
                    return Ok((buf, end));
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
}

async fn handshake(
    stream: &TcpStream,
    target: &Target,
    resource: &str,
    rng: &mut Rng,
) -> Result<Vec<u8>, HandshakeError> {
    let (req, key) = ws::upgrade_request(&target.host, resource, rng);
    write_all(stream, req.as_bytes())
        .await
        .map_err(HandshakeError::Io)?;
    let (buf, end) = read_head(stream).await?;
    ws::check_response(&buf[..end], &key)?;
    Ok(buf[end..].to_vec())
}

async fn sse_handshake(
    stream: &TcpStream,
    target: &Target,
    resource: &str,
    allow_chunked: bool,
) -> Result<Vec<u8>, HandshakeError> {
    let req = event_stream::request(&target.host, resource);
    write_all(stream, req.as_bytes())
        .await
        .map_err(HandshakeError::Io)?;
    let (buf, end) = read_head(stream).await?;
    if allow_chunked {
        event_stream::check_response_any_coding(&buf[..end])?;
    } else {
        event_stream::check_response(&buf[..end])?;
    }
    Ok(buf[end..].to_vec())
}

/// Counts a finished connection attempt (success or failure).
pub(crate) fn finish_attempt<T>(result: Result<T, ConnError>, target: &Target) -> Option<T> {
    COUNTERS.attempts_done.fetch_add(1, Relaxed);
    match result {
        Ok(c) => {
            COUNTERS.connected.fetch_add(1, Relaxed);
            COUNTERS.live.fetch_add(1, Relaxed);
            Some(c)
        }
        Err(e) => {
            record_failure(&e, target);
            None
        }
    }
}

/// An open Server-Sent Events stream right after the response head.
#[derive(Debug)]
pub struct SseConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes received after the response head (start of the event stream).
    pub leftover: Vec<u8>,
}

/// Connects to `target` (from `source` if given) and opens an event stream with
/// `GET resource` (`Accept: text/event-stream`); the response must be
/// `HTTP/1.1 200` with `Content-Type: text/event-stream`. Each step is bounded
/// by `timeout`; counters are updated as for [`open_ws`].
pub async fn open_sse(
    target: &Target,
    source: Option<IpAddr>,
    resource: &str,
    timeout: Duration,
) -> Option<SseConn> {
    open_sse_with(target, source, resource, timeout, false).await
}

/// [`open_sse`] for a client that only holds the stream open and never parses
/// it (`loadgen idle --sse`): a chunked body is accepted too.
pub async fn open_sse_hold(
    target: &Target,
    source: Option<IpAddr>,
    resource: &str,
    timeout: Duration,
) -> Option<SseConn> {
    open_sse_with(target, source, resource, timeout, true).await
}

async fn open_sse_with(
    target: &Target,
    source: Option<IpAddr>,
    resource: &str,
    timeout: Duration,
    allow_chunked: bool,
) -> Option<SseConn> {
    let result = async {
        let stream = connect_tcp(target, source, timeout).await?;
        let handshake = sse_handshake(&stream, target, resource, allow_chunked);
        let leftover = match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r.map_err(ConnError::Handshake)?,
            Err(_) => return Err(ConnError::Timeout("event-stream request")),
        };
        Ok(SseConn { stream, leftover })
    }
    .await;
    finish_attempt(result, target)
}

/// Connects to `target` (from `source` if given) and performs the WebSocket
/// handshake for `resource` (path and query), each step bounded by `timeout`.
/// Updates the attempt/connected/live counters and records failures.
pub async fn open_ws(
    index: usize,
    target: &Target,
    source: Option<IpAddr>,
    resource: &str,
    timeout: Duration,
) -> Option<WsConn> {
    open_ws_with(index, target, source, resource, timeout, None).await
}

/// [`open_ws`] with an optional fixed `SO_RCVBUF` (see [`connect_tcp_with`]).
pub async fn open_ws_with(
    index: usize,
    target: &Target,
    source: Option<IpAddr>,
    resource: &str,
    timeout: Duration,
    recv_buffer: Option<usize>,
) -> Option<WsConn> {
    let result = async {
        let stream = connect_tcp_with(target, source, timeout, recv_buffer).await?;
        let mut rng = Rng::new(index as u64);
        let leftover =
            match tokio::time::timeout(timeout, handshake(&stream, target, resource, &mut rng))
                .await
            {
                Ok(r) => r.map_err(ConnError::Handshake)?,
                Err(_) => return Err(ConnError::Timeout("handshake")),
            };
        Ok(WsConn {
            stream,
            leftover,
            rng,
        })
    }
    .await;
    finish_attempt(result, target)
}

/// Writes all of `buf`, waiting for writability as needed (works on `&TcpStream`,
/// so a reader task may share the stream; only one task may write).
pub async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits for data and hands one `recv` (up to 64 KiB, in the thread's shared
/// buffer) to `f`. `Ok(None)` on EOF. A short read clears readiness so the next
/// call sleeps instead of issuing a `recv` that would return `EAGAIN`.
pub async fn read_chunk<R>(
    stream: &TcpStream,
    mut f: impl FnMut(&[u8]) -> R,
) -> io::Result<Option<R>> {
    loop {
        stream.readable().await?;
        let mut out: Option<Option<R>> = None;
        let res = stream.try_io(Interest::READABLE, || {
            READ_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                let sock = SockRef::from(stream);
                match (&*sock).read(&mut buf[..]) {
                    Ok(0) => {
                        out = Some(None);
                        Ok(())
                    }
                    Ok(n) => {
                        out = Some(Some(f(&buf[..n])));
                        if n < buf.len() {
                            Err(io::ErrorKind::WouldBlock.into())
                        } else {
                            Ok(())
                        }
                    }
                    Err(e) => Err(e),
                }
            })
        });
        if let Some(o) = out {
            return Ok(o);
        }
        match res {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Control-frame state of one connection.
#[derive(Debug)]
pub struct Ctl {
    /// Pending outgoing control frames (pongs, close reply).
    pub out: Vec<u8>,
    /// Mask key for control frames.
    pub mask: [u8; 4],
    /// Whether this side may write (false when another task owns the writes).
    pub reply: bool,
    /// Set when a close frame arrived (with its code).
    pub close: Option<Option<u16>>,
}

impl Ctl {
    /// New control state.
    pub fn new(mask: [u8; 4], reply: bool) -> Self {
        Ctl {
            out: Vec::new(),
            mask,
            reply,
            close: None,
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// The server closed the TCP stream.
    Eof,
    /// The server sent a close frame.
    Close(Option<u16>),
    /// The server broke the protocol.
    Protocol(ProtocolError),
    /// A socket error.
    Io(io::Error),
}

impl End {
    /// Counts this end in the global counters (and the live gauge).
    pub fn record(&self) {
        COUNTERS.live.fetch_sub(1, Relaxed);
        match self {
            End::Eof => {
                COUNTERS.closed_by_server.fetch_add(1, Relaxed);
            }
            End::Io(e) => {
                COUNTERS.closed_by_server.fetch_add(1, Relaxed);
                if e.kind() != io::ErrorKind::ConnectionReset {
                    warn_once(8, || format!("connection error: {e}"));
                }
            }
            End::Close(code) => {
                COUNTERS.closed_by_server.fetch_add(1, Relaxed);
                COUNTERS.record_close_code(*code);
            }
            End::Protocol(e) => {
                COUNTERS.protocol_errors.fetch_add(1, Relaxed);
                warn_once(9, || format!("protocol error from server: {e}"));
            }
        }
    }
}

/// Receives the data messages of one connection.
pub trait OnMessage {
    /// One complete message: this thread's stats, receive time (ns since the
    /// epoch, taken once per read), opcode, total length and the first payload bytes.
    fn on_message(&mut self, st: &mut ThreadStats, now: u64, opcode: u8, len: u64, head: &[u8]);
}

/// Parses `data` with `reader`; data messages go to `on_msg`, control frames
/// to `ctl`. Holds this thread's stats lock for the whole slice.
pub fn feed<H: OnMessage>(
    reader: &mut FrameReader,
    ctl: &mut Ctl,
    data: &[u8],
    now: u64,
    on_msg: &mut H,
) -> Result<(), ProtocolError> {
    stats::with_local(|st| {
        reader.feed(data, |ev| match ev {
            Event::Message { opcode, len, head } => on_msg.on_message(st, now, opcode, len, head),
            Event::Ping(p) => {
                if ctl.reply && ctl.close.is_none() {
                    ws::write_frame(&mut ctl.out, ws::OP_PONG, p, ctl.mask);
                }
            }
            Event::Pong => {}
            Event::Close(code) => {
                if ctl.close.is_none() {
                    ctl.close = Some(code);
                    if ctl.reply {
                        let body = code.map(u16::to_be_bytes);
                        ws::write_frame(
                            &mut ctl.out,
                            ws::OP_CLOSE,
                            body.as_ref().map_or(&[][..], |b| &b[..]),
                            ctl.mask,
                        );
                    }
                }
            }
        })
    })
}

/// Reads and processes one chunk: `Ok(())` to keep going, `Err(end)` when the
/// connection is over. Pending control replies are written before returning.
pub async fn read_step<H: OnMessage>(
    stream: &TcpStream,
    reader: &mut FrameReader,
    ctl: &mut Ctl,
    on_msg: &mut H,
) -> Result<(), End> {
    let r = read_chunk(stream, |data| {
        feed(reader, ctl, data, stats::now_ns(), on_msg)
    })
    .await;
    match r {
        Err(e) => return Err(End::Io(e)),
        Ok(None) => return Err(End::Eof),
        Ok(Some(Err(pe))) => return Err(End::Protocol(pe)),
        Ok(Some(Ok(()))) => {}
    }
    if !ctl.out.is_empty() {
        // Best effort: a failed pong/close reply shows up on the next read.
        let _ = write_all(stream, &ctl.out).await;
        ctl.out.clear();
    }
    match ctl.close {
        Some(code) => Err(End::Close(code)),
        None => Ok(()),
    }
}

/// Builds `path?room=...` (or `path&room=...` if `path` already has a query).
pub fn resource(path: &str, room: Option<&str>) -> String {
    match room {
        None => path.to_string(),
        Some(r) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}room={}", url_encode(r))
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query
/// values and path segments).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens `n` connections at `rate` per second, calling `spawn(i)` for each
/// (which should `tokio::spawn` the connection task), then waits until every
/// attempt has finished (each bounded by the connect + handshake timeouts).
pub async fn ramp(n: usize, rate: f64, mut spawn: impl FnMut(usize)) {
    let start = tokio::time::Instant::now();
    let mut i = 0usize;
    while i < n {
        let due = if rate <= 0.0 {
            n
        } else {
            ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(n)
        };
        while i < due {
            spawn(i);
            i += 1;
        }
        if i < n {
            let next = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(next).await;
        }
    }
    while (COUNTERS.attempts_done.load(Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
