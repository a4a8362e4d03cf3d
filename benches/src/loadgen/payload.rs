//! The loadgen message head: sender id, per-sender sequence number and send
//! timestamp, at the start of every payload, padded to the requested size.
//!
//! Binary layout (24 bytes, little endian): magic `b"ccb1"`, id u32, seq u64,
//! timestamp u64 (ns on the machine-wide `CLOCK_MONOTONIC`, so another loadgen
//! process can time the message; [`Head::ts`] is converted to and from this
//! process's epoch on encode and decode). Text layout (44 ASCII
//! bytes): `"ccb1"` then id, seq and timestamp as 8, 16 and 16 lowercase hex
//! digits. Padding is `'x'`.

use crate::loadgen::stats;
use crate::loadgen::ws::{self, OP_BINARY, OP_TEXT};

/// Magic prefix of every loadgen payload.
pub const MAGIC: [u8; 4] = *b"ccb1";
/// Head length of binary payloads.
pub const BINARY_HEAD: usize = 24;
/// Head length of text payloads.
pub const TEXT_HEAD: usize = 44;

/// The decoded head of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Publisher (fanout) or connection (echo) id.
    pub id: u32,
    /// Per-id sequence number, from 0.
    pub seq: u64,
    /// Send time, ns since the process epoch.
    pub ts: u64,
}

/// Smallest payload size for the chosen encoding.
pub fn min_size(text: bool) -> usize {
    if text {
        TEXT_HEAD
    } else {
        BINARY_HEAD
    }
}

fn hex_digit(v: u8) -> u8 {
    b"0123456789abcdef"[(v & 15) as usize]
}

fn put_hex(out: &mut [u8], v: u64) {
    let n = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        *b = hex_digit((v >> (4 * (n - 1 - i))) as u8);
    }
}

/// 8 lowercase hex digits (first = most significant) to their value, 8 bytes
/// at a time; `None` if any byte is not in `0-9a-f`.
#[inline]
fn hex8(b: &[u8]) -> Option<u64> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    let x = u64::from_be_bytes(a);
    if x & HI != 0 {
        return None;
    }
    // Bytes are < 0x80, so adding < 0x80 per byte never carries into the next:
    // bit 7 of byte + (0x80 - c) is set iff byte >= c.
    let ge = |c: u64| x.wrapping_add(LO * (0x80 - c)) & HI;
    let digit = ge(0x30) & !ge(0x3a);
    let af = ge(0x61) & !ge(0x67);
    if digit | af != HI {
        return None;
    }
    // Nibble values: low nibble, + 9 for letters (0x6N, bit 6 set).
    let n = (x & (LO * 0x0f)) + ((x >> 6) & LO) * 9;
    // Pack 8 nibbles (one per byte, big-endian) into 32 bits.
    let n = ((n >> 4) | n) & 0x00FF_00FF_00FF_00FF;
    let n = ((n >> 8) | n) & 0x0000_FFFF_0000_FFFF;
    Some(((n >> 16) | n) & 0xFFFF_FFFF)
}

/// 8 or 16 lowercase hex digits to their value.
fn get_hex(bytes: &[u8]) -> Option<u64> {
    match bytes.len() {
        8 => hex8(bytes),
        16 => Some((hex8(&bytes[..8])? << 32) | hex8(&bytes[8..])?),
        _ => None,
    }
}

/// Writes the encoded head into `out[..min_size(text)]`.
pub fn encode_head(text: bool, head: Head, out: &mut [u8]) {
    let ts = stats::to_shared(head.ts);
    out[..4].copy_from_slice(&MAGIC);
    if text {
        put_hex(&mut out[4..12], u64::from(head.id));
        put_hex(&mut out[12..28], head.seq);
        put_hex(&mut out[28..44], ts);
    } else {
        out[4..8].copy_from_slice(&head.id.to_le_bytes());
        out[8..16].copy_from_slice(&head.seq.to_le_bytes());
        out[16..24].copy_from_slice(&ts.to_le_bytes());
    }
}

