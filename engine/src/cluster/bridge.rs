//! The bridge thread: the node's Redis client.
//!
//! One thread ("corecast-cluster") runs a current-thread tokio runtime with one
//! task: this loop. It owns a multiplexed command connection and a pub/sub
//! connection; shards reach it through [`BridgeEnd`] and it answers through the
//! shard mesh. Publishes, fetches and queries run concurrently as futures (a
//! bounded number in flight); presence changes run one at a time, in order; the
//! room channels are read here, in order, so per-room dedupe and gap filling need
//! no locks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use corecast_shards::{ConnId, Position};
use crossbeam_channel::TryRecvError;
use futures_util::future::{FutureExt, LocalBoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};

mod outbox;
mod rooms;

use outbox::Outbox;

use super::ctx::{within, Ctx, Done, Fail, Lane};
use super::heartbeat::{self, CountWrite};
use super::keys::Keys;
use super::ops::{self, FetchReq, Reply};
use super::{presence, scripts};
use super::{Answer, BridgeEnd, ClusterStats, MemberCounts, ToBridge};
use crate::cluster::{FromBridge, ShardPort};
use crate::config::ClusterConfig;

/// Publishes, fetches and queries in flight at most (then commands wait in the
/// shards' queue).
const MAX_INFLIGHT: usize = 1024;
/// Messages held for full shard inboxes at most before the bridge stops taking
/// commands (it already stops reading the room channels at the first one).
const MAX_BACKLOG: usize = 65_536;
/// Presence changes queued at most.
const MAX_SERIAL: usize = 4096;
/// Commands taken per loop turn.
const BATCH: usize = 256;
/// How often a backlog for a full shard inbox is retried.
const BACKLOG_RETRY: Duration = Duration::from_millis(1);
/// Channels per SUBSCRIBE.
const SUBSCRIBE_CHUNK: usize = 512;

