//! Minimal client-side Server-Sent Events (`text/event-stream`): the request,
//! the response-head check, and a streaming event parser that, like the
//! WebSocket frame reader, never needs a whole event in memory: it keeps the
//! first [`HEAD_CAP`] bytes of each event's data (all loadgen needs to recover
//! its timestamps), the event type and the last event id, in fixed buffers.
//!
//! Parsing follows the WHATWG "Server-sent events" interpretation rules: lines
//! end with CRLF, LF or a lone CR (also when the pair is split across reads);
//! `data:` lines accumulate (joined with LF), `event:` sets the type, `id:` the
//! last event id (kept across events; ignored if it contains NUL), `retry:`
//! (digits only) the reconnection time; lines starting with `:` are comments;
//! other fields are ignored; a blank line dispatches the event, unless no
//! `data:` line came since the last dispatch. One leading space after the
//! colon is stripped. A leading byte-order mark is not stripped (corecast
//! never sends one).

use crate::loadgen::ws::{HandshakeError, HEAD_CAP};

/// Longest event type kept (longer types are reported truncated, flagged).
pub const TYPE_CAP: usize = 16;
/// Longest event id kept (longer ids are reported truncated, flagged).
pub const ID_CAP: usize = 64;
/// Bytes of each line kept while it is split across reads: enough for the
/// longest field name we act on, the colon, the space and [`HEAD_CAP`] /
/// [`ID_CAP`] value bytes.
const LINE_CAP: usize = 80;

/// Builds the `GET` request opening an event stream at `resource` (path and query).
pub fn request(host: &str, resource: &str) -> String {
    format!(
        "GET {resource} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\nUser-Agent: corecast-loadgen\r\n\r\n"
    )
}

/// Checks a complete response head (up to and including the blank line):
/// `HTTP/1.x 200` with `Content-Type: text/event-stream` and no chunked
/// transfer coding (corecast streams the body raw until it closes).
pub fn check_response(head: &[u8]) -> Result<(), HandshakeError> {
    check_head(head, false)
}

/// [`check_response`] that also accepts a chunked body: for clients that hold
/// the stream open without parsing events (`loadgen idle --sse`).
pub fn check_response_any_coding(head: &[u8]) -> Result<(), HandshakeError> {
    check_head(head, true)
}

fn check_head(head: &[u8], allow_chunked: bool) -> Result<(), HandshakeError> {
    let text =
        std::str::from_utf8(head).map_err(|_| HandshakeError::Bad("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err(HandshakeError::Bad("not an HTTP response"));
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(HandshakeError::Bad("no status code"))?;
    if code != 200 {
        return Err(HandshakeError::Rejected(code));
    }
    let mut event_stream = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-type") {
            let media = value.split(';').next().unwrap_or("").trim();
            event_stream = media.eq_ignore_ascii_case("text/event-stream");
        } else if !allow_chunked
            && name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Err(HandshakeError::Bad(
                "chunked event streams are not supported",
            ));
        }
    }
    if event_stream {
        Ok(())
    } else {
        Err(HandshakeError::Bad(
            "200 without Content-Type: text/event-stream",
        ))
    }
}

/// A dispatched event, borrowed from the parser.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The `event:` type as sent (empty: none, i.e. `message`), at most [`TYPE_CAP`] bytes.
    pub ty: &'a [u8],
    /// The type was longer than [`TYPE_CAP`] (so it is not `message`).
    pub ty_truncated: bool,
    /// Total data length (the `data:` lines joined with LF).
    pub data_len: u64,
    /// The first `min(data_len, HEAD_CAP)` data bytes.
    pub head: &'a [u8],
    /// The last event id (persists across events, as for a browser), at most [`ID_CAP`] bytes.
    pub id: &'a [u8],
    /// The id was longer than [`ID_CAP`].
    pub id_truncated: bool,
    /// This event itself carried an `id:` line.
    pub id_in_event: bool,
}

/// Something the parser found in the stream.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// A dispatched event.
    Event(EventRef<'a>),
    /// A comment line (e.g. a keep-alive).
    Comment,
    /// A valid `retry:` field (milliseconds, saturating).
    Retry(u64),
}

