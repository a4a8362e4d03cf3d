//! [`ClientHandle`]: the one vocabulary every connection handle speaks —
//! WebSocket and SSE ([`Connection`](super::connection::Connection)) and
//! WebTransport ([`WtSession`](super::wt_session::WtSession)) — and that a
//! routed handler's [`Ctx`](crate::Ctx) speaks too.
//!
//! Each handle implements the few methods where the transports really differ
//! (how a message is queued, how rooms are held, how a close is sent); everything
//! else (addressing other connections, publishing, metadata, lookups) is written
//! once here over the shard the handle lives on.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use corecast_shards::ConnId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::net::shard::{BroadcastError, Shard};
use crate::net::tcp_conn::SendError;
use crate::proto::http;
use crate::vocab::message::Message;
use crate::vocab::meta::{Meta, MetaCell, MetaError};
use crate::vocab::registry::{ConnInfo, LookupError, PresenceMember, TransportKind};

pub(crate) mod sealed {
    use super::*;

    /// What the shared methods of [`ClientHandle`] are built from. Its fields
    /// are engine internals, so no type outside the crate can implement the
    /// trait or read them.
    pub struct Parts<'a> {
        /// The shard the connection lives on.
        pub(crate) shard: &'a Rc<Shard>,
        /// The connection's metadata.
        pub(crate) meta: &'a MetaCell,
        /// The raw query string (without `?`).
        pub(crate) query: &'a str,
        /// The handle itself, for [`Ctx`](crate::Ctx)'s transport-specific
        /// accessors.
        pub(crate) any: &'a dyn Any,
    }

    /// Seals [`ClientHandle`]: only the crate's handle types implement it.
    pub trait Engine {
        /// The engine state behind the handle.
        fn parts(&self) -> Parts<'_>;
    }
}

/// A handle to one connected client, whatever its transport: its identity, its
/// rooms, sending to it and from it, its metadata and closing it.
///
/// Implemented by [`Connection`](crate::Connection) (WebSocket and SSE; also
/// reached through [`WsConn`](crate::WsConn) and [`SseStream`](crate::SseStream))
/// and [`WtSession`](crate::WtSession); [`Ctx`](crate::Ctx) offers the same
/// methods. Bring it into scope with `use corecast::ClientHandle` (or
/// `corecast::prelude::*`). Transport-specific calls stay on the handle types
/// (`Connection::join_room_resuming`, `WtSession::join_with`, WebTransport
/// streams and datagrams).
pub trait ClientHandle: sealed::Engine {
    /// The connection's registry id, unique on this node: `(shard, slot,
    /// generation)`.
    fn id(&self) -> ConnId;

    /// The request path, e.g. `/ws/chat` (without the query).
    fn path(&self) -> &str;

    /// The client's address (`None` once a TCP socket is gone).
    fn remote_addr(&self) -> Option<SocketAddr>;

    /// When the connection was opened.
    fn connected_at(&self) -> SystemTime;

    /// WebSocket, SSE or WebTransport.
    fn transport(&self) -> TransportKind;

    /// This connection as the registry shows it.
    fn info(&self) -> ConnInfo;

    /// Queue `msg` to this client. WebSocket: one frame, coalesced with whatever
    /// else is queued; SSE: an event without an id; WebTransport: a record on
    /// the session's reliable delivery stream. A full queue closes the client as
    /// a slow consumer ([`SendError::SlowConsumer`]).
    fn send(&self, msg: Message) -> Result<(), SendError>;

    /// Join `room`: its messages reach this client (WebTransport: on the reliable
    /// delivery stream). False if already a member or closed.
    fn join(&self, room: &str) -> bool;

    /// Leave `room`.
    fn leave(&self, room: &str);

    /// The rooms this client is in.
    fn rooms(&self) -> Vec<Arc<str>>;

    /// Close with `code` and `reason` (a WebSocket close code; a WebTransport
    /// session error code; an SSE stream just ends).
    fn close(&self, code: u16, reason: &str);

    /// True once the client is closing or closed.
    fn is_closed(&self) -> bool;

    /// The shard the connection lives on.
    fn shard(&self) -> usize {
        self.parts().shard.id
    }

