//! HTTP/3 frames (RFC 9114 §7) as corecast needs them: an incremental frame reader
//! for control and request streams, SETTINGS, HEADERS (QPACK without a dynamic
//! table, through quiche's `h3::qpack`), DATA and GOAWAY.

use super::varint;

/// DATA frame type.
pub const DATA: u64 = 0x00;
/// HEADERS frame type.
pub const HEADERS: u64 = 0x01;
/// SETTINGS frame type.
pub const SETTINGS: u64 = 0x04;
/// GOAWAY frame type.
pub const GOAWAY: u64 = 0x07;

/// Largest HEADERS/SETTINGS payload we accept (a request head is small).
pub const MAX_CONTROL_FRAME: u64 = 16 * 1024;

/// Setting: QPACK dynamic table capacity.
pub const SETTING_QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
/// Setting: extended CONNECT (RFC 9220).
pub const SETTING_ENABLE_CONNECT_PROTOCOL: u64 = 0x08;
/// Setting: HTTP datagrams (RFC 9297).
pub const SETTING_H3_DATAGRAM: u64 = 0x33;
/// Setting: HTTP datagrams, draft-04 code point (older Chromium).
pub const SETTING_H3_DATAGRAM_DRAFT04: u64 = 0xff_d277;
/// Setting: WebTransport draft-02 `ENABLE_WEBTRANSPORT`.
pub const SETTING_ENABLE_WEBTRANSPORT: u64 = 0x2b60_3742;
/// Setting: WebTransport draft-07 `WEBTRANSPORT_MAX_SESSIONS`.
pub const SETTING_WEBTRANSPORT_MAX_SESSIONS: u64 = 0xc671_706a;

/// A frame's type and length, and how many bytes the header took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type.
    pub ty: u64,
    /// Payload length.
    pub len: u64,
    /// Header length in bytes.
    pub header_len: usize,
}

/// Parse a frame header at the start of `buf` (`None`: incomplete).
pub fn parse_header(buf: &[u8]) -> Option<FrameHeader> {
    let (ty, a) = varint::decode(buf)?;
    let (len, b) = varint::decode(&buf[a..])?;
    Some(FrameHeader {
        ty,
        len,
        header_len: a + b,
    })
}

/// Append a frame header for a `len`-byte payload of type `ty`.
pub fn encode_header(ty: u64, len: u64, out: &mut Vec<u8>) {
    varint::encode(ty, out);
    varint::encode(len, out);
}

/// Append a whole frame.
pub fn encode_frame(ty: u64, payload: &[u8], out: &mut Vec<u8>) {
    encode_header(ty, payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// The SETTINGS corecast sends: extended CONNECT, HTTP datagrams (RFC and draft-04
/// code points), WebTransport draft-02 and the draft-07 session limit.
pub fn server_settings(max_sessions: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, v) in [
        (SETTING_QPACK_MAX_TABLE_CAPACITY, 0),
        (SETTING_ENABLE_CONNECT_PROTOCOL, 1),
        (SETTING_H3_DATAGRAM, 1),
        (SETTING_H3_DATAGRAM_DRAFT04, 1),
        (SETTING_ENABLE_WEBTRANSPORT, 1),
        (SETTING_WEBTRANSPORT_MAX_SESSIONS, max_sessions),
    ] {
        varint::encode(id, &mut payload);
        varint::encode(v, &mut payload);
    }
    let mut out = Vec::new();
    encode_frame(SETTINGS, &payload, &mut out);
    out
}

/// Decode a SETTINGS payload into `(id, value)` pairs (`None`: malformed).
pub fn parse_settings(mut payload: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let (id, a) = varint::decode(payload)?;
        let (v, b) = varint::decode(&payload[a..])?;
        out.push((id, v));
        payload = &payload[a + b..];
    }
    Some(out)
}

/// A header field list, names lower-case.
pub type Fields = Vec<(String, String)>;

/// Decode a HEADERS payload (QPACK, static table only). `None`: undecodable, or
/// a field name with an uppercase letter (malformed, RFC 9114 section 4.2; lookups
/// by lower-case name would otherwise miss it).
pub fn decode_fields(payload: &[u8]) -> Option<Fields> {
    use quiche::h3::NameValue;
    let mut decoder = quiche::h3::qpack::Decoder::new();
    let headers = decoder.decode(payload, MAX_CONTROL_FRAME).ok()?;
    if headers
        .iter()
        .any(|h| h.name().iter().any(u8::is_ascii_uppercase))
    {
        return None;
    }
    Some(
        headers
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(h.name()).into_owned(),
                    String::from_utf8_lossy(h.value()).into_owned(),
                )
            })
            .collect(),
    )
}

/// A HEADERS frame carrying `fields` (QPACK, no dynamic table).
pub fn encode_headers(fields: &[(&str, &str)]) -> Vec<u8> {
    let headers: Vec<quiche::h3::Header> = fields
        .iter()
        .map(|(n, v)| quiche::h3::Header::new(n.as_bytes(), v.as_bytes()))
        .collect();
    let room: usize = fields
        .iter()
        .map(|(n, v)| n.len() + v.len() + 8)
        .sum::<usize>()
        + 16;
    let mut block = vec![0u8; room];
    let mut encoder = quiche::h3::qpack::Encoder::new();
    // The buffer is sized for the worst case of literal fields, so this cannot fail;
    // fall back to an empty block rather than panic if it ever did.
    let n = encoder.encode(&headers, &mut block).unwrap_or(0);
    let mut out = Vec::with_capacity(n + 8);
    encode_frame(HEADERS, &block[..n], &mut out);
    out
}

