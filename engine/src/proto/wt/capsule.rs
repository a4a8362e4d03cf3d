//! Capsules (RFC 9297) on a WebTransport session's CONNECT stream: the session
//! close and drain signals. The stream's DATA frame payloads form one capsule
//! stream; unknown capsule types are skipped.

use super::varint;

/// CLOSE_WEBTRANSPORT_SESSION: u32 code + UTF-8 reason.
pub const CLOSE_SESSION: u64 = 0x2843;
/// DRAIN_WEBTRANSPORT_SESSION: no payload.
pub const DRAIN_SESSION: u64 = 0x78ae;
/// Longest close reason the draft allows, bytes.
pub const MAX_REASON: usize = 1024;
/// Largest capsule we buffer: a close capsule is at most 4 + 1024 bytes; unknown
/// capsules are skipped as they stream past, never buffered whole.
const MAX_BUFFERED: usize = 8 + MAX_REASON;

/// A capsule we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capsule {
    /// The peer closed the session.
    Close {
        /// Application error code.
        code: u32,
        /// Reason text.
        reason: String,
    },
    /// The peer asks us to wind the session down.
    Drain,
}

/// Why a capsule stream is broken (the session is closed with H3_MESSAGE_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsuleError {
    /// A close capsule shorter than its 4-byte code.
    ShortClose,
    /// A close reason over 1024 bytes.
    ReasonTooLong,
    /// A drain capsule with a payload.
    DrainWithPayload,
    /// A close reason that is not UTF-8.
    ReasonNotUtf8,
}

impl std::fmt::Display for CapsuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CapsuleError::ShortClose => "CLOSE_WEBTRANSPORT_SESSION capsule shorter than 4 bytes",
            CapsuleError::ReasonTooLong => "CLOSE_WEBTRANSPORT_SESSION reason over 1024 bytes",
            CapsuleError::DrainWithPayload => "DRAIN_WEBTRANSPORT_SESSION capsule with a payload",
            CapsuleError::ReasonNotUtf8 => "CLOSE_WEBTRANSPORT_SESSION reason is not UTF-8",
        })
    }
}

impl std::error::Error for CapsuleError {}

/// Incremental capsule parser: feed DATA payload bytes, get capsules out.
#[derive(Debug, Default)]
pub struct CapsuleReader {
    buf: Vec<u8>,
    /// Bytes of an unknown capsule still to skip.
    skipping: u64,
}

impl CapsuleReader {
    /// Feed `data`; complete capsules we act on are appended to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Capsule>) -> Result<(), CapsuleError> {
        loop {
            if self.skipping > 0 {
                let n = (self.skipping as usize).min(data.len());
                self.skipping -= n as u64;
                data = &data[n..];
                if self.skipping > 0 {
                    return Ok(());
                }
            }
            if data.is_empty() {
                return Ok(());
            }
            // Buffer only as much as the next header (and known capsule body) needs.
            let take = data
                .len()
                .min(MAX_BUFFERED.saturating_sub(self.buf.len()).max(1));
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while let Some((ty, a)) = varint::decode(&self.buf) {
                let Some((len, b)) = varint::decode(&self.buf[a..]) else {
                    break;
                };
                let head = a + b;
                match ty {
                    CLOSE_SESSION | DRAIN_SESSION => {
                        if ty == CLOSE_SESSION && len < 4 {
                            return Err(CapsuleError::ShortClose);
                        }
                        if ty == CLOSE_SESSION && len > 4 + MAX_REASON as u64 {
                            return Err(CapsuleError::ReasonTooLong);
                        }
                        if ty == DRAIN_SESSION && len != 0 {
                            return Err(CapsuleError::DrainWithPayload);
                        }
                        let end = head + len as usize;
                        if self.buf.len() < end {
                            break;
                        }
                        out.push(if ty == CLOSE_SESSION {
                            let body = &self.buf[head..end];
                            let reason = std::str::from_utf8(&body[4..])
                                .map_err(|_| CapsuleError::ReasonNotUtf8)?;
                            Capsule::Close {
                                code: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                                reason: reason.to_owned(),
                            }
                        } else {
                            Capsule::Drain
                        });
                        self.buf.drain(..end);
                    }
                    _ => {
                        // Unknown capsule: skip its body, buffered or still to come.
                        let have = (self.buf.len() - head) as u64;
                        if have >= len {
                            self.buf.drain(..head + len as usize);
                        } else {
                            self.skipping = len - have;
                            self.buf.clear();
                        }
                    }
                }
                if self.skipping > 0 {
                    break;
                }
            }
        }
    }
}

/// Encode a close capsule (reason cut to 1024 bytes at a char boundary).
pub fn encode_close(code: u32, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let mut out = Vec::with_capacity(8 + reason.len());
    varint::encode(CLOSE_SESSION, &mut out);
    varint::encode(4 + reason.len() as u64, &mut out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    out
}

/// Encode a drain capsule.
pub fn encode_drain() -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    varint::encode(DRAIN_SESSION, &mut out);
    varint::encode(0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_bytewise(bytes: &[u8]) -> Result<Vec<Capsule>, CapsuleError> {
        let mut r = CapsuleReader::default();
        let mut out = Vec::new();
        for b in bytes {
            r.feed(std::slice::from_ref(b), &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn close_and_drain_round_trip_in_any_split() {
        let mut bytes = encode_close(4242, "bye");
        bytes.extend(encode_drain());
        let want = vec![
            Capsule::Close {
                code: 4242,
                reason: "bye".into(),
            },
            Capsule::Drain,
        ];
        assert_eq!(parse_bytewise(&bytes).unwrap(), want);
        let mut r = CapsuleReader::default();
        let mut out = Vec::new();
        r.feed(&bytes, &mut out).unwrap();
        assert_eq!(out, want);
    }

    #[test]
    fn unknown_capsules_are_skipped_even_when_large() {
        let mut bytes = Vec::new();
        varint::encode(0x17, &mut bytes);
        varint::encode(100_000, &mut bytes);
        bytes.extend(std::iter::repeat_n(7u8, 100_000));
        bytes.extend(encode_close(1, ""));
        let mut r = CapsuleReader::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(1500) {
            r.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(
            out,
            vec![Capsule::Close {
                code: 1,
                reason: String::new()
            }]
        );
        assert!(r.buf.len() <= MAX_BUFFERED);
    }

    #[test]
    fn malformed_close_capsules_are_errors() {
        let mut short = Vec::new();
        varint::encode(CLOSE_SESSION, &mut short);
        varint::encode(2, &mut short);
        short.extend([0, 0]);
        assert_eq!(parse_bytewise(&short), Err(CapsuleError::ShortClose));
        let mut long = Vec::new();
        varint::encode(CLOSE_SESSION, &mut long);
        varint::encode(4 + 1025, &mut long);
        assert_eq!(parse_bytewise(&long), Err(CapsuleError::ReasonTooLong));
        let mut bad = Vec::new();
        varint::encode(CLOSE_SESSION, &mut bad);
        varint::encode(6, &mut bad);
        bad.extend([0, 0, 0, 1, 0xc3, 0x28]);
        assert_eq!(parse_bytewise(&bad), Err(CapsuleError::ReasonNotUtf8));
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(600);
        let bytes = encode_close(9, &reason);
        let out = parse_bytewise(&bytes).unwrap();
        let Capsule::Close { reason: got, .. } = &out[0] else {
            panic!("not a close");
        };
        assert!(got.len() <= MAX_REASON && got.chars().all(|c| c == 'é'));
    }
}
