//! Minimal client-side WebSocket (RFC 6455) pieces: SHA-1/base64 for the
//! handshake, masked frame encoding, and a streaming frame reader that never
//! needs a whole frame in memory (it keeps only the first bytes of each
//! message, which is all loadgen needs to recover its timestamps).

use std::fmt;

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
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

/// How many leading payload bytes of each data message the reader keeps.
pub const HEAD_CAP: usize = 64;

/// GUID appended to the client key to compute `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// SHA-1 digest of `data` (only used for the handshake accept key).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut msg = Vec::with_capacity(data.len() + 72);
    msg.extend_from_slice(data);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    let mut w = [0u32; 80];
    for block in msg.chunks_exact(64) {
        for (slot, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *slot = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 (with padding).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// The `Sec-WebSocket-Accept` value a server must answer for `key`.
pub fn accept_key(key: &str) -> String {
    let mut input = Vec::with_capacity(key.len() + WS_GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(WS_GUID.as_bytes());
    base64(&sha1(&input))
}

/// Tiny xorshift64* generator for mask keys and handshake nonces (not crypto).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds from the clock, the process id and `salt` (e.g. a connection index).
    pub fn new(salt: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x1234_5678);
        let mut seed =
            t ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if seed == 0 {
            seed = 0xDEAD_BEEF;
        }
        let mut rng = Rng(seed);
        // Mix the seed a little so consecutive salts diverge quickly.
        for _ in 0..4 {
            rng.next_u64();
        }
        rng
    }

    /// Next pseudo-random 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A random 4-byte mask key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// Length of the header (incl. mask key) of a client frame carrying `len` payload bytes.
pub fn client_header_len(len: usize) -> usize {
    let base = if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    };
    base + 4
}

/// XORs `data` with `mask`, where `data` starts at payload offset `offset`.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// Appends a complete masked client frame (FIN set) to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.push(0x80 | (opcode & 0x0F));
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// Something the frame reader found in the stream.
#[derive(Debug)]
pub enum Event<'a> {
    /// A complete data message (possibly reassembled from fragments).
    Message {
        /// `OP_TEXT` or `OP_BINARY` (of the first fragment).
        opcode: u8,
        /// Total payload length of the message.
        len: u64,
        /// The first `min(len, HEAD_CAP)` payload bytes.
        head: &'a [u8],
    },
    /// A ping with its payload (must be answered with a pong).
    Ping(&'a [u8]),
    /// A pong (ignored by loadgen).
    Pong,
    /// A close frame with its status code, if any.
    Close(Option<u16>),
}

/// A violation of RFC 6455 by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Streaming parser of server-to-client frames. Feed it any slices of the byte
/// stream; it reports events through a callback and keeps only O(1) state.
#[derive(Debug)]
pub struct FrameReader {
    hdr: [u8; 14],
    hdr_len: usize,
    in_payload: bool,
    remaining: u64,
    cur_opcode: u8,
    cur_fin: bool,
    msg_active: bool,
    msg_opcode: u8,
    msg_len: u64,
    head: [u8; HEAD_CAP],
    head_len: usize,
    ctrl: [u8; 125],
    ctrl_len: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

/// Header length implied by the second header byte (length code and mask bit).
fn needed_header(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

impl FrameReader {
    /// A reader positioned at a frame boundary.
    pub fn new() -> Self {
        FrameReader {
            hdr: [0; 14],
            hdr_len: 0,
            in_payload: false,
            remaining: 0,
            cur_opcode: 0,
            cur_fin: false,
            msg_active: false,
            msg_opcode: 0,
            msg_len: 0,
            head: [0; HEAD_CAP],
            head_len: 0,
            ctrl: [0; 125],
            ctrl_len: 0,
        }
    }

    /// Parses `data`, calling `on` for every completed message or control frame.
    pub fn feed<F: FnMut(Event<'_>)>(
        &mut self,
        mut data: &[u8],
        mut on: F,
    ) -> Result<(), ProtocolError> {
        while !data.is_empty() {
            if !self.in_payload {
                if self.hdr_len == 0 && data.len() >= 2 {
                    let need = needed_header(data[1]);
                    if data.len() >= need {
                        let (h, rest) = data.split_at(need);
                        self.start_frame_from(h, &mut on)?;
                        data = rest;
                        continue;
                    }
                }
                // Slow path: accumulate a header split across reads.
                let need = if self.hdr_len >= 2 {
                    needed_header(self.hdr[1])
                } else {
                    2
                };
                let take = (need - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[..take]);
                self.hdr_len += take;
                data = &data[take..];
                if self.hdr_len >= 2 {
                    let full = needed_header(self.hdr[1]);
                    if self.hdr_len == full {
                        let h = self.hdr;
                        self.hdr_len = 0;
                        self.start_frame_from(&h[..full], &mut on)?;
                    }
                }
                continue;
            }
            let n = (self.remaining.min(data.len() as u64)) as usize;
            let (chunk, rest) = data.split_at(n);
            if self.cur_opcode >= 0x8 {
                self.ctrl[self.ctrl_len..self.ctrl_len + n].copy_from_slice(chunk);
                self.ctrl_len += n;
            } else {
                self.msg_len += n as u64;
                if self.head_len < HEAD_CAP {
                    let k = (HEAD_CAP - self.head_len).min(n);
                    self.head[self.head_len..self.head_len + k].copy_from_slice(&chunk[..k]);
                    self.head_len += k;
                }
            }
            self.remaining -= n as u64;
            data = rest;
            if self.remaining == 0 {
                self.finish_frame(&mut on);
            }
        }
        Ok(())
    }

    fn start_frame_from<F: FnMut(Event<'_>)>(
        &mut self,
        h: &[u8],
        on: &mut F,
    ) -> Result<(), ProtocolError> {
        let b0 = h[0];
        let b1 = h[1];
        if b0 & 0x70 != 0 {
            return Err(ProtocolError(
                "RSV bits set (compression was not negotiated)",
            ));
        }
        if b1 & 0x80 != 0 {
            return Err(ProtocolError("masked server frame"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let len = match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                let v = u64::from_be_bytes(b);
                if v >> 63 != 0 {
                    return Err(ProtocolError("64-bit length with high bit set"));
                }
                v
            }
            n => u64::from(n),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(ProtocolError("fragmented or oversized control frame"));
                }
                self.ctrl_len = 0;
            }
            OP_TEXT | OP_BINARY => {
                if self.msg_active {
                    return Err(ProtocolError("new data frame inside a fragmented message"));
                }
                self.msg_active = true;
                self.msg_opcode = opcode;
                self.msg_len = 0;
                self.head_len = 0;
            }
            OP_CONTINUATION => {
                if !self.msg_active {
                    return Err(ProtocolError("continuation frame without a message"));
                }
            }
            _ => return Err(ProtocolError("reserved opcode")),
        }
        self.cur_opcode = opcode;
        self.cur_fin = fin;
        self.remaining = len;
        self.in_payload = true;
        if len == 0 {
            self.finish_frame(on);
        }
        Ok(())
    }

    fn finish_frame<F: FnMut(Event<'_>)>(&mut self, on: &mut F) {
        self.in_payload = false;
        match self.cur_opcode {
            OP_PING => on(Event::Ping(&self.ctrl[..self.ctrl_len])),
            OP_PONG => on(Event::Pong),
            OP_CLOSE => {
                let code = if self.ctrl_len >= 2 {
                    Some(u16::from_be_bytes([self.ctrl[0], self.ctrl[1]]))
                } else {
                    None
                };
                on(Event::Close(code))
            }
            _ => {
                if self.cur_fin {
                    self.msg_active = false;
                    on(Event::Message {
                        opcode: self.msg_opcode,
                        len: self.msg_len,
                        head: &self.head[..self.head_len],
                    });
                }
            }
        }
    }
}

/// Why a WebSocket handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The server answered with a status other than 101.
    Rejected(u16),
    /// The response was malformed or the accept key was wrong.
    Bad(&'static str),
    /// The server closed the connection before answering.
    Eof,
    /// A socket error.
    Io(std::io::Error),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Rejected(code) => {
                write!(f, "server answered HTTP {code} instead of 101")
            }
            HandshakeError::Bad(why) => write!(f, "bad handshake response: {why}"),
            HandshakeError::Eof => f.write_str("connection closed during handshake"),
            HandshakeError::Io(e) => write!(f, "handshake I/O error: {e}"),
        }
    }
}