/// Decodes a head (of either encoding, chosen by opcode); `None` if foreign.
pub fn decode_head(opcode: u8, bytes: &[u8]) -> Option<Head> {
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return None;
    }
    if opcode == OP_TEXT {
        let b = bytes.get(..TEXT_HEAD)?;
        Some(Head {
            id: u32::try_from(get_hex(&b[4..12])?).ok()?,
            seq: get_hex(&b[12..28])?,
            ts: stats::from_shared(get_hex(&b[28..44])?),
        })
    } else {
        let b = bytes.get(..BINARY_HEAD)?;
        let mut id = [0u8; 4];
        let mut seq = [0u8; 8];
        let mut ts = [0u8; 8];
        id.copy_from_slice(&b[4..8]);
        seq.copy_from_slice(&b[8..16]);
        ts.copy_from_slice(&b[16..24]);
        Some(Head {
            id: u32::from_le_bytes(id),
            seq: u64::from_le_bytes(seq),
            ts: stats::from_shared(u64::from_le_bytes(ts)),
        })
    }
}

/// A pre-built masked client frame of fixed size whose head is rewritten per
/// message: only `min_size(text)` bytes are encoded and masked per send.
#[derive(Debug, Clone)]
pub struct FrameTemplate {
    frame: Vec<u8>,
    head_off: usize,
    mask: [u8; 4],
    text: bool,
}

impl FrameTemplate {
    /// A template for `size`-byte payloads masked with `mask`.
    pub fn new(size: usize, text: bool, mask: [u8; 4]) -> Self {
        let payload = vec![b'x'; size];
        let mut frame = Vec::with_capacity(ws::client_header_len(size) + size);
        ws::write_frame(
            &mut frame,
            if text { OP_TEXT } else { OP_BINARY },
            &payload,
            mask,
        );
        FrameTemplate {
            head_off: ws::client_header_len(size),
            frame,
            mask,
            text,
        }
    }

    /// Bytes per frame on the wire.
    pub fn frame_len(&self) -> usize {
        self.frame.len()
    }

    /// Appends one frame carrying `head` to `out` (no allocation once `out` has capacity).
    pub fn append(&self, out: &mut Vec<u8>, head: Head) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let hl = min_size(self.text);
        let h = &mut out[start + self.head_off..start + self.head_off + hl];
        encode_head(self.text, head, h);
        ws::apply_mask(h, self.mask, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_roundtrip() {
        let h = Head {
            id: 7,
            seq: 123_456_789,
            ts: 0xDEAD_BEEF_0102,
        };
        for text in [false, true] {
            let mut buf = vec![b'x'; 64];
            encode_head(text, h, &mut buf);
            let op = if text { OP_TEXT } else { OP_BINARY };
            assert_eq!(decode_head(op, &buf), Some(h));
            if text {
                assert!(std::str::from_utf8(&buf).is_ok());
            }
        }
        assert_eq!(decode_head(OP_BINARY, b"nope-nope-nope-nope-nope"), None);
    }

    #[test]
    fn hex_decoding_is_strict() {
        let naive = |b: &[u8]| -> Option<u64> {
            b.iter().try_fold(0u64, |v, &c| {
                let d = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    _ => return None,
                };
                Some((v << 4) | u64::from(d))
            })
        };
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let alphabet = b"0123456789abcdefABCDEF/:`g\x00\x80\xff\xb0\xe1 x";
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = [0u8; 16];
            for (j, c) in b.iter_mut().enumerate() {
                // Mostly valid digits, sometimes one odd byte.
                let k = (x >> (j * 4)) as usize;
                *c = if i % 3 == 0 && j == (x as usize >> 60) {
                    alphabet[k % alphabet.len()]
                } else {
                    alphabet[k % 16]
                };
            }
            assert_eq!(get_hex(&b), naive(&b), "{b:?}");
            assert_eq!(get_hex(&b[..8]), naive(&b[..8]), "{b:?}");
        }
        assert_eq!(get_hex(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(get_hex(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        for bad in [
            b"0000000/",
            b"0000000:",
            b"0000000`",
            b"0000000g",
            b"0000000A",
        ] {
            assert_eq!(get_hex(bad), None);
        }
    }

    #[test]
    fn template_frames_unmask_to_payload() {
        let t = FrameTemplate::new(200, false, [9, 8, 7, 6]);
        let mut out = Vec::new();
        let h = Head {
            id: 1,
            seq: 2,
            ts: 3,
        };
        t.append(&mut out, h);
        t.append(&mut out, Head { seq: 3, ..h });
        assert_eq!(out.len(), 2 * t.frame_len());
        let hl = ws::client_header_len(200);
        let mut body = out[hl..t.frame_len()].to_vec();
        ws::apply_mask(&mut body, [9, 8, 7, 6], 0);
        assert_eq!(decode_head(OP_BINARY, &body), Some(h));
        assert!(body[BINARY_HEAD..].iter().all(|&b| b == b'x'));
    }
}
