//! A byte-level HTTP/WebSocket client over a plain tokio `TcpStream`, for the
//! cases a well-behaved library refuses to produce: malformed handshakes,
//! unmasked or reserved frames, hand-made fragmentation, bad close frames.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::STEP_TIMEOUT;

/// Opcode of a continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// The GUID of RFC 6455 section 1.3, used to derive `Sec-WebSocket-Accept`.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, e.g. 101 or 404.
    pub status: u16,
    /// The status line, verbatim (without CRLF).
    pub status_line: String,
    /// Header `(name, value)` pairs in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body: `Content-Length` bytes, or what arrived until EOF (non-101).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits `buf` at the end of an HTTP head; returns (head, rest) once complete.
fn split_head(buf: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((buf[..end].to_vec(), buf[end + 4..].to_vec()))
}

/// Parse a response head (status line and headers; the body is left empty).
pub fn parse_head(head: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed HTTP status line {status_line:?}"));
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "status line not HTTP/1.1: {status_line:?}"
    );
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("malformed header line {l:?}"));
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    HttpResponse {
        status,
        status_line,
        headers,
        body: Vec::new(),
    }
}

/// Reads an HTTP response head from `stream`; returns it and any bytes read
/// past it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (HttpResponse, Vec<u8>) {
    let fut = async {
        loop {
            if let Some((head, rest)) = split_head(buf) {
                return (parse_head(&head), rest);
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read HTTP response");
            assert!(
                n > 0,
                "connection closed before a complete HTTP response head; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            assert!(buf.len() < 64 * 1024, "HTTP response head too large");
        }
    };
    crate::within(STEP_TIMEOUT, "HTTP response head", fut).await
}

/// Sends `request` verbatim on a new connection and reads the response: the
/// `Content-Length` body if given, else whatever arrives until EOF (waiting at
/// most 2 s for it).
pub async fn http_request(addr: SocketAddr, request: &str) -> HttpResponse {
    let mut stream = crate::within(STEP_TIMEOUT, "connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let (mut resp, mut rest) = read_head(&mut stream, &mut buf).await;
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().expect("numeric Content-Length");
        while rest.len() < len {
            let mut chunk = vec![0u8; len - rest.len()];
            let n = crate::within(STEP_TIMEOUT, "HTTP body", stream.read(&mut chunk))
                .await
                .expect("read body");
            assert!(n > 0, "EOF inside a Content-Length body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
    } else if resp.status != 101 {
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    }
    resp.body = rest;
    resp
}

/// The request line and standard upgrade headers for `path`, with
/// `extra_headers` (each `Name: value`, no CRLF) appended.
pub fn upgrade_request(addr: SocketAddr, path: &str, key: &str, extra_headers: &[&str]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra_headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// A fresh random-looking `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x5eed);
    let n = N.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ u64::from(std::process::id());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..].copy_from_slice(&n.rotate_left(17).to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    /// Opcode (4 bits).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final frame with `opcode` and `payload`.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            payload: payload.into(),
        }
    }

    /// A final text frame.
    pub fn text(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_TEXT, payload)
    }

    /// A final binary frame.
    pub fn binary(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_BINARY, payload)
    }

    /// A final continuation frame.
    pub fn cont(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_CONT, payload)
    }

    /// A ping.
    pub fn ping(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_PING, payload)
    }

    /// A close frame with `code` and `reason`.
    pub fn close(code: u16, reason: &[u8]) -> Frame {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        Frame::new(OP_CLOSE, p)
    }

    /// This frame with FIN set to `fin`.
    pub fn fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }

    /// This frame with the RSV bits `rsv` (RSV1 = 0b100, RSV2 = 0b010, RSV3 = 0b001).
    pub fn rsv(mut self, rsv: u8) -> Frame {
        self.rsv = rsv;
        self
    }

    /// The close code of a close frame, if its payload has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// Wire bytes of this frame, masked with `mask` if given.
    pub fn encode(&self, mask: Option<[u8; 4]>) -> Vec<u8> {
        self.encode_with_len(mask, self.payload.len() as u64)
    }

    /// Wire bytes with the header claiming `len` payload bytes (the payload
    /// actually appended is still `self.payload`): for length-limit tests.
    pub fn encode_with_len(&self, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0f));
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        match mask {
            Some(m) => {
                out.extend_from_slice(&m);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// Compresses one message as permessage-deflate does (raw deflate, sync flush,
/// trailing `00 00 ff ff` removed), with a fresh context.
pub fn deflate_message(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        c.compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        if c.total_in() as usize == data.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
    }
    out.truncate(out.len() - 4);
    out
}

/// Inverse of [`deflate_message`] for one message compressed with a fresh
/// context (the server answers `server_no_context_takeover`).
pub fn inflate_message(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity(data.len() * 4 + 1024);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let consumed = d.total_in() as usize;
        let status = d
            .decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync)
            .expect("inflate server message (a server with server_no_context_takeover must compress each message with a fresh context)");
        let all_in = d.total_in() as usize == input.len();
        if status == flate2::Status::StreamEnd || (all_in && out.len() < out.capacity()) {
            break;
        }
    }
    out
}

