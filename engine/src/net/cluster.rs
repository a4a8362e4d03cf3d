//! The shard side of cluster mode (see [`crate::cluster`]).
//!
//! With a `cluster:` section, a room's messages are sequenced by Redis, not by the
//! room's owner shard: every publish goes to the bridge thread, and what Redis
//! publishes comes back to the owner as [`FromBridge::Deliver`] (as `ShardMsg::Cluster`) with its
//! position. The owner still keeps the interest set and a history cache (what it
//! received since it subscribed), so delivery to shards and most resumes work
//! exactly as they do on one node; a resume from further back than the cache is
//! read from the room's Redis Stream and merged with the cache.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corecast_shards::room::GapReason;
use corecast_shards::{ConnId, MeshSender, Position, Replay};

use super::shard::{AckTo, BroadcastError, Shard, ShardMsg};
use crate::cluster::{
    Answer, ClusterLink, ClusterStats, Fetched, FromBridge, Query, ShardPort, ToBridge,
};
use crate::net::shard::RoomMsg;
use crate::vocab::message::Message;

/// Commands for the bridge that must not be lost (subscriptions, presence,
/// counts, fetches) waiting for room in its queue, at most this many; beyond it
/// the oldest member-count reports are the first thing a shard gives up.
const BACKLOG_MAX: usize = 1 << 20;

/// A resume waiting for its room's position: `(since, conn)`.
type ParkedResume = (Option<Position>, ConnId);

/// A shard's cluster-mode state.
#[derive(Default)]
pub(crate) struct ClusterState {
    /// Rooms (owned here) whose position the bridge has reported since the node
    /// subscribed: resumes can be served.
    synced: RefCell<HashSet<Arc<str>>>,
    /// Resumes waiting for their room's position: `(since, conn)`.
    parked: RefCell<HashMap<Arc<str>, Vec<ParkedResume>>>,
    /// Reliable commands waiting for room in the bridge queue, in order.
    backlog: RefCell<VecDeque<ToBridge>>,
    backlog_waker: Cell<Option<std::task::Waker>>,
    /// Rooms whose local membership changed since the last counts report.
    dirty: RefCell<HashSet<Arc<str>>>,
}

/// Who a publish handed to the bridge is from and for.
#[derive(Default)]
pub(crate) struct BridgePublish {
    /// A member not to deliver to (on this node).
    pub(crate) except: Option<ConnId>,
    /// The publishing connection, told if the publish fails later.
    pub(crate) origin: Option<ConnId>,
    /// Where to report the position Redis gave it.
    pub(crate) ack: Option<AckTo>,
}

/// Cluster mode: hand a publish to the bridge, from a shard or any thread. Refused
/// at once while Redis is unreachable (`Unavailable`) or the bridge's queue is
/// full (`Overloaded`), counted as a publish failure.
pub(crate) fn publish_to_bridge(
    link: &ClusterLink,
    config: &crate::config::Config,
    room: &str,
    msg: Message,
    publish: BridgePublish,
) -> Result<(), BroadcastError> {
    let refused = |e| {
        ClusterStats::add(&link.stats.publish_failures, 1);
        Err(e)
    };
    if !link.is_connected() {
        return refused(BroadcastError::Unavailable);
    }
    let cmd = ToBridge::Publish {
        room: Arc::from(room),
        msg,
        except: publish.except,
        origin: publish.origin,
        ack: publish.ack,
        limits: config.history.limits_for(room),
    };
    match link.send(cmd) {
        Ok(()) => Ok(()),
        Err(_) => refused(BroadcastError::Overloaded),
    }
}

/// The shard mesh as the cluster bridge sees it: each [`FromBridge`] travels as
/// [`ShardMsg::Cluster`] through the shard's bounded inbox.
pub(crate) struct MeshPort(pub(crate) Vec<MeshSender<ShardMsg>>);

impl ShardPort for MeshPort {
    fn shards(&self) -> usize {
        self.0.len()
    }

