//! Per-transport encodings of one room message, each made at most once per shard
//! and shared by every member that uses it, plus the gap signal sent when a resume
//! cannot be served exactly.

use base64::Engine as _;
use bytes::Bytes;
use corecast_shards::{FrameClass, GapReason, Overflow, Position, Replay};

use super::shard::Shard;
use super::tcp_conn::{Conn, Transport};
use crate::proto::sse::{self, Cursor};
use crate::proto::ws::frame::{self, OpCode};
#[cfg(feature = "webtransport")]
use crate::proto::wt::record::{self, ServerRecord};
use crate::vocab::message::Message;

/// The cursor text of a position (`<epoch hex>:<seq>`).
pub(crate) fn cursor(pos: Position) -> Cursor {
    Cursor {
        epoch: pos.epoch,
        seq: pos.seq,
    }
}

/// How a member's queue treats messages of `room`: its slow-consumer policy
/// (`slow_consumers` config, first matching pattern) and, for the droppable
/// policies, a key naming the room for conflation. Resolved once per room per
/// delivery, not per member.
pub(crate) fn frame_class(config: &crate::config::SlowConsumersConfig, room: &str) -> FrameClass {
    let policy = if config.rooms.is_empty() {
        config.policy
    } else {
        config.policy_for(room)
    };
    match policy.overflow() {
        Overflow::Disconnect => FrameClass::PINNED,
        p => {
            use std::hash::{Hash, Hasher};
            // A fixed-key hasher: the key only has to tell this connection's rooms apart.
            let mut h = std::hash::DefaultHasher::new();
            room.hash(&mut h);
            FrameClass::room(p, h.finish())
        }
    }
}

/// Lazily built encodings of one message of one room.
pub(crate) struct Encodings<'a> {
    shard: &'a Shard,
    room: &'a str,
    /// The room's slow-consumer class for every member's queue.
    pub(crate) class: FrameClass,
    pos: Position,
    msg: &'a Message,
    ws: Option<Bytes>,
    ws_deflate: Option<Bytes>,
    ws_envelope: Option<Bytes>,
    sse: Option<Bytes>,
    #[cfg(feature = "webtransport")]
    wt: Option<ServerRecord>,
}

impl<'a> Encodings<'a> {
    pub(crate) fn new(shard: &'a Shard, room: &'a str, pos: Position, msg: &'a Message) -> Self {
        Self {
            shard,
            room,
            class: frame_class(&shard.shared.config.slow_consumers, room),
            pos,
            msg,
            ws: None,
            ws_deflate: None,
            ws_envelope: None,
            sse: None,
            #[cfg(feature = "webtransport")]
            wt: None,
        }
    }

    /// The WebTransport record (reliable stream bytes; the datagram body is a
    /// slice of it).
    #[cfg(feature = "webtransport")]
    pub(crate) fn for_wt(&mut self) -> &ServerRecord {
        let (room, msg) = (self.room, self.msg);
        self.wt.get_or_insert_with(|| {
            let kind = match msg {
                Message::Text(_) => record::TEXT,
                Message::Binary(_) => record::BINARY,
            };
            ServerRecord::new(room, kind, msg.as_bytes())
        })
    }

    /// The bytes to queue for `conn`.
    pub(crate) fn for_conn(&mut self, conn: &Conn) -> Bytes {
        let (shard, msg, room, pos) = (self.shard, self.msg, self.room, self.pos);
        match conn.transport {
            Transport::WebSocket if conn.compressed => self
                .ws_deflate
                .get_or_insert_with(|| shard.compress_frame(msg.opcode(), msg.as_bytes()))
                .clone(),
            Transport::WebSocket => self
                .ws
                .get_or_insert_with(|| frame::encode(msg.opcode(), false, msg.as_bytes()))
                .clone(),
            Transport::WebSocketEnvelope => self
                .ws_envelope
                .get_or_insert_with(|| {
                    frame::encode(OpCode::Text, false, envelope(room, pos, msg).as_bytes())
                })
                .clone(),
            Transport::SseMultiRoom => {
                // A multi-room stream's id carries every room's position, so it is
                // this connection's own (Last-Event-ID must resume all its rooms).
                sse_event(msg, conn.advance_cursor(room, pos))
            }
            Transport::Sse => self
                .sse
                .get_or_insert_with(|| sse_event(msg, cursor(pos).to_string()))
                .clone(),
        }
    }
}

