//! Cluster: several nodes share rooms through Redis.
//!
//! One **bridge thread** per node owns the Redis connections (a current-thread tokio
//! runtime driving the `redis` crate). Shards talk to it through one bounded
//! crossbeam channel plus a doorbell ([`ClusterLink`]); it talks back through the
//! same bounded mesh channels + eventfd doorbells the shards use between
//! themselves ([`crate::net::shard::FromBridge`]).
//!
//! The path of a room message in cluster mode:
//! 1. A shard hands the publish to the bridge ([`ToBridge::Publish`]).
//! 2. The bridge runs one Lua script: it assigns the room's next sequence number,
//!    appends the message to the room's capped Redis Stream and `PUBLISH`es it on
//!    the room's channel — atomically, so every node sees one order.
//! 3. Every node subscribed to that channel (those with local members of the room,
//!    the publisher's own node included) receives it once; its bridge drops
//!    duplicates, fills gaps from the stream, and hands it to the room's owner
//!    shard ([`FromBridge::Deliver`]), which fans it out as it does a local
//!    message.

pub(crate) mod bridge;
mod ctx;
mod heartbeat;
mod keys;
mod ops;
mod presence;
mod scripts;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corecast_shards::{ConnId, HistoryLimits, Position};

use crate::vocab::message::AckTo;
use crate::vocab::message::Message;

pub(crate) use crate::vocab::registry::MemberCounts;

/// What shards ask of the bridge.
#[derive(Debug)]
pub(crate) enum ToBridge {
    /// Sequence `msg` in Redis and publish it to every node with members of `room`.
    /// Success: `ack` (if any) gets [`FromBridge::PublishAck`]. Failure: `ack` gets
    /// [`FromBridge::PublishRefused`], else `origin` (if any) gets
    /// [`FromBridge::PublishFailed`]; always counted in `publish_failures`.
    Publish {
        room: Arc<str>,
        msg: Message,
        /// A member of this node not to deliver to ("everyone but me").
        except: Option<ConnId>,
        /// The connection that published it, to tell about a failure.
        origin: Option<ConnId>,
        ack: Option<AckTo>,
        /// The room's history limits (stream length, age).
        limits: HistoryLimits,
    },
    /// The node has its first member of `room` (sent by the room's owner shard):
    /// subscribe to the room's channel, then answer with
    /// [`FromBridge::Sync`] (the room's position at subscription).
    Subscribe { room: Arc<str> },
    /// The node's last member of `room` left (sent by the owner): unsubscribe.
    Unsubscribe { room: Arc<str> },
    /// The owner wants the room's history after `since` (or from its start when
    /// `since` is from another epoch) up to and including `upto`, for a resuming
    /// member `conn`. Answer: [`FromBridge::Fetched`] to `reply_to`.
    Fetch {
        room: Arc<str>,
        since: Position,
        upto: u64,
        conn: ConnId,
        reply_to: usize,
        limits: HistoryLimits,
    },
    /// Shard `shard`'s member counts of rooms that changed since its last report
    /// (all zero: no member left there). The bridge sums shards and writes the
    /// node's counts to Redis on its heartbeat.
    Counts {
        shard: usize,
        rooms: Vec<(Arc<str>, MemberCounts)>,
    },
    /// A member of this node joined presence room `room` (from the room's owner
    /// shard). `member` is `{"id","node","meta"}`. The bridge records it, sends
    /// `member_id` a snapshot of the room's members on every live node, then
    /// publishes the `join` event (with the cluster-wide count) through the room.
    PresenceJoin {
        room: Arc<str>,
        member_id: ConnId,
        member: serde_json::Value,
    },
    /// A member of this node left presence room `room`: forget it, publish `leave`.
    PresenceLeave { room: Arc<str>, member_id: ConnId },
    /// A question answered with [`FromBridge::Answer`] to `reply_to`.
    Query {
        token: u64,
        reply_to: usize,
        query: Query,
    },
    /// Graceful shutdown: delete this node's liveness key and stop.
    Shutdown,
}

