//! A Server-Sent Events client over a plain tokio `TcpStream`, written from the
//! WHATWG HTML standard's "Server-sent events" section (not from the server's
//! code): it keeps every body byte for byte-exact assertions and parses the
//! stream the way a browser does (line endings CRLF / LF / CR, `field: value`
//! with one optional space stripped, comments, `id` sets the last event id,
//! dispatch on a blank line, no dispatch for an empty data buffer).
//!
//! Resuming is the caller's business: [`SseClient::last_event_id`] is what a
//! browser would send as `Last-Event-ID` on its next connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{parse_head, HttpResponse};
use crate::{within, STEP_TIMEOUT};

/// One dispatched event, as a browser's `MessageEvent` would carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Event type (`message` unless an `event:` field said otherwise).
    pub ty: String,
    /// The data buffer (lines joined with LF, last LF removed).
    pub data: String,
    /// The `id:` field of this event's block, if it had one.
    pub id: Option<String>,
    /// The stream's last event id when the event was dispatched
    /// (`MessageEvent.lastEventId`).
    pub last_event_id: String,
}

/// What the stream carried, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line (the text after the colon, leading space kept).
    Comment(String),
}

/// Incremental WHATWG event-stream parser.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of an incomplete line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a following LF belongs to that line end.
    after_cr: bool,
    /// The first line of the stream has not been seen yet (BOM handling).
    started: bool,
    data: String,
    ty: String,
    block_id: Option<String>,
    /// The last event id buffer.
    pub last_event_id: String,
    /// The reconnection time the stream set, ms.
    pub retry: Option<u64>,
}

impl Parser {
    /// Feeds bytes; returns the items they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                b'\n' => self.end_line(&mut out),
                _ => self.line.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<Item>) {
        let bytes = std::mem::take(&mut self.line);
        let mut line = String::from_utf8_lossy(&bytes).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            // Dispatch.
            let block_id = self.block_id.take();
            if self.data.is_empty() {
                self.ty.clear();
                return;
            }
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            let ty = std::mem::take(&mut self.ty);
            out.push(Item::Event(SseEvent {
                ty: if ty.is_empty() {
                    "message".to_string()
                } else {
                    ty
                },
                data,
                id: block_id,
                last_event_id: self.last_event_id.clone(),
            }));
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Item::Comment(comment.to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
            None => (line.clone(), String::new()),
        };
        match field.as_str() {
            "event" => self.ty = value,
            "data" => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.last_event_id = value.clone();
                self.block_id = Some(value);
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }
}

/// An open event stream.
#[derive(Debug)]
pub struct SseClient {
    stream: TcpStream,
    /// The response head (status 200).
    pub response: HttpResponse,
    /// Every body byte received so far.
    pub raw: Vec<u8>,
    parser: Parser,
    items: std::collections::VecDeque<Item>,
    /// Comments seen so far (all of them, also those already consumed).
    pub comments: Vec<String>,
    eof: bool,
    /// `lastEventId` of the last event handed out (not of events parsed but
    /// still queued here).
    consumed_last_id: String,
}

/// The request line and headers of an event-stream request for `path`, with
/// `Accept: text/event-stream` and `extra_headers` (`Name: value`).
pub fn stream_request(addr: SocketAddr, path: &str, extra_headers: &[&str]) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for h in extra_headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