/// A message for one connection only (a reply, a `send_to`), framed for its
/// transport: a WebSocket frame (compressed when negotiated and worth it), or an
/// SSE event without an id (it is not a room position).
pub(crate) fn direct_frame(shard: &Shard, conn: &Conn, msg: &Message) -> Bytes {
    /// Smaller payloads are not worth compressing.
    const COMPRESS_MIN: usize = 64;
    if conn.is_sse() {
        return sse_event_without_id(msg);
    }
    if conn.compressed && msg.as_bytes().len() >= COMPRESS_MIN {
        shard.compress_frame(msg.opcode(), msg.as_bytes())
    } else {
        frame::encode(msg.opcode(), false, msg.as_bytes())
    }
}

/// `{"room":..,"id":..,"data":..}` (binary data base64 with `"encoding":"base64"`).
fn envelope(room: &str, pos: Position, msg: &Message) -> String {
    let room = serde_json::to_string(room).unwrap_or_default();
    let id = cursor(pos);
    match msg {
        Message::Text(_) => {
            let data = serde_json::to_string(msg.as_text().unwrap_or_default()).unwrap_or_default();
            format!("{{\"room\":{room},\"id\":\"{id}\",\"data\":{data}}}")
        }
        Message::Binary(b) => {
            let data = base64::engine::general_purpose::STANDARD.encode(b);
            format!(
                "{{\"room\":{room},\"id\":\"{id}\",\"encoding\":\"base64\",\"data\":\"{data}\"}}"
            )
        }
    }
}

fn sse_event_without_id(msg: &Message) -> Bytes {
    sse_event_with(msg, None)
}

/// A room message as an SSE event: text as `data`, binary base64 as `event: binary`.
fn sse_event(msg: &Message, id: String) -> Bytes {
    sse_event_with(msg, Some(id))
}

fn sse_event_with(msg: &Message, id: Option<String>) -> Bytes {
    let (ty, data) = match msg {
        Message::Text(b) => (None, b.clone()),
        Message::Binary(b) => (
            Some("binary".to_string()),
            Bytes::from(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    };
    let event = sse::Event {
        ty,
        data,
        id,
        retry: None,
    };
    // Ids we format never hold a newline or NUL, so encoding cannot fail.
    sse::encode(&event).unwrap_or_default()
}

/// The explicit signal that messages after `since` are missing, sent before the
/// replay: a JSON text frame on WebSocket, an `event: gap` on SSE.
pub(crate) fn gap_signal(
    conn: &Conn,
    room: &str,
    since: Position,
    reason: GapReason,
    replay: &Replay<Message>,
) -> Bytes {
    let reason = match reason {
        GapReason::EpochChanged => "epoch_changed",
        GapReason::Expired => "expired",
        GapReason::Unknown => "unknown_cursor",
    };
    let json = format!(
        "{{\"type\":\"gap\",\"room\":{},\"reason\":\"{reason}\",\"requested\":\"{}\",\"first_available\":\"{}\",\"current\":\"{}\"}}",
        serde_json::to_string(room).unwrap_or_default(),
        cursor(since),
        cursor(Position {
            epoch: replay.epoch,
            seq: replay.first_available
        }),
        cursor(Position {
            epoch: replay.epoch,
            seq: replay.upto
        }),
    );
    if conn.is_sse() {
        let event = sse::Event {
            ty: Some("gap".to_string()),
            data: Bytes::from(json),
            id: None,
            retry: None,
        };
        sse::encode(&event).unwrap_or_default()
    } else {
        frame::encode(OpCode::Text, false, json.as_bytes())
    }
}
