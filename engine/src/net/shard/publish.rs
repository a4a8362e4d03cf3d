//! Publish, sequence and fan out: a message goes to its room's owner (through the
//! sequencer), which assigns the position, keeps it in history and hands it to
//! every interested shard; each shard encodes it once per wire form and queues the
//! same bytes for every local member.

use super::*;

impl Shard {
    /// The owner-side table of rooms this shard owns.
    #[cfg(feature = "cluster")]
    pub(crate) fn interest_table(&self) -> &RefCell<InterestTable<Message>> {
        &self.interest
    }

    /// As owner: shard `shard` has (or no longer has) members of `room`. In cluster
    /// mode the node follows the room's channel while any shard has members.
    pub(crate) fn set_interest_bit(&self, room: &Arc<str>, shard: usize, interested: bool) {
        let limits = self.shared.config.history.limits_for(room);
        let mut t = self.interest.borrow_mut();
        let before = t.get(room).map_or(0, |(_, _, s)| s);
        t.set(room, shard, interested, limits);
        let after = t.get(room).map_or(0, |(_, _, s)| s);
        drop(t);
        if (before == 0) != (after == 0) {
            self.shared.sequencer.interest_edge(self, room, after != 0);
        }
    }

    /// Publish `msg` to `room`, skipping member `except` (if it is one).
    pub(crate) fn publish_except(
        &self,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        self.publish_from(room, msg, except, except)
    }

    /// Publish `msg` to `room` for connection `origin` (told if a cluster publish
    /// fails after it was accepted), skipping member `except`.
    pub(crate) fn publish_from(
        &self,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
        origin: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        self.shared
            .sequencer
            .publish(self, room, msg, except, origin)
    }

    /// Alone: sequence `msg` here if this shard owns `room`, else send it to the
    /// owner.
    pub(crate) fn publish_to_owner(
        &self,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        let owner = owner_of(room, self.senders().len());
        if owner == self.id {
            self.sequence(room, msg, except);
            return Ok(());
        }
        self.outbox
            .send(
                owner,
                ShardMsg::Room(RoomMsg::Publish {
                    room: Arc::from(room),
                    msg,
                    ack: None,
                    except,
                }),
            )
            .map_err(|_| {
                ShardStats::add(&self.stats.mesh_overflows, 1);
                BroadcastError::Overloaded
            })
    }

    /// Publish `msg` to each of `rooms`; the last refusal, if any (the other rooms
    /// still get it).
    pub(crate) fn publish_to_rooms(
        &self,
        rooms: impl IntoIterator<Item = Arc<str>>,
        msg: &Message,
        origin: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        let mut result = Ok(());
        for room in rooms {
            if let Err(e) = self.publish_from(&room, msg.clone(), None, origin) {
                result = Err(e);
            }
        }
        result
    }

