//! The connection registry as applications see it: every live connection and
//! WebTransport session with its transport, rooms, address, connect time and
//! metadata, looked up by id or by room from any shard
//! ([`Connection::lookup`](crate::Connection::lookup),
//! `GET /api/connections/{id}`, `GET /api/rooms/{room}/connections`).
//!
//! There is no separate table to keep in sync: each shard answers from the
//! connections it owns, so an entry disappears the moment its connection is
//! finished, whatever ended it.

use std::net::SocketAddr;
use std::time::SystemTime;

use corecast_shards::ConnId;
use serde_json::{json, Value};

use super::meta::Meta;

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// WebSocket (RFC 6455).
    WebSocket,
    /// Server-Sent Events.
    Sse,
    /// A WebTransport session over HTTP/3.
    WebTransport,
}

impl TransportKind {
    /// `websocket`, `sse` or `webtransport`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::Sse => "sse",
            TransportKind::WebTransport => "webtransport",
        }
    }
}

/// One live connection as the registry shows it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Its id (`shard.slot.generation`).
    pub id: ConnId,
    /// Its transport.
    pub transport: TransportKind,
    /// The endpoint path it connected to.
    pub path: String,
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Rooms it is in.
    pub rooms: Vec<String>,
    /// Its metadata.
    pub meta: Meta,
}

impl ConnInfo {
    /// The shard that owns it.
    pub fn shard(&self) -> usize {
        usize::from(self.id.shard)
    }

    /// As JSON (the API's representation).
    pub fn to_json(&self) -> Value {
        let connected_ms = self
            .connected_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        json!({
            "id": self.id.to_string(),
            "transport": self.transport.as_str(),
            "shard": self.shard(),
            "path": self.path,
            "remote": self.remote.map(|a| a.to_string()),
            "connected_at_ms": connected_ms,
            "rooms": self.rooms,
            "meta": self.meta,
        })
    }
}

/// Why a registry question got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// A shard's inbox was full; nothing was asked.
    Overloaded,
    /// A shard did not answer in time.
    Timeout,
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LookupError::Overloaded => "a shard is overloaded; try again",
            LookupError::Timeout => "a shard did not answer in time",
        })
    }
}

impl std::error::Error for LookupError {}

/// One member of a presence-enabled room: its id and the metadata keys the room's
/// presence rule shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMember {
    /// The member's connection id.
    pub id: ConnId,
    /// The shown subset of its metadata.
    pub meta: Meta,
}

impl PresenceMember {
    /// `{"id": .., "meta": {..}}`.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id.to_string(), "meta": self.meta})
    }
}

/// `{"id","node","meta"}`: a presence member in cluster mode.
#[cfg(feature = "cluster")]
pub(crate) fn cluster_member_json(node: &str, member: &PresenceMember) -> serde_json::Value {
    serde_json::json!({"id": member.id.to_string(), "node": node, "meta": member.meta})
}

/// Members listed in a `snapshot` at most (the count is always exact).
pub(crate) const SNAPSHOT_MAX: usize = 1000;

/// `{"type":"presence","event":EVENT,"room",..,"member",..,"count"}`: a `join` or
/// `leave` event (alone and in cluster mode).
pub(crate) fn member_event(
    event: &str,
    room: &str,
    member: serde_json::Value,
    count: usize,
) -> serde_json::Value {
    serde_json::json!({"type": "presence", "event": event, "room": room, "member": member, "count": count})
}

/// The `snapshot` a joiner gets: at most [`SNAPSHOT_MAX`] of `members` listed,
/// `count` exact.
pub(crate) fn snapshot_event(
    room: &str,
    members: impl IntoIterator<Item = serde_json::Value>,
    count: usize,
) -> serde_json::Value {
    let listed: Vec<serde_json::Value> = members.into_iter().take(SNAPSHOT_MAX).collect();
    serde_json::json!({
        "type": "presence",
        "event": "snapshot",
        "room": room,
        "members": listed,
        "count": count,
        "truncated": count > SNAPSHOT_MAX,
    })
}

/// Members of a room on one node, by transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemberCounts {
    /// WebSocket members.
    pub(crate) websocket: u64,
    /// SSE members.
    pub(crate) sse: u64,
    /// WebTransport members.
    pub(crate) webtransport: u64,
}

impl MemberCounts {
    /// All members.
    #[cfg(feature = "cluster")]
    pub(crate) fn total(&self) -> u64 {
        self.websocket + self.sse + self.webtransport
    }
}
