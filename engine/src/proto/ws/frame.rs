//! WebSocket frames: the server-side decoder and the frame encoder.
//!
//! The decoder works on the connection's read buffer: it validates a frame header as
//! soon as its bytes are there (so violations fail fast), unmasks the payload in place
//! and splits it off the buffer as a `Bytes` slice — no copy for unfragmented
//! messages. Fragmented messages are gathered into one buffer, bounded by
//! [`Limits::max_message_size`], with UTF-8 checked fragment by fragment.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::close::{self, CloseCode};
use super::deflate::{InflateError, Inflater};
use super::utf8::Utf8Validator;

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: UTF-8 text.
    Text,
    /// 0x2: binary data.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Size limits the decoder enforces (1009 beyond them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest payload of one frame, bytes.
    pub max_frame_size: usize,
    /// Largest message after reassembly and decompression, bytes. This also bounds
    /// what an incomplete (fragmented) message holds, compressed or not.
    pub max_message_size: usize,
    /// Most frames one message may arrive in (first frame and continuations).
    pub max_fragments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
            max_fragments: 65_536,
        }
    }
}

/// What the client sent, one complete message or control frame at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its application data.
    Ping(Bytes),
    /// A pong with its application data.
    Pong(Bytes),
    /// A close frame: `None` when it carried no status code.
    Close(Option<(CloseCode, Bytes)>),
}

/// A violation that ends the connection with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    /// The close code to send.
    pub code: CloseCode,
    /// A short reason for the close frame and logs.
    pub reason: &'static str,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for ProtocolError {}

const fn err(code: CloseCode, reason: &'static str) -> ProtocolError {
    ProtocolError { code, reason }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    compressed: bool,
    /// Frames received so far (bounded by `Limits::max_fragments`).
    frames: u32,
    data: BytesMut,
    utf8: Utf8Validator,
}

/// A text frame whose payload is still arriving: what has arrived is already
/// unmasked and validated, so invalid UTF-8 fails at the bad byte, not at frame end.
#[derive(Debug)]
struct InFlight {
    header: Header,
    /// Payload bytes already unmasked (and, for text, validated).
    unmasked: usize,
    /// Validator of a single `Text` frame (continuations use the message's own).
    utf8: Utf8Validator,
}