    /// Publish and learn the position the message was given.
    pub(crate) async fn publish_acked(
        self: &Rc<Self>,
        room: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Position, BroadcastError> {
        let shared = self.shared.clone();
        shared
            .sequencer
            .publish_acked(self, room, msg, timeout)
            .await
    }

    /// Alone: publish through the owner shard and wait for its position.
    pub(crate) async fn publish_acked_local(
        self: &Rc<Self>,
        room: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Position, BroadcastError> {
        let owner = owner_of(room, self.senders().len());
        if owner == self.id {
            return Ok(self.sequence(room, msg, None));
        }
        let (token, slot) = self.pending.new_ack();
        let sent = self.outbox.send(
            owner,
            ShardMsg::Room(RoomMsg::Publish {
                room: Arc::from(room),
                msg,
                ack: Some(AckTo {
                    shard: self.id,
                    token,
                }),
                except: None,
            }),
        );
        if sent.is_err() {
            self.pending.forget(token);
            ShardStats::add(&self.stats.mesh_overflows, 1);
            return Err(BroadcastError::Overloaded);
        }
        let got = futures_lite::future::or(async { Some(slot.wait().await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        self.pending.forget(token);
        got.flatten().ok_or(BroadcastError::Overloaded)
    }

    /// As the room's owner: assign the position, keep the message in history and
    /// hand it to every interested shard, in sequence order.
    pub(crate) fn sequence(&self, room: &str, msg: Message, except: Option<ConnId>) -> Position {
        let limits = self.shared.config.history.limits_for(room);
        let now = std::time::Instant::now();
        // The history's clock read doubles as the publish time of the latency metric.
        let published = crate::stats::instant_ns(now);
        let kept = if limits.max_messages > 0 {
            msg.detached()
        } else {
            msg.clone()
        };
        let (room, pos, shards) = {
            let mut table = self.interest.borrow_mut();
            let appended = table.append(room, kept, now, limits);
            self.stats.set_history(&table.history_counters());
            appended
        };
        self.fan_out(&room, pos, &msg, except, published, shards);
        pos
    }

    /// As the room's owner: hand message `pos` to every shard in `shards`.
    pub(crate) fn fan_out(
        &self,
        room: &Arc<str>,
        pos: Position,
        msg: &Message,
        except: Option<ConnId>,
        published: u64,
        mut shards: u64,
    ) {
        ShardStats::add(&self.stats.broadcasts, 1);
        while shards != 0 {
            let s = shards.trailing_zeros() as usize;
            shards &= shards - 1;
            if s == self.id {
                self.deliver(room, pos, msg, except, published);
            } else {
                let sent = self.outbox.send(
                    s,
                    ShardMsg::Room(RoomMsg::Deliver {
                        room: room.clone(),
                        pos,
                        msg: msg.clone(),
                        except,
                        published,
                    }),
                );
                if sent.is_err() {
                    ShardStats::add(&self.stats.mesh_overflows, 1);
                }
            }
        }
    }

    /// Fan a sequenced message out to local members: each transport's encoding is
    /// made once and the same bytes are queued for every member that uses it.
    pub(super) fn deliver(
        &self,
        room: &str,
        pos: Position,
        msg: &Message,
        except: Option<ConnId>,
        published: u64,
    ) {
        let mut slow: Vec<Slow> = Vec::new();
        self.deliver_to_members(room, pos, msg, except, published, &mut slow);
        // Closing leaves rooms: only now that the room table is no longer borrowed.
        #[cfg(feature = "webtransport")]
        for session in slow {
            session.evict();
        }
    }

    // Without WebTransport every member is a `Conn` and nothing is evicted here.
    #[cfg_attr(
        not(feature = "webtransport"),
        allow(
            unused_variables,
            clippy::ptr_arg,
            clippy::infallible_destructuring_match
        )
    )]
    pub(super) fn deliver_to_members(
        &self,
        room: &str,
        pos: Position,
        msg: &Message,
        except: Option<ConnId>,
        published: u64,
        slow: &mut Vec<Slow>,
    ) {
        let rooms = self.rooms.borrow();
        let Some(members) = rooms.members(room) else {
            return;
        };
        let mut enc = Encodings::new(self, room, pos, msg);
        let mut delivered = 0u64;
        for (_, member) in members.iter() {
            if except.is_some_and(|id| member.id() == id) {
                continue;
            }
            let conn = match member {
                Member::Conn(c) => c,
                #[cfg(feature = "webtransport")]
                Member::Wt(session) => {
                    let class = enc.class;
                    if session
                        .deliver(room, enc.for_wt(), class, &self.stats)
                        .is_err()
                    {
                        slow.push(session.clone());
                    }
                    delivered += 1;
                    continue;
                }
                #[cfg(test)]
                Member::Probe(p) => {
                    p.deliver(room, pos, msg, enc.class, &self.stats);
                    delivered += 1;
                    continue;
                }
            };
            if conn.is_replaying(room) {
                // Its replay (cut after this message) is on its way from the owner.
                continue;
            }
            let f = enc.for_conn(conn);
            let _ = conn.enqueue_room(f, enc.class, published, &self.stats);
            // Queue now, write later: the driver flushes each member once per batch
            // (or after the flush policy's hold).
            self.schedule_delivery(conn);
            delivered += 1;
        }
        ShardStats::add(&self.stats.deliveries, delivered);
    }

    /// Compress once per shard per message; every compressed member shares it.
    pub(crate) fn compress_frame(&self, opcode: frame::OpCode, payload: &[u8]) -> Bytes {
        let mut d = self.deflater.borrow_mut();
        let deflater = d.get_or_insert_with(|| Deflater::new(15));
        let body = deflater.compress(payload);
        frame::encode(opcode, true, &body)
    }
}
