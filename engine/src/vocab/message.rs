//! The room message: what handlers send and receive and what rooms carry, on every
//! transport (a WebSocket frame's payload, an SSE event's data, a WebTransport
//! record's body).

use bytes::Bytes;

use crate::proto::ws::OpCode;

/// A message: text or binary, whatever transport carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// UTF-8 text (the bytes are guaranteed valid UTF-8).
    Text(Bytes),
    /// Binary data.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<String>) -> Self {
        Message::Text(Bytes::from(s.into()))
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(b) | Message::Binary(b) => b,
        }
    }

    /// The payload as `&str` for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            // Text payloads are validated on receipt or built from a String.
            Message::Text(b) => std::str::from_utf8(b).ok(),
            Message::Binary(_) => None,
        }
    }

    /// The payload as shared bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Message::Text(b) | Message::Binary(b) => b,
        }
    }

    /// The same message in an allocation of its own. A received message is a
    /// slice of the shard's read arena; kept for long (history), it would hold
    /// the whole arena block alive, which no byte budget would see.
    pub(crate) fn detached(&self) -> Self {
        match self {
            Message::Text(b) => Message::Text(Bytes::copy_from_slice(b)),
            Message::Binary(b) => Message::Binary(Bytes::copy_from_slice(b)),
        }
    }

    pub(crate) fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }
}

/// History weighs a message by its payload.
impl corecast_shards::Weigh for Message {
    fn weight(&self) -> usize {
        self.as_bytes().len()
    }
}

/// Where to report the position a published message was given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckTo {
    pub(crate) shard: usize,
    pub(crate) token: u64,
}
