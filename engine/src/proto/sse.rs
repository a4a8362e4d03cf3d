//! Server-Sent Events (`text/event-stream`) encoding, per the WHATWG HTML
//! standard's "Server-sent events" section, plus the resume-cursor text format
//! carried in event ids (and sent back by clients as `Last-Event-ID`).
//!
//! Sans-IO: functions here only turn values into bytes (and cursor text back
//! into values); writing them to a socket, keep-alive timing and flushing are
//! the caller's business.
//!
//! # Wire format produced
//!
//! ```text
//! event: <ty>\n        (only if `ty` is set)
//! id: <id>\n           (only if `id` is set)
//! retry: <ms>\n        (only if `retry` is set)
//! data: <line 1>\n     (one per line of the payload)
//! data: <line 2>\n
//! \n                   (blank line: the client dispatches the event)
//! ```
//!
//! A field with an empty value is written without the separating space
//! (`data:\n`, `id:\n`); clients parse `data:` and `data: ` identically. A
//! non-empty value always gets the single space, which the client strips, so a
//! value that itself starts with a space survives intact.
//!
//! The output never contains a carriage return, so a client can never be
//! confused by a CR/LF pair split across two reads, and it is always valid
//! UTF-8 (invalid payload bytes become U+FFFD, exactly what the client's
//! UTF-8 decoder would have turned them into anyway).
//!
//! # Payload round trip
//!
//! The payload is split on every line ending the client recognises (CRLF, LF
//! and a lone CR), giving `n + 1` `data:` lines for `n` line endings. The
//! client appends each line's value plus LF to its data buffer and, on
//! dispatch, removes one trailing LF, so it receives exactly the payload with
//! every CRLF and lone CR turned into LF. Payloads that only use LF (or none)
//! therefore arrive byte for byte; CR cannot be carried by SSE at all. In
//! particular:
//!
//! * an empty payload is written as a single `data:\n` line, so the event is
//!   still dispatched (with empty data) instead of being silently dropped, as
//!   an event with no `data` line would be;
//! * a payload ending in a line ending yields a final empty `data:` line, so
//!   the client's data also ends in LF.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

/// One event to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Event type (`event:` field). `None` (or `Some("")`) means the client's
    /// default type, `message`. Must not contain CR or LF.
    pub ty: Option<String>,
    /// Payload (`data:` lines). UTF-8 expected; invalid UTF-8 is replaced with
    /// U+FFFD so the output is always valid UTF-8. CRLF and lone CR arrive at
    /// the client as LF (see the module docs).
    pub data: Bytes,
    /// Event id (`id:` field), which the client sends back as `Last-Event-ID`
    /// when it reconnects. `Some("")` clears the client's last event id. Must
    /// not contain NUL, CR or LF.
    pub id: Option<String>,
    /// Reconnection delay in milliseconds (`retry:` field).
    pub retry: Option<u32>,
}

/// Why an event cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// `id` contains NUL, CR or LF (a client ignores an id with NUL; CR and LF
    /// would end the field early).
    IdHasNulOrNewline,
    /// `ty` contains CR or LF (they would end the field early).
    TypeHasNewline,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventError::IdHasNulOrNewline => "event id contains NUL, CR or LF",
            EventError::TypeHasNewline => "event type contains CR or LF",
        })
    }
}

impl std::error::Error for EventError {}

/// Encode one event into a single buffer, ready to write.
///
/// The buffer is allocated once at its exact final size, so freezing it into
/// [`Bytes`] needs no further allocation.
pub fn encode(event: &Event) -> Result<Bytes, EventError> {
    let plan = Plan::new(event)?;
    let mut out = BytesMut::with_capacity(plan.len);
    plan.write(&mut out);
    Ok(out.freeze())
}

/// Append the encoding of `event` to `out` (for batching several events into
/// one write). On error nothing is appended.
pub fn encode_into(event: &Event, out: &mut BytesMut) -> Result<(), EventError> {
    let plan = Plan::new(event)?;
    out.reserve(plan.len);
    plan.write(out);
    Ok(())
}