/// How a connection ended, as seen by [`WsConn::expect_close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code the server sent (`None`: close frame without a code).
    pub code: Option<u16>,
    /// The close reason bytes.
    pub reason: Vec<u8>,
}

/// A raw WebSocket client connection.
#[derive(Debug)]
pub struct WsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server's handshake response.
    pub response: HttpResponse,
    mask_counter: u32,
    sent_close: bool,
}

impl WsConn {
    /// Connects to `path` and completes the opening handshake (panics unless 101
    /// with the right `Sec-WebSocket-Accept`).
    pub async fn connect(addr: SocketAddr, path: &str) -> WsConn {
        WsConn::connect_with(addr, path, &[]).await
    }

    /// Like [`WsConn::connect`] with extra request headers (`Name: value`).
    pub async fn connect_with(addr: SocketAddr, path: &str, extra_headers: &[&str]) -> WsConn {
        WsConn::connect_opts(addr, path, extra_headers, None).await
    }

    /// Like [`WsConn::connect_with`], optionally with a fixed (small) socket
    /// receive buffer, which turns off the kernel's autotuning (loopback
    /// buffers can otherwise grow to tens of MiB and hide a slow consumer).
    pub async fn connect_opts(
        addr: SocketAddr,
        path: &str,
        extra_headers: &[&str],
        recv_buffer: Option<u32>,
    ) -> WsConn {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = crate::within(STEP_TIMEOUT, "connect", socket.connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let key = new_key();
        stream
            .write_all(upgrade_request(addr, path, &key, extra_headers).as_bytes())
            .await
            .expect("write upgrade request");
        let mut buf = Vec::new();
        let (response, rest) = read_head(&mut stream, &mut buf).await;
        assert_eq!(
            response.status, 101,
            "upgrade to {path} failed: {response:?}"
        );
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(accept_key(&key).as_str()),
            "wrong Sec-WebSocket-Accept: {response:?}"
        );
        WsConn {
            stream,
            buf: rest,
            response,
            mask_counter: 0x1234_5678,
            sent_close: false,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_counter = self
            .mask_counter
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.mask_counter.to_be_bytes()
    }

    /// Sends `frame` masked, as a client must.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.sent_close |= frame.opcode == OP_CLOSE;
        let mask = self.next_mask();
        self.send_bytes(&frame.encode(Some(mask))).await
    }

    /// Sends `frame` without a mask (a protocol violation from a client).
    pub async fn send_unmasked(&mut self, frame: &Frame) -> io::Result<()> {
        self.send_bytes(&frame.encode(None)).await
    }

    /// Drops the connection with a TCP reset (SO_LINGER 0) instead of a FIN, as a
    /// crashed host or a killed process behind a middlebox looks.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket fd owned by `self.stream` and a correctly sized
        // `linger` value; a zero linger never blocks on close.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(self.stream);
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(STEP_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    fn parse_frame(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server sent a masked frame");
        let (len, mut pos) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return None,
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).expect("frame length fits usize");
        if b.len() < pos + len {
            return None;
        }
        let frame = Frame {
            fin: b[0] & 0x80 != 0,
            rsv: (b[0] >> 4) & 0b111,
            opcode: b[0] & 0x0f,
            payload: b[pos..pos + len].to_vec(),
        };
        pos += len;
        self.buf.drain(..pos);
        Some(frame)
    }