/// Streaming `text/event-stream` parser with O(1) state (a few hundred bytes).
#[derive(Debug, Clone)]
pub struct EventParser {
    /// First bytes of a line split across reads.
    line: [u8; LINE_CAP],
    /// Bytes kept in `line`.
    line_kept: usize,
    /// Total length of the partial line so far.
    line_len: u64,
    /// The previous read ended with CR: skip a leading LF.
    skip_lf: bool,
    data_head: [u8; HEAD_CAP],
    data_head_len: usize,
    data_len: u64,
    data_lines: u64,
    ty: [u8; TYPE_CAP],
    ty_len: usize,
    ty_truncated: bool,
    id: [u8; ID_CAP],
    id_len: usize,
    id_truncated: bool,
    id_in_event: bool,
}

impl Default for EventParser {
    fn default() -> Self {
        Self::new()
    }
}

/// Position of the first CR or LF in `s` (8 bytes at a time).
#[inline]
fn find_eol(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    const CR: u64 = LO * b'\r' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut i = 0;
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        let w = u64::from_le_bytes(b);
        let (a, d) = (w ^ LF, w ^ CR);
        // The lowest flagged byte of each term is an exact match (false
        // positives only occur above a true match), so the lowest overall is too.
        let z = (a.wrapping_sub(LO) & !a & HI) | (d.wrapping_sub(LO) & !d & HI);
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|p| i + p)
}

/// Copies as much of `src` as fits after `len` bytes of `dst`; returns the new length.
#[inline]
fn append_capped(dst: &mut [u8], len: usize, src: &[u8]) -> usize {
    let k = (dst.len() - len).min(src.len());
    dst[len..len + k].copy_from_slice(&src[..k]);
    len + k
}