/// A comment (`: text\n\n`), which clients ignore; used as a keep-alive. CR
/// and LF in `text` are replaced by spaces so the comment stays one line. An
/// empty `text` gives `:\n\n`.
pub fn comment(text: &str) -> Bytes {
    let len = field_len(b"", text.len()) + 1;
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(b':');
    if !text.is_empty() {
        out.put_u8(b' ');
        for &b in text.as_bytes() {
            out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
    }
    out.put_slice(b"\n\n");
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// `retry: <ms>\n\n` on its own: sets the client's reconnection delay without
/// dispatching an event.
pub fn retry(ms: u32) -> Bytes {
    let mut digits = [0u8; 10];
    let digits = u32_digits(ms, &mut digits);
    let len = field_len(b"retry", digits.len()) + 1;
    let mut out = BytesMut::with_capacity(len);
    put_field(&mut out, b"retry", digits);
    out.put_u8(b'\n');
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// A validated event with its exact encoded length.
struct Plan<'a> {
    ty: Option<&'a str>,
    id: Option<&'a str>,
    retry: Option<u32>,
    /// The payload as text (borrowed unless it had invalid UTF-8).
    data: Cow<'a, str>,
    len: usize,
}

impl<'a> Plan<'a> {
    fn new(event: &'a Event) -> Result<Self, EventError> {
        let ty = event.ty.as_deref();
        let id = event.id.as_deref();
        if ty.is_some_and(|t| t.bytes().any(|b| b == b'\r' || b == b'\n')) {
            return Err(EventError::TypeHasNewline);
        }
        if id.is_some_and(|i| i.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n')) {
            return Err(EventError::IdHasNulOrNewline);
        }
        let data = String::from_utf8_lossy(&event.data);
        let mut len = 1; // the blank line
        if let Some(ty) = ty {
            len += field_len(b"event", ty.len());
        }
        if let Some(id) = id {
            len += field_len(b"id", id.len());
        }
        if let Some(ms) = event.retry {
            len += field_len(b"retry", u32_digits(ms, &mut [0u8; 10]).len());
        }
        len += Lines::new(data.as_bytes())
            .map(|line| field_len(b"data", line.len()))
            .sum::<usize>();
        Ok(Plan {
            ty,
            id,
            retry: event.retry,
            data,
            len,
        })
    }

    fn write(&self, out: &mut BytesMut) {
        let start = out.len();
        if let Some(ty) = self.ty {
            put_field(out, b"event", ty.as_bytes());
        }
        if let Some(id) = self.id {
            put_field(out, b"id", id.as_bytes());
        }
        if let Some(ms) = self.retry {
            put_field(out, b"retry", u32_digits(ms, &mut [0u8; 10]));
        }
        for line in Lines::new(self.data.as_bytes()) {
            put_field(out, b"data", line);
        }
        out.put_u8(b'\n');
        debug_assert_eq!(out.len() - start, self.len);
    }
}

/// Length of `name:\n` or `name: value\n`.
fn field_len(name: &[u8], value_len: usize) -> usize {
    name.len() + 2 + if value_len == 0 { 0 } else { 1 + value_len }
}

/// Write `name:\n` (empty value) or `name: value\n`.
fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_u8(b':');
    if !value.is_empty() {
        out.put_u8(b' ');
        out.put_slice(value);
    }
    out.put_u8(b'\n');
}

/// `n` in decimal, written into the tail of `buf`.
fn u32_digits(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The lines of a payload, split on CRLF, LF and lone CR as an SSE client
/// splits its stream. `n` line endings give `n + 1` lines (so an empty input
/// gives one empty line and a trailing line ending gives a final empty line).
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [u8]) -> Self {
        Lines { rest: Some(data) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                self.rest = Some(&rest[i + if crlf { 2 } else { 1 }..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Longest single-room cursor text accepted, bytes.
pub const MAX_CURSOR_LEN: usize = 64;
/// Longest multi-room stream cursor text accepted, bytes (bounds the work and
/// memory one `Last-Event-ID` header can cost).
pub const MAX_STREAM_CURSOR_LEN: usize = 8 * 1024;

/// A resume cursor: the room's epoch and the sequence number of the last
/// message the client has.
///
/// Text form: `<epoch as lowercase hex>:<seq as decimal>`, e.g. `18c3f2a1b:42`.
/// Parsing also accepts uppercase hex digits and leading zeros (within
/// [`MAX_CURSOR_LEN`]); it rejects empty parts, signs, whitespace, any other
/// character and values that overflow `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The room's epoch (changes when the room's history restarts).
    pub epoch: u64,
    /// Sequence number of the last message the client has.
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{}", self.epoch, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(s: &str) -> Result<Self, CursorError> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        if s.is_empty() {
            return Err(CursorError::Empty);
        }
        let (epoch, seq) = s.split_once(':').ok_or(CursorError::MissingColon)?;
        let epoch = parse_u64(epoch, 16).map_err(|e| match e {
            DigitsError::Empty => CursorError::EpochEmpty,
            DigitsError::BadDigit => CursorError::EpochNotHex,
            DigitsError::Overflow => CursorError::EpochOverflow,
        })?;
        let seq = parse_u64(seq, 10).map_err(|e| match e {
            DigitsError::Empty => CursorError::SeqEmpty,
            DigitsError::BadDigit => CursorError::SeqNotNumber,
            DigitsError::Overflow => CursorError::SeqOverflow,
        })?;
        Ok(Cursor { epoch, seq })
    }
}

/// Why cursor text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    /// The text is empty.
    Empty,
    /// A single cursor over [`MAX_CURSOR_LEN`] bytes, or a stream cursor over
    /// [`MAX_STREAM_CURSOR_LEN`] bytes.
    TooLong,
    /// No `:` between epoch and seq.
    MissingColon,
    /// Nothing before the `:`.
    EpochEmpty,
    /// The epoch has a character that is not a hex digit.
    EpochNotHex,
    /// The epoch does not fit in 64 bits.
    EpochOverflow,
    /// Nothing after the `:`.
    SeqEmpty,
    /// The seq has a character that is not a decimal digit.
    SeqNotNumber,
    /// The seq does not fit in 64 bits.
    SeqOverflow,
    /// A per-room list has an empty entry (e.g. a trailing or doubled `;`).
    EmptyEntry,
    /// A per-room entry has no `=` between room name and cursor.
    MissingEquals,
    /// A room name has a bad `%` escape, an unescaped reserved character, or
    /// does not decode to UTF-8.
    BadRoomName,
    /// The same room is listed twice.
    DuplicateRoom,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CursorError::Empty => "cursor is empty",
            CursorError::TooLong => "cursor is too long",
            CursorError::MissingColon => "missing ':'",
            CursorError::EpochEmpty => "epoch is empty",
            CursorError::EpochNotHex => "epoch is not hex",
            CursorError::EpochOverflow => "epoch does not fit in 64 bits",
            CursorError::SeqEmpty => "seq is empty",
            CursorError::SeqNotNumber => "seq is not a number",
            CursorError::SeqOverflow => "seq does not fit in 64 bits",
            CursorError::EmptyEntry => "empty room entry",
            CursorError::MissingEquals => "room entry is missing '='",
            CursorError::BadRoomName => "room name is badly percent-encoded",
            CursorError::DuplicateRoom => "room is listed twice",
        })
    }
}