fn split_head(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

impl SseClient {
    /// `GET path` with `Accept: text/event-stream`; panics unless the answer is 200.
    pub async fn connect(addr: SocketAddr, path: &str) -> SseClient {
        SseClient::connect_with(addr, path, &[]).await
    }

    /// Like [`SseClient::connect`] with extra request headers (`Name: value`),
    /// e.g. `Last-Event-ID: ...`.
    pub async fn connect_with(addr: SocketAddr, path: &str, extra_headers: &[&str]) -> SseClient {
        match SseClient::open(addr, &stream_request(addr, path, extra_headers)).await {
            Ok(c) => c,
            Err(resp) => panic!(
                "GET {path}: expected 200, got {} {:?}: {}",
                resp.status,
                resp.headers,
                resp.body_text()
            ),
        }
    }

    /// Resumes `path` from `last_event_id` (sent as `Last-Event-ID` unless empty,
    /// as a browser does).
    pub async fn resume(addr: SocketAddr, path: &str, last_event_id: &str) -> SseClient {
        if last_event_id.is_empty() {
            SseClient::connect(addr, path).await
        } else {
            let h = format!("Last-Event-ID: {last_event_id}");
            SseClient::connect_with(addr, path, &[&h]).await
        }
    }

    /// Sends `request` verbatim. A 200 gives the open stream; any other status
    /// gives the response with its body (read to `Content-Length` or EOF).
    pub async fn open(addr: SocketAddr, request: &str) -> Result<SseClient, HttpResponse> {
        SseClient::open_opts(addr, request, None).await
    }

    /// Like [`SseClient::open`], optionally with a fixed small socket receive
    /// buffer (turns off loopback autotuning, so a client that does not read
    /// really falls behind).
    pub async fn open_opts(
        addr: SocketAddr,
        request: &str,
        recv_buffer: Option<u32>,
    ) -> Result<SseClient, HttpResponse> {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = within(STEP_TIMEOUT, "connect", socket.connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut buf = Vec::new();
        let end = within(STEP_TIMEOUT, "response head", async {
            loop {
                if let Some(end) = split_head(&buf) {
                    return end;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read response");
                assert!(
                    n > 0,
                    "EOF before a complete response head: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let mut response = parse_head(&buf[..end]);
        let rest = buf[end + 4..].to_vec();
        if response.status != 200 {
            let mut body = rest;
            let want = response
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            let _ = tokio::time::timeout(STEP_TIMEOUT, async {
                loop {
                    if want.is_some_and(|w| body.len() >= w) {
                        break;
                    }
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            response.body = body;
            return Err(response);
        }
        let mut client = SseClient {
            stream,
            response,
            raw: Vec::new(),
            parser: Parser::default(),
            items: Default::default(),
            comments: Vec::new(),
            eof: false,
            consumed_last_id: String::new(),
        };
        client.ingest(&rest);
        Ok(client)
    }

    fn ingest(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        for item in self.parser.feed(bytes) {
            if let Item::Comment(c) = &item {
                self.comments.push(c.clone());
            }
            self.items.push_back(item);
        }
    }

    /// Reads once (waiting at most `timeout`); false on timeout. Sets EOF.
    async fn read_more(&mut self, timeout: Duration) -> bool {
        if self.eof {
            tokio::time::sleep(timeout).await;
            return false;
        }
        let mut chunk = vec![0u8; 16 * 1024];
        match tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                true
            }
            Ok(Ok(n)) => {
                self.ingest(&chunk[..n]);
                true
            }
        }
    }

    /// The next item (event or comment) within `timeout`, `None` on timeout or EOF.
    pub async fn next_item_within(&mut self, timeout: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.items.pop_front() {
                if let Item::Event(e) = &item {
                    self.consumed_last_id = e.last_event_id.clone();
                }
                return Some(item);
            }
            if self.eof {
                return None;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            self.read_more(left).await;
        }
    }

    /// The next event (comments skipped) within `timeout`; `None` on timeout or EOF.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item_within(left).await? {
                Item::Event(e) => return Some(e),
                Item::Comment(_) => {}
            }
        }
    }

    /// The next event within [`STEP_TIMEOUT`]; panics on timeout or EOF.
    pub async fn next_event(&mut self) -> SseEvent {
        match self.next_event_within(STEP_TIMEOUT).await {
            Some(e) => e,
            None => panic!(
                "no SSE event within {STEP_TIMEOUT:?} (eof: {}); stream so far: {:?}",
                self.eof,
                String::from_utf8_lossy(&self.raw)
            ),
        }
    }

    /// The next `n` events.
    pub async fn next_events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.next_event().await);
        }
        v
    }

    /// Asserts that no event arrives within `quiet` (comments are fine).
    pub async fn expect_no_event(&mut self, quiet: Duration) {
        if let Some(e) = self.next_event_within(quiet).await {
            panic!("expected no further event, got {e:?}");
        }
    }

    /// Reads until at least `n` body bytes have arrived (within the step timeout).
    pub async fn read_raw_at_least(&mut self, n: usize) -> &[u8] {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while self.raw.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero() && !self.eof,
                "wanted {n} body bytes, have {:?} (eof: {})",
                String::from_utf8_lossy(&self.raw),
                self.eof
            );
            self.read_more(left).await;
        }
        &self.raw
    }

    /// Reads everything that arrives for `window` (for keep-alive counting).
    pub async fn read_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || self.eof {
                return;
            }
            self.read_more(left).await;
        }
    }

    /// True once the server closed the stream (EOF or reset seen).
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Waits up to `timeout` for the server to close the stream.
    pub async fn wait_eof(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.read_more(left).await;
        }
        true
    }

    /// What a browser that had dispatched exactly the events handed out so far
    /// would send as `Last-Event-ID` on reconnecting (events parsed but not yet
    /// taken with `next_event*` do not count).
    pub fn last_event_id(&self) -> &str {
        &self.consumed_last_id
    }

    /// The `retry:` value the stream set, if any.
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry
    }
}