/// Questions for the cluster.
#[derive(Debug)]
pub(crate) enum Query {
    /// Member counts of `room` on the *other* live nodes.
    Counts(Arc<str>),
    /// Presence members of `room` on every live node (`{"id","node","meta"}`).
    Presence(Arc<str>),
    /// Send `msg` to connection `conn` of node `node`.
    SendTo {
        node: String,
        conn: ConnId,
        msg: Message,
    },
}

/// Answers to [`Query`].
#[derive(Debug)]
pub(crate) enum Answer {
    /// Per other live node: its id and counts.
    Counts(Vec<(String, MemberCounts)>),
    /// Presence members (at most 10,000), and whether the list was cut.
    Presence(Vec<serde_json::Value>, bool),
    /// Whether the target node is live and took the message.
    Sent(bool),
    /// Redis could not be asked (down, timed out).
    Unavailable,
}

/// A room's history as the bridge read it from Redis for a resume.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The room's epoch in Redis.
    pub(crate) epoch: u64,
    /// The oldest sequence number still kept (after age filtering); `upto + 1`
    /// when nothing is kept.
    pub(crate) first_available: u64,
    /// Messages after the cursor (from the start when the cursor's epoch is not
    /// `epoch`), up to `upto`, in order.
    pub(crate) messages: Vec<(u64, Message)>,
}

/// What the bridge tells a shard: the bridge's own message type, so this module
/// knows nothing of the shards' inbox enum (the engine wraps it).
#[derive(Debug)]
pub(crate) enum FromBridge {
    /// To a room's owner: the room's position in Redis when this node
    /// (re)subscribed to it; messages after it arrive as `Deliver`.
    Sync {
        room: Arc<str>,
        epoch: u64,
        seq: u64,
    },
    /// To a room's owner: a message Redis sequenced at `pos` (per room: in order,
    /// no duplicates; a new epoch restarts the sequence). `except` is set only for
    /// publishes made on this node.
    Deliver {
        room: Arc<str>,
        pos: Position,
        msg: Message,
        except: Option<ConnId>,
    },
    /// To a room's owner: history read for `conn`'s resume (`None`: Redis could
    /// not be read).
    Fetched {
        room: Arc<str>,
        conn: ConnId,
        since: Position,
        upto: u64,
        fetched: Option<Fetched>,
    },
    /// The position an acknowledged publish was given.
    PublishAck { token: u64, pos: Position },
    /// The publish with this ack token failed.
    PublishRefused { token: u64 },
    /// A publish by `conn` to `room` failed.
    PublishFailed { conn: ConnId, room: Arc<str> },
    /// The answer to a [`ToBridge::Query`].
    Answer { token: u64, answer: Answer },
    /// A message for one local connection (a presence snapshot, a direct message
    /// from another node).
    SendTo { to: ConnId, msg: Message },
}

/// The shards as the bridge sees them: numbered inboxes that take a
/// [`FromBridge`] or hand it back when full (the engine implements it over the
/// shard mesh).
pub(crate) trait ShardPort: Send {
    /// How many shards there are.
    fn shards(&self) -> usize;
    /// Queue `msg` for shard `shard` and wake it, or give `msg` back when its
    /// inbox is full.
    #[allow(clippy::result_large_err)]
    fn send(&self, shard: usize, msg: FromBridge) -> Result<(), FromBridge>;
}

/// Cluster counters (all nodes' bridge activity is per process).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// 1 while the bridge is connected to Redis (subscriptions restored).
    pub connected: AtomicU64,
    /// Messages sequenced and published through Redis by this node.
    pub publishes: AtomicU64,
    /// Publishes refused or failed (Redis down, bridge queue full, script error).
    pub publish_failures: AtomicU64,
    /// Room messages received from Redis and handed to the owner shards.
    pub messages_in: AtomicU64,
    /// Room messages received twice (dropped).
    pub duplicates: AtomicU64,
    /// Messages fetched from a room's stream to fill a gap in the channel.
    pub gap_filled: AtomicU64,
    /// Messages missing from a gap that the stream no longer held.
    pub gap_lost: AtomicU64,
    /// Successful reconnections to Redis after a lost connection.
    pub reconnects: AtomicU64,
    /// Redis errors (connection or command).
    pub redis_errors: AtomicU64,
    /// Room channels subscribed.
    pub subscribed_rooms: AtomicU64,
    /// Messages `send_to` delivered from other nodes.
    pub direct_in: AtomicU64,
    /// Dead nodes whose presence and counts this node removed.
    pub nodes_reaped: AtomicU64,
}

