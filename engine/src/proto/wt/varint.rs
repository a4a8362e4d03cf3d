//! QUIC variable-length integers (RFC 9000 §16), the unit of every HTTP/3 and
//! WebTransport header.

/// The largest value a varint can hold (2^62 - 1).
pub const MAX: u64 = (1 << 62) - 1;

/// Decode a varint at the start of `buf`: `Some((value, length))`, or `None` when
/// `buf` holds only part of it.
pub fn decode(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// How many bytes the varint starting with `first` takes.
pub fn len_from_first(first: u8) -> usize {
    1usize << (first >> 6)
}

/// Bytes needed to encode `v` (values above [`MAX`] are clamped to it).
pub fn encoded_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Append `v` (clamped to [`MAX`]) to `out`.
pub fn encode(v: u64, out: &mut Vec<u8>) {
    let v = v.min(MAX);
    match encoded_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_class() {
        for v in [
            0,
            1,
            63,
            64,
            16_383,
            16_384,
            1_073_741_823,
            1_073_741_824,
            MAX,
        ] {
            let mut out = Vec::new();
            encode(v, &mut out);
            assert_eq!(out.len(), encoded_len(v));
            assert_eq!(decode(&out), Some((v, out.len())));
            assert_eq!(len_from_first(out[0]), out.len());
            assert_eq!(decode(&out[..out.len() - 1]), None);
        }
    }

    #[test]
    fn decodes_the_rfc_examples() {
        assert_eq!(
            decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(decode(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(decode(&[0x25]), Some((37, 1)));
        assert_eq!(decode(&[]), None);
    }
}
