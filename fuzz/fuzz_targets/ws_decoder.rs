//! The server-side WebSocket frame decoder (`proto::ws::Decoder`) with random
//! limits, with and without permessage-deflate.
//!
//! Two modes, picked by the first input byte:
//! - raw: the rest of the input is the wire stream;
//! - model: the input scripts a valid client (fragmented text/binary messages,
//!   compressed ones through `Deflater`, pings/pongs interleaved between
//!   fragments, close frames) and the decoder must return exactly the messages
//!   the script sent, or `1009` where a limit is crossed.
//!
//! Both modes feed the stream whole and in random chunks: the results must be
//! the same (fragment reassembly and incremental UTF-8 validation do not depend
//! on how reads split the bytes), and every message respects the limits.
#![no_main]

use bytes::{Bytes, BytesMut};
use corecast::proto::ws::close::{self, CloseCode};
use corecast::proto::ws::deflate::{Deflater, Inflater, Negotiated};
use corecast::proto::ws::frame::encode_masked;
use corecast::proto::ws::{Decoder, Incoming, Limits, OpCode, ProtocolError};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

struct Setup {
    limits: Limits,
    deflate: Option<Negotiated>,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = one(&mut u);
});

fn one(u: &mut Unstructured<'_>) -> Result<()> {
    let model = u.arbitrary::<bool>()?;
    let setup = setup(u)?;
    let chunks: Vec<usize> = (0..u.int_in_range(0..=8)?)
        .map(|_| u.int_in_range(0..=300))
        .collect::<Result<_>>()?;
    let (wire, expected) = if model {
        let (wire, expected) = script(u, &setup)?;
        (wire, Some(expected))
    } else {
        (u.bytes(u.len())?.to_vec(), None)
    };
    let whole = run(&setup, &wire, &[]);
    let split = run(&setup, &wire, &chunks);
    assert_eq!(whole, split, "result depends on how the stream was split");
    if let Some((msgs, err)) = expected {
        assert_eq!(whole.0, msgs, "decoded messages differ from what was sent");
        assert_eq!(whole.1.map(|e| e.code), err, "error: {:?}", whole.1);
    }
    Ok(())
}

fn setup(u: &mut Unstructured<'_>) -> Result<Setup> {
    // Small limits get hit often; 0 is allowed too.
    #[allow(clippy::needless_update)] // Limits may grow more fields.
    let limits = Limits {
        max_frame_size: u.int_in_range(0..=70_000)?,
        max_message_size: u.int_in_range(0..=140_000)?,
        ..Limits::default()
    };
    let deflate = if u.arbitrary::<bool>()? {
        Some(Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover: u.arbitrary()?,
            server_max_window_bits: 15,
            client_max_window_bits: u.int_in_range(8..=15)?,
        })
    } else {
        None
    };
    Ok(Setup { limits, deflate })
}

type Outcome = (Vec<Incoming>, Option<ProtocolError>);

