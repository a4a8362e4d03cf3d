//! Following rooms: subscriptions, positions, and the room channels (dedupe, gap
//! fill, forwarding to the owner shard).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use corecast_shards::{owner_of, Position};

use super::{within, Bridge, SUBSCRIBE_CHUNK};
use crate::cluster::ctx::{Ctx, Fail};
use crate::cluster::wire::{self, Header};
use crate::cluster::ClusterStats;
use crate::cluster::FromBridge;
use crate::vocab::message::Message;

impl Bridge {
    pub(super) async fn subscribe(&mut self, room: Arc<str>) {
        self.rooms.insert(room.clone(), None);
        self.stats
            .subscribed_rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
        if !self.connected {
            return; // Subscribed and synced on (re)connect.
        }
        if let Err(f) = self.sync_rooms(&[room]).await {
            self.fail(f);
        }
    }

    pub(super) async fn unsubscribe(&mut self, room: Arc<str>) {
        self.rooms.remove(&room);
        self.stats
            .subscribed_rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
        if !self.connected {
            return;
        }
        let channel = self.keys.room_channel(&room);
        let t = self.timeout;
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if let Err(f) = within(t, link.sink.unsubscribe(&channel)).await {
            self.fail(f);
        }
    }

    /// SUBSCRIBE `rooms`, then read their positions: the owner of a room not yet
    /// synced (or whose epoch changed) gets `ClusterSync`; a room that moved on
    /// in the same epoch gets the missed messages from the stream.
    pub(super) async fn sync_rooms(&mut self, rooms: &[Arc<str>]) -> Result<(), Fail> {
        let t = self.timeout;
        let channels: Vec<String> = rooms.iter().map(|r| self.keys.room_channel(r)).collect();
        {
            let link = self
                .link
                .as_mut()
                .ok_or_else(|| Fail::Lost("not connected".into()))?;
            for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                within(t, link.sink.subscribe(chunk)).await?;
            }
        }
        let mut ctx = self
            .link_ctx()
            .ok_or_else(|| Fail::Lost("not connected".into()))?;
        let positions = ctx.positions(rooms).await?;
        for (room, pos) in rooms.iter().zip(positions) {
            let Some(state) = self.rooms.get(room).copied() else {
                continue;
            };
            match state {
                Some(last) if last.epoch == pos.epoch && pos.seq >= last.seq => {
                    if pos.seq > last.seq {
                        self.fill_gap(&mut ctx, room, pos.epoch, last.seq + 1, pos.seq)
                            .await?;
                    }
                }
                // Followed before, and Redis started a new epoch (it lost its data)
                // while this node was away: what other nodes published in it before
                // this node resubscribed is in the stream, so start the new epoch at
                // its first message instead of at Redis's current position.
                Some(last) if last.epoch != pos.epoch && pos.epoch != 0 => {
                    self.out.send(
                        owner_of(room, self.shards),
                        FromBridge::Sync {
                            room: room.clone(),
                            epoch: pos.epoch,
                            seq: 0,
                        },
                    );
                    self.rooms.insert(
                        room.clone(),
                        Some(Position {
                            epoch: pos.epoch,
                            seq: 0,
                        }),
                    );
                    if pos.seq > 0 {
                        self.fill_gap(&mut ctx, room, pos.epoch, 1, pos.seq).await?;
                    }
                }
                _ => {
                    self.out.send(
                        owner_of(room, self.shards),
                        FromBridge::Sync {
                            room: room.clone(),
                            epoch: pos.epoch,
                            seq: pos.seq,
                        },
                    );
                    self.rooms.insert(room.clone(), Some(pos));
                }
            }
        }
        Ok(())
    }

    /// Forward `from..=to` of `room` from its stream (entries no longer kept are
    /// counted as lost); afterwards the room is at `to`.
    async fn fill_gap(
        &mut self,
        ctx: &mut Ctx,
        room: &Arc<str>,
        epoch: u64,
        from: u64,
        to: u64,
    ) -> Result<(), Fail> {
        let entries = match ctx.xrange(room, from, to).await {
            Ok(e) => e,
            Err(Fail::Command(e)) => {
                tracing::warn!(room = %room, error = %e, "cluster: gap not filled");
                Vec::new()
            }
            Err(lost) => return Err(lost),
        };
        let filled = entries.len() as u64;
        ClusterStats::add(&self.stats.gap_filled, filled);
        let wanted = (to - from).saturating_add(1);
        ClusterStats::add(&self.stats.gap_lost, wanted.saturating_sub(filled));
        if filled < wanted {
            tracing::debug!(room = %room, from, to, filled, "cluster: part of a gap is no longer in history");
        }
        for e in entries {
            self.forward(room, epoch, e.seq, &e.header, e.msg);
        }
        if let Some(state) = self.rooms.get_mut(room) {
            *state = Some(Position { epoch, seq: to });
        }
        Ok(())
    }

    fn forward(&mut self, room: &Arc<str>, epoch: u64, seq: u64, header: &Header, msg: Message) {
        let except = if header.origin == *self.node {
            header.except
        } else {
            None
        };
        let pos = Position { epoch, seq };
        self.out.send(
            owner_of(room, self.shards),
            FromBridge::Deliver {
                room: room.clone(),
                pos,
                msg,
                except,
            },
        );
        if let Some(state) = self.rooms.get_mut(room) {
            *state = Some(pos);
        }
        ClusterStats::add(&self.stats.messages_in, 1);
    }

    fn malformed(&self, channel: &str, error: impl std::fmt::Display) {
        ClusterStats::add(&self.stats.redis_errors, 1);
        tracing::warn!(channel, %error, "cluster: malformed channel message dropped");
    }

    pub(super) async fn on_channel(&mut self, m: redis::Msg) {
        let data = Bytes::copy_from_slice(m.get_payload_bytes());
        let channel = m.get_channel_name();
        if channel == self.direct {
            match wire::decode_direct(&data) {
                Ok((conn, msg)) if usize::from(conn.shard) < self.shards => {
                    ClusterStats::add(&self.stats.direct_in, 1);
                    self.out.send(
                        usize::from(conn.shard),
                        FromBridge::SendTo { to: conn, msg },
                    );
                }
                Ok((conn, _)) => self.malformed(channel, format!("no shard {}", conn.shard)),
                Err(e) => self.malformed(channel, e),
            }
            return;
        }
        let Some(name) = self.keys.room_of_channel(channel) else {
            self.malformed(channel, "not a room channel");
            return;
        };
        // Not (or no longer) wanted, or not synced yet (the sync covers it).
        let Some((room, Some(last))) = self.rooms.get_key_value(name).map(|(k, v)| (k.clone(), *v))
        else {
            return;
        };
        let rm = match wire::decode_room(&data) {
            Ok(rm) => rm,
            Err(e) => {
                let channel = channel.to_string();
                self.malformed(&channel, e);
                return;
            }
        };
        let from = if last.epoch == rm.epoch {
            if rm.seq <= last.seq {
                ClusterStats::add(&self.stats.duplicates, 1);
                return;
            }
            last.seq + 1
        } else {
            1 // A new epoch: its messages start at 1.
        };
        if rm.seq > from {
            let Some(mut ctx) = self.link_ctx() else {
                return;
            };
            if let Err(f) = self
                .fill_gap(&mut ctx, &room, rm.epoch, from, rm.seq - 1)
                .await
            {
                // The catch-up after reconnecting resumes from the last forwarded.
                self.fail(f);
                return;
            }
        }
        self.forward(&room, rm.epoch, rm.seq, &rm.header, rm.msg);
    }
}
