//! Who sequences a room's messages: the room's owner shard (one node), or Redis
//! through the cluster bridge (`cluster:`). Publishing, acknowledged publishing,
//! following a room's interest, answering a resume, member counts and presence all
//! ask the [`Sequencer`]; the "cluster or local?" decision is made here and nowhere
//! else, so the standalone code paths carry no cluster conditionals.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use corecast_shards::{ConnId, Position};

use super::shard::{BroadcastError, Shard, ShardMsg};
use crate::cluster::ClusterLink;
use crate::vocab::message::{AckTo, Message};
use crate::vocab::registry::PresenceMember;

/// The sequencer of this node's rooms.
pub(crate) enum Sequencer {
    /// The room's owner shard assigns positions and keeps history.
    Local,
    /// Redis assigns positions (the publish script); the owner shard keeps a cache.
    Cluster(ClusterLink),
}

impl Sequencer {
    /// The bridge link in cluster mode (for counters, node ids, shutdown).
    pub(crate) fn cluster(&self) -> Option<&ClusterLink> {
        match self {
            Sequencer::Local => None,
            Sequencer::Cluster(link) => Some(link),
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
                    shard.send_reliable(ack.shard, ShardMsg::PublishAck { token, pos });
                }
            }
            Sequencer::Cluster(link) => {
                // A refusal goes back to the waiting publisher.
                let sent = shard.cluster_publish(link, &room, msg, except, except, ack);
                if let (Err(_), Some(ack)) = (sent, ack) {
                    let token = ack.token;
                    shard.send_reliable(ack.shard, ShardMsg::PublishRefused { token });
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
            Sequencer::Cluster(link) => shard.publish_acked_cluster(link, room, msg, timeout).await,
        }
    }

    /// As owner: `room`'s interest set became non-empty (`followed`) or empty.
    pub(crate) fn interest_edge(&self, shard: &Shard, room: &Arc<str>, followed: bool) {
        match self {
            Sequencer::Local => {}
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
            Sequencer::Cluster(_) => shard.cluster_synced(room),
        }
    }

    /// A local member joined or left `room` (cluster mode reports counts).
    pub(crate) fn members_changed(&self, shard: &Shard, room: &Arc<str>) {
        match self {
            Sequencer::Local => {}
            Sequencer::Cluster(_) => shard.cluster_members_changed(room),
        }
    }

    /// As a presence room's owner: `member` joined.
    pub(crate) fn presence_join(&self, shard: &Rc<Shard>, room: Arc<str>, member: PresenceMember) {
        match self {
            Sequencer::Local => shard.presence_join_local(room, member),
            Sequencer::Cluster(link) => shard.presence_join_cluster(&link.node_id, room, member),
        }
    }

    /// As a presence room's owner: member `id` left.
    pub(crate) fn presence_leave(&self, shard: &Rc<Shard>, room: Arc<str>, id: ConnId) {
        match self {
            Sequencer::Local => shard.presence_leave_local(room, id),
            Sequencer::Cluster(_) => shard.presence_leave_cluster(room, id),
        }
    }
}
