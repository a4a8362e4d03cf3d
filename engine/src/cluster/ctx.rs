//! What one bridge operation needs to talk to Redis, and what it hands back.
//!
//! Operations run as futures on the bridge's runtime; they never touch the bridge's
//! state. They return a [`Done`]: messages for shards (sent by the bridge, in
//! order, through its backlog) and whether the connection was found dead.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corecast_shards::{HistoryLimits, Position};
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError};

use super::keys::{node_of_field, Keys};
use super::scripts;
use super::wire::{self, Header};
use super::ClusterStats;
use crate::cluster::FromBridge;
use crate::vocab::message::Message;

/// How an operation failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The connection is dead (I/O error, closed, no answer in time): reconnect.
    Lost(String),
    /// Redis answered with an error (already counted in `redis_errors`).
    Command(String),
}

impl Fail {
    /// Classify a client error.
    pub(crate) fn from_redis(e: &RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.is_timeout()
        {
            Fail::Lost(e.to_string())
        } else {
            Fail::Command(e.to_string())
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Lost(e) => write!(f, "connection lost: {e}"),
            Fail::Command(e) => write!(f, "command failed: {e}"),
        }
    }
}

/// Which of the bridge's lanes an operation ran in.
#[derive(Debug)]
pub(crate) enum Lane {
    /// Any number at once (publishes, fetches, queries).
    Free,
    /// One at a time, in order (presence changes).
    Serial,
    /// Reaping dead nodes (one at a time).
    Reap,
    /// The heartbeat.
    Heartbeat {
        /// Rooms whose counts were not written (written again next time).
        redo: Vec<Arc<str>>,
        /// This node was missing from the node set: another node reaped it
        /// (or Redis lost its data).
        readded: bool,
    },
}

/// An operation's outcome.
pub(crate) struct Done {
    /// The connection generation it ran on.
    pub(crate) gen: u64,
    /// Messages for shards, in order.
    pub(crate) out: Vec<(usize, FromBridge)>,
    /// Set when the connection was found dead.
    pub(crate) lost: Option<String>,
    /// Its lane.
    pub(crate) lane: Lane,
    /// A follow-up to run next in the same lane (after `out` is sent).
    pub(crate) next: Option<futures_util::future::LocalBoxFuture<'static, Done>>,
}

impl Done {
    /// An outcome of `ctx`'s generation in `lane`.
    pub(crate) fn new(ctx: &Ctx, lane: Lane) -> Self {
        Self {
            gen: ctx.gen,
            out: Vec::new(),
            lost: None,
            lane,
            next: None,
        }
    }

    /// Note failure `f` (a lost connection is reported to the bridge).
    pub(crate) fn fail(&mut self, f: Fail) {
        if let Fail::Lost(e) = f {
            self.lost.get_or_insert(e);
        }
    }
}

/// One operation's handle on Redis (cheap to clone).
#[derive(Clone)]
pub(crate) struct Ctx {
    /// The command connection.
    pub(crate) conn: MultiplexedConnection,
    /// Key names.
    pub(crate) keys: Arc<Keys>,
    /// The publish script.
    pub(crate) script: Arc<redis::Script>,
    /// Counters.
    pub(crate) stats: Arc<ClusterStats>,
    /// `cluster.command_timeout`.
    pub(crate) timeout: Duration,
    /// The connection's generation (outcomes of an older one are not news).
    pub(crate) gen: u64,
}

/// Await `fut` for at most `timeout`; a timeout is a lost connection.
pub(crate) async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Fail> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Fail::from_redis(&e)),
        Err(_) => Err(Fail::Lost(format!(
            "no answer from Redis within {timeout:?}"
        ))),
    }
}

/// A stream entry read back from a room's history.
pub(crate) struct Entry {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Origin, except, publish time.
    pub(crate) header: Header,
    /// The message.
    pub(crate) msg: Message,
}

/// Presence events per pipeline.
const EVENT_BATCH: usize = 256;

/// Entries read per XRANGE call.
const XRANGE_PAGE: usize = 1000;

impl Ctx {
    fn count_command_error(&self, f: &Fail) {
        if let Fail::Command(e) = f {
            ClusterStats::add(&self.stats.redis_errors, 1);
            tracing::warn!(error = %e, "cluster: Redis command failed");
        }
    }