/// Builds the HTTP upgrade request; returns it with the key it used.
pub fn upgrade_request(host: &str, resource: &str, rng: &mut Rng) -> (String, String) {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    let key = base64(&nonce);
    let req = format!(
        "GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: corecast-loadgen\r\n\r\n"
    );
    (req, key)
}

/// Checks a complete response head (up to and including the blank line).
pub fn check_response(head: &[u8], key: &str) -> Result<(), HandshakeError> {
    let text =
        std::str::from_utf8(head).map_err(|_| HandshakeError::Bad("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HandshakeError::Bad("not an HTTP response"));
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(HandshakeError::Bad("no status code"))?;
    if code != 101 {
        return Err(HandshakeError::Rejected(code));
    }
    let expected = accept_key(key);
    let mut accept_ok = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            let value = value.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept_ok = value == expected;
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") && !value.is_empty() {
                return Err(HandshakeError::Bad(
                    "server negotiated an extension we did not offer",
                ));
            }
        }
    }
    if accept_ok {
        Ok(())
    } else {
        Err(HandshakeError::Bad("missing or wrong Sec-WebSocket-Accept"))
    }
}

/// Position just past the `\r\n\r\n` that ends an HTTP head, if present.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha1_vectors() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let long = vec![b'a'; 1000];
        assert_eq!(
            hex(&sha1(&long)),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn accept_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    fn server_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
        out.push(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 0xFFFF {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
    }

    #[test]
    fn reader_handles_any_split() {
        let mut stream = Vec::new();
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        server_frame(&mut stream, true, OP_BINARY, b"hello");
        server_frame(&mut stream, true, OP_PING, b"pp");
        server_frame(&mut stream, true, OP_TEXT, &big[..300]);
        server_frame(&mut stream, false, OP_BINARY, &big[..10]);
        server_frame(&mut stream, true, OP_PONG, b"");
        server_frame(&mut stream, false, OP_CONTINUATION, &big[10..100]);
        server_frame(&mut stream, true, OP_CONTINUATION, &big[100..]);
        server_frame(&mut stream, true, OP_CLOSE, &1008u16.to_be_bytes());
        for step in [1usize, 2, 3, 7, 13, 64, 1000, stream.len()] {
            let mut r = FrameReader::new();
            let mut seen = Vec::new();
            for chunk in stream.chunks(step) {
                r.feed(chunk, |ev| {
                    seen.push(match ev {
                        Event::Message { opcode, len, head } => {
                            format!("m{opcode}:{len}:{}", head.len())
                        }
                        Event::Ping(p) => format!("ping{}", p.len()),
                        Event::Pong => "pong".into(),
                        Event::Close(c) => format!("close{c:?}"),
                    })
                })
                .expect("valid stream");
            }
            assert_eq!(
                seen,
                vec![
                    "m2:5:5".to_string(),
                    "ping2".into(),
                    "m1:300:64".into(),
                    "pong".into(),
                    "m2:70000:64".into(),
                    "closeSome(1008)".into()
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn reader_rejects_masked_frames() {
        let mut r = FrameReader::new();
        assert!(r.feed(&[0x82, 0x81, 1, 2, 3, 4, 5], |_| {}).is_err());
    }

    #[test]
    fn client_frames_roundtrip_mask() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let mut out = Vec::new();
            write_frame(&mut out, OP_BINARY, &payload, [1, 2, 3, 4]);
            assert_eq!(out.len(), client_header_len(len) + len);
            let hl = client_header_len(len);
            let mut body = out[hl..].to_vec();
            apply_mask(&mut body, [1, 2, 3, 4], 0);
            assert_eq!(body, payload);
        }
    }
}
