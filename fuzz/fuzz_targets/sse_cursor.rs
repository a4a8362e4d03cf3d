//! SSE resume cursors (`Last-Event-ID`: `proto::sse::parse_stream_cursor`,
//! `Cursor::from_str`) and event encoding.
//!
//! Checks: whatever parses formats back to text that parses to the same value
//! (single cursors and percent-encoded per-room lists); formatted cursors are
//! valid event ids (no NUL/CR/LF); any list of distinct rooms round-trips;
//! encoded events are UTF-8, carry no CR and end with a blank line.
#![no_main]

use corecast::proto::sse::{
    self, format_per_room, parse_stream_cursor, Cursor, Event, StreamCursor, MAX_CURSOR_LEN,
    MAX_STREAM_CURSOR_LEN,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&0xff) {
        let _ = generated(&mut Unstructured::new(&data[1..]));
    } else if let Ok(text) = std::str::from_utf8(data) {
        parsed(text);
    }
});

/// Text from the wire: parse, format, parse again.
fn parsed(text: &str) {
    if let Ok(c) = text.parse::<Cursor>() {
        assert!(text.len() <= MAX_CURSOR_LEN);
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
    }
    match parse_stream_cursor(text) {
        Ok(StreamCursor::Single(c)) => {
            assert!(!text.contains('='));
            assert_eq!(text.parse::<Cursor>(), Ok(c));
            assert_eq!(
                parse_stream_cursor(&c.to_string()),
                Ok(StreamCursor::Single(c))
            );
        }
        Ok(StreamCursor::PerRoom(rooms)) => {
            assert!(text.len() <= MAX_STREAM_CURSOR_LEN);
            let mut names: Vec<&str> = rooms.iter().map(|(r, _)| r.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), rooms.len(), "a room was accepted twice");
            round_trip(&rooms);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn round_trip(rooms: &[(String, Cursor)]) {
    let pairs: Vec<(&str, Cursor)> = rooms.iter().map(|(r, c)| (r.as_str(), *c)).collect();
    let text = format_per_room(&pairs);
    assert!(
        !text.contains(['\0', '\r', '\n']),
        "not a valid event id: {text:?}"
    );
    if text.len() > MAX_STREAM_CURSOR_LEN {
        return; // Escaping can grow a list past the limit.
    }
    let back = parse_stream_cursor(&text).expect("formatted cursor list must parse");
    assert_eq!(back, StreamCursor::PerRoom(rooms.to_vec()));
}

/// Values made up by the fuzzer: format, parse back; encode an event.
fn generated(u: &mut Unstructured<'_>) -> Result<()> {
    let mut rooms: Vec<(String, Cursor)> = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let room: String = u.arbitrary()?;
        let cursor = Cursor {
            epoch: u.arbitrary()?,
            seq: u.arbitrary()?,
        };
        if !rooms.iter().any(|(r, _)| *r == room) {
            rooms.push((room, cursor));
        }
    }
    round_trip(&rooms);
    if let Some((_, c)) = rooms.first() {
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(*c));
    }
    let data_len = u.int_in_range(0..=512)?;
    let event = Event {
        ty: u.arbitrary()?,
        data: u.bytes(data_len.min(u.len()))?.to_vec().into(),
        id: u.arbitrary()?,
        retry: u.arbitrary()?,
    };
    if let Ok(bytes) = sse::encode(&event) {
        let text = std::str::from_utf8(&bytes).expect("encoded event is not UTF-8");
        assert!(!text.contains('\r'), "CR in an encoded event");
        assert!(
            text.ends_with("\n\n"),
            "event does not end with a blank line"
        );
    }
    Ok(())
}