/// Server-side frame decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Limits kept as u32 (4 GiB is far past any sane limit) to keep idle
    /// connections small.
    max_frame: u32,
    max_message: u32,
    max_fragments: u32,
    inflater: Option<Inflater>,
    partial: Option<Box<Partial>>,
    inflight: Option<Box<InFlight>>,
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Decoder {
    /// A decoder with `limits`; `inflater` is set when permessage-deflate was agreed.
    pub fn new(limits: Limits, inflater: Option<Inflater>) -> Self {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            max_frame: clamp(limits.max_frame_size),
            max_message: clamp(limits.max_message_size),
            max_fragments: clamp(limits.max_fragments),
            inflater,
            partial: None,
            inflight: None,
        }
    }

    /// True while a fragmented message is being reassembled.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decode the next message or control frame from the front of `buf`, consuming
    /// its bytes. `Ok(None)`: `buf` holds no complete frame yet (whatever it holds
    /// stays for the next call).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            let (h, done, mut utf8) = match self.inflight.take() {
                Some(f) => (f.header, f.unmasked, f.utf8),
                None => match self.parse_header(buf)? {
                    Some(h) => (h, 0, Utf8Validator::default()),
                    None => return Ok(None),
                },
            };
            let text = self.is_plain_text(&h);
            if buf.len() < h.header_len + h.payload_len {
                let mut done = done;
                let avail = buf.len() - h.header_len;
                if text && avail > done {
                    // Unmask and check what has arrived so far (each byte once).
                    let part = &mut buf[h.header_len + done..h.header_len + avail];
                    unmask_at(part, h.mask, done);
                    self.feed_text(&h, &mut utf8, part)?;
                    done = avail;
                }
                self.inflight = Some(Box::new(InFlight {
                    header: h,
                    unmasked: done,
                    utf8,
                }));
                return Ok(None);
            }
            buf.advance(h.header_len);
            let mut payload = buf.split_to(h.payload_len);
            unmask_at(&mut payload[done..], h.mask, done);
            let validated = if text {
                self.feed_text(&h, &mut utf8, &payload[done..])?;
                Some(utf8)
            } else {
                None
            };
            if let Some(msg) = self.frame(h, payload, validated)? {
                return Ok(Some(msg));
            }
        }
    }

    /// An uncompressed text frame (a `Text` frame, or a continuation of a text
    /// message): validated as its bytes arrive.
    fn is_plain_text(&self, h: &Header) -> bool {
        match h.opcode {
            OpCode::Text => !h.rsv1,
            OpCode::Continuation => self
                .partial
                .as_ref()
                .is_some_and(|p| p.text && !p.compressed),
            _ => false,
        }
    }

    /// Feed text payload bytes to the right validator: the frame's own for a `Text`
    /// frame, the message's for a continuation.
    fn feed_text(
        &mut self,
        h: &Header,
        frame_utf8: &mut Utf8Validator,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        let v = match (h.opcode, self.partial.as_mut()) {
            (OpCode::Continuation, Some(p)) => &mut p.utf8,
            _ => frame_utf8,
        };
        v.feed(bytes).map_err(|_| invalid_utf8())
    }

    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(err(close::PROTOCOL_ERROR, "reserved bits set"));
        }
        let opcode =
            OpCode::from_bits(b0 & 0x0F).ok_or(err(close::PROTOCOL_ERROR, "reserved opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(err(close::PROTOCOL_ERROR, "client frame not masked"));
        }
        if opcode.is_control() {
            if !fin {
                return Err(err(close::PROTOCOL_ERROR, "fragmented control frame"));
            }
            if b1 & 0x7F > 125 {
                return Err(err(close::PROTOCOL_ERROR, "control frame over 125 bytes"));
            }
        }
        if rsv1 && (self.inflater.is_none() || !matches!(opcode, OpCode::Text | OpCode::Binary)) {
            return Err(err(close::PROTOCOL_ERROR, "RSV1 set without deflate"));
        }
        match opcode {
            OpCode::Continuation if self.partial.is_none() => {
                return Err(err(close::PROTOCOL_ERROR, "continuation without a message"));
            }
            OpCode::Text | OpCode::Binary if self.partial.is_some() => {
                return Err(err(
                    close::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                ));
            }
            _ => {}
        }
        let (payload_len, len_bytes) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(err(close::PROTOCOL_ERROR, "payload length high bit set"));
                }
                (len, 8)
            }
            n => (u64::from(n), 0),
        };
        if payload_len > u64::from(self.max_frame) {
            return Err(err(close::MESSAGE_TOO_BIG, "frame too big"));
        }
        let payload_len = payload_len as usize;
        match &self.partial {
            // Control frames between fragments are not part of the message.
            Some(p) if opcode == OpCode::Continuation => {
                if p.frames >= self.max_fragments {
                    return Err(err(close::MESSAGE_TOO_BIG, "too many fragments"));
                }
                if p.data.len() + payload_len > self.max_message as usize {
                    return Err(err(close::MESSAGE_TOO_BIG, "message too big"));
                }
            }
            _ if payload_len > self.max_message as usize => {
                return Err(err(close::MESSAGE_TOO_BIG, "message too big"));
            }
            _ => {}
        }
        let header_len = 2 + len_bytes + 4;
        if buf.len() < header_len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header_len - 4..header_len]);
        Ok(Some(Header {
            fin,
            rsv1,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }

    /// A complete frame. `validated`: the payload of an uncompressed text frame has
    /// already been fed to its validator (for a `Text` frame, this one).
    fn frame(
        &mut self,
        h: Header,
        payload: BytesMut,
        validated: Option<Utf8Validator>,
    ) -> Result<Option<Incoming>, ProtocolError> {
        match h.opcode {
            OpCode::Ping => Ok(Some(Incoming::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Some(Incoming::Pong(payload.freeze()))),
            OpCode::Close => parse_close(payload.freeze()).map(|c| Some(Incoming::Close(c))),
            OpCode::Text | OpCode::Binary => {
                let text = h.opcode == OpCode::Text;
                if h.fin {
                    if let Some(mut utf8) = validated {
                        utf8.finish().map_err(|_| invalid_utf8())?;
                        return Ok(Some(Incoming::Text(payload.freeze())));
                    }
                    return self.finish(text, h.rsv1, payload).map(Some);
                }
                let utf8 = validated.unwrap_or_default();
                self.partial = Some(Box::new(Partial {
                    text,
                    compressed: h.rsv1,
                    frames: 1,
                    data: payload,
                    utf8,
                }));
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(err(close::PROTOCOL_ERROR, "continuation without a message"));
                };
                // An uncompressed text continuation was validated as it arrived.
                p.data.extend_from_slice(&payload);
                p.frames += 1;
                if !h.fin {
                    return Ok(None);
                }
                let mut p = *self.partial.take().expect("partial checked above");
                if p.text && !p.compressed {
                    p.utf8.finish().map_err(|_| invalid_utf8())?;
                    return Ok(Some(Incoming::Text(p.data.freeze())));
                }
                self.finish(p.text, p.compressed, p.data).map(Some)
            }
        }
    }

    /// A whole message's payload: inflate if compressed, validate text.
    fn finish(
        &mut self,
        text: bool,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<Incoming, ProtocolError> {
        let data = if compressed {
            let inflater = self
                .inflater
                .as_mut()
                .ok_or(err(close::PROTOCOL_ERROR, "RSV1 set without deflate"))?;
            let mut out = BytesMut::new();
            inflater
                .inflate(&payload, self.max_message as usize, &mut out)
                .map_err(|e| match e {
                    InflateError::TooBig => err(close::MESSAGE_TOO_BIG, "message too big"),
                    InflateError::Corrupt => err(close::INVALID_PAYLOAD, "invalid deflate data"),
                })?;
            out.freeze()
        } else {
            payload.freeze()
        };
        if text {
            std::str::from_utf8(&data).map_err(|_| invalid_utf8())?;
            Ok(Incoming::Text(data))
        } else {
            Ok(Incoming::Binary(data))
        }
    }
}

fn invalid_utf8() -> ProtocolError {
    err(close::INVALID_PAYLOAD, "invalid UTF-8 in text")
}

fn parse_close(payload: Bytes) -> Result<Option<(CloseCode, Bytes)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(err(close::PROTOCOL_ERROR, "close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close::is_valid_received(code) {
                return Err(err(close::PROTOCOL_ERROR, "invalid close code"));
            }
            let reason = payload.slice(2..);
            std::str::from_utf8(&reason).map_err(|_| invalid_utf8())?;
            Ok(Some((code, reason)))
        }
    }
}