    /// Run one command.
    pub(crate) async fn cmd<T: FromRedisValue>(&mut self, c: &redis::Cmd) -> Result<T, Fail> {
        let r = within(self.timeout, c.query_async(&mut self.conn)).await;
        if let Err(f) = &r {
            self.count_command_error(f);
        }
        r
    }

    /// Run a pipeline.
    pub(crate) async fn pipe<T: FromRedisValue>(&mut self, p: &redis::Pipeline) -> Result<T, Fail> {
        let r = within(self.timeout, p.query_async(&mut self.conn)).await;
        if let Err(f) = &r {
            self.count_command_error(f);
        }
        r
    }

    /// Sequence and publish `msg` in `room` through the script. `limits: None`
    /// uses the limits stored with the room (presence events).
    pub(crate) async fn publish(
        &mut self,
        room: &str,
        header: &str,
        payload: &[u8],
        limits: Option<HistoryLimits>,
    ) -> Result<Position, Fail> {
        let (mode, limits) = match limits {
            Some(l) => ("set", l),
            None => ("stored", scripts::default_limits()),
        };
        let (maxlen, age) = scripts::limit_args(limits);
        let mut inv = self.script.key(self.keys.meta(room));
        inv.key(self.keys.log(room))
            .arg(self.keys.room_channel(room))
            .arg(header)
            .arg(payload)
            .arg(maxlen)
            .arg(age)
            .arg(scripts::epoch_candidate())
            .arg(mode);
        let r = within(
            self.timeout,
            inv.invoke_async::<(String, u64)>(&mut self.conn),
        )
        .await;
        let (epoch, seq) = match r {
            Ok(v) => v,
            Err(f) => {
                self.count_command_error(&f);
                return Err(f);
            }
        };
        match epoch.parse() {
            Ok(epoch) => Ok(Position { epoch, seq }),
            Err(_) => {
                let f = Fail::Command(format!("publish script returned epoch {epoch:?}"));
                self.count_command_error(&f);
                Err(f)
            }
        }
    }

    /// Publish a presence event (a text room message from this node).
    pub(crate) async fn publish_event(
        &mut self,
        room: &str,
        event: &serde_json::Value,
    ) -> Result<Position, Fail> {
        let msg = Message::text(event.to_string());
        let header = wire::encode_header(&self.keys.node, None, &msg, scripts::unix_micros());
        self.publish(room, &header, msg.as_bytes(), None).await
    }

    /// Publish several presence events of `room`, in order, pipelined (a reaped
    /// node may leave thousands of members). Each batch starts with SCRIPT LOAD,
    /// so no EVALSHA of it can miss the script.
    pub(crate) async fn publish_events(
        &mut self,
        room: &str,
        events: &[serde_json::Value],
    ) -> Result<(), Fail> {
        let (maxlen, age) = scripts::limit_args(scripts::default_limits());
        for chunk in events.chunks(EVENT_BATCH) {
            let mut p = redis::pipe();
            p.cmd("SCRIPT").arg("LOAD").arg(scripts::PUBLISH).ignore();
            for event in chunk {
                let msg = Message::text(event.to_string());
                let header =
                    wire::encode_header(&self.keys.node, None, &msg, scripts::unix_micros());
                p.cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(2)
                    .arg(self.keys.meta(room))
                    .arg(self.keys.log(room))
                    .arg(self.keys.room_channel(room))
                    .arg(header)
                    .arg(msg.as_bytes())
                    .arg(maxlen)
                    .arg(age)
                    .arg(scripts::epoch_candidate())
                    .arg("stored")
                    .ignore();
            }
            self.pipe::<()>(&p).await?;
        }
        Ok(())
    }

    /// The room's epoch and sequence in Redis (`0, 0` when it has none).
    pub(crate) async fn position(&mut self, room: &Arc<str>) -> Result<Position, Fail> {
        let got = self.positions(std::slice::from_ref(room)).await?;
        Ok(got
            .first()
            .copied()
            .unwrap_or(Position { epoch: 0, seq: 0 }))
    }

