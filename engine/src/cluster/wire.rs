//! The payload format of room channels (see docs/PROTOCOL.md, "Cluster").
//!
//! Room channel: `<epoch> <seq> <origin node> <except conn id or -> <t|b> <unix micros>\n<payload>`.
//! The publish script builds it from the header (everything after `<seq> `) that
//! the bridge passes in; the room's stream keeps the header in field `h` and the
//! payload in field `d`. Direct channel: `<conn id> <t|b>\n<payload>`.
//!
//! Decoding never panics: anything malformed is a [`WireError`] naming the part.

use bytes::Bytes;
use corecast_shards::ConnId;

use crate::vocab::message::Message;

/// Why a channel payload or stream entry did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireError {
    /// No `\n` between the header and the payload.
    NoNewline,
    /// The header is not valid UTF-8 or lacks a field.
    MissingField(&'static str),
    /// A field did not parse.
    BadField(&'static str),
    /// A text payload is not valid UTF-8.
    BadText,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::NoNewline => f.write_str("no newline after the header"),
            WireError::MissingField(name) => write!(f, "header field {name} missing"),
            WireError::BadField(name) => write!(f, "header field {name} malformed"),
            WireError::BadText => f.write_str("text payload is not valid UTF-8"),
        }
    }
}

/// The per-message header (without epoch and seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The node that published the message.
    pub(crate) origin: String,
    /// The member of `origin` not to deliver to.
    pub(crate) except: Option<ConnId>,
    /// Binary (`b`) or text (`t`).
    pub(crate) binary: bool,
    /// When it was published (unix micros, the publishing node's clock).
    pub(crate) micros: u64,
}

/// A room channel message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomMsg {
    /// The room's epoch.
    pub(crate) epoch: u64,
    /// The message's sequence number in that epoch.
    pub(crate) seq: u64,
    /// Everything else about it.
    pub(crate) header: Header,
    /// The message.
    pub(crate) msg: Message,
}

/// The header line the bridge hands the publish script.
pub(crate) fn encode_header(
    origin: &str,
    except: Option<ConnId>,
    msg: &Message,
    micros: u64,
) -> String {
    let kind = match msg {
        Message::Text(_) => 't',
        Message::Binary(_) => 'b',
    };
    match except {
        Some(c) => format!("{origin} {c} {kind} {micros}"),
        None => format!("{origin} - {kind} {micros}"),
    }
}

/// Parse a header line (the stream's `h` field).
pub(crate) fn decode_header(h: &[u8]) -> Result<Header, WireError> {
    let h = std::str::from_utf8(h).map_err(|_| WireError::BadField("header"))?;
    let mut parts = h.split(' ');
    let origin = parts.next().filter(|s| !s.is_empty());
    let origin = origin.ok_or(WireError::MissingField("origin"))?;
    let except = match parts.next().ok_or(WireError::MissingField("except"))? {
        "-" => None,
        s => Some(s.parse().map_err(|_| WireError::BadField("except"))?),
    };
    let binary = match parts.next().ok_or(WireError::MissingField("kind"))? {
        "t" => false,
        "b" => true,
        _ => return Err(WireError::BadField("kind")),
    };
    let micros = parts.next().ok_or(WireError::MissingField("time"))?;
    let micros = micros.parse().map_err(|_| WireError::BadField("time"))?;
    if parts.next().is_some() {
        return Err(WireError::BadField("header"));
    }
    Ok(Header {
        origin: origin.to_string(),
        except,
        binary,
        micros,
    })
}

/// The message a payload of this kind carries (text is checked for UTF-8).
pub(crate) fn message(binary: bool, payload: Bytes) -> Result<Message, WireError> {
    if binary {
        Ok(Message::Binary(payload))
    } else if std::str::from_utf8(&payload).is_ok() {
        Ok(Message::Text(payload))
    } else {
        Err(WireError::BadText)
    }
}

/// Split `<line>\n<payload>`.
fn split_line(data: &Bytes) -> Result<(&[u8], Bytes), WireError> {
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError::NoNewline)?;
    Ok((&data[..nl], data.slice(nl + 1..)))
}

/// Decode a room channel message (the payload is a slice of `data`, no copy).
pub(crate) fn decode_room(data: &Bytes) -> Result<RoomMsg, WireError> {
    let (line, payload) = split_line(data)?;
    let mut it = line.splitn(3, |&b| b == b' ');
    let epoch = parse_u64(it.next(), "epoch")?;
    let seq = parse_u64(it.next(), "seq")?;
    let header = decode_header(it.next().ok_or(WireError::MissingField("origin"))?)?;
    let msg = message(header.binary, payload)?;
    Ok(RoomMsg {
        epoch,
        seq,
        header,
        msg,
    })
}

fn parse_u64(field: Option<&[u8]>, name: &'static str) -> Result<u64, WireError> {
    let field = field.ok_or(WireError::MissingField(name))?;
    std::str::from_utf8(field)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(WireError::BadField(name))
}

