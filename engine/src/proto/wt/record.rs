//! corecast's message records on WebTransport streams and datagrams (see
//! docs/PROTOCOL.md, "Rooms endpoint"):
//! - client -> server: `varint(L) kind payload` on a stream, `kind payload` in a
//!   datagram;
//! - server -> client: `varint(L) kind varint(room length) room payload` on the
//!   session's delivery stream, the same without `varint(L)` in a datagram.
//!
//! `kind` is `0x00` text (UTF-8) or `0x01` binary.

use bytes::{Bytes, BytesMut};

use super::varint;

/// Record kind: UTF-8 text.
pub const TEXT: u8 = 0x00;
/// Record kind: binary.
pub const BINARY: u8 = 0x01;

/// Stream reset code: a record that does not parse.
pub const RESET_MALFORMED: u32 = 1;
/// Stream reset code: a record over the size limit.
pub const RESET_TOO_LARGE: u32 = 2;
/// Stream reset code: a text record that is not UTF-8.
pub const RESET_BAD_UTF8: u32 = 3;

/// A message a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// [`TEXT`] or [`BINARY`] (text is validated UTF-8).
    pub kind: u8,
    /// The payload.
    pub payload: Bytes,
}

/// Why a client record was refused; each maps to a stream reset code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Empty record or unknown kind.
    Malformed,
    /// Longer than the limit.
    TooLarge,
    /// Text that is not UTF-8.
    BadUtf8,
}

impl RecordError {
    /// The WebTransport stream reset code for this error.
    pub fn reset_code(self) -> u32 {
        match self {
            RecordError::Malformed => RESET_MALFORMED,
            RecordError::TooLarge => RESET_TOO_LARGE,
            RecordError::BadUtf8 => RESET_BAD_UTF8,
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordError::Malformed => "malformed record",
            RecordError::TooLarge => "record too large",
            RecordError::BadUtf8 => "text record is not valid UTF-8",
        })
    }
}

impl std::error::Error for RecordError {}

/// Check a `kind payload` body (a datagram, or a stream record without its length).
pub fn parse_body(body: &[u8], max_payload: usize) -> Result<ClientRecord, RecordError> {
    let (&kind, payload) = body.split_first().ok_or(RecordError::Malformed)?;
    if payload.len() > max_payload {
        return Err(RecordError::TooLarge);
    }
    match kind {
        TEXT if std::str::from_utf8(payload).is_err() => Err(RecordError::BadUtf8),
        TEXT | BINARY => Ok(ClientRecord {
            kind,
            payload: Bytes::copy_from_slice(payload),
        }),
        _ => Err(RecordError::Malformed),
    }
}

/// Incremental reader of `varint(L) kind payload` records from a client stream.
#[derive(Debug)]
pub struct RecordReader {
    buf: BytesMut,
    max_payload: usize,
}

impl RecordReader {
    /// A reader refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_payload,
        }
    }

    /// Feed stream bytes; complete records are appended to `out`. A record's length
    /// is checked as soon as it is known, so an oversized one is refused before it
    /// is buffered.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<ClientRecord>) -> Result<(), RecordError> {
        self.buf.extend_from_slice(data);
        loop {
            let Some((len, n)) = varint::decode(&self.buf) else {
                return Ok(());
            };
            if len == 0 {
                return Err(RecordError::Malformed);
            }
            if len - 1 > self.max_payload as u64 {
                return Err(RecordError::TooLarge);
            }
            let end = n + len as usize;
            if self.buf.len() < end {
                return Ok(());
            }
            let record = self.buf.split_to(end);
            out.push(parse_body(&record[n..], self.max_payload)?);
        }
    }

    /// True when a record was cut short (the stream ended inside one).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Encode a client record (for tests and the load generator).