/// Start the bridge thread.
pub(crate) fn spawn(
    config: ClusterConfig,
    node_id: Arc<str>,
    end: BridgeEnd,
    port: Box<dyn ShardPort>,
) -> io::Result<JoinHandle<()>> {
    let url = config.resolved_url().map_err(io::Error::other)?;
    let client = redis::Client::open(url.as_str())
        .map_err(|e| io::Error::other(format!("cluster.url: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("corecast-cluster".into())
        .spawn(move || rt.block_on(Bridge::new(&config, node_id, end, port, client).run()))
}

/// The two Redis connections.
struct Link {
    conn: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
}

enum Event {
    Done(Done),
    Backlog,
    Channel(Option<redis::Msg>),
    Beat,
    Reconnect,
    Bell,
}

struct Bridge {
    client: redis::Client,
    keys: Arc<Keys>,
    node: Arc<str>,
    direct: String,
    heartbeat: Duration,
    node_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    timeout: Duration,
    end: BridgeEnd,
    stats: Arc<ClusterStats>,
    out: Outbox,
    shards: usize,
    script: Arc<redis::Script>,
    link: Option<Link>,
    /// Bumped per connection; outcomes of older ones don't tear down a new one.
    gen: u64,
    /// True once the link is up and subscriptions are restored.
    connected: bool,
    ever_connected: bool,
    backoff: Duration,
    next_attempt: Instant,
    /// Rooms the node wants, with the last position forwarded to the owner
    /// (`None`: not synced since subscribing or reconnecting).
    rooms: HashMap<Arc<str>, Option<Position>>,
    inflight: FuturesUnordered<LocalBoxFuture<'static, Done>>,
    serial: VecDeque<LocalBoxFuture<'static, Done>>,
    serial_busy: bool,
    /// The connection generation of the heartbeat in flight: one at a time per
    /// connection (a stuck one of a dead connection must not delay the next).
    heartbeat_gen: Option<u64>,
    /// Likewise for reaping.
    reap_gen: Option<u64>,
    /// The next heartbeat is the first on this connection.
    first_beat: bool,
    /// Per room, each shard's member counts.
    counts: HashMap<Arc<str>, Vec<MemberCounts>>,
    /// Rooms whose counts the next heartbeat writes.
    dirty: HashSet<Arc<str>>,
    /// This node's presence members (the truth Redis is reconciled with).
    presence: HashMap<Arc<str>, HashMap<ConnId, Value>>,
}

impl Bridge {
    fn new(
        config: &ClusterConfig,
        node: Arc<str>,
        end: BridgeEnd,
        port: Box<dyn ShardPort>,
        client: redis::Client,
    ) -> Self {
        let keys = Arc::new(Keys::new(&config.key_prefix, &node));
        let shards = port.shards();
        Self {
            client,
            direct: keys.direct_channel(&node),
            keys,
            node,
            heartbeat: config.heartbeat.0,
            node_timeout: config.node_timeout.0,
            reconnect_min: config.reconnect_min.0,
            reconnect_max: config.reconnect_max.0,
            timeout: config.command_timeout.0,
            stats: end.stats.clone(),
            end,
            out: Outbox {
                backlog: (0..shards).map(|_| VecDeque::new()).collect(),
                port,
                queued: 0,
            },
            shards,
            script: Arc::new(scripts::publish_script()),
            link: None,
            gen: 0,
            connected: false,
            ever_connected: false,
            backoff: config.reconnect_min.0,
            next_attempt: Instant::now(),
            rooms: HashMap::new(),
            inflight: FuturesUnordered::new(),
            serial: VecDeque::new(),
            serial_busy: false,
            heartbeat_gen: None,
            reap_gen: None,
            first_beat: true,
            counts: HashMap::new(),
            dirty: HashSet::new(),
            presence: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.next_attempt = Instant::now();
        loop {
            if self.take_commands().await.is_break() {
                break;
            }
            let can_read = self.out.queued == 0;
            let linked = self.link.is_some();
            let ev = {
                let inflight = &mut self.inflight;
                let link = &mut self.link;
                tokio::select! {
                    biased;
                    Some(d) = inflight.next(), if !inflight.is_empty() => Event::Done(d),
                    // Before the channel: a busy channel must not starve liveness.
                    _ = beat.tick() => Event::Beat,
                    _ = tokio::time::sleep(BACKLOG_RETRY), if !can_read => Event::Backlog,
                    _ = tokio::time::sleep_until(self.next_attempt), if !linked => {
                        Event::Reconnect
                    }
                    m = next_msg(link), if can_read => Event::Channel(m),
                    _ = self.end.bell.notified() => Event::Bell,
                }
            };
            match ev {
                Event::Done(d) => {
                    self.on_done(d);
                    // Take every other outcome already there in the same turn.
                    for _ in 0..BATCH {
                        match self.inflight.next().now_or_never() {
                            Some(Some(d)) => self.on_done(d),
                            _ => break,
                        }
                    }
                }
                Event::Backlog => self.out.flush(),
                Event::Channel(Some(m)) => {
                    self.on_channel(m).await;
                    // And every message already received, while shards keep up.
                    for _ in 0..BATCH {
                        if self.out.queued > 0 {
                            break;
                        }
                        match self.link.as_mut().map(|l| l.stream.next().now_or_never()) {
                            Some(Some(Some(m))) => self.on_channel(m).await,
                            Some(Some(None)) => {
                                self.lost("the subscription connection closed".into());
                                break;
                            }
                            _ => break,
                        }
                    }
                }
                Event::Channel(None) => self.lost("the subscription connection closed".into()),
                Event::Beat => self.start_heartbeat(),
                Event::Reconnect => self.reconnect().await,
                Event::Bell => {}
            }
        }
        self.shutdown().await;
    }

    /// Take up to [`BATCH`] commands (fewer while too much is in flight or queued).
    async fn take_commands(&mut self) -> ControlFlow<()> {
        for _ in 0..BATCH {
            if self.inflight.len() >= MAX_INFLIGHT
                || self.out.queued >= MAX_BACKLOG
                || self.serial.len() >= MAX_SERIAL
            {
                // A completion or a flush ends the wait and takes more.
                return ControlFlow::Continue(());
            }
            match self.end.rx.try_recv() {
                Ok(ToBridge::Shutdown) | Err(TryRecvError::Disconnected) => {
                    return ControlFlow::Break(())
                }
                Ok(cmd) => self.command(cmd).await,
                Err(TryRecvError::Empty) => return ControlFlow::Continue(()),
            }
        }
        // More may be queued behind this batch: come back right after one turn.
        self.end.bell.notify_one();
        ControlFlow::Continue(())
    }

    /// A handle for an operation, while connected.
    fn ctx(&self) -> Option<Ctx> {
        if !self.connected {
            return None;
        }
        self.link_ctx()
    }

    /// A handle on the current link (also while it is being set up).
    fn link_ctx(&self) -> Option<Ctx> {
        self.link.as_ref().map(|l| Ctx {
            conn: l.conn.clone(),
            keys: self.keys.clone(),
            script: self.script.clone(),
            stats: self.stats.clone(),
            timeout: self.timeout,
            gen: self.gen,
        })
    }

    async fn command(&mut self, cmd: ToBridge) {
        match cmd {
            ToBridge::Publish {
                room,
                msg,
                except,
                origin,
                ack,
                limits,
            } => {
                let reply = Reply { room, origin, ack };
                match self.ctx() {
                    Some(ctx) => self
                        .inflight
                        .push(Box::pin(ops::publish(ctx, reply, msg, except, limits))),
                    None => {
                        if let Some((shard, m)) = ops::publish_failed(&self.stats, &reply) {
                            self.out.send(shard, m);
                        }
                    }
                }
            }
            ToBridge::Subscribe { room } => self.subscribe(room).await,
            ToBridge::Unsubscribe { room } => self.unsubscribe(room).await,
            ToBridge::Fetch {
                room,
                since,
                upto,
                conn,
                reply_to,
                limits,
            } => {
                let req = FetchReq {
                    room,
                    since,
                    upto,
                    conn,
                    reply_to,
                    limits,
                };
                match self.ctx() {
                    Some(ctx) => self.inflight.push(Box::pin(ops::fetch(ctx, req))),
                    None => self.out.send(
                        reply_to,
                        FromBridge::Fetched {
                            room: req.room,
                            conn,
                            since,
                            upto,
                            fetched: None,
                        },
                    ),
                }
            }
            ToBridge::Counts { shard, rooms } => self.set_counts(shard, rooms),
            ToBridge::PresenceJoin {
                room,
                member_id,
                member,
            } => {
                self.presence
                    .entry(room.clone())
                    .or_default()
                    .insert(member_id, member.clone());
                if let Some(ctx) = self.ctx() {
                    self.serial_push(Box::pin(presence::join(ctx, room, member_id, member)));
                }
            }
            ToBridge::PresenceLeave { room, member_id } => {
                let local = match self.presence.get_mut(&room) {
                    Some(members) => {
                        let m = members.remove(&member_id);
                        if members.is_empty() {
                            self.presence.remove(&room);
                            // The heartbeat drops the room from the node's rooms
                            // if it has no members left either.
                            self.dirty.insert(room.clone());
                        }
                        m
                    }
                    None => None,
                };
                if let Some(ctx) = self.ctx() {
                    self.serial_push(Box::pin(presence::leave(ctx, room, member_id, local)));
                }
            }
            ToBridge::Query {
                token,
                reply_to,
                query,
            } => match self.ctx() {
                Some(ctx) => self
                    .inflight
                    .push(Box::pin(ops::query(ctx, token, reply_to, query))),
                None => self.out.send(
                    reply_to,
                    FromBridge::Answer {
                        token,
                        answer: Answer::Unavailable,
                    },
                ),
            },
            ToBridge::Shutdown => {}
        }
    }

    fn serial_push(&mut self, job: LocalBoxFuture<'static, Done>) {
        if self.serial_busy {
            self.serial.push_back(job);
        } else {
            self.serial_busy = true;
            self.inflight.push(job);
        }
    }

    fn on_done(&mut self, d: Done) {
        for (shard, msg) in d.out {
            self.out.send(shard, msg);
        }
        let current = d.gen == self.gen && self.connected;
        match d.lane {
            Lane::Free => {}
            Lane::Serial => match d.next.filter(|_| current && d.lost.is_none()) {
                Some(next) => self.inflight.push(next),
                None => match self.serial.pop_front() {
                    Some(job) => self.inflight.push(job),
                    None => self.serial_busy = false,
                },
            },
            Lane::Reap => {
                if self.reap_gen == Some(d.gen) {
                    self.reap_gen = None;
                }
            }
            Lane::Heartbeat { redo, readded } => {
                if self.heartbeat_gen == Some(d.gen) {
                    self.heartbeat_gen = None;
                }
                self.dirty.extend(redo);
                let first = current && std::mem::take(&mut self.first_beat);
                if readded && !first && current {
                    // Reaped while still here (e.g. heartbeats were late):
                    // write this node's members and counts back.
                    tracing::warn!(node = %self.node, "cluster: this node was reaped while alive; restoring its presence and counts");
                    self.dirty.extend(self.counts.keys().cloned());
                    if let Some(ctx) = self.ctx() {
                        let local = self.presence.clone();
                        self.serial_push(Box::pin(presence::reconcile_job(ctx, local)));
                    }
                }
            }
        }
        if let Some(e) = d.lost {
            if d.gen == self.gen {
                self.lost(e);
            }
        }
    }

    fn set_counts(&mut self, shard: usize, rooms: Vec<(Arc<str>, MemberCounts)>) {
        let shards = self.shards;
        if shard >= shards {
            tracing::warn!(
                shard,
                "cluster: member counts from an unknown shard ignored"
            );
            return;
        }
        for (room, c) in rooms {
            let per_shard = self
                .counts
                .entry(room.clone())
                .or_insert_with(|| vec![MemberCounts::default(); shards]);
            per_shard[shard] = c;
            if per_shard.iter().all(|c| c.total() == 0) {
                self.counts.remove(&room);
            }
            self.dirty.insert(room);
        }
    }

    fn node_counts(&self, room: &str) -> MemberCounts {
        let mut sum = MemberCounts::default();
        for c in self.counts.get(room).into_iter().flatten() {
            sum.websocket += c.websocket;
            sum.sse += c.sse;
            sum.webtransport += c.webtransport;
        }
        sum
    }

    fn start_heartbeat(&mut self) {
        if self.heartbeat_gen == Some(self.gen) {
            return;
        }
        let Some(ctx) = self.ctx() else {
            return;
        };
        let dirty = std::mem::take(&mut self.dirty);
        let writes = dirty
            .into_iter()
            .map(|room| CountWrite {
                counts: self.node_counts(&room),
                presence: self.presence.get(&room).is_some_and(|m| !m.is_empty()),
                room,
            })
            .collect();
        self.heartbeat_gen = Some(self.gen);
        self.inflight.push(Box::pin(heartbeat::beat(
            ctx.clone(),
            self.node_timeout,
            writes,
        )));
        if self.reap_gen != Some(self.gen) {
            self.reap_gen = Some(self.gen);
            self.inflight
                .push(Box::pin(heartbeat::reap_dead(ctx, self.node_timeout)));
        }
    }

    fn set_connected(&mut self, up: bool) {
        self.connected = up;
        self.end.connected.store(up, Ordering::Release);
        self.stats.connected.store(u64::from(up), Ordering::Relaxed);
    }

    fn fail(&mut self, f: Fail) {
        if let Fail::Lost(e) = f {
            self.lost(e);
        }
    }

    /// The connection is gone: refuse publishes, reconnect after a pause.
    fn lost(&mut self, error: String) {
        if self.link.take().is_none() {
            return;
        }
        let was_connected = self.connected;
        self.set_connected(false);
        ClusterStats::add(&self.stats.redis_errors, 1);
        if was_connected {
            tracing::warn!(%error, "cluster: lost the Redis connection; publishes fail until it is back");
        } else {
            tracing::warn!(%error, "cluster: Redis connection failed while restoring subscriptions");
        }
        // Presence changes not yet written: the reconcile after reconnecting
        // writes this node's members as they are then.
        self.serial.clear();
        self.backoff = self.reconnect_min;
        self.next_attempt = Instant::now() + jitter(self.backoff);
    }

    async fn reconnect(&mut self) {
        match self.connect().await {
            Ok(()) => {
                self.backoff = self.reconnect_min;
                if self.ever_connected {
                    ClusterStats::add(&self.stats.reconnects, 1);
                    tracing::info!(node = %self.node, rooms = self.rooms.len(), "cluster: reconnected to Redis, subscriptions restored");
                } else {
                    tracing::info!(node = %self.node, "cluster: connected to Redis");
                }
                self.ever_connected = true;
                self.start_heartbeat();
            }
            Err(f) => {
                self.link = None;
                if self.connected {
                    self.set_connected(false);
                }
                ClusterStats::add(&self.stats.redis_errors, 1);
                if self.backoff == self.reconnect_min {
                    tracing::warn!(error = %f, "cluster: cannot connect to Redis; retrying with backoff");
                } else {
                    tracing::debug!(error = %f, retry_in = ?self.backoff, "cluster: Redis connection attempt failed");
                }
                self.next_attempt = Instant::now() + jitter(self.backoff);
                self.backoff = (self.backoff * 2).min(self.reconnect_max);
            }
        }
    }

    /// Connect, subscribe to the direct channel and every wanted room, catch up
    /// what was missed, reconcile presence; then publishes are accepted again.
    async fn connect(&mut self) -> Result<(), Fail> {
        let t = self.timeout;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t));
        let mut conn = within(
            t,
            self.client
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await?;
        let pubsub = within(t, self.client.get_async_pubsub()).await?;
        within(t, self.script.prepare_invoke().load_async(&mut conn)).await?;
        let (mut sink, stream) = pubsub.split();
        within(t, sink.subscribe(&self.direct)).await?;
        self.gen += 1;
        self.link = Some(Link { conn, sink, stream });
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        self.sync_rooms(&rooms).await?;
        let mut ctx = self
            .link_ctx()
            .ok_or_else(|| Fail::Lost("link gone".into()))?;
        let recorded = presence::reconcile(&mut ctx, &self.presence).await?;
        self.dirty
            .extend(recorded.into_iter().map(Arc::<str>::from));
        self.dirty.extend(self.counts.keys().cloned());
        self.set_connected(true);
        self.first_beat = true;
        Ok(())
    }

    async fn shutdown(&mut self) {
        // Let outcomes in flight (publish acks) reach the shards, and queued
        // presence changes (the last members' leaves) reach Redis.
        let deadline = Instant::now() + self.timeout;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, self.inflight.next()).await {
                Ok(Some(d)) => self.on_done(d),
                _ => break,
            }
        }
        self.out.flush();
        if let Some(mut ctx) = self.ctx() {
            let key = self.keys.node_alive(&self.node);
            if let Err(e) = ctx.cmd::<()>(redis::cmd("DEL").arg(key)).await {
                tracing::warn!(error = %e, "cluster: could not remove the node's liveness key");
            }
        }
        self.set_connected(false);
        tracing::info!(node = %self.node, "cluster: bridge stopped");
    }
}

/// The next pub/sub message (never, while there is no link).
async fn next_msg(link: &mut Option<Link>) -> Option<redis::Msg> {
    match link {
        Some(l) => l.stream.next().await,
        None => std::future::pending().await,
    }
}

/// `d` scaled by a random factor in [0.5, 1].
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(scripts::random_u64() % span)
}
