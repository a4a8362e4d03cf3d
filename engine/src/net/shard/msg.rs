//! The cross-shard message enum: what shards (and other threads, and the cluster
//! bridge) send each other through the mesh.

use super::*;

/// Messages between shards (and from other threads to a shard).
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// Room traffic: publish, sequence, deliver, interest, resume, room info.
    Room(RoomMsg),
    /// Registry questions and messages for one connection or for all.
    Registry(RegistryMsg),
    /// A presence room's member list, kept by the room's owner.
    Presence(PresenceMsg),
    /// A QUIC packet for a connection this shard owns (it reached another shard's
    /// socket).
    #[cfg(feature = "webtransport")]
    QuicPacket {
        data: Vec<u8>,
        from: std::net::SocketAddr,
    },
    /// From the cluster bridge (its own message type; see [`crate::cluster::FromBridge`]).
    #[cfg(feature = "cluster")]
    Cluster(crate::cluster::FromBridge),
    /// Look at the shutdown flag.
    Shutdown,
    /// Shutdown barrier marker (see [`Shard::run_inbox`]): the sender has stopped
    /// taking client input and, for round 1, has handled every marker of round 0.
    Quiesced { round: u8 },
    /// Run a closure on the shard (the in-memory harness's way in; tests only).
    #[cfg(test)]
    Test(crate::net::harness::OnShard),
}

/// Room traffic between shards.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    /// To the room's owner: sequence this message, keep it in history, fan it out.
    Publish {
        room: Arc<str>,
        msg: Message,
        ack: Option<AckTo>,
        /// A member not to deliver to (the sender, for "everyone but me").
        except: Option<ConnId>,
    },
    /// From the owner: deliver message `pos` of `room` to local members.
    /// `published`: when the owner sequenced it ([`crate::stats::clock_ns`]).
    Deliver {
        room: Arc<str>,
        pos: Position,
        msg: Message,
        except: Option<ConnId>,
        published: u64,
    },
    /// To the owner: shard `shard` now has (or no longer has) members of `room`.
    Interest {
        room: Arc<str>,
        shard: usize,
        interested: bool,
    },
    /// To the owner: connection `conn` resumes `room` after `since`, or (`None`)
    /// only wants the room's current position (implies interest).
    Replay {
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    },
    /// From the owner: what `conn` missed, to be sent before live messages.
    ReplayData {
        conn: ConnId,
        room: Arc<str>,
        since: Option<Position>,
        replay: Replay<Message>,
    },
    /// From the owner: the position a publish with `AckTo` was given.
    PublishAck { token: u64, pos: Position },
    /// To every shard: count local members of `room`; the owner adds the sequence.
    RoomInfo {
        room: Arc<str>,
        token: u64,
        reply_to: usize,
    },
    /// One shard's answer to `RoomInfo`.
    RoomInfoReply { token: u64, counts: RoomCounts },
    /// The publish with this ack token was refused (cluster mode: Redis unavailable).
    #[cfg(feature = "cluster")]
    PublishRefused { token: u64 },
}

/// Registry traffic between shards.
#[derive(Debug)]
pub(crate) enum RegistryMsg {
    /// Registry question for this shard's connections.
    Lookup {
        query: crate::net::registry::Lookup,
        token: u64,
        reply_to: usize,
    },
    /// One shard's answer to `Lookup`.
    LookupReply {
        token: u64,
        infos: Vec<crate::vocab::registry::ConnInfo>,
        truncated: bool,
    },
    /// A message for one connection (or session) of this shard.
    SendTo {
        to: ConnId,
        msg: Message,
        ack: Option<AckTo>,
    },
    /// Whether a `SendTo` with `ack` found its connection.
    SendToAck { token: u64, delivered: bool },
    /// To every shard: send `msg` to every local connection and session.
    BroadcastAll { msg: Message },
}

/// Presence traffic, to and from a presence room's owner.
#[derive(Debug)]
pub(crate) enum PresenceMsg {
    /// To a presence room's owner: `member` joined `room`.
    Join {
        room: Arc<str>,
        member: crate::vocab::registry::PresenceMember,
    },
    /// To a presence room's owner: `member` left `room`.
    Leave { room: Arc<str>, member: ConnId },
    /// To a presence room's owner: list its members.
    List {
        room: Arc<str>,
        token: u64,
        reply_to: usize,
    },
    /// The owner's answer to `PresenceList`.
    ListReply {
        token: u64,
        members: Vec<crate::vocab::registry::PresenceMember>,
    },
}