pub fn encode_client(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 9);
    varint::encode(1 + payload.len() as u64, &mut out);
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// A server record for the delivery stream, made once per shard per message. The
/// datagram form is the same bytes after `body_offset`.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    /// `varint(L) kind varint(room length) room payload`.
    pub bytes: Bytes,
    /// Where `kind` starts (the datagram body).
    pub body_offset: usize,
    /// Length of `kind varint(room length) room`: the prefix that names the room
    /// (latest-wins datagrams replace queued ones with the same prefix).
    pub room_prefix_len: usize,
}

impl ServerRecord {
    /// Encode a message of `room`.
    pub fn new(room: &str, kind: u8, payload: &[u8]) -> Self {
        let room_prefix_len = 1 + varint::encoded_len(room.len() as u64) + room.len();
        let body_len = room_prefix_len + payload.len();
        let mut out = Vec::with_capacity(body_len + 8);
        varint::encode(body_len as u64, &mut out);
        let body_offset = out.len();
        out.push(kind);
        varint::encode(room.len() as u64, &mut out);
        out.extend_from_slice(room.as_bytes());
        out.extend_from_slice(payload);
        Self {
            bytes: Bytes::from(out),
            body_offset,
            room_prefix_len,
        }
    }

    /// The datagram body (`kind varint(room length) room payload`).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_offset..]
    }

    /// The part of the body that names the room.
    pub fn room_prefix(&self) -> &[u8] {
        &self.body()[..self.room_prefix_len]
    }
}

/// Decode a server record body (for tests and the load generator):
/// `(kind, room, payload)`.
pub fn decode_server_body(body: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (room_len, n) = varint::decode(rest)?;
    let room_end = n.checked_add(usize::try_from(room_len).ok()?)?;
    let room = std::str::from_utf8(rest.get(n..room_end)?).ok()?;
    Some((kind, room, &rest[room_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_records_parse_in_any_split() {
        let mut bytes = encode_client(TEXT, "héllo".as_bytes());
        bytes.extend(encode_client(BINARY, &[0xff, 0]));
        for split in 1..bytes.len() {
            let mut r = RecordReader::new(100);
            let mut out = Vec::new();
            for c in bytes.chunks(split) {
                r.feed(c, &mut out).unwrap();
            }
            assert_eq!(out.len(), 2);
            assert_eq!(&out[0].payload[..], "héllo".as_bytes());
            assert_eq!(out[1].kind, BINARY);
            assert!(!r.has_partial());
        }
    }

    #[test]
    fn bad_records_map_to_their_reset_codes() {
        let mut r = RecordReader::new(4);
        assert_eq!(
            r.feed(&encode_client(TEXT, b"12345"), &mut Vec::new()),
            Err(RecordError::TooLarge)
        );
        let mut r = RecordReader::new(100);
        assert_eq!(
            r.feed(&encode_client(TEXT, &[0xc3, 0x28]), &mut Vec::new())
                .unwrap_err()
                .reset_code(),
            RESET_BAD_UTF8
        );
        let mut r = RecordReader::new(100);
        assert_eq!(r.feed(&[0], &mut Vec::new()), Err(RecordError::Malformed));
        let mut r = RecordReader::new(100);
        assert_eq!(
            r.feed(&encode_client(9, b"x"), &mut Vec::new()),
            Err(RecordError::Malformed)
        );
        assert_eq!(parse_body(&[], 10), Err(RecordError::Malformed));
    }

    #[test]
    fn server_records_decode_back_and_share_the_datagram_body() {
        let rec = ServerRecord::new("room-ä", TEXT, b"payload");
        let (len, n) = varint::decode(&rec.bytes).unwrap();
        assert_eq!(n, rec.body_offset);
        assert_eq!(len as usize, rec.bytes.len() - n);
        let (kind, room, payload) = decode_server_body(rec.body()).unwrap();
        assert_eq!((kind, room, payload), (TEXT, "room-ä", &b"payload"[..]));
        assert!(rec.body().starts_with(rec.room_prefix()));
        assert_eq!(decode_server_body(&[0, 50, b'x']), None);
    }
}