    fn send(&self, shard: usize, msg: FromBridge) -> Result<(), FromBridge> {
        let Some(tx) = self.0.get(shard) else {
            return Err(msg);
        };
        tx.send(ShardMsg::Cluster(msg)).map_err(|back| match back {
            ShardMsg::Cluster(msg) => msg,
            // The mesh hands back exactly the message it was given.
            _ => unreachable!("the mesh returned another message"),
        })
    }
}

impl Shard {
    fn link(&self) -> Option<&ClusterLink> {
        self.shared.sequencer.cluster()
    }

    /// As owner: whether the bridge reported `room`'s position (the node follows it).
    pub(crate) fn cluster_synced(&self, room: &str) -> bool {
        self.cluster.synced.borrow().contains(room)
    }

    /// A local member joined or left `room`: its counts go out with the next report.
    pub(crate) fn cluster_members_changed(&self, room: &Arc<str>) {
        self.cluster.dirty.borrow_mut().insert(room.clone());
    }

    /// Cluster mode: publish through Redis and wait for the position it gave.
    pub(crate) async fn publish_acked_cluster(
        self: &Rc<Self>,
        link: &ClusterLink,
        room: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Position, BroadcastError> {
        let (token, slot) = self.pending.new_ack();
        let ack = Some(AckTo {
            shard: self.id,
            token,
        });
        if let Err(e) = self.cluster_publish(link, room, msg, None, None, ack) {
            self.pending.forget(token);
            return Err(e);
        }
        let got = futures_lite::future::or(async { Some(slot.wait().await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        self.pending.forget(token);
        got.flatten().ok_or(BroadcastError::Unavailable)
    }

    /// Cluster mode: hand a publish to the bridge (see [`publish_to_bridge`]).
    pub(crate) fn cluster_publish(
        &self,
        link: &ClusterLink,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
        origin: Option<ConnId>,
        ack: Option<AckTo>,
    ) -> Result<(), BroadcastError> {
        let publish = BridgePublish {
            except,
            origin,
            ack,
        };
        publish_to_bridge(link, &self.shared.config, room, msg, publish)
    }

    /// Queue a command for the bridge in order with the other reliable ones; a
    /// full bridge queue keeps it in this shard's backlog until there is room.
    pub(crate) fn to_bridge(&self, cmd: ToBridge) {
        let Some(link) = self.link() else {
            return;
        };
        let mut backlog = self.cluster.backlog.borrow_mut();
        if backlog.is_empty() {
            match link.send(cmd) {
                Ok(()) => return,
                Err(cmd) => backlog.push_back(cmd),
            }
        } else {
            backlog.push_back(cmd);
        }
        if backlog.len() > BACKLOG_MAX {
            backlog.pop_front();
            ClusterStats::add(&link.stats.redis_errors, 1);
            tracing::error!(
                shard = self.id,
                "cluster bridge backlog full; dropped the oldest command"
            );
        }
        if let Some(w) = self.cluster.backlog_waker.take() {
            w.wake();
        }
    }

    /// Move the backlog into the bridge queue as room frees up.
    pub(crate) async fn run_bridge_backlog(self: Rc<Self>) {
        let Some(link) = self.link() else {
            return;
        };
        loop {
            std::future::poll_fn(|cx| {
                if self.cluster.backlog.borrow().is_empty() {
                    self.cluster.backlog_waker.set(Some(cx.waker().clone()));
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            loop {
                let next = self.cluster.backlog.borrow_mut().pop_front();
                let Some(cmd) = next else { break };
                if let Err(cmd) = link.send(cmd) {
                    self.cluster.backlog.borrow_mut().push_front(cmd);
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    /// Report the member counts of rooms whose membership changed, every heartbeat.
    pub(crate) async fn run_cluster_counts(self: Rc<Self>) {
        let Some(cfg) = self.shared.config.cluster.as_ref() else {
            return;
        };
        let every = cfg.heartbeat.0;
        loop {
            glommio::timer::sleep(every).await;
            let dirty: Vec<Arc<str>> = self.cluster.dirty.borrow_mut().drain().collect();
            if dirty.is_empty() {
                continue;
            }
            let rooms = dirty
                .into_iter()
                .map(|room| {
                    let c = self.local_member_counts(&room);
                    (room, c)
                })
                .collect();
            self.to_bridge(ToBridge::Counts {
                shard: self.id,
                rooms,
            });
        }
    }

    /// As owner in cluster mode: the interest set of `room` went from empty to
    /// not (`subscribed`) or back: follow the room's channel or stop.
    pub(crate) fn cluster_interest_changed(&self, room: &Arc<str>, subscribed: bool) {
        if subscribed {
            self.cluster.synced.borrow_mut().remove(room);
            self.to_bridge(ToBridge::Subscribe { room: room.clone() });
        } else {
            self.cluster.synced.borrow_mut().remove(room);
            // Not following the room: what the cache holds would miss messages.
            self.interest_table().borrow_mut().clear_history(room);
            self.to_bridge(ToBridge::Unsubscribe { room: room.clone() });
        }
    }

    /// Messages from the cluster bridge.
    pub(crate) fn handle_cluster(self: &Rc<Self>, msg: FromBridge) {
        match msg {
            FromBridge::Sync { room, epoch, seq } => {
                let limits = self.shared.config.history.limits_for(&room);
                self.interest_table()
                    .borrow_mut()
                    .set_position(&room, epoch, seq, limits);
                self.cluster.synced.borrow_mut().insert(room.clone());
                let parked = self.cluster.parked.borrow_mut().remove(&room);
                for (since, conn) in parked.unwrap_or_default() {
                    self.cluster_replay(room.clone(), since, conn);
                }
            }
            FromBridge::Deliver {
                room,
                pos,
                msg,
                except,
            } => {
                let limits = self.shared.config.history.limits_for(&room);
                let now = Instant::now();
                let kept = if limits.max_messages > 0 {
                    msg.detached()
                } else {
                    msg.clone()
                };
                let appended = {
                    let mut table = self.interest_table().borrow_mut();
                    let appended = table.append_at(&room, pos, kept, now, limits);
                    self.stats.set_history(&table.history_counters());
                    appended
                };
                if let Some((name, shards)) = appended {
                    let published = crate::stats::instant_ns(now);
                    self.fan_out(&name, pos, &msg, except, published, shards);
                }
            }
            FromBridge::Fetched {
                room,
                conn,
                since,
                upto,
                fetched,
            } => self.apply_fetched(room, conn, since, upto, fetched),
            FromBridge::PublishRefused { token } => self.pending.refuse(token),
            FromBridge::PublishFailed { conn, room } => {
                let frame = super::shard::publish_error_frame(&room, BroadcastError::Unavailable);
                self.deliver_direct(conn, &frame);
            }
            FromBridge::Answer { token, answer } => self.pending.answer(token, answer),
            FromBridge::PublishAck { token, pos } => self.pending.ack(token, pos),
            FromBridge::SendTo { to, msg } => {
                self.deliver_direct(to, &msg);
            }
        }
    }

    /// As owner in cluster mode: answer a resume of `room` for `conn`: from the
    /// cache when it covers the cursor, else from Redis (merged with the cache).
    pub(crate) fn cluster_replay(
        self: &Rc<Self>,
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    ) {
        if !self.cluster.synced.borrow().contains(&room) {
            // The room's position is on its way (the node just subscribed).
            self.cluster
                .parked
                .borrow_mut()
                .entry(room)
                .or_default()
                .push((since, conn));
            return;
        }
        let limits = self.shared.config.history.limits_for(&room);
        let now = Instant::now();
        let from_cache = {
            let mut t = self.interest_table().borrow_mut();
            let (epoch, seq, _) = t.get(&room).unwrap_or((0, 0, 0));
            let first = t.first_available(&room, now).unwrap_or(seq + 1);
            match since {
                None => true,
                Some(s) => s.epoch == epoch && (s.seq > seq || s.seq + 1 >= first),
            }
        };
        if from_cache {
            let replay = self
                .interest_table()
                .borrow_mut()
                .replay(&room, since, now, limits);
            self.send_replay(room, since, conn, replay);
            return;
        }
        let Some(since) = since else { return };
        let upto = self
            .interest_table()
            .borrow()
            .get(&room)
            .map_or(0, |(_, seq, _)| seq);
        self.to_bridge(ToBridge::Fetch {
            room,
            since,
            upto,
            conn,
            reply_to: self.id,
            limits,
        });
    }

    /// Merge what Redis holds up to `upto` with what reached the cache since.
    fn apply_fetched(
        self: &Rc<Self>,
        room: Arc<str>,
        conn: ConnId,
        since: Position,
        upto: u64,
        fetched: Option<Fetched>,
    ) {
        let limits = self.shared.config.history.limits_for(&room);
        let now = Instant::now();
        let mut t = self.interest_table().borrow_mut();
        let current = t.get(&room);
        let replay = match (fetched, current) {
            (Some(f), Some((epoch, seq, _))) if f.epoch == epoch => {
                let (tail, covers) = t.tail(&room, upto);
                let gap = if since.epoch != epoch {
                    Some(GapReason::EpochChanged)
                } else if since.seq > upto {
                    Some(GapReason::Unknown)
                } else if since.seq + 1 < f.first_available || !covers {
                    Some(GapReason::Expired)
                } else {
                    None
                };
                let mut messages = f.messages;
                messages.extend(tail);
                Replay {
                    gap,
                    epoch,
                    first_available: f.first_available,
                    messages,
                    upto: seq,
                }
            }
            // Redis could not be read, or its epoch moved on (it lost its data):
            // the cache is all there is, and the gap signal says so.
            _ => t.replay(&room, Some(since), now, limits),
        };
        drop(t);
        self.send_replay(room, Some(since), conn, replay);
    }

    /// Send `conn`'s shard what it missed of `room`.
    fn send_replay(
        self: &Rc<Self>,
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
        replay: Replay<Message>,
    ) {
        self.send_reliable(
            usize::from(conn.shard),
            ShardMsg::Room(RoomMsg::ReplayData {
                conn,
                room,
                since,
                replay,
            }),
        );
    }

    /// Send `msg` to connection `to` of node `node`, fire-and-forget (the bridge
    /// publishes it on that node's direct channel).
    pub(crate) fn cluster_send_to_node(
        &self,
        link: &ClusterLink,
        node: &str,
        to: ConnId,
        msg: Message,
    ) -> Result<(), BroadcastError> {
        if *link.node_id == *node {
            return self.send_to(to, msg);
        }
        if !link.is_connected() {
            return Err(BroadcastError::Unavailable);
        }
        // Token 0 is never handed out: the answer is dropped on arrival.
        let query = Query::SendTo {
            node: node.to_string(),
            conn: to,
            msg,
        };
        link.send(ToBridge::Query {
            token: 0,
            reply_to: self.id,
            query,
        })
        .map_err(|_| BroadcastError::Overloaded)
    }

    /// Ask the bridge `query` and wait (bounded) for the answer.
    pub(crate) async fn cluster_query(&self, query: Query) -> Answer {
        if self.link().is_none_or(|l| !l.is_connected()) {
            return Answer::Unavailable;
        }
        let (token, slot) = self.pending.new_answer();
        self.to_bridge(ToBridge::Query {
            token,
            reply_to: self.id,
            query,
        });
        let got = futures_lite::future::or(async { Some(slot.wait().await) }, async {
            glommio::timer::sleep(crate::cluster::QUERY_TIMEOUT).await;
            None
        })
        .await;
        self.pending.forget(token);
        got.unwrap_or(Answer::Unavailable)
    }
}
