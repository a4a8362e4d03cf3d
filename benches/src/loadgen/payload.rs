//! The loadgen message head: sender id, per-sender sequence number and send
//! timestamp, at the start of every payload, padded to the requested size.
//!
//! Binary layout (24 bytes, little endian): magic `b"ccb1"`, id u32, seq u64,
//! timestamp u64 (ns since the loadgen process epoch). Text layout (44 ASCII
//! bytes): `"ccb1"` then id, seq and timestamp as 8, 16 and 16 lowercase hex
//! digits. Padding is `'x'`.

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

fn get_hex(bytes: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &b in bytes {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Writes the encoded head into `out[..min_size(text)]`.
pub fn encode_head(text: bool, head: Head, out: &mut [u8]) {
    out[..4].copy_from_slice(&MAGIC);
    if text {
        put_hex(&mut out[4..12], u64::from(head.id));
        put_hex(&mut out[12..28], head.seq);
        put_hex(&mut out[28..44], head.ts);
    } else {
        out[4..8].copy_from_slice(&head.id.to_le_bytes());
        out[8..16].copy_from_slice(&head.seq.to_le_bytes());
        out[16..24].copy_from_slice(&head.ts.to_le_bytes());
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
            ts: get_hex(&b[28..44])?,
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
            ts: u64::from_le_bytes(ts),
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