/// Decode `wire`, appending `chunks[i]` bytes before the i-th round of decoding
/// (then the rest at once).
fn run(s: &Setup, wire: &[u8], chunks: &[usize]) -> Outcome {
    let mut d = Decoder::new(s.limits, s.deflate.map(Inflater::new));
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = wire;
    let mut i = 0;
    loop {
        let n = chunks.get(i).map_or(rest.len(), |&c| c.min(rest.len()));
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => {
                    check(s, &m);
                    out.push(m);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        if rest.is_empty() && i > chunks.len() {
            return (out, None);
        }
    }
}

/// Invariants of every decoded message.
fn check(s: &Setup, m: &Incoming) {
    match m {
        Incoming::Text(b) => {
            assert!(std::str::from_utf8(b).is_ok(), "text message is not UTF-8");
            assert!(
                b.len() <= s.limits.max_message_size,
                "message over the limit"
            );
        }
        Incoming::Binary(b) => {
            assert!(
                b.len() <= s.limits.max_message_size,
                "message over the limit"
            )
        }
        Incoming::Ping(b) | Incoming::Pong(b) => assert!(b.len() <= 125),
        Incoming::Close(Some((code, reason))) => {
            assert!(close::is_valid_received(*code));
            assert!(reason.len() <= 123 && std::str::from_utf8(reason).is_ok());
        }
        Incoming::Close(None) => {}
    }
}

/// A valid client's byte stream and what the decoder must make of it: the
/// messages, then `Some(code)` if it must fail there.
fn script(
    u: &mut Unstructured<'_>,
    s: &Setup,
) -> Result<(Vec<u8>, (Vec<Incoming>, Option<CloseCode>))> {
    let mut wire = Vec::new();
    let mut msgs = Vec::new();
    let mut deflater = Deflater::new(u.int_in_range(8..=15)?);
    let max_frame = s.limits.max_frame_size;
    let max_message = s.limits.max_message_size;
    let too_big = Some(close::MESSAGE_TOO_BIG);
    // The frame-size checks the decoder makes at each header; `partial` is the
    // reassembled size so far when inside a fragmented message. A control
    // frame between fragments is not part of the message: only its own size is
    // checked.
    let frame_ok = |len: usize, partial: Option<usize>| {
        len <= max_frame && partial.unwrap_or(0) + len <= max_message
    };
    let mut mask = [0u8; 4];
    for _ in 0..u.int_in_range(1..=12)? {
        if u.is_empty() {
            break;
        }
        u.fill_buffer(&mut mask)?;
        match u.int_in_range(0..=5)? {
            0 | 1 => {
                let (op, payload) = control(u)?;
                wire.extend(encode_masked(op, true, false, &payload, mask));
                if !frame_ok(payload.len(), None) {
                    return Ok((wire, (msgs, too_big)));
                }
                msgs.push(control_incoming(op, payload));
            }
            2 => {
                let code = u.arbitrary::<u16>()?;
                let reason_len = u.int_in_range(0..=123)?;
                let reason = String::from_utf8_lossy(u.bytes(reason_len.min(u.len()))?);
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend_from_slice(&reason.as_bytes()[..end]);
                wire.extend(encode_masked(OpCode::Close, true, false, &payload, mask));
                if !frame_ok(payload.len(), None) {
                    return Ok((wire, (msgs, too_big)));
                }
                if !close::is_valid_received(code) {
                    return Ok((wire, (msgs, Some(close::PROTOCOL_ERROR))));
                }
                let reason = Bytes::copy_from_slice(&reason.as_bytes()[..end]);
                msgs.push(Incoming::Close(Some((code, reason))));
            }
            _ => {
                let text = u.arbitrary::<bool>()?;
                let len = u.int_in_range(0..=4096)?;
                let mut payload = u.bytes(len.min(u.len()))?.to_vec();
                if text {
                    payload = String::from_utf8_lossy(&payload).into_owned().into_bytes();
                }
                // Occasionally a large, compressible message to reach the limits.
                if u.ratio(1, 8)? {
                    let n = u.int_in_range(0..=150_000)?;
                    payload.extend(std::iter::repeat_n(b'a', n));
                }
                let compressed = s.deflate.is_some() && u.arbitrary::<bool>()?;
                let body: Vec<u8> = if compressed {
                    deflater.compress(&payload).to_vec()
                } else {
                    payload.clone()
                };
                let frags = u.int_in_range(1..=4)?;
                let mut cuts: Vec<usize> = (1..frags)
                    .map(|_| u.int_in_range(0..=body.len()))
                    .collect::<Result<_>>()?;
                cuts.sort_unstable();
                cuts.push(body.len());
                let mut start = 0;
                let mut partial: Option<usize> = None;
                for (i, &end) in cuts.iter().enumerate() {
                    let first = i == 0;
                    let fin = end == body.len() && i == cuts.len() - 1;
                    let op = match (first, text) {
                        (false, _) => OpCode::Continuation,
                        (true, true) => OpCode::Text,
                        (true, false) => OpCode::Binary,
                    };
                    let frag = &body[start..end];
                    wire.extend(encode_masked(op, fin, compressed && first, frag, mask));
                    if !frame_ok(frag.len(), partial) {
                        return Ok((wire, (msgs, too_big)));
                    }
                    partial = Some(partial.unwrap_or(0) + frag.len());
                    start = end;
                    if !fin && u.ratio(1, 4)? {
                        // A ping or pong between fragments.
                        let (cop, cp) = control(u)?;
                        wire.extend(encode_masked(cop, true, false, &cp, mask));
                        if !frame_ok(cp.len(), None) {
                            return Ok((wire, (msgs, too_big)));
                        }
                        msgs.push(control_incoming(cop, cp));
                    }
                }
                if payload.len() > max_message {
                    // Only reachable for compressed messages: the inflater stops.
                    return Ok((wire, (msgs, too_big)));
                }
                let payload = Bytes::from(payload);
                msgs.push(if text {
                    Incoming::Text(payload)
                } else {
                    Incoming::Binary(payload)
                });
            }
        }
    }
    Ok((wire, (msgs, None)))
}

fn control(u: &mut Unstructured<'_>) -> Result<(OpCode, Vec<u8>)> {
    let op = if u.arbitrary::<bool>()? {
        OpCode::Ping
    } else {
        OpCode::Pong
    };
    let len = u.int_in_range(0..=125)?;
    Ok((op, u.bytes(len.min(u.len()))?.to_vec()))
}

fn control_incoming(op: OpCode, payload: Vec<u8>) -> Incoming {
    match op {
        OpCode::Ping => Incoming::Ping(payload.into()),
        _ => Incoming::Pong(payload.into()),
    }
}