impl std::error::Error for CursorError {}

enum DigitsError {
    Empty,
    BadDigit,
    Overflow,
}

/// Strict unsigned parse: digits of `radix` only (no sign, no whitespace, no
/// prefix). A bad digit anywhere is reported before overflow.
fn parse_u64(s: &str, radix: u32) -> Result<u64, DigitsError> {
    if s.is_empty() {
        return Err(DigitsError::Empty);
    }
    if !s.chars().all(|c| c.is_digit(radix)) {
        return Err(DigitsError::BadDigit);
    }
    s.chars().try_fold(0u64, |acc, c| {
        let d = u64::from(c.to_digit(radix).unwrap_or(0));
        acc.checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(d))
            .ok_or(DigitsError::Overflow)
    })
}

/// What a client sent back: one room's cursor, or one per room of a
/// multi-room stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCursor {
    /// `<epoch>:<seq>`.
    Single(Cursor),
    /// `room1=<epoch>:<seq>;room2=<epoch>:<seq>`, in the order sent, room
    /// names decoded.
    PerRoom(Vec<(String, Cursor)>),
}

/// Parse a stream cursor: a [`Cursor`] if the text has no `=`, otherwise a
/// `;`-separated list of `<room>=<cursor>` entries with percent-encoded room
/// names (as written by [`format_per_room`]).
///
/// Empty text gives `PerRoom` with no rooms, matching
/// `format_per_room(&[])`. Rejected: text over [`MAX_STREAM_CURSOR_LEN`]
/// bytes, empty entries, entries without `=`, room names with a reserved
/// character left unescaped or a bad escape, a room listed twice, and any
/// cursor [`Cursor::from_str`] rejects.
pub fn parse_stream_cursor(s: &str) -> Result<StreamCursor, CursorError> {
    if s.len() > MAX_STREAM_CURSOR_LEN {
        return Err(CursorError::TooLong);
    }
    if s.is_empty() {
        return Ok(StreamCursor::PerRoom(Vec::new()));
    }
    if !s.contains('=') {
        return s.parse().map(StreamCursor::Single);
    }
    let mut rooms = Vec::new();
    for entry in s.split(';') {
        if entry.is_empty() {
            return Err(CursorError::EmptyEntry);
        }
        let (room, cursor) = entry.split_once('=').ok_or(CursorError::MissingEquals)?;
        let room = percent_decode(room).ok_or(CursorError::BadRoomName)?;
        let cursor: Cursor = cursor.parse()?;
        rooms.push((room, cursor));
    }
    let mut names: Vec<&str> = rooms.iter().map(|(room, _)| room.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(CursorError::DuplicateRoom);
    }
    Ok(StreamCursor::PerRoom(rooms))
}

