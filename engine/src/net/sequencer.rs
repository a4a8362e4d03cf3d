//! Who sequences a room's messages: the room's owner shard (one node), or Redis
//! through the cluster bridge (`cluster:`). Publishing, acknowledged publishing,
//! following a room's interest, answering a resume, member counts and presence all
//! ask the [`Sequencer`]; the "cluster or local?" decision is made here and nowhere
//! else, so the standalone code paths carry no cluster conditionals.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use corecast_shards::{ConnId, Position};

use super::boot::StartError;
use super::endpoint::Shared;
use super::shard::{BroadcastError, Shard, ShardMsg};
#[cfg(feature = "cluster")]
use crate::cluster::ClusterLink;
use crate::config::Config;
use crate::net::shard::RoomMsg;
use crate::vocab::message::{AckTo, Message};
use crate::vocab::registry::PresenceMember;

/// The sequencer of this node's rooms.
pub(crate) enum Sequencer {
    /// The room's owner shard assigns positions and keeps history.
    Local,
    /// Redis assigns positions (the publish script); the owner shard keeps a cache.
    #[cfg(feature = "cluster")]
    Cluster(ClusterLink),
}

/// The bridge's end of its queue, kept from [`Sequencer::start`] until the shards'
/// inboxes exist ([`spawn_bridge`]).
#[cfg(feature = "cluster")]
pub(crate) type BridgeStart = crate::cluster::BridgeEnd;
/// Without the `cluster` feature there is never a bridge to start.
#[cfg(not(feature = "cluster"))]
pub(crate) enum BridgeStart {}

#[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
impl Sequencer {
    /// The sequencer `config` asks for: `Local`, or (with `cluster:`) the link to a
    /// bridge started later by [`spawn_bridge`].
    pub(crate) fn start(config: &Config) -> Result<(Self, Option<BridgeStart>), StartError> {
        let Some(c) = &config.cluster else {
            return Ok((Sequencer::Local, None));
        };
        #[cfg(feature = "cluster")]
        {
            let (link, end) = crate::cluster::link(Arc::from(c.node_id()), c.bridge_capacity);
            Ok((Sequencer::Cluster(link), Some(end)))
        }
        #[cfg(not(feature = "cluster"))]
        {
            let _ = c;
            Err(StartError::Config(
                "cluster: this build has no cluster support (the `cluster` cargo feature)".into(),
            ))
        }
    }

    /// The bridge link in cluster mode (for counters, node ids, shutdown).
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(&self) -> Option<&ClusterLink> {
        match self {
            Sequencer::Local => None,
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => Some(link),
        }
    }

    /// This node's id in cluster mode.
    pub(crate) fn node_id(&self) -> Option<&str> {
        match self {
            Sequencer::Local => None,
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => Some(&link.node_id),
        }
    }

    /// The `corecast_cluster_*` metric families, in cluster mode.
    pub(crate) fn families(&self) -> Option<crate::metrics::ClusterView> {
        match self {
            Sequencer::Local => None,
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => Some(link.families()),
        }
    }

    /// The `cluster` object of `GET /stats`, in cluster mode.
    pub(crate) fn stats_json(&self) -> Option<String> {
        match self {
            Sequencer::Local => None,
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => {
                Some(crate::cluster::stats_json(&link.node_id, &link.stats))
            }
        }
    }

    /// Publish from outside the shards (an `EngineHandle`, any thread): to the
    /// room's owner through its inbox, or to the bridge.
    pub(crate) fn publish_from_outside(
        &self,
        shared: &Shared,
        room: &str,
        msg: Message,
    ) -> Result<(), BroadcastError> {
        match self {
            Sequencer::Local => {
                let owner = corecast_shards::owner_of(room, shared.senders.len());
                let publish = ShardMsg::Room(RoomMsg::Publish {
                    room: Arc::from(room),
                    msg,
                    ack: None,
                    except: None,
                });
                shared.senders[owner]
                    .send(publish)
                    .map_err(|_| BroadcastError::Overloaded)
            }
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => super::cluster::publish_to_bridge(
                link,
                &shared.config,
                room,
                msg,
                super::cluster::BridgePublish::default(),
            ),
        }
    }

    /// Send `msg` to connection `to` of node `node` (fire-and-forget); alone there
    /// is no other node.
    pub(crate) fn send_to_node(
        &self,
        shard: &Shard,
        node: &str,
        to: ConnId,
        msg: Message,
    ) -> Result<(), BroadcastError> {
        let _ = (shard, node, to, &msg);
        match self {
            Sequencer::Local => Err(BroadcastError::Unavailable),
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => shard.cluster_send_to_node(link, node, to, msg),
        }
    }

    /// Publish `msg` to `room` from this shard for connection `origin` (told if a
    /// cluster publish fails after it was accepted), skipping member `except`.
    pub(crate) fn publish(
        &self,
        shard: &Shard,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
        origin: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        match self {
            Sequencer::Local => shard.publish_to_owner(room, msg, except),
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => {
                shard.cluster_publish(link, room, msg, except, origin, None)
            }
        }
    }