    /// Reads the next frame; `Ok(None)` on EOF (or connection reset) with no
    /// partial frame pending. No timeout: wrap it, or use [`WsConn::recv`].
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.parse_frame() {
                return Ok(Some(f));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match self.stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF inside a frame ({} bytes pending)", self.buf.len()),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame within [`STEP_TIMEOUT`]; panics on timeout, EOF or error.
    pub async fn recv(&mut self) -> Frame {
        crate::within(STEP_TIMEOUT, "next frame from server", self.read_frame())
            .await
            .expect("read frame")
            .expect("server closed the connection instead of sending a frame")
    }

    /// The next data message, reassembled from fragments (pings are answered
    /// with nothing and skipped, pongs skipped). Returns `(opcode, rsv of the
    /// first frame, payload)`. Panics on a close frame, EOF or timeout.
    pub async fn recv_message(&mut self) -> (u8, u8, Vec<u8>) {
        let mut first: Option<(u8, u8)> = None;
        let mut payload = Vec::new();
        loop {
            let f = self.recv().await;
            match f.opcode {
                OP_PING | OP_PONG => continue,
                OP_CLOSE => panic!("expected a message, got close {:?}", f.close_code()),
                OP_CONT => assert!(first.is_some(), "server sent continuation without start"),
                op => {
                    assert!(first.is_none(), "server started a new message mid-fragment");
                    first = Some((op, f.rsv));
                }
            }
            payload.extend_from_slice(&f.payload);
            if f.fin {
                let (op, rsv) = first.expect("message start");
                return (op, rsv, payload);
            }
        }
    }

    /// Reads until the server's close frame (skipping data and control frames),
    /// answers it with a close frame if this client has not sent one yet, then
    /// requires the server to close TCP too, all within [`STEP_TIMEOUT`].
    /// Panics if the connection ends without a close frame.
    pub async fn expect_close(&mut self) -> Closed {
        let mut skipped = 0usize;
        let mut closed: Option<Closed> = None;
        let outcome = tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                match self.read_frame().await {
                    Ok(Some(f)) if f.opcode == OP_CLOSE => {
                        closed = Some(Closed {
                            code: f.close_code(),
                            reason: f.payload.get(2..).unwrap_or_default().to_vec(),
                        });
                        break;
                    }
                    Ok(Some(_)) => skipped += 1,
                    Ok(None) => panic!(
                        "server dropped the connection without a close frame \
                         (after {skipped} other frames)"
                    ),
                    Err(e) => panic!("error before the close frame (after {skipped} frames): {e}"),
                }
            }
            // Answer like a client would (unless we started the closing
            // handshake), then wait for the server's TCP close: the server
            // closes TCP first (RFC 6455 section 7.1.1).
            if !self.sent_close {
                let echo = closed
                    .as_ref()
                    .and_then(|c| c.code)
                    .map(|c| c.to_be_bytes().to_vec())
                    .unwrap_or_default();
                let _ = self.send(&Frame::new(OP_CLOSE, echo)).await;
            }
            while let Ok(Some(_)) = self.read_frame().await {}
        })
        .await;
        match (outcome, closed) {
            (Ok(()), Some(c)) => c,
            (_, None) => panic!(
                "no close frame within {STEP_TIMEOUT:?} (read {skipped} other frames, \
                 {} bytes pending)",
                self.buf.len()
            ),
            (Err(_), Some(c)) => panic!(
                "server sent close {:?} but did not close TCP within {STEP_TIMEOUT:?}",
                c.code
            ),
        }
    }

    /// Asserts the server sends close `code` next (possibly after data frames)
    /// and then closes the connection.
    pub async fn expect_close_code(&mut self, code: u16) {
        let closed = self.expect_close().await;
        assert_eq!(
            closed.code,
            Some(code),
            "expected close code {code}, got {:?} (reason {:?})",
            closed.code,
            String::from_utf8_lossy(&closed.reason)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_inflate_round_trip() {
        for data in [
            Vec::new(),
            b"hello".to_vec(),
            vec![0u8; 1 << 20],
            (0..300_000u32).map(|i| (i * 7919 % 256) as u8).collect(),
        ] {
            let c = deflate_message(&data);
            assert!(!c.ends_with(&[0, 0, 0xff, 0xff]));
            assert_eq!(inflate_message(&c), data);
        }
    }

    #[test]
    fn frame_encoding_uses_the_right_length_forms() {
        let f = Frame::binary(vec![1; 125]).encode(None);
        assert_eq!(&f[..2], &[0x82, 125]);
        let f = Frame::binary(vec![1; 126]).encode(Some([0; 4]));
        assert_eq!(&f[..4], &[0x82, 0x80 | 126, 0, 126]);
        let f = Frame::text(vec![1; 70_000])
            .fin(false)
            .rsv(0b100)
            .encode(None);
        assert_eq!(f[0], 0x41);
        assert_eq!(f[1], 127);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn masking_is_applied() {
        let f = Frame::text("abcd").encode(Some([1, 2, 3, 4]));
        assert_eq!(&f[2..6], &[1, 2, 3, 4]);
        assert_eq!(&f[6..], &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4]);
    }
}