/// Format a multi-room stream cursor, `room1=<cursor>;room2=<cursor>`, in the
/// order given. Room names are percent-encoded (`%`, `=`, `;`, `:`, `,`,
/// space and ASCII controls become `%XX`), so any name round-trips through
/// [`parse_stream_cursor`]; names should be distinct, as a list naming a room
/// twice is refused there. The result never contains NUL, CR or LF, so it is
/// always a valid [`Event::id`].
pub fn format_per_room(cursors: &[(&str, Cursor)]) -> String {
    format_per_room_iter(cursors.iter().copied())
}

/// [`format_per_room`] over any sequence of `(room, cursor)` pairs, so callers
/// holding their cursors in another shape need not collect them first.
pub fn format_per_room_iter<'a>(cursors: impl IntoIterator<Item = (&'a str, Cursor)>) -> String {
    use fmt::Write as _;
    let mut out = String::new();
    for (i, (room, cursor)) in cursors.into_iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        percent_encode_into(room, &mut out);
        // Writing to a String cannot fail.
        let _ = write!(out, "={cursor}");
    }
    out
}

/// Bytes a room name must carry as `%XX`.
fn is_reserved(b: u8) -> bool {
    matches!(b, b'%' | b'=' | b';' | b':' | b',' | b' ' | 0x7f) || b < 0x20
}