/// What the publish script sends on the channel (the bridge itself never does;
/// tests and tools use it to speak the format).
#[cfg(test)]
pub(crate) fn encode_room(epoch: u64, seq: u64, header: &str, msg: &Message) -> Vec<u8> {
    let mut out = format!("{epoch} {seq} {header}\n").into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// A direct channel message for connection `conn`.
pub(crate) fn encode_direct(conn: ConnId, msg: &Message) -> Vec<u8> {
    let kind = match msg {
        Message::Text(_) => 't',
        Message::Binary(_) => 'b',
    };
    let mut out = format!("{conn} {kind}\n").into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// Decode a direct channel message.
pub(crate) fn decode_direct(data: &Bytes) -> Result<(ConnId, Message), WireError> {
    let (line, payload) = split_line(data)?;
    let line = std::str::from_utf8(line).map_err(|_| WireError::BadField("header"))?;
    let (conn, kind) = line
        .split_once(' ')
        .ok_or(WireError::MissingField("kind"))?;
    let conn = conn.parse().map_err(|_| WireError::BadField("conn"))?;
    let binary = match kind {
        "t" => false,
        "b" => true,
        _ => return Err(WireError::BadField("kind")),
    };
    Ok((conn, message(binary, payload)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(shard: u16, slot: u32, generation: u32) -> ConnId {
        ConnId {
            shard,
            slot,
            generation,
        }
    }

    #[test]
    fn room_message_round_trips_text_and_binary() {
        for (msg, except) in [
            (Message::text("hello\nworld"), None),
            (
                Message::binary(vec![0u8, 10, 255, b' ']),
                Some(conn(1, 22, 3)),
            ),
            (Message::text(""), Some(conn(0, 0, 0))),
        ] {
            let header = encode_header("node-a", except, &msg, 1_700_000_000_123_456);
            let data = Bytes::from(encode_room(42, 7, &header, &msg));
            let got = decode_room(&data).unwrap();
            assert_eq!(got.epoch, 42);
            assert_eq!(got.seq, 7);
            assert_eq!(got.header.origin, "node-a");
            assert_eq!(got.header.except, except);
            assert_eq!(got.header.micros, 1_700_000_000_123_456);
            assert_eq!(got.msg, msg);
        }
    }

    #[test]
    fn header_alone_round_trips() {
        let msg = Message::binary(vec![1u8]);
        let h = encode_header("b_1", Some(conn(3, 4, 5)), &msg, 9);
        assert_eq!(h, "b_1 3.4.5 b 9");
        let got = decode_header(h.as_bytes()).unwrap();
        assert_eq!(
            got,
            Header {
                origin: "b_1".into(),
                except: Some(conn(3, 4, 5)),
                binary: true,
                micros: 9
            }
        );
    }

    #[test]
    fn malformed_room_messages_are_errors_not_panics() {
        let cases: &[(&[u8], WireError)] = &[
            (b"", WireError::NoNewline),
            (b"1 2 a - t 5", WireError::NoNewline),
            (b"x 2 a - t 5\n", WireError::BadField("epoch")),
            (b"1 -2 a - t 5\n", WireError::BadField("seq")),
            (
                b"1 99999999999999999999 a - t 5\n",
                WireError::BadField("seq"),
            ),
            (b"1\n", WireError::MissingField("seq")),
            (b"1 2\n", WireError::MissingField("origin")),
            (b"1 2 a\n", WireError::MissingField("except")),
            (b"1 2 a 1.2 t 5\n", WireError::BadField("except")),
            (b"1 2 a - x 5\n", WireError::BadField("kind")),
            (b"1 2 a - t\n", WireError::MissingField("time")),
            (b"1 2 a - t soon\n", WireError::BadField("time")),
            (b"1 2 a - t 5 extra\n", WireError::BadField("header")),
            (b"1 2  - t 5\n", WireError::MissingField("origin")),
            (b"1 2 a - t 5\n\xff\xfe", WireError::BadText),
            (b"1 2 \xff - t 5\n", WireError::BadField("header")),
        ];
        for (data, want) in cases {
            let got = decode_room(&Bytes::copy_from_slice(data));
            assert_eq!(got, Err(*want), "{:?}", String::from_utf8_lossy(data));
        }
        // Binary payloads may be anything.
        let ok = decode_room(&Bytes::from_static(b"1 2 a - b 5\n\xff\n")).unwrap();
        assert_eq!(ok.msg, Message::binary(&b"\xff\n"[..]));
    }

    #[test]
    fn direct_messages_round_trip_and_reject_garbage() {
        let msg = Message::text("hi there");
        let data = Bytes::from(encode_direct(conn(2, 5, 1), &msg));
        assert_eq!(&data[..], b"2.5.1 t\nhi there");
        assert_eq!(decode_direct(&data).unwrap(), (conn(2, 5, 1), msg));
        let bin = Message::binary(vec![0u8, 1]);
        let data = Bytes::from(encode_direct(conn(0, 1, 2), &bin));
        assert_eq!(decode_direct(&data).unwrap(), (conn(0, 1, 2), bin));
        for bad in [
            &b"2.5.1 t"[..],
            b"2.5 t\nx",
            b"2.5.1\nx",
            b"2.5.1 q\nx",
            b"2.5.1 t\n\xc3",
        ] {
            assert!(decode_direct(&Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
