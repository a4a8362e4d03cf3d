//! WebTransport's sans-IO parsers: capsules on the CONNECT stream, HTTP/3
//! frames on a stream (SETTINGS, QPACK HEADERS, DATA), QUIC varints (the stream
//! and datagram headers), corecast's client records and server record bodies,
//! and the application error code mapping.
//!
//! The first input byte picks a split pattern; the rest goes to every parser.
//! Checks: the incremental readers give the same result whole and in pieces;
//! parsed values respect their limits and re-encode to something that parses
//! back to the same value.
#![no_main]

use corecast::proto::wt::capsule::{self, Capsule, CapsuleReader, MAX_REASON};
use corecast::proto::wt::frame::{self, FrameEvent, FrameReader, MAX_CONTROL_FRAME};
use corecast::proto::wt::record::{self, ClientRecord, RecordReader, ServerRecord};
use corecast::proto::wt::session::{app_code_to_h3, h3_to_app_code};
use corecast::proto::wt::varint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, data)) = data.split_first() else {
        return;
    };
    let pieces = split(data, seed);
    capsules(data, &pieces);
    frames(data, &pieces);
    records(data, &pieces, seed);
    varints(data);
    server_body(data);
    if data.len() >= 4 {
        let e = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        assert_eq!(h3_to_app_code(app_code_to_h3(e)), Some(e));
    }
    if data.len() >= 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        if let Some(e) = h3_to_app_code(u64::from_be_bytes(b)) {
            assert_eq!(app_code_to_h3(e), u64::from_be_bytes(b));
        }
    }
});

/// `data` cut into pieces whose sizes cycle through a pattern derived from `seed`.
fn split(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let sizes = [1 + (seed & 7) as usize, 1 + (seed >> 3) as usize * 13, 1];
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fn capsules(data: &[u8], pieces: &[&[u8]]) {
    let feed = |parts: &[&[u8]]| {
        let mut r = CapsuleReader::default();
        let mut out = Vec::new();
        for p in parts {
            if let Err(e) = r.feed(p, &mut out) {
                return (out, Some(e));
            }
        }
        (out, None)
    };
    let whole = feed(&[data]);
    assert_eq!(whole, feed(pieces), "capsules depend on the split");
    for c in &whole.0 {
        let bytes = match c {
            Capsule::Close { code, reason } => {
                assert!(reason.len() <= MAX_REASON);
                capsule::encode_close(*code, reason)
            }
            Capsule::Drain => capsule::encode_drain(),
        };
        let mut again = Vec::new();
        CapsuleReader::default().feed(&bytes, &mut again).unwrap();
        assert_eq!(again, [c.clone()]);
    }
}

/// Frames with DATA chunks merged (their boundaries follow the reads).
fn merged(events: Vec<FrameEvent>) -> Vec<FrameEvent> {
    let mut out: Vec<FrameEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(FrameEvent::Data(prev)), FrameEvent::Data(more)) => prev.extend(more),
            (_, e) => out.push(e),
        }
    }
    out
}

fn frames(data: &[u8], pieces: &[&[u8]]) {
    let feed = |parts: &[&[u8]]| {
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for p in parts {
            if let Err(e) = r.feed(p, &mut out) {
                return (merged(out), Some(e));
            }
        }
        (merged(out), None)
    };
    let whole = feed(&[data]);
    let split = feed(pieces);
    // A too-large frame fails as soon as its header is in; pieces may deliver
    // fewer DATA bytes before that, never different ones.
    assert_eq!(whole.1, split.1, "frame error depends on the split");
    if whole.1.is_none() {
        assert_eq!(whole.0, split.0, "frames depend on the split");
    }
    for e in &whole.0 {
        let FrameEvent::Frame { ty, payload } = e else {
            continue;
        };
        assert!(payload.len() as u64 <= MAX_CONTROL_FRAME);
        let mut bytes = Vec::new();
        frame::encode_frame(*ty, payload, &mut bytes);
        let h = frame::parse_header(&bytes).unwrap();
        assert_eq!((h.ty, h.len), (*ty, payload.len() as u64));
        match *ty {
            frame::SETTINGS => {
                let _ = frame::parse_settings(payload);
            }
            frame::HEADERS => {
                if let Some(fields) = frame::decode_fields(payload) {
                    let refs: Vec<(&str, &str)> = fields
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    let again = frame::encode_headers(&refs);
                    let h = frame::parse_header(&again).unwrap();
                    let back = frame::decode_fields(&again[h.header_len..]);
                    assert_eq!(back.as_ref(), Some(&fields), "QPACK round trip");
                }
            }
            _ => {}
        }
    }
}

fn records(data: &[u8], pieces: &[&[u8]], seed: u8) {
    let max = match seed % 3 {
        0 => 0,
        1 => 16,
        _ => 64 * 1024,
    };
    let feed = |parts: &[&[u8]]| {
        let mut r = RecordReader::new(max);
        let mut out = Vec::new();
        for p in parts {
            if let Err(e) = r.feed(p, &mut out) {
                return (out, Some(e), true);
            }
        }
        let partial = r.has_partial();
        (out, None, partial)
    };
    let whole = feed(&[data]);
    assert_eq!(whole, feed(pieces), "records depend on the split");
    for ClientRecord { kind, payload } in &whole.0 {
        assert!(payload.len() <= max);
        assert!(*kind == record::BINARY || std::str::from_utf8(payload).is_ok());
        let bytes = record::encode_client(*kind, payload);
        let mut again = Vec::new();
        RecordReader::new(max).feed(&bytes, &mut again).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].kind, &again[0].payload), (*kind, payload));
    }
    // A datagram is a record body without the length.
    if let Ok(r) = record::parse_body(data, max) {
        assert_eq!(&r.payload[..], &data[1..]);
    }
}

fn varints(data: &[u8]) {
    let Some((v, n)) = varint::decode(data) else {
        assert!(data.is_empty() || data.len() < varint::len_from_first(data[0]));
        return;
    };
    assert!(v <= varint::MAX);
    assert_eq!(n, varint::len_from_first(data[0]));
    let mut out = Vec::new();
    varint::encode(v, &mut out);
    assert_eq!(out.len(), varint::encoded_len(v));
    assert!(out.len() <= n, "the minimal encoding is never longer");
    assert_eq!(varint::decode(&out), Some((v, out.len())));
    // A stream header is two varints: stream type, then session id.
    if let Some((session, m)) = varint::decode(&data[n..]) {
        assert!(session <= varint::MAX && m <= 8);
    }
}

fn server_body(data: &[u8]) {
    let Some((kind, room, payload)) = record::decode_server_body(data) else {
        return;
    };
    let r = ServerRecord::new(room, kind, payload);
    assert_eq!(
        record::decode_server_body(r.body()),
        Some((kind, room, payload))
    );
    assert!(r.body().starts_with(r.room_prefix()));
    assert_eq!(
        varint::decode(&r.bytes).map(|(l, _)| l),
        Some(r.body().len() as u64)
    );
}