fn percent_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = s;
    while let Some(i) = rest.bytes().position(is_reserved) {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes()[i];
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
        // The reserved bytes are all ASCII, so `i + 1` is a char boundary.
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Decode `%XX` escapes (either hex case). `None` if a reserved byte appears
/// unescaped, an escape is malformed, or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else if is_reserved(b) {
            return None;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // ----- A reference client, following WHATWG "Interpreting an event stream". -----

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Dispatched {
        ty: String,
        data: String,
        last_event_id: String,
    }

    #[derive(Debug, Default)]
    struct Client {
        data: String,
        ty: String,
        id_buffer: String,
        last_event_id: String,
        retry: Option<u64>,
        comments: Vec<String>,
        events: Vec<Dispatched>,
    }

    impl Client {
        /// Parse a whole stream (the bytes must be UTF-8; a real client decodes
        /// with replacement, which our output never needs).
        fn parse(stream: &[u8]) -> Client {
            let text = std::str::from_utf8(stream).expect("stream is valid UTF-8");
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            let mut client = Client::default();
            let mut rest = text;
            // Lines end with CRLF, LF or CR; a final unterminated line is
            // discarded at end of stream.
            while let Some(i) = rest.find(['\r', '\n']) {
                let line = &rest[..i];
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
                client.line(line);
            }
            client
        }

        fn line(&mut self, line: &str) {
            if line.is_empty() {
                self.dispatch();
            } else if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.to_string());
            } else if let Some((field, value)) = line.split_once(':') {
                let value = value.strip_prefix(' ').unwrap_or(value);
                self.field(field, value);
            } else {
                self.field(line, "");
            }
        }

        fn field(&mut self, name: &str, value: &str) {
            match name {
                "event" => self.ty = value.to_string(),
                "data" => {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
                // An id containing NUL is ignored.
                "id" if !value.contains('\0') => self.id_buffer = value.to_string(),
                // Only ASCII digits; anything else is ignored.
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    self.retry = value.parse().ok().or(self.retry);
                }
                _ => {}
            }
        }

        fn dispatch(&mut self) {
            self.last_event_id = self.id_buffer.clone();
            if self.data.is_empty() {
                self.ty.clear();
                return;
            }
            if self.data.ends_with('\n') {
                self.data.pop();
            }
            let ty = if self.ty.is_empty() {
                "message".to_string()
            } else {
                std::mem::take(&mut self.ty)
            };
            self.events.push(Dispatched {
                ty,
                data: std::mem::take(&mut self.data),
                last_event_id: self.last_event_id.clone(),
            });
            self.ty.clear();
        }
    }

    fn normalise(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    fn data_event(data: &'static str) -> Event {
        Event {
            data: Bytes::from_static(data.as_bytes()),
            ..Event::default()
        }
    }

    fn encoded(event: &Event) -> String {
        String::from_utf8(encode(event).unwrap().to_vec()).unwrap()
    }

    /// xorshift64*: deterministic, no external crates.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const PIECES: &[&str] = &[
        "a", "hello", " ", "  x", ":", "data:", "id: 7", "\n", "\n", "\r", "\r\n", "\n\r", "\r\r",
        "\t", "\0", "é", "€", "😀", "\u{feff}", "event", "retry: 5",
    ];

    fn gen_text(rng: &mut Rng, pieces: &[&str], max: usize) -> String {
        let n = rng.below(max + 1);
        (0..n).map(|_| rng.pick(pieces)).collect()
    }

    // ----- Encoding. -----

    #[test]
    fn single_line_data() {
        assert_eq!(encoded(&data_event("hi")), "data: hi\n\n");
    }

    #[test]
    fn multi_line_data_split_on_lf() {
        assert_eq!(
            encoded(&data_event("a\nb\nc")),
            "data: a\ndata: b\ndata: c\n\n"
        );
    }

    #[test]
    fn multi_line_data_split_on_crlf() {
        assert_eq!(encoded(&data_event("a\r\nb")), "data: a\ndata: b\n\n");
    }

    #[test]
    fn multi_line_data_split_on_lone_cr() {
        assert_eq!(encoded(&data_event("a\rb")), "data: a\ndata: b\n\n");
    }

    #[test]
    fn multi_line_data_split_on_mixed_endings() {
        assert_eq!(
            encoded(&data_event("a\r\nb\rc\nd\n\re")),
            "data: a\ndata: b\ndata: c\ndata: d\ndata:\ndata: e\n\n"
        );
    }

    #[test]
    fn trailing_newline_gives_final_empty_data_line() {
        let out = encoded(&data_event("a\n"));
        assert_eq!(out, "data: a\ndata:\n\n");
        assert_eq!(Client::parse(out.as_bytes()).events[0].data, "a\n");
    }

    #[test]
    fn empty_data_is_still_dispatched() {
        let out = encoded(&data_event(""));
        assert_eq!(out, "data:\n\n");
        let client = Client::parse(out.as_bytes());
        assert_eq!(client.events.len(), 1);
        assert_eq!(client.events[0].data, "");
    }

    #[test]
    fn leading_space_in_data_survives() {
        let out = encoded(&data_event(" x\n  y"));
        assert_eq!(out, "data:  x\ndata:   y\n\n");
        assert_eq!(Client::parse(out.as_bytes()).events[0].data, " x\n  y");
    }

    #[test]
    fn all_fields_in_order() {
        let event = Event {
            ty: Some("update".into()),
            data: Bytes::from_static(b"{}"),
            id: Some("1f:3".into()),
            retry: Some(2500),
        };
        assert_eq!(
            encoded(&event),
            "event: update\nid: 1f:3\nretry: 2500\ndata: {}\n\n"
        );
    }

    #[test]
    fn empty_id_and_type_are_written_without_space() {
        let event = Event {
            ty: Some(String::new()),
            id: Some(String::new()),
            ..data_event("x")
        };
        let out = encoded(&event);
        assert_eq!(out, "event:\nid:\ndata: x\n\n");
        let client = Client::parse(out.as_bytes());
        assert_eq!(client.events[0].ty, "message");
        assert_eq!(client.events[0].last_event_id, "");
    }

    #[test]
    fn id_with_lf_cr_or_nul_rejected() {
        for bad in ["a\nb", "a\rb", "a\0b", "\n", "\r", "\0"] {
            let event = Event {
                id: Some(bad.into()),
                ..data_event("x")
            };
            assert_eq!(
                encode(&event),
                Err(EventError::IdHasNulOrNewline),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn type_with_newline_rejected() {
        for bad in ["a\nb", "a\rb", "\r\n"] {
            let event = Event {
                ty: Some(bad.into()),
                ..data_event("x")
            };
            assert_eq!(encode(&event), Err(EventError::TypeHasNewline), "{bad:?}");
        }
        // NUL is fine in a type (the spec only refuses it in ids).
        let event = Event {
            ty: Some("a\0b".into()),
            ..data_event("x")
        };
        assert_eq!(encoded(&event), "event: a\0b\ndata: x\n\n");
    }

    #[test]
    fn errors_name_the_field() {
        assert!(EventError::IdHasNulOrNewline.to_string().contains("id"));
        assert!(EventError::TypeHasNewline.to_string().contains("type"));
    }

    #[test]
    fn encode_into_appends_and_leaves_buffer_alone_on_error() {
        let mut out = BytesMut::from(&b"prefix|"[..]);
        encode_into(&data_event("a"), &mut out).unwrap();
        let bad = Event {
            id: Some("\n".into()),
            ..data_event("b")
        };
        assert_eq!(
            encode_into(&bad, &mut out),
            Err(EventError::IdHasNulOrNewline)
        );
        encode_into(&data_event("c"), &mut out).unwrap();
        assert_eq!(&out[..], b"prefix|data: a\n\ndata: c\n\n");
    }

    #[test]
    fn retry_field_in_event() {
        let event = Event {
            retry: Some(0),
            ..data_event("x")
        };
        assert_eq!(encoded(&event), "retry: 0\ndata: x\n\n");
    }

    #[test]
    fn standalone_retry() {
        assert_eq!(&retry(3000)[..], b"retry: 3000\n\n");
        assert_eq!(&retry(u32::MAX)[..], b"retry: 4294967295\n\n");
        let client = Client::parse(&retry(7)[..]);
        assert_eq!(client.retry, Some(7));
        assert!(client.events.is_empty());
    }

    #[test]
    fn comment_replaces_newlines_and_dispatches_nothing() {
        assert_eq!(&comment("ping")[..], b": ping\n\n");
        assert_eq!(&comment("")[..], b":\n\n");
        assert_eq!(&comment("a\nb\r\nc\rd")[..], b": a b  c d\n\n");
        let client = Client::parse(&comment("x\ny")[..]);
        assert!(client.events.is_empty());
        assert_eq!(client.comments, [" x y"]);
    }

    #[test]
    fn invalid_utf8_replaced() {
        let event = Event {
            data: Bytes::from_static(b"a\xffb\xe2\x82"),
            ..Event::default()
        };
        assert_eq!(encoded(&event), "data: a\u{fffd}b\u{fffd}\n\n");
    }

    #[test]
    fn output_is_always_valid_utf8() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let len = rng.below(40);
            let data: Vec<u8> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => b'\n',
                    1 => b'\r',
                    _ => rng.next_u64() as u8,
                })
                .collect();
            let event = Event {
                data: Bytes::from(data.clone()),
                ..Event::default()
            };
            let out = encode(&event).unwrap();
            assert!(std::str::from_utf8(&out).is_ok(), "{data:?}");
            assert!(!out.contains(&b'\r'));
            let client = Client::parse(&out);
            assert_eq!(client.events.len(), 1);
            assert_eq!(
                client.events[0].data,
                normalise(&String::from_utf8_lossy(&data)),
                "{data:?}"
            );
        }
    }

    #[test]
    fn round_trip_through_reference_client() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let name_pieces: &[&str] = &["a", " ", ":", "x y", "\0", "é", "message", "=;"];
        let mut dispatched = 0;
        for _ in 0..300 {
            let mut stream = BytesMut::new();
            let mut expected = Vec::new();
            let mut expected_comments = Vec::new();
            let mut last_id = String::new();
            let mut last_retry = None;
            for _ in 0..rng.below(8) {
                match rng.below(6) {
                    0 => {
                        let text = gen_text(&mut rng, PIECES, 4);
                        stream.extend_from_slice(&comment(&text));
                        let text = text.replace(['\r', '\n'], " ");
                        expected_comments.push(if text.is_empty() {
                            text
                        } else {
                            format!(" {text}")
                        });
                    }
                    1 => {
                        let ms = rng.next_u64() as u32;
                        stream.extend_from_slice(&retry(ms));
                        last_retry = Some(u64::from(ms));
                    }
                    _ => {
                        let data = gen_text(&mut rng, PIECES, 12);
                        let ty = (rng.below(2) == 0).then(|| gen_text(&mut rng, name_pieces, 3));
                        let id = (rng.below(2) == 0)
                            .then(|| gen_text(&mut rng, name_pieces, 3).replace('\0', ""));
                        let retry = (rng.below(4) == 0).then(|| rng.next_u64() as u32);
                        let event = Event {
                            ty: ty.clone(),
                            data: Bytes::from(data.clone()),
                            id: id.clone(),
                            retry,
                        };
                        let before = stream.len();
                        encode_into(&event, &mut stream).unwrap();
                        assert_eq!(&stream[before..], &encode(&event).unwrap()[..]);
                        if let Some(id) = id {
                            last_id = id;
                        }
                        if let Some(ms) = retry {
                            last_retry = Some(u64::from(ms));
                        }
                        expected.push(Dispatched {
                            ty: match ty {
                                Some(t) if !t.is_empty() => t,
                                _ => "message".to_string(),
                            },
                            data: normalise(&data),
                            last_event_id: last_id.clone(),
                        });
                    }
                }
            }
            let client = Client::parse(&stream);
            assert_eq!(client.events, expected);
            dispatched += expected.len();
            assert_eq!(client.comments, expected_comments);
            assert_eq!(client.retry, last_retry);
            assert!(
                client.data.is_empty() && client.ty.is_empty(),
                "nothing pending"
            );
        }
        assert!(dispatched > 500, "only {dispatched} events generated");
    }

    #[test]
    fn lf_only_payloads_round_trip_exactly() {
        let mut rng = Rng(42);
        let pieces: &[&str] = &["a", "\n", " ", ":", "é", "data: x"];
        for _ in 0..500 {
            let data = gen_text(&mut rng, pieces, 10);
            let out = encode(&Event {
                data: Bytes::from(data.clone()),
                ..Event::default()
            })
            .unwrap();
            assert_eq!(Client::parse(&out).events[0].data, data);
        }
    }

    // ----- Cursors. -----

    #[test]
    fn cursor_format_and_parse() {
        let c = Cursor {
            epoch: 0x18c3f2a1b,
            seq: 42,
        };
        assert_eq!(c.to_string(), "18c3f2a1b:42");
        assert_eq!("18c3f2a1b:42".parse::<Cursor>(), Ok(c));
    }

    #[test]
    fn cursor_round_trips() {
        let mut rng = Rng(7);
        let mut cases = vec![
            Cursor { epoch: 0, seq: 0 },
            Cursor {
                epoch: u64::MAX,
                seq: u64::MAX,
            },
        ];
        cases.extend((0..200).map(|_| Cursor {
            epoch: rng.next_u64() >> rng.below(64),
            seq: rng.next_u64() >> rng.below(64),
        }));
        for c in cases {
            let text = c.to_string();
            assert!(text.len() <= MAX_CURSOR_LEN);
            assert_eq!(text.parse::<Cursor>(), Ok(c));
            assert_eq!(parse_stream_cursor(&text), Ok(StreamCursor::Single(c)));
        }
    }

    #[test]
    fn cursor_accepts_uppercase_hex_and_leading_zeros() {
        let c = Cursor {
            epoch: 0xab,
            seq: 7,
        };
        assert_eq!("AB:7".parse::<Cursor>(), Ok(c));
        assert_eq!("00ab:007".parse::<Cursor>(), Ok(c));
        let padded = format!("{}ab:7", "0".repeat(MAX_CURSOR_LEN - 4));
        assert_eq!(padded.len(), MAX_CURSOR_LEN);
        assert_eq!(padded.parse::<Cursor>(), Ok(c));
    }

    #[test]
    fn cursor_rejections() {
        use CursorError::*;
        let cases: &[(&str, CursorError)] = &[
            ("", Empty),
            ("42", MissingColon),
            (":1", EpochEmpty),
            ("1:", SeqEmpty),
            (":", EpochEmpty),
            ("g:1", EpochNotHex),
            ("0x1:1", EpochNotHex),
            ("+1:1", EpochNotHex),
            ("-1:1", EpochNotHex),
            (" 1:1", EpochNotHex),
            ("1 :1", EpochNotHex),
            ("1:+1", SeqNotNumber),
            ("1:-1", SeqNotNumber),
            ("1: 1", SeqNotNumber),
            ("1:1 ", SeqNotNumber),
            ("1:1\n", SeqNotNumber),
            ("1:a", SeqNotNumber),
            ("1:1:1", SeqNotNumber),
            ("1:١", SeqNotNumber),
            ("10000000000000000:1", EpochOverflow),
            ("ffffffffffffffff:18446744073709551616", SeqOverflow),
            ("1:99999999999999999999", SeqOverflow),
        ];
        for (text, err) in cases {
            assert_eq!(text.parse::<Cursor>(), Err(*err), "{text:?}");
        }
        let long = format!("{}1:1", "0".repeat(MAX_CURSOR_LEN - 2));
        assert_eq!(long.parse::<Cursor>(), Err(TooLong));
        assert_eq!(parse_stream_cursor(&long), Err(TooLong));
    }

    #[test]
    fn cursor_error_messages_say_what_is_wrong() {
        assert_eq!(CursorError::MissingColon.to_string(), "missing ':'");
        assert_eq!(CursorError::EpochNotHex.to_string(), "epoch is not hex");
        assert_eq!(CursorError::SeqNotNumber.to_string(), "seq is not a number");
    }

    #[test]
    fn per_room_round_trip_with_reserved_characters() {
        let rooms: Vec<(&str, Cursor)> = [
            "plain",
            "a=b",
            "c;d",
            "e:f",
            "g h",
            "100%",
            "x,y",
            "tab\tnl\ncr\rdel\x7fnul\0",
            "é😀",
            "%3D",
            "",
        ]
        .iter()
        .enumerate()
        .map(|(i, room)| {
            (
                *room,
                Cursor {
                    epoch: 0xfeed + i as u64,
                    seq: i as u64 * 1000,
                },
            )
        })
        .collect();
        let text = format_per_room(&rooms);
        assert!(!text.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n'));
        let parsed = parse_stream_cursor(&text).unwrap();
        let expected: Vec<(String, Cursor)> =
            rooms.iter().map(|(r, c)| (r.to_string(), *c)).collect();
        assert_eq!(parsed, StreamCursor::PerRoom(expected));
        // Usable as an event id.
        let event = Event {
            id: Some(text.clone()),
            ..data_event("x")
        };
        let client = Client::parse(&encode(&event).unwrap());
        assert_eq!(client.events[0].last_event_id, text);
    }

    #[test]
    fn per_room_exact_format() {
        let c = Cursor {
            epoch: 0x1f,
            seq: 2,
        };
        assert_eq!(
            format_per_room(&[("a=b", c), ("c d", c), ("e;f:g,%", c)]),
            "a%3Db=1f:2;c%20d=1f:2;e%3Bf%3Ag%2C%25=1f:2"
        );
        assert_eq!(
            parse_stream_cursor("r%c3%a9=1:2"),
            Ok(StreamCursor::PerRoom(vec![(
                "ré".to_string(),
                Cursor { epoch: 1, seq: 2 }
            )]))
        );
    }

    #[test]
    fn per_room_empty_list_round_trips() {
        assert_eq!(format_per_room(&[]), "");
        assert_eq!(parse_stream_cursor(""), Ok(StreamCursor::PerRoom(vec![])));
    }

    #[test]
    fn per_room_rejections() {
        use CursorError::*;
        let cases: &[(&str, CursorError)] = &[
            ("a=1:2;", EmptyEntry),
            ("a=1:2;;b=1:2", EmptyEntry),
            (";a=1:2", EmptyEntry),
            ("a=1:2;b", MissingEquals),
            ("a=1:2;3:4", MissingEquals),
            ("a%2=1:2", BadRoomName),
            ("a%zz=1:2", BadRoomName),
            ("a%=1:2", BadRoomName),
            ("a b=1:2", BadRoomName),
            ("a:b=1:2", BadRoomName),
            ("a,b=1:2", BadRoomName),
            ("a\tb=1:2", BadRoomName),
            ("a%FF=1:2", BadRoomName),
            ("a=1:2;a=3:4", DuplicateRoom),
            ("a=1:2;%61=3:4", DuplicateRoom),
            ("a==1:2", EpochNotHex),
            ("a=1:2=3", SeqNotNumber),
            ("a=1", MissingColon),
            ("a=", Empty),
            ("a=1:", SeqEmpty),
            ("a=x:1", EpochNotHex),
            ("a=10000000000000000:1", EpochOverflow),
        ];
        for (text, err) in cases {
            assert_eq!(parse_stream_cursor(text), Err(*err), "{text:?}");
        }
        let long = format!("a={}", "1".repeat(MAX_STREAM_CURSOR_LEN));
        assert_eq!(parse_stream_cursor(&long), Err(TooLong));
    }
}
