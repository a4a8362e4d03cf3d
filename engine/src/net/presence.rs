//! Presence: for rooms that match a `presence.rooms` rule, the room's owner shard
//! keeps the member list (id + the rule's metadata keys) and publishes a `join` /
//! `leave` event into the room as members come and go, in the room's own order. A
//! member that joins also gets a `snapshot` of who is there.
//!
//! Members are announced from the shard they live on; because every join and leave
//! goes through the same room-membership calls as delivery, a connection that ends
//! (however it ends) leaves presence exactly when it leaves its rooms.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use corecast_shards::{owner_of, ConnId};

use super::registry::with_timeout;
use super::shard::{Shard, ShardMsg};
use crate::net::shard::{PresenceMsg, RegistryMsg};
use crate::vocab::message::Message;
use crate::vocab::meta::{Meta, MetaCell};
use crate::vocab::registry::{LookupError, PresenceMember};

pub(crate) use crate::vocab::registry::{member_event, snapshot_event, SNAPSHOT_MAX};

/// As owner: members of each presence room.
#[derive(Default)]
pub(crate) struct PresenceTable {
    rooms: HashMap<Arc<str>, BTreeMap<ConnId, Meta>>,
}

impl Shard {
    /// Tell `room`'s owner that `id` joined or left, if the room has presence.
    pub(crate) fn announce_presence(
        self: &Rc<Self>,
        room: &Arc<str>,
        id: ConnId,
        meta: &MetaCell,
        joined: bool,
    ) {
        let Some(rule) = self.shared.config.presence.rule_for(room) else {
            return;
        };
        let owner = owner_of(room, self.shared.senders.len());
        let msg = if joined {
            ShardMsg::Presence(PresenceMsg::Join {
                room: room.clone(),
                member: PresenceMember {
                    id,
                    meta: meta.subset(&rule.meta),
                },
            })
        } else {
            ShardMsg::Presence(PresenceMsg::Leave {
                room: room.clone(),
                member: id,
            })
        };
        self.send_reliable(owner, msg);
    }

    /// As owner: add a member, tell the room, show the newcomer who is there.
    pub(crate) fn presence_join(self: &Rc<Self>, room: Arc<str>, member: PresenceMember) {
        let shared = self.shared.clone();
        shared.sequencer.presence_join(self, room, member);
    }

    /// Cluster: the bridge keeps the room's members of every node in Redis, sends
    /// the snapshot and publishes the event with the cluster-wide count.
    #[cfg(feature = "cluster")]
    pub(crate) fn presence_join_cluster(&self, node: &str, room: Arc<str>, member: PresenceMember) {
        let json = crate::vocab::registry::cluster_member_json(node, &member);
        self.presence
            .borrow_mut()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(member.id, member.meta);
        self.to_bridge(crate::cluster::ToBridge::PresenceJoin {
            room,
            member_id: member.id,
            member: json,
        });
    }

    /// Alone: add the member, send it the snapshot, sequence the join event.
    pub(crate) fn presence_join_local(self: &Rc<Self>, room: Arc<str>, member: PresenceMember) {
        let (count, snapshot) = {
            let mut table = self.presence.borrow_mut();
            let members = table.rooms.entry(room.clone()).or_default();
            members.insert(member.id, member.meta.clone());
            let listed: Vec<_> = members
                .iter()
                .take(SNAPSHOT_MAX)
                .map(|(id, meta)| {
                    PresenceMember {
                        id: *id,
                        meta: meta.clone(),
                    }
                    .to_json()
                })
                .collect();
            (members.len(), listed)
        };
        let snapshot = snapshot_event(&room, snapshot, count);
        // Same mesh channel as the room's deliveries to that shard: the snapshot
        // arrives before the join event below.
        if usize::from(member.id.shard) == self.id {
            self.deliver_direct(member.id, &Message::text(snapshot.to_string()));
        } else {
            self.send_reliable(
                usize::from(member.id.shard),
                ShardMsg::Registry(RegistryMsg::SendTo {
                    to: member.id,
                    msg: Message::text(snapshot.to_string()),
                    ack: None,
                }),
            );
        }
        let event = member_event("join", &room, member.to_json(), count);
        self.sequence(&room, Message::text(event.to_string()), None);
    }

    /// As owner: remove a member and tell the room.
    pub(crate) fn presence_leave(self: &Rc<Self>, room: Arc<str>, id: ConnId) {
        let shared = self.shared.clone();
        shared.sequencer.presence_leave(self, room, id);
    }

    /// Cluster: forget the member here; the bridge removes it from Redis and
    /// publishes the leave event with the cluster-wide count.
    #[cfg(feature = "cluster")]
    pub(crate) fn presence_leave_cluster(&self, room: Arc<str>, id: ConnId) {
        if self.remove_presence_member(&room, id).is_none() {
            return;
        }
        self.to_bridge(crate::cluster::ToBridge::PresenceLeave {
            room,
            member_id: id,
        });
    }

    /// Forget member `id` of `room`: its metadata and the members left, if it was
    /// one.
    fn remove_presence_member(&self, room: &Arc<str>, id: ConnId) -> Option<(Meta, usize)> {
        let mut table = self.presence.borrow_mut();
        let members = table.rooms.get_mut(room)?;
        let meta = members.remove(&id);
        let count = members.len();
        if members.is_empty() {
            table.rooms.remove(room);
        }
        meta.map(|m| (m, count))
    }

    /// Alone: forget the member and sequence the leave event.
    pub(crate) fn presence_leave_local(self: &Rc<Self>, room: Arc<str>, id: ConnId) {
        let Some((meta, count)) = self.remove_presence_member(&room, id) else {
            return;
        };
        let event = member_event("leave", &room, PresenceMember { id, meta }.to_json(), count);
        self.sequence(&room, Message::text(event.to_string()), None);
    }

    /// As owner: the members of `room`.
    pub(crate) fn presence_members(&self, room: &str) -> Vec<PresenceMember> {
        self.presence
            .borrow()
            .rooms
            .get(room)
            .map(|m| {
                m.iter()
                    .map(|(id, meta)| PresenceMember {
                        id: *id,
                        meta: meta.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The members of presence room `room`, asked of its owner.
    pub(crate) async fn presence_list(
        self: &Rc<Self>,
        room: &str,
    ) -> Result<Vec<PresenceMember>, LookupError> {
        let owner = owner_of(room, self.shared.senders.len());
        if owner == self.id {
            return Ok(self.presence_members(room));
        }
        let (token, slot) = self.pending.new_presence();
        self.send_reliable(
            owner,
            ShardMsg::Presence(PresenceMsg::List {
                room: Arc::from(room),
                token,
                reply_to: self.id,
            }),
        );
        let got = with_timeout(slot.wait(), super::registry::LOOKUP_TIMEOUT).await;
        self.pending.forget(token);
        got.ok_or(LookupError::Timeout)
    }
}
