//! permessage-deflate's `Inflater` on a sequence of messages: arbitrary bytes
//! and messages compressed by `Deflater`, with random window sizes, context
//! takeover and output limits.
//!
//! Checks: output never exceeds the limit; on error nothing is appended (the
//! bytes already in the buffer are untouched); a `Deflater` message inflates to
//! exactly its payload (or `TooBig` when the payload is over the limit) whenever
//! the inflater's state is clean (fresh, reset after an error, or no context
//! takeover), including after garbage messages.
#![no_main]

use bytes::BytesMut;
use corecast::proto::ws::deflate::{Deflater, InflateError, Inflater, Negotiated};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = one(&mut Unstructured::new(data));
});

fn one(u: &mut Unstructured<'_>) -> Result<()> {
    let client_bits = u.int_in_range(8..=15)?;
    let no_context_takeover = u.arbitrary::<bool>()?;
    let mut inflater = Inflater::new(Negotiated {
        server_no_context_takeover: true,
        client_no_context_takeover: no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: client_bits,
    });
    // A client may compress with any window up to the one agreed.
    let mut deflater = Deflater::new(u.int_in_range(8..=client_bits)?);
    let prefix_len = u.int_in_range(0..=8)?;
    let prefix = u.bytes(prefix_len)?.to_vec();
    // Whether the inflater's state is known to start a fresh block.
    let mut clean = true;
    while !u.is_empty() {
        let max_output = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(0..=64)?,
            1 => u.int_in_range(0..=4096)?,
            _ => u.int_in_range(0..=1 << 20)?,
        };
        let mut out = BytesMut::from(&prefix[..]);
        if u.arbitrary::<bool>()? {
            // A real client's message.
            let len = u.int_in_range(0..=2048)?;
            let mut payload = u.bytes(len.min(u.len()))?.to_vec();
            if u.ratio(1, 8)? {
                // Highly compressible: a small message inflating past the limit.
                let n = u.int_in_range(0..=300_000)?;
                let byte = u.arbitrary::<u8>()?;
                payload.extend(std::iter::repeat_n(byte, n));
            }
            let compressed = deflater.compress(&payload);
            let r = inflater.inflate(&compressed, max_output, &mut out);
            check(&r, &out, &prefix, max_output);
            if clean {
                if payload.len() > max_output {
                    assert_eq!(r, Err(InflateError::TooBig));
                } else {
                    assert_eq!(r, Ok(()));
                    assert!(out[prefix.len()..] == payload[..], "round trip differs");
                }
            }
            // Deflater output ends on a block boundary (sync flush).
            clean = clean || r.is_err() || no_context_takeover;
        } else {
            let len = u.int_in_range(0..=512)?;
            let garbage = u.bytes(len.min(u.len()))?;
            let r = inflater.inflate(garbage, max_output, &mut out);
            check(&r, &out, &prefix, max_output);
            // Errors free the state; otherwise the stream may stop mid-block.
            clean = r.is_err() || no_context_takeover || garbage.is_empty() && clean;
        }
    }
    Ok(())
}

fn check(r: &std::result::Result<(), InflateError>, out: &[u8], prefix: &[u8], max: usize) {
    assert!(
        out.starts_with(prefix),
        "bytes before the message were changed"
    );
    if r.is_err() {
        assert_eq!(out.len(), prefix.len(), "an error left output behind");
    } else {
        assert!(out.len() - prefix.len() <= max, "inflated past the limit");
    }
}