    /// [`Ctx::position`] of several rooms, pipelined. A meta record that does not
    /// parse counts as none (logged, counted): one bad key must not stop the bridge.
    pub(crate) async fn positions(&mut self, rooms: &[Arc<str>]) -> Result<Vec<Position>, Fail> {
        let mut out = Vec::with_capacity(rooms.len());
        for chunk in rooms.chunks(512) {
            let mut p = redis::pipe();
            for r in chunk {
                p.cmd("HMGET")
                    .arg(self.keys.meta(r))
                    .arg("epoch")
                    .arg("seq");
            }
            let got: Vec<(Option<String>, Option<String>)> = self.pipe(&p).await?;
            for (room, (epoch, seq)) in chunk.iter().zip(got) {
                let pos = match (epoch, seq) {
                    (None, _) => Some(Position { epoch: 0, seq: 0 }),
                    (Some(e), s) => match (e.parse(), s.as_deref().unwrap_or("0").parse()) {
                        (Ok(epoch), Ok(seq)) => Some(Position { epoch, seq }),
                        _ => None,
                    },
                };
                out.push(pos.unwrap_or_else(|| {
                    ClusterStats::add(&self.stats.redis_errors, 1);
                    tracing::warn!(room = %room, "cluster: malformed room meta in Redis, read as empty");
                    Position { epoch: 0, seq: 0 }
                }));
            }
        }
        Ok(out)
    }

    /// Which of `nodes` are live (this node always is).
    pub(crate) async fn live_nodes<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashSet<String>, Fail> {
        let mut live = HashSet::new();
        live.insert(self.keys.node.clone());
        let others: Vec<&str> = nodes
            .into_iter()
            .filter(|n| *n != self.keys.node)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if others.is_empty() {
            return Ok(live);
        }
        let mut c = redis::cmd("MGET");
        for n in &others {
            c.arg(self.keys.node_alive(n));
        }
        let alive: Vec<Option<String>> = self.cmd(&c).await?;
        for (n, a) in others.iter().zip(alive) {
            if a.is_some() {
                live.insert((*n).to_string());
            }
        }
        Ok(live)
    }

    /// A room's presence members (field -> member JSON) on live nodes.
    pub(crate) async fn live_presence(
        &mut self,
        room: &str,
    ) -> Result<BTreeMap<String, String>, Fail> {
        let all: BTreeMap<String, String> = self
            .cmd(redis::cmd("HGETALL").arg(self.keys.presence(room)))
            .await?;
        let live = self
            .live_nodes(all.keys().filter_map(|f| node_of_field(f)))
            .await?;
        Ok(all
            .into_iter()
            .filter(|(f, _)| node_of_field(f).is_some_and(|n| live.contains(n)))
            .collect())
    }

    /// The room's stream entries with sequence numbers `from..=to` (`from` 0: from
    /// the start), in order. Malformed entries are counted and skipped.
    pub(crate) async fn xrange(
        &mut self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Entry>, Fail> {
        let log = self.keys.log(room);
        let mut out = Vec::new();
        let mut from = from.max(1);
        while from <= to {
            let reply: redis::streams::StreamRangeReply = self
                .cmd(
                    redis::cmd("XRANGE")
                        .arg(&log)
                        .arg(format!("{from}-0"))
                        .arg(format!("{to}-0"))
                        .arg("COUNT")
                        .arg(XRANGE_PAGE),
                )
                .await?;
            let n = reply.ids.len();
            let mut last = from;
            for id in reply.ids {
                match self.entry(&id) {
                    Ok(e) => {
                        last = e.seq;
                        out.push(e);
                    }
                    Err(e) => {
                        ClusterStats::add(&self.stats.redis_errors, 1);
                        tracing::warn!(room, id = %id.id, error = %e, "cluster: malformed history entry skipped");
                        if let Some(seq) = id.id.split('-').next().and_then(|s| s.parse().ok()) {
                            last = seq;
                        }
                    }
                }
            }
            if n < XRANGE_PAGE {
                break;
            }
            match last.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(out)
    }

    fn entry(&self, id: &redis::streams::StreamId) -> Result<Entry, String> {
        let seq = id
            .id
            .strip_suffix("-0")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("entry id is not <seq>-0")?;
        let field = |name: &str| match id.map.get(name) {
            Some(redis::Value::BulkString(b)) => Ok(Bytes::copy_from_slice(b)),
            _ => Err(format!("field {name} missing")),
        };
        let header = wire::decode_header(&field("h")?).map_err(|e| e.to_string())?;
        let msg = wire::message(header.binary, field("d")?).map_err(|e| e.to_string())?;
        Ok(Entry { seq, header, msg })
    }
}