impl EventParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        EventParser {
            line: [0; LINE_CAP],
            line_kept: 0,
            line_len: 0,
            skip_lf: false,
            data_head: [0; HEAD_CAP],
            data_head_len: 0,
            data_len: 0,
            data_lines: 0,
            ty: [0; TYPE_CAP],
            ty_len: 0,
            ty_truncated: false,
            id: [0; ID_CAP],
            id_len: 0,
            id_truncated: false,
            id_in_event: false,
        }
    }

    /// Parses `data` (any slice of the stream), calling `on` for every event,
    /// comment and retry field completed in it.
    pub fn feed<F: FnMut(Item<'_>)>(&mut self, mut data: &[u8], mut on: F) {
        if self.skip_lf && !data.is_empty() {
            self.skip_lf = false;
            if data[0] == b'\n' {
                data = &data[1..];
            }
        }
        while !data.is_empty() {
            let Some(p) = find_eol(data) else {
                self.keep(data);
                return;
            };
            let cr = data[p] == b'\r';
            if self.line_len == 0 {
                // Whole line inside this read: no copy.
                self.line(&data[..p], p as u64, &mut on);
            } else {
                self.keep(&data[..p]);
                let (buf, kept, len) = (self.line, self.line_kept, self.line_len);
                self.line_kept = 0;
                self.line_len = 0;
                self.line(&buf[..kept], len, &mut on);
            }
            data = &data[p + 1..];
            if cr {
                match data.first() {
                    Some(b'\n') => data = &data[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
    }

    /// Keeps the start of a line that continues in a later read.
    fn keep(&mut self, part: &[u8]) {
        self.line_kept = append_capped(&mut self.line, self.line_kept, part);
        self.line_len += part.len() as u64;
    }

    /// Interprets one line: `kept` is its first bytes (all of it if short), `len` its length.
    fn line<F: FnMut(Item<'_>)>(&mut self, kept: &[u8], len: u64, on: &mut F) {
        if len == 0 {
            self.dispatch(on);
            return;
        }
        if kept[0] == b':' {
            on(Item::Comment);
            return;
        }
        // Names we act on have at most 5 bytes: look for the colon in the first 6.
        let (name, value_at) = match kept[..kept.len().min(6)].iter().position(|&b| b == b':') {
            Some(c) => (
                &kept[..c],
                c + 1 + usize::from(kept.get(c + 1) == Some(&b' ')),
            ),
            // No colon: either the whole (short) line is the field name, value
            // empty, or the name is longer than anything we act on.
            None if len as usize == kept.len() && kept.len() <= 5 => (kept, kept.len()),
            None => return,
        };
        let value = kept.get(value_at..).unwrap_or(&[]);
        let value_len = len - value_at as u64;
        match name {
            b"data" => {
                if self.data_lines > 0 {
                    self.data_len += 1;
                    self.data_head_len =
                        append_capped(&mut self.data_head, self.data_head_len, b"\n");
                }
                self.data_lines += 1;
                self.data_len += value_len;
                self.data_head_len = append_capped(&mut self.data_head, self.data_head_len, value);
            }
            b"id" => {
                let v = &value[..value.len().min(value_len as usize)];
                if !v.contains(&0) {
                    self.id_len = append_capped(&mut self.id, 0, v);
                    self.id_truncated = value_len as usize > ID_CAP;
                    self.id_in_event = true;
                }
            }
            b"event" => {
                self.ty_len = append_capped(&mut self.ty, 0, value);
                self.ty_truncated = value_len as usize > TYPE_CAP;
            }
            // Digits only; a number longer than the kept bytes is ignored.
            b"retry"
                if value_len > 0
                    && value.len() as u64 == value_len
                    && value.iter().all(u8::is_ascii_digit) =>
            {
                let ms = value.iter().fold(0u64, |acc, &d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                on(Item::Retry(ms));
            }
            _ => {}
        }
    }

    fn dispatch<F: FnMut(Item<'_>)>(&mut self, on: &mut F) {
        if self.data_lines > 0 {
            on(Item::Event(EventRef {
                ty: &self.ty[..self.ty_len],
                ty_truncated: self.ty_truncated,
                data_len: self.data_len,
                head: &self.data_head[..self.data_head_len],
                id: &self.id[..self.id_len],
                id_truncated: self.id_truncated,
                id_in_event: self.id_in_event,
            }));
        }
        self.data_lines = 0;
        self.data_len = 0;
        self.data_head_len = 0;
        self.ty_len = 0;
        self.ty_truncated = false;
        self.id_in_event = false;
    }
}

/// Splits corecast's event id `<epoch hex>:<seq decimal>` into the epoch
/// text (1 to 16 bytes, not checked further: see [`parse_epoch`]) and the seq
/// (1 to 19 decimal digits).
#[inline]
pub fn split_cursor(id: &[u8]) -> Option<(&[u8], u64)> {
    let colon = id.iter().rposition(|&b| b == b':')?;
    let (epoch, digits) = (&id[..colon], &id[colon + 1..]);
    if epoch.is_empty() || epoch.len() > 16 || digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut seq = 0u64;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        // 19 digits cannot overflow a u64.
        seq = seq * 10 + u64::from(d);
    }
    Some((epoch, seq))
}

/// Parses an epoch (1 to 16 hex digits, either case).
pub fn parse_epoch(epoch: &[u8]) -> Option<u64> {
    if epoch.is_empty() || epoch.len() > 16 {
        return None;
    }
    epoch.iter().try_fold(0u64, |v, &b| {
        let d = (b as char).to_digit(16)?;
        Some((v << 4) | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(stream: &[u8], step: usize) -> Vec<String> {
        let mut p = EventParser::new();
        let mut seen = Vec::new();
        for chunk in stream.chunks(step.max(1)) {
            p.feed(chunk, |item| {
                seen.push(match item {
                    Item::Event(e) => format!(
                        "ev[{}{}|{}|{}|{}{}{}]",
                        String::from_utf8_lossy(e.ty),
                        if e.ty_truncated { "…" } else { "" },
                        e.data_len,
                        String::from_utf8_lossy(e.head),
                        String::from_utf8_lossy(e.id),
                        if e.id_truncated { "…" } else { "" },
                        if e.id_in_event { "" } else { " (old id)" },
                    ),
                    Item::Comment => "comment".into(),
                    Item::Retry(ms) => format!("retry {ms}"),
                })
            });
        }
        seen
    }

    #[test]
    fn parses_corecast_stream_at_any_split() {
        let long = "y".repeat(200);
        let stream = format!(
            "retry: 2000\n\n: keep-alive\n\nid: 1f:1\ndata: hello\n\n\
             id: 1f:2\ndata: a\ndata: b\n\n\
             event: gap\ndata: {{}}\n\n\
             data:{long}\n\n\
             id: 1f:3\r\ndata: crlf\r\n\r\n\
             id: 1f:4\rdata: cr\r\r\
             data: no-dispatch-without-blank-line"
        );
        let want = vec![
            "retry 2000".to_string(),
            "comment".into(),
            "ev[|5|hello|1f:1]".into(),
            "ev[|3|a\nb|1f:2]".into(),
            "ev[gap|2|{}|1f:2 (old id)]".into(),
            format!("ev[|200|{}|1f:2 (old id)]", &long[..HEAD_CAP]),
            "ev[|4|crlf|1f:3]".into(),
            "ev[|2|cr|1f:4]".into(),
        ];
        for step in [1usize, 2, 3, 5, 7, 8, 13, 64, 1000] {
            assert_eq!(events(stream.as_bytes(), step), want, "step {step}");
        }
    }

    #[test]
    fn field_rules() {
        // No space after the colon, only one space stripped, a colon-less line
        // is a field name with an empty value, unknown fields and bad retry ignored.
        let s = b"data:x\ndata:  y\ndata\nfoo: bar\nretry: 12a\nretry\n\n";
        assert_eq!(events(s, 100), vec!["ev[|5|x\n y\n| (old id)]".to_string()]);
        // Blank lines without data dispatch nothing; event type without data is reset.
        assert!(events(b"\n\nevent: x\n\n\n", 3).is_empty());
        assert_eq!(
            events(b"event: x\n\ndata: d\n\n", 3),
            vec!["ev[|1|d| (old id)]".to_string()]
        );
        // An id with NUL is ignored; an empty id clears it.
        assert_eq!(
            events(b"id: 5\ndata: a\n\nid: 6\0\ndata: b\n\nid\ndata: c\n\n", 4),
            vec![
                "ev[|1|a|5]".to_string(),
                "ev[|1|b|5 (old id)]".into(),
                "ev[|1|c|]".into()
            ]
        );
        // Long type and id are flagged; a long unknown field name is skipped.
        let s = format!(
            "event: {}\nid: {}\n{}: v\ndata: z\n\n",
            "t".repeat(40),
            "9".repeat(100),
            "n".repeat(300)
        );
        for step in [1, 9, 1000] {
            assert_eq!(
                events(s.as_bytes(), step),
                vec![format!("ev[{}…|1|z|{}…]", "t".repeat(16), "9".repeat(64))]
            );
        }
    }

    #[test]
    fn eol_search_matches_naive() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..40 {
            for _ in 0..200 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        [b'\n', b'\r', 0x0b, 0x8a, 0x8d, 0, b'a'][(x % 7) as usize]
                    })
                    .collect();
                let naive = v.iter().position(|&b| b == b'\n' || b == b'\r');
                assert_eq!(find_eol(&v), naive, "{v:?}");
            }
        }
    }

    #[test]
    fn response_checks() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: close\r\n\r\n";
        assert!(check_response(ok).is_ok());
        assert!(matches!(
            check_response(b"HTTP/1.1 406 Not Acceptable\r\n\r\n"),
            Err(HandshakeError::Rejected(406))
        ));
        assert!(check_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").is_err());
        assert!(check_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(check_response_any_coding(chunked).is_ok());
        assert!(check_response_any_coding(ok).is_ok());
        assert!(
            check_response_any_coding(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                .is_err()
        );
        let req = request("h:1", "/sse?room=a");
        assert!(req.starts_with("GET /sse?room=a HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.contains("Accept: text/event-stream\r\n") && req.ends_with("\r\n\r\n"));
    }

    fn parse_cursor(id: &[u8]) -> Option<(u64, u64)> {
        let (e, seq) = split_cursor(id)?;
        Some((parse_epoch(e)?, seq))
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(b"18c3f2a1b:42"), Some((0x18c3f2a1b, 42)));
        assert_eq!(parse_cursor(b"AB:007"), Some((0xab, 7)));
        assert_eq!(
            parse_cursor(b"ffffffffffffffff:9999999999999999999"),
            Some((u64::MAX, 9_999_999_999_999_999_999))
        );
        assert_eq!(split_cursor(b"zz:5"), Some((&b"zz"[..], 5)));
        for bad in [
            &b""[..],
            b"1",
            b":1",
            b"1:",
            b"g:1",
            b"1:x",
            b"1:18446744073709551616",
            b"0:1:2",
            b"11111111111111111:1",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}