/// What a stream's frame reader produced.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete HEADERS / SETTINGS / GOAWAY (or other small) frame.
    Frame {
        /// Frame type.
        ty: u64,
        /// Payload.
        payload: Vec<u8>,
    },
    /// Part of a DATA frame's payload (DATA is streamed, never buffered whole).
    Data(Vec<u8>),
}

/// Why a stream's frames are unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A non-DATA frame larger than [`MAX_CONTROL_FRAME`].
    TooLarge,
}

/// Incremental frame reader: DATA payloads stream through, other frames are
/// buffered whole (bounded), unknown/reserved frame types are skipped.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Remaining bytes of the current DATA frame.
    data_left: u64,
    /// Remaining bytes of an unknown frame to skip.
    skip_left: u64,
}

impl FrameReader {
    /// Feed stream bytes; complete frames and DATA chunks are appended to `out`.
    /// The reader holds at most one control frame plus what one call fed it.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<FrameEvent>) -> Result<(), FrameError> {
        self.buf.extend_from_slice(data);
        loop {
            if self.data_left > 0 || self.skip_left > 0 {
                if self.buf.is_empty() {
                    return Ok(());
                }
                let left = self.data_left.max(self.skip_left);
                let n = (left as usize).min(self.buf.len());
                let chunk: Vec<u8> = self.buf.drain(..n).collect();
                if self.data_left > 0 {
                    self.data_left -= n as u64;
                    out.push(FrameEvent::Data(chunk));
                } else {
                    self.skip_left -= n as u64;
                }
                continue;
            }
            let Some(h) = parse_header(&self.buf) else {
                return Ok(());
            };
            match h.ty {
                DATA => {
                    self.buf.drain(..h.header_len);
                    self.data_left = h.len;
                }
                HEADERS | SETTINGS | GOAWAY | 0x03 | 0x05 | 0x0d => {
                    if h.len > MAX_CONTROL_FRAME {
                        return Err(FrameError::TooLarge);
                    }
                    let end = h.header_len + h.len as usize;
                    if self.buf.len() < end {
                        return Ok(());
                    }
                    let payload = self.buf[h.header_len..end].to_vec();
                    self.buf.drain(..end);
                    out.push(FrameEvent::Frame { ty: h.ty, payload });
                }
                _ => {
                    // Unknown and reserved (grease) frame types are ignored.
                    self.buf.drain(..h.header_len);
                    self.skip_left = h.len;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_qpack() {
        let frame = encode_headers(&[
            (":status", "200"),
            ("sec-webtransport-http3-draft", "draft02"),
        ]);
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        r.feed(&frame, &mut out).unwrap();
        let [FrameEvent::Frame { ty, payload }] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(*ty, HEADERS);
        let fields = decode_fields(payload).unwrap();
        assert_eq!(fields[0], (":status".into(), "200".into()));
        assert_eq!(fields[1].1, "draft02");
    }

    #[test]
    fn uppercase_field_names_are_malformed() {
        // Found by fuzz/fuzz_targets/wt_capsule.rs: a name like "Origin" was kept
        // as is, so lower-case lookups missed it. Prefix 0 0, then a literal with
        // a literal name (0x23: 3 bytes, "Abc"), value "x".
        let payload = [0x00, 0x00, 0x23, b'A', b'b', b'c', 0x01, b'x'];
        assert_eq!(decode_fields(&payload), None);
        let lower = [0x00, 0x00, 0x23, b'a', b'b', b'c', 0x01, b'x'];
        assert_eq!(
            decode_fields(&lower),
            Some(vec![("abc".into(), "x".into())])
        );
    }

    #[test]
    fn settings_parse_back() {
        let frame = server_settings(16);
        let h = parse_header(&frame).unwrap();
        assert_eq!(h.ty, SETTINGS);
        let s = parse_settings(&frame[h.header_len..]).unwrap();
        assert!(s.contains(&(SETTING_ENABLE_WEBTRANSPORT, 1)));
        assert!(s.contains(&(SETTING_WEBTRANSPORT_MAX_SESSIONS, 16)));
        assert_eq!(parse_settings(&[0x40]), None);
    }

    #[test]
    fn data_streams_through_and_unknown_frames_are_skipped_in_any_split() {
        let mut bytes = Vec::new();
        encode_frame(0x21, &[9; 40], &mut bytes); // reserved (grease) type
        encode_frame(DATA, b"hello world", &mut bytes);
        encode_frame(DATA, b"", &mut bytes);
        encode_frame(GOAWAY, &[4], &mut bytes);
        for split in 1..bytes.len() {
            let mut r = FrameReader::default();
            let mut out = Vec::new();
            for chunk in bytes.chunks(split) {
                r.feed(chunk, &mut out).unwrap();
            }
            let data: Vec<u8> = out
                .iter()
                .filter_map(|e| match e {
                    FrameEvent::Data(d) => Some(d.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(data, b"hello world", "split {split}");
            assert_eq!(
                out.last(),
                Some(&FrameEvent::Frame {
                    ty: GOAWAY,
                    payload: vec![4]
                })
            );
        }
    }

    #[test]
    fn oversized_control_frames_are_refused() {
        let mut bytes = Vec::new();
        encode_header(HEADERS, MAX_CONTROL_FRAME + 1, &mut bytes);
        let mut r = FrameReader::default();
        assert_eq!(r.feed(&bytes, &mut Vec::new()), Err(FrameError::TooLarge));
    }
}