/// Parses a multi-room stream id `a=<epoch>:<seq>;b=...` into (decoded room,
/// cursor text) pairs. Panics on anything else.
pub fn parse_room_cursors(id: &str) -> Vec<(String, String)> {
    id.split(';')
        .map(|entry| {
            let (room, cursor) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("entry {entry:?} of stream id {id:?} has no '='"));
            assert!(
                is_cursor(cursor),
                "entry {entry:?} of {id:?}: not <epoch>:<seq>"
            );
            (percent_decode(room), cursor.to_string())
        })
        .collect()
}

/// True for `<lowercase hex epoch>:<decimal seq>`.
pub fn is_cursor(s: &str) -> bool {
    match s.split_once(':') {
        Some((e, q)) => {
            !e.is_empty()
                && !q.is_empty()
                && e.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && q.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// `(epoch, seq)` of a single cursor `<epoch>:<seq>`.
pub fn split_cursor(s: &str) -> (String, u64) {
    assert!(is_cursor(s), "not a cursor: {s:?}");
    let (e, q) = s.split_once(':').expect("colon");
    (e.to_string(), q.parse().expect("seq"))
}

/// Percent-decodes `s` (UTF-8; panics on a bad escape).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("escape");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 room name")
}

/// `/sse?room=a&room=b` for `rooms` (names percent-encoded).
pub fn sse_path(rooms: &[&str]) -> String {
    let q: Vec<String> = rooms
        .iter()
        .map(|r| format!("room={}", percent_encode(r)))
        .collect();
    format!("/sse?{}", q.join("&"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for query
/// values and path segments.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<Item>) -> Vec<SseEvent> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                Item::Comment(_) => None,
            })
            .collect()
    }

    #[test]
    fn parser_follows_the_whatwg_algorithm() {
        let mut p = Parser::default();
        let mut items = p.feed(b"retry: 2000\n\n: hi\n\nid: 1\ndata: a\ndata:b\r\n");
        items.extend(p.feed(b"\r"));
        items.extend(p.feed(b"\nevent: x\ndata:  sp\rdata\n\ndata\n\nid\n\n"));
        assert_eq!(p.retry, Some(2000));
        assert_eq!(items[0], Item::Comment(" hi".into()));
        let ev = events(items);
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert_eq!(ev[0].data, "a\nb");
        assert_eq!(ev[0].id.as_deref(), Some("1"));
        assert_eq!((ev[1].ty.as_str(), ev[1].data.as_str()), ("x", " sp\n"));
        assert_eq!(ev[1].last_event_id, "1");
        assert_eq!(ev[2].data, "");
        assert_eq!(p.last_event_id, "", "an empty id field resets it");
    }

    #[test]
    fn cursor_helpers() {
        assert!(is_cursor("18c3f2a1b00001:42"));
        assert!(!is_cursor("18c3:x"));
        assert_eq!(
            parse_room_cursors("a%3Db=1f:2;c%20d=1f:3"),
            vec![
                ("a=b".to_string(), "1f:2".to_string()),
                ("c d".to_string(), "1f:3".to_string())
            ]
        );
        assert_eq!(percent_encode("a b=é"), "a%20b%3D%C3%A9");
    }
}