/// XOR `data` with the 4-byte `mask`, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Unmask `data`, which starts `offset` bytes into a payload masked with `mask`.
fn unmask_at(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let r = offset % 4;
    unmask(
        data,
        [
            mask[r],
            mask[(r + 1) % 4],
            mask[(r + 2) % 4],
            mask[(r + 3) % 4],
        ],
    );
}

/// Bytes of an unmasked (server) frame header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Append an unmasked, final frame header to `dst`.
pub fn put_header(dst: &mut impl BufMut, opcode: OpCode, rsv1: bool, len: usize) {
    dst.put_u8(0x80 | if rsv1 { 0x40 } else { 0 } | opcode.bits());
    match len {
        0..=125 => dst.put_u8(len as u8),
        126..=0xFFFF => {
            dst.put_u8(126);
            dst.put_u16(len as u16);
        }
        _ => {
            dst.put_u8(127);
            dst.put_u64(len as u64);
        }
    }
}

/// One complete unmasked frame (header and payload in one allocation), ready to be
/// shared by every receiver.
pub fn encode(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, rsv1, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A close frame with `code` and `reason` (cut to fit a 125-byte control payload on a
/// character boundary).
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, false, &payload)
}

/// A masked client frame, for tests, benches and fuzz seeds.
pub fn encode_masked(
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    payload: &[u8],
    mask: [u8; 4],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + payload.len());
    let len = payload.len();
    out.push(if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode.bits());
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn decoder() -> Decoder {
        Decoder::new(
            Limits {
                max_frame_size: 1000,
                max_message_size: 2000,
                max_fragments: 4,
            },
            None,
        )
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn decodes_the_rfc_masked_hello_example() {
        let raw = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let got = decode_all(&mut decoder(), &raw).unwrap();
        assert_eq!(got, vec![Incoming::Text(Bytes::from_static(b"Hello"))]);
    }

    #[test]
    fn waits_for_a_whole_frame_byte_by_byte() {
        let raw = encode_masked(OpCode::Binary, true, false, &[7u8; 300], MASK);
        let mut d = decoder();
        let mut buf = BytesMut::new();
        for (i, b) in raw.iter().enumerate() {
            buf.put_u8(*b);
            let got = d.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == raw.len() - 1);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut raw = encode_masked(OpCode::Text, false, false, "héllo ".as_bytes(), MASK);
        raw.extend(encode_masked(OpCode::Ping, true, false, b"p", MASK));
        raw.extend(encode_masked(
            OpCode::Continuation,
            true,
            false,
            "wörld".as_bytes(),
            MASK,
        ));
        let got = decode_all(&mut decoder(), &raw).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text(Bytes::from("héllo wörld")),
            ]
        );
    }

    #[test]
    fn rejects_violations_with_the_right_code() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (vec![0x81, 0x01, b'a'], close::PROTOCOL_ERROR),
            (
                encode_masked(OpCode::Text, true, true, b"a", MASK),
                close::PROTOCOL_ERROR,
            ),
            (
                {
                    let mut f = encode_masked(OpCode::Text, true, false, b"a", MASK);
                    f[0] |= 0x20;
                    f
                },
                close::PROTOCOL_ERROR,
            ),
            (
                {
                    let mut f = encode_masked(OpCode::Text, true, false, b"a", MASK);
                    f[0] = 0x83;
                    f
                },
                close::PROTOCOL_ERROR,
            ),
            (
                encode_masked(OpCode::Ping, false, false, b"a", MASK),
                close::PROTOCOL_ERROR,
            ),
            (
                encode_masked(OpCode::Ping, true, false, &[0; 126], MASK),
                close::PROTOCOL_ERROR,
            ),
            (
                encode_masked(OpCode::Continuation, true, false, b"a", MASK),
                close::PROTOCOL_ERROR,
            ),
            (
                encode_masked(OpCode::Text, true, false, b"\xff", MASK),
                close::INVALID_PAYLOAD,
            ),
            (
                encode_masked(OpCode::Binary, true, false, &[0; 1001], MASK),
                close::MESSAGE_TOO_BIG,
            ),
            (
                encode_masked(OpCode::Close, true, false, &[3], MASK),
                close::PROTOCOL_ERROR,
            ),
            (
                encode_masked(OpCode::Close, true, false, &[0x03, 0xed], MASK),
                close::PROTOCOL_ERROR,
            ),
            (
                encode_masked(OpCode::Close, true, false, b"\x03\xe8\xff", MASK),
                close::INVALID_PAYLOAD,
            ),
        ];
        for (raw, code) in cases {
            let e = decode_all(&mut decoder(), &raw).unwrap_err();
            assert_eq!(e.code, code, "{raw:x?}: {e}");
        }
    }

    #[test]
    fn message_over_limit_across_fragments_is_too_big() {
        let mut raw = Vec::new();
        raw.extend(encode_masked(OpCode::Binary, false, false, &[0; 900], MASK));
        raw.extend(encode_masked(
            OpCode::Continuation,
            false,
            false,
            &[0; 900],
            MASK,
        ));
        raw.extend(encode_masked(
            OpCode::Continuation,
            true,
            false,
            &[0; 900],
            MASK,
        ));
        let e = decode_all(&mut decoder(), &raw).unwrap_err();
        assert_eq!(e.code, close::MESSAGE_TOO_BIG);
    }

    #[test]
    fn fragments_over_the_limit_close_1009_before_their_payload() {
        // Four frames (the limit) make a message, pings between them do not count.
        let mut raw = encode_masked(OpCode::Text, false, false, b"a", MASK);
        for i in 0..3 {
            raw.extend(encode_masked(OpCode::Ping, true, false, b"p", MASK));
            raw.extend(encode_masked(
                OpCode::Continuation,
                i == 2,
                false,
                b"b",
                MASK,
            ));
        }
        let got = decode_all(&mut decoder(), &raw).unwrap();
        assert_eq!(
            got.last(),
            Some(&Incoming::Text(Bytes::from_static(b"abbb")))
        );
        // A fifth frame fails as soon as its header is there, even empty ones.
        let mut raw = encode_masked(OpCode::Binary, false, false, b"", MASK);
        for _ in 0..3 {
            raw.extend(encode_masked(OpCode::Continuation, false, false, b"", MASK));
        }
        let header = encode_masked(OpCode::Continuation, true, false, &[0; 100], MASK);
        raw.extend(&header[..8]);
        let e = decode_all(&mut decoder(), &raw).unwrap_err();
        assert_eq!(e.code, close::MESSAGE_TOO_BIG);
        assert_eq!(e.reason, "too many fragments");
        // The count starts again with the next message.
        let mut d = decoder();
        for _ in 0..3 {
            let mut raw = encode_masked(OpCode::Binary, false, false, b"x", MASK);
            raw.extend(encode_masked(OpCode::Continuation, true, false, b"y", MASK));
            assert_eq!(decode_all(&mut d, &raw).unwrap().len(), 1);
        }
    }

    #[test]
    fn control_frames_between_fragments_do_not_count_toward_the_message() {
        // 2000 bytes held (the limit), then a ping: answered, not 1009.
        let mut raw = encode_masked(OpCode::Binary, false, false, &[1; 1000], MASK);
        raw.extend(encode_masked(
            OpCode::Continuation,
            false,
            false,
            &[2; 1000],
            MASK,
        ));
        raw.extend(encode_masked(OpCode::Ping, true, false, b"p", MASK));
        raw.extend(encode_masked(OpCode::Continuation, true, false, b"", MASK));
        let got = decode_all(&mut decoder(), &raw).unwrap();
        assert_eq!(got[0], Incoming::Ping(Bytes::from_static(b"p")));
        assert!(matches!(&got[1], Incoming::Binary(b) if b.len() == 2000));
    }

    #[test]
    fn invalid_utf8_fails_on_the_first_bad_fragment() {
        let raw = encode_masked(OpCode::Text, false, false, b"ok\xed\xa0\x80", MASK);
        let e = decode_all(&mut decoder(), &raw).unwrap_err();
        assert_eq!(e.code, close::INVALID_PAYLOAD);
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let mut payload = b"hello \xce\xba".to_vec();
        payload.extend_from_slice(b"\xed\xa0\x80");
        payload.extend(std::iter::repeat_n(b'a', 500));
        let raw = encode_masked(OpCode::Text, true, false, &payload, MASK);
        let mut d = decoder();
        // Only the header and the first 14 payload bytes have arrived.
        let mut buf = BytesMut::from(&raw[..4 + 4 + 14]);
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!(e.code, close::INVALID_PAYLOAD);
    }

    #[test]
    fn text_arriving_in_pieces_is_unmasked_once_and_decoded_whole() {
        let text = "κόσμε ".repeat(40);
        let raw = encode_masked(OpCode::Text, false, false, text.as_bytes(), MASK);
        let mut tail = encode_masked(OpCode::Continuation, true, false, "€nd".as_bytes(), MASK);
        let mut all = raw.clone();
        all.append(&mut tail);
        for step in [1usize, 3, 7, 64] {
            let mut d = decoder();
            let mut buf = BytesMut::new();
            let mut got = None;
            for chunk in all.chunks(step) {
                buf.extend_from_slice(chunk);
                if let Some(m) = d.decode(&mut buf).unwrap() {
                    got = Some(m);
                }
            }
            let want = format!("{text}€nd");
            assert_eq!(got, Some(Incoming::Text(Bytes::from(want))), "step {step}");
        }
    }

    #[test]
    fn close_frame_code_and_reason() {
        let raw = encode_masked(OpCode::Close, true, false, b"\x03\xe8bye", MASK);
        let got = decode_all(&mut decoder(), &raw).unwrap();
        assert_eq!(
            got,
            vec![Incoming::Close(Some((1000, Bytes::from_static(b"bye"))))]
        );
    }

    #[test]
    fn encoder_uses_the_shortest_length_form() {
        for (len, hdr) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = encode(OpCode::Binary, false, &vec![1; len]);
            assert_eq!(f.len(), len + hdr);
            assert_eq!(header_len(len), hdr);
        }
        let c = encode_close(1000, &"é".repeat(100));
        assert!(c.len() <= 127);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let mut data: Vec<u8> = (0..37).collect();
        let orig = data.clone();
        unmask(&mut data, MASK);
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b, orig[i] ^ MASK[i % 4]);
        }
    }
}