impl ClusterStats {
    /// Add `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The shards' handle on the bridge.
pub(crate) struct ClusterLink {
    /// This node's id.
    pub(crate) node_id: Arc<str>,
    tx: crossbeam_channel::Sender<ToBridge>,
    bell: Arc<tokio::sync::Notify>,
    connected: Arc<AtomicBool>,
    /// Counters (shared with the bridge thread).
    pub(crate) stats: Arc<ClusterStats>,
}

impl ClusterLink {
    /// The `corecast_cluster_*` families of this node, for `/metrics`.
    pub(crate) fn families(&self) -> crate::metrics::ClusterView {
        Arc::new(ClusterFamilies {
            node: self.node_id.clone(),
            stats: self.stats.clone(),
        })
    }

    /// Queue `cmd` for the bridge and ring its doorbell; gives it back when the
    /// queue is full.
    // The refused command comes back whole (as crossbeam's `try_send` does), so
    // the caller can keep it in order; it is moved, not copied.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, cmd: ToBridge) -> Result<(), ToBridge> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.bell.notify_one();
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
        }
    }

    /// Whether Redis is reachable right now (publishes are refused when not).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// The bridge thread's end of the link.
pub(crate) struct BridgeEnd {
    /// Commands from the shards.
    pub(crate) rx: crossbeam_channel::Receiver<ToBridge>,
    /// Rung after each command.
    pub(crate) bell: Arc<tokio::sync::Notify>,
    /// Set while connected.
    pub(crate) connected: Arc<AtomicBool>,
    /// Counters.
    pub(crate) stats: Arc<ClusterStats>,
}

/// The link and the bridge's end of it, `capacity` commands deep.
pub(crate) fn link(node_id: Arc<str>, capacity: usize) -> (ClusterLink, BridgeEnd) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let bell = Arc::new(tokio::sync::Notify::new());
    let connected = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ClusterStats::default());
    (
        ClusterLink {
            node_id,
            tx,
            bell: bell.clone(),
            connected: connected.clone(),
            stats: stats.clone(),
        },
        BridgeEnd {
            rx,
            bell,
            connected,
            stats,
        },
    )
}

/// How long a shard waits for the bridge to answer a query.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// One cluster counter as `/stats` (`json`) and `/metrics` (`metric`, `kind`,
/// `help`) show it.
struct Field {
    json: &'static str,
    metric: &'static str,
    kind: &'static str,
    help: &'static str,
    read: fn(&ClusterStats) -> &AtomicU64,
}