    /// A publish that reached the room's owner shard (through the mesh): sequence
    /// it (or hand it to Redis) and report its position to `ack`.
    pub(crate) fn publish_at_owner(
        &self,
        shard: &Rc<Shard>,
        room: Arc<str>,
        msg: Message,
        ack: Option<AckTo>,
        except: Option<ConnId>,
    ) {
        match self {
            Sequencer::Local => {
                let pos = shard.sequence(&room, msg, except);
                if let Some(ack) = ack {
                    let token = ack.token;
                    shard.send_reliable(
                        ack.shard,
                        ShardMsg::Room(RoomMsg::PublishAck { token, pos }),
                    );
                }
            }
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => {
                // A refusal goes back to the waiting publisher.
                let sent = shard.cluster_publish(link, &room, msg, except, except, ack);
                if let (Err(_), Some(ack)) = (sent, ack) {
                    let token = ack.token;
                    shard.send_reliable(
                        ack.shard,
                        ShardMsg::Room(RoomMsg::PublishRefused { token }),
                    );
                }
            }
        }
    }

    /// Publish and learn the position the message was given.
    pub(crate) async fn publish_acked(
        &self,
        shard: &Rc<Shard>,
        room: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Position, BroadcastError> {
        match self {
            Sequencer::Local => shard.publish_acked_local(room, msg, timeout).await,
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => shard.publish_acked_cluster(link, room, msg, timeout).await,
        }
    }

    /// As owner: `room`'s interest set became non-empty (`followed`) or empty.
    pub(crate) fn interest_edge(&self, shard: &Shard, room: &Arc<str>, followed: bool) {
        match self {
            Sequencer::Local => {}
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(_) => shard.cluster_interest_changed(room, followed),
        }
    }

    /// As owner: answer `conn`'s resume of `room` after `since` (a resume implies
    /// interest).
    pub(crate) fn serve_replay(
        &self,
        shard: &Rc<Shard>,
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    ) {
        match self {
            Sequencer::Local => shard.replay_local(room, since, conn),
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(_) => {
                shard.set_interest_bit(&room, usize::from(conn.shard), true);
                shard.cluster_replay(room, since, conn);
            }
        }
    }

    /// As owner: whether this shard knows `room`'s position (always alone; in
    /// cluster mode once the bridge reported it).
    pub(crate) fn position_known(&self, shard: &Shard, room: &str) -> bool {
        match self {
            Sequencer::Local => true,
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(_) => shard.cluster_synced(room),
        }
    }

    /// A local member joined or left `room` (cluster mode reports counts).
    pub(crate) fn members_changed(&self, shard: &Shard, room: &Arc<str>) {
        match self {
            Sequencer::Local => {}
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(_) => shard.cluster_members_changed(room),
        }
    }

    /// As a presence room's owner: `member` joined.
    pub(crate) fn presence_join(&self, shard: &Rc<Shard>, room: Arc<str>, member: PresenceMember) {
        match self {
            Sequencer::Local => shard.presence_join_local(room, member),
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(link) => shard.presence_join_cluster(&link.node_id, room, member),
        }
    }

    /// As a presence room's owner: member `id` left.
    pub(crate) fn presence_leave(&self, shard: &Rc<Shard>, room: Arc<str>, id: ConnId) {
        match self {
            Sequencer::Local => shard.presence_leave_local(room, id),
            #[cfg(feature = "cluster")]
            Sequencer::Cluster(_) => shard.presence_leave_cluster(room, id),
        }
    }
}

impl Shard {
    /// This node's id in cluster mode.
    pub(crate) fn node_id(&self) -> Option<&str> {
        self.shared.sequencer.node_id()
    }

    /// Whether this node is one of a cluster.
    pub(crate) fn clustered(&self) -> bool {
        self.node_id().is_some()
    }

    /// Send `msg` to connection `to` of node `node` (this node's own id delivers
    /// here).
    pub(crate) fn send_to_node(
        &self,
        node: &str,
        to: ConnId,
        msg: Message,
    ) -> Result<(), BroadcastError> {
        self.shared.sequencer.send_to_node(self, node, to, msg)
    }
}

/// Start the bridge thread (cluster mode), wired to the shards' inboxes.
pub(crate) fn spawn_bridge(
    shared: &Shared,
    end: Option<BridgeStart>,
    senders: Vec<corecast_shards::MeshSender<ShardMsg>>,
) -> Result<Option<std::thread::JoinHandle<()>>, StartError> {
    let Some(end) = end else {
        return Ok(None);
    };
    #[cfg(feature = "cluster")]
    {
        let (Some(cfg), Some(link)) = (shared.config.cluster.clone(), shared.cluster()) else {
            return Ok(None);
        };
        let port = Box::new(super::cluster::MeshPort(senders));
        crate::cluster::bridge::spawn(cfg, link.node_id.clone(), end, port)
            .map(Some)
            .map_err(StartError::Cluster)
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (shared, senders);
        match end {}
    }
}

/// After the shards stopped: tell the bridge to leave the cluster (its liveness
/// key goes, so other nodes drop its members now).
pub(crate) fn leave_cluster(shared: &Shared) {
    match &shared.sequencer {
        Sequencer::Local => {}
        #[cfg(feature = "cluster")]
        Sequencer::Cluster(link) => {
            let _ = link.send(crate::cluster::ToBridge::Shutdown);
        }
    }
}