    /// Query parameters in order (percent-decoded); repeated keys appear repeatedly.
    fn query(&self) -> Vec<(String, String)> {
        http::parse_query(self.parts().query)
    }

    /// Every value of query parameter `key`, in order.
    fn query_all(&self, key: &str) -> Vec<String> {
        http::query_values(self.parts().query, key)
    }

    /// The first value of query parameter `key`.
    fn query_get(&self, key: &str) -> Option<String> {
        self.query_all(key).into_iter().next()
    }

    /// True if this client is in `room`.
    fn in_room(&self, room: &str) -> bool {
        self.rooms().iter().any(|r| &**r == room)
    }

    /// Send `msg` to connection `to`, on any shard and of any transport
    /// (fire-and-forget: an id that has gone is counted, not reported).
    fn send_to(&self, to: ConnId, msg: Message) -> Result<(), BroadcastError> {
        self.parts().shard.send_to(to, msg)
    }

    /// Cluster mode: send `msg` to connection `to` of node `node` (this node's
    /// own id works too); fire-and-forget. [`BroadcastError::Unavailable`]
    /// without a cluster or while Redis is unreachable.
    fn send_to_node(&self, node: &str, to: ConnId, msg: Message) -> Result<(), BroadcastError> {
        self.parts().shard.send_to_node(node, to, msg)
    }

    /// This node's id in cluster mode (`None` alone): with [`ClientHandle::id`]
    /// it names this client across the cluster (`NODE:SHARD.SLOT.GEN`).
    fn node_id(&self) -> Option<String> {
        self.parts().shard.node_id().map(str::to_string)
    }

    /// Publish `msg` to every member of `room` on every shard and transport (this
    /// client too, if it is a member), in the room's single order.
    fn broadcast(&self, room: &str, msg: Message) -> Result<(), BroadcastError> {
        self.parts()
            .shard
            .publish_from(room, msg, None, Some(self.id()))
    }

    /// Publish `msg` to every member of `room` except this client.
    fn broadcast_except_me(&self, room: &str, msg: Message) -> Result<(), BroadcastError> {
        self.parts()
            .shard
            .publish_except(room, msg, Some(self.id()))
    }

    /// Publish `msg` to every room this client is in.
    fn broadcast_to_my_rooms(&self, msg: &Message) -> Result<(), BroadcastError> {
        self.parts()
            .shard
            .publish_to_rooms(self.rooms(), msg, Some(self.id()))
    }

    /// Send `msg` to every connection and session of the server, on every shard
    /// (not sequenced, not kept in history).
    fn broadcast_all(&self, msg: Message) -> Result<(), BroadcastError> {
        self.parts().shard.broadcast_all(msg)
    }

    /// Attach `value` (anything that serializes to JSON) under `key`; the
    /// registry and presence show it on every shard.
    fn set_meta<T: Serialize>(&self, key: &str, value: T) -> Result<(), MetaError>
    where
        Self: Sized,
    {
        self.parts().meta.set(key, value)
    }

    /// The value under `key` as a `T`, if present and of that shape.
    fn meta<T: DeserializeOwned>(&self, key: &str) -> Option<T>
    where
        Self: Sized,
    {
        self.parts().meta.get(key)
    }

    /// Remove the value under `key`.
    fn remove_meta(&self, key: &str) -> bool {
        self.parts().meta.remove(key)
    }

    /// A copy of all metadata.
    fn meta_all(&self) -> Meta {
        self.parts().meta.snapshot()
    }

    /// Look up a live connection by id, on any shard.
    fn lookup(&self, id: ConnId) -> impl Future<Output = Result<Option<ConnInfo>, LookupError>>
    where
        Self: Sized,
    {
        self.parts().shard.lookup_conn(id)
    }

    /// Live members of `room` on every shard (at most `limit`); the flag says
    /// whether there were more.
    fn room_members(
        &self,
        room: &str,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<ConnInfo>, bool), LookupError>>
    where
        Self: Sized,
    {
        self.parts().shard.lookup_room(room, limit)
    }

    /// The presence list of `room` (empty unless `presence.rooms` covers it).
    fn presence(&self, room: &str) -> impl Future<Output = Result<Vec<PresenceMember>, LookupError>>
    where
        Self: Sized,
    {
        self.parts().shard.presence_list(room)
    }
}