/// Every cluster counter, once: `/stats` and `/metrics` both render this table.
const FIELDS: [Field; 12] = [
    Field {
        json: "connected",
        metric: "corecast_cluster_connected",
        kind: "gauge",
        help: "1 while the node is connected to the cluster broker (redis).",
        read: |s| &s.connected,
    },
    Field {
        json: "subscribed_rooms",
        metric: "corecast_cluster_subscribed_rooms",
        kind: "gauge",
        help: "Room channels this node follows (rooms with local members).",
        read: |s| &s.subscribed_rooms,
    },
    Field {
        json: "publishes",
        metric: "corecast_cluster_publishes_total",
        kind: "counter",
        help: "Room messages sequenced and published through the broker by this node.",
        read: |s| &s.publishes,
    },
    Field {
        json: "publish_failures",
        metric: "corecast_cluster_publish_failures_total",
        kind: "counter",
        help: "Publishes refused or failed (broker down, bridge queue full, script error).",
        read: |s| &s.publish_failures,
    },
    Field {
        json: "messages_in",
        metric: "corecast_cluster_messages_received_total",
        kind: "counter",
        help: "Room messages received from the broker and fanned out on this node.",
        read: |s| &s.messages_in,
    },
    Field {
        json: "duplicates",
        metric: "corecast_cluster_duplicates_total",
        kind: "counter",
        help: "Room messages received twice from the broker (dropped).",
        read: |s| &s.duplicates,
    },
    Field {
        json: "gap_filled",
        metric: "corecast_cluster_gap_filled_total",
        kind: "counter",
        help: "Messages read from a room's stream to fill a gap (missed while reconnecting).",
        read: |s| &s.gap_filled,
    },
    Field {
        json: "gap_lost",
        metric: "corecast_cluster_gap_lost_total",
        kind: "counter",
        help: "Messages of a gap the room's stream no longer held.",
        read: |s| &s.gap_lost,
    },
    Field {
        json: "reconnects",
        metric: "corecast_cluster_reconnects_total",
        kind: "counter",
        help: "Reconnections to the broker after a lost connection.",
        read: |s| &s.reconnects,
    },
    Field {
        json: "redis_errors",
        metric: "corecast_cluster_redis_errors_total",
        kind: "counter",
        help: "Broker errors (connection or command).",
        read: |s| &s.redis_errors,
    },
    Field {
        json: "direct_in",
        metric: "corecast_cluster_direct_messages_total",
        kind: "counter",
        help: "send_to messages delivered here from other nodes.",
        read: |s| &s.direct_in,
    },
    Field {
        json: "nodes_reaped",
        metric: "corecast_cluster_nodes_reaped_total",
        kind: "counter",
        help: "Dead nodes whose members this node removed from presence and counts.",
        read: |s| &s.nodes_reaped,
    },
];

/// The `cluster` object of `GET /stats`.
pub(crate) fn stats_json(node: &str, s: &ClusterStats) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("node_id".into(), node.into());
    for f in &FIELDS {
        obj.insert(f.json.into(), ClusterStats::get((f.read)(s)).into());
    }
    serde_json::Value::Object(obj).to_string()
}

/// This node's counters as metric families (labelled with the node id).
struct ClusterFamilies {
    node: Arc<str>,
    stats: Arc<ClusterStats>,
}

impl crate::metrics::Families for ClusterFamilies {
    fn gather(&self) -> Vec<crate::metrics::Gathered> {
        gather(&self.node, &self.stats)
    }
}

/// The `corecast_cluster_*` families, labelled by node.
pub(crate) fn gather(node: &str, s: &ClusterStats) -> Vec<crate::metrics::Gathered> {
    use crate::metrics::{Gathered, Kind};
    FIELDS
        .iter()
        .map(|f| Gathered {
            name: f.metric,
            help: f.help,
            kind: if f.kind == "counter" {
                Kind::Counter
            } else {
                Kind::Gauge
            },
            samples: vec![(
                vec![("node", crate::metrics::escape_label(node))],
                ClusterStats::get((f.read)(s)),
            )],
        })
        .collect()
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn stats_and_metrics_show_every_counter_with_its_value() {
        let s = ClusterStats::default();
        for (i, f) in FIELDS.iter().enumerate() {
            (f.read)(&s).store(i as u64 + 1, Ordering::Relaxed);
        }
        let json: serde_json::Value = serde_json::from_str(&stats_json("n\"1", &s)).unwrap();
        assert_eq!(json["node_id"], "n\"1");
        let families = gather("n\"1", &s);
        assert_eq!(families.len(), FIELDS.len());
        for (i, (f, g)) in FIELDS.iter().zip(&families).enumerate() {
            assert_eq!(json[f.json], i as u64 + 1, "{}", f.json);
            assert_eq!(g.name, f.metric);
            assert_eq!(g.kind == crate::metrics::Kind::Counter, f.kind == "counter");
            assert_eq!(
                g.samples,
                vec![(vec![("node", "n\\\"1".to_string())], i as u64 + 1)]
            );
            // Counters are named with `_total`, gauges without.
            assert_eq!(
                f.metric.ends_with("_total"),
                f.kind == "counter",
                "{}",
                f.metric
            );
        }
        assert_eq!(json.as_object().unwrap().len(), FIELDS.len() + 1);
    }
}
