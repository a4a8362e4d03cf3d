//! The shard's inbox loop: messages from other shards and threads, handled in
//! arrival order, and the two-round shutdown barrier (`Quiesced`).

use super::*;

impl Shard {
    /// Serve the inbox until shutdown, then drain connections.
    ///
    /// Shutdown is a two-round barrier over the mesh so that a message sequenced before
    /// it reaches every member, not only the owner's: each shard stops reading client
    /// input and sends a round-0 marker to every other shard; a shard that has handled
    /// all round-0 markers sends round 1. Inboxes and outboxes are FIFO per sender, so
    /// once a shard has every round-1 marker, every publish made before the shutdown
    /// (one hop to the owner) and its deliveries (one more hop) have been handled here.
    /// Only then are connections flushed and closed with 1001. A shard that cannot
    /// finish the barrier (a marker lost to a full outbox) gives up after half the
    /// drain timeout.
    pub(crate) async fn run_inbox(self: Rc<Self>, inbox: Inbox<ShardMsg>) {
        let mut inbox = inbox.attach();
        let mut batch = Vec::with_capacity(256);
        let mut give_up: Option<std::time::Instant> = None;
        loop {
            if self.shared.is_shutting_down() && !self.quiescing.get() {
                self.begin_quiesce();
                let half = self.shared.config.shutdown.drain_timeout_ms / 2;
                give_up = Some(std::time::Instant::now() + Duration::from_millis(half));
            }
            if self.quiescing.get() && self.quiesced[1].get() + 1 >= self.senders().len() {
                break;
            }
            let received = match give_up {
                None => inbox.recv_batch(&mut batch, 256).await.map(Some),
                Some(at) => {
                    futures_lite::future::or(
                        async { inbox.recv_batch(&mut batch, 256).await.map(Some) },
                        async {
                            glommio::timer::sleep(
                                at.saturating_duration_since(std::time::Instant::now()),
                            )
                            .await;
                            Ok(None)
                        },
                    )
                    .await
                }
            };
            match received {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(shard = self.id, "shutdown barrier timed out; draining");
                    break;
                }
                Err(_) => break,
            }
            for msg in batch.drain(..) {
                self.handle(msg);
            }
            glommio::yield_if_needed().await;
        }
        self.drain().await;
    }

    /// Stop taking client input and tell every other shard (round 0 of the barrier).
    pub(super) fn begin_quiesce(self: &Rc<Self>) {
        self.quiescing.set(true);
        // Stops the accept loops and refuses new requests and sessions.
        self.draining.fire();
        for s in 0..self.senders().len() {
            if s != self.id {
                self.send_reliable(s, ShardMsg::Quiesced { round: 0 });
            }
        }
        self.maybe_quiesce_round_1();
    }

    /// Once every round-0 marker is in (and this shard quiesced): round 1.
    pub(super) fn maybe_quiesce_round_1(self: &Rc<Self>) {
        if self.quiescing.get() && self.quiesced[0].get() + 1 == self.senders().len() {
            // Count past the total so this runs once.
            self.quiesced[0].set(usize::MAX - 1);
            for s in 0..self.senders().len() {
                if s != self.id {
                    self.send_reliable(s, ShardMsg::Quiesced { round: 1 });
                }
            }
        }
    }

    pub(super) fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Room(m) => self.handle_room(m),
            ShardMsg::Registry(m) => self.handle_registry(m),
            ShardMsg::Presence(m) => self.handle_presence(m),
            #[cfg(feature = "webtransport")]
            ShardMsg::QuicPacket { mut data, from } => {
                let ep = self.quic.borrow().clone();
                if let Some(ep) = ep {
                    ep.on_forwarded(&mut data, from);
                }
            }
            #[cfg(feature = "cluster")]
            ShardMsg::Cluster(msg) => self.handle_cluster(msg),
            ShardMsg::Shutdown => {}
            #[cfg(test)]
            ShardMsg::Test(call) => (call.0)(self),
            ShardMsg::Quiesced { round } => {
                let seen = &self.quiesced[usize::from(round.min(1))];
                seen.set(seen.get().saturating_add(1));
                self.maybe_quiesce_round_1();
            }
        }
    }

    fn handle_room(self: &Rc<Self>, msg: RoomMsg) {
        match msg {
            RoomMsg::Publish {
                room,
                msg,
                ack,
                except,
            } => self
                .shared
                .sequencer
                .publish_at_owner(self, room, msg, ack, except),
            RoomMsg::Deliver {
                room,
                pos,
                msg,
                except,
                published,
            } => self.deliver(&room, pos, &msg, except, published),
            RoomMsg::Interest {
                room,
                shard,
                interested,
            } => self.set_interest_bit(&room, shard, interested),
            RoomMsg::Replay { room, since, conn } => self.serve_replay(room, since, conn),
            RoomMsg::ReplayData {
                conn,
                room,
                since,
                replay,
            } => self.apply_replay(conn, &room, since, replay),
            RoomMsg::PublishAck { token, pos } => self.pending.ack(token, pos),
            #[cfg(feature = "cluster")]
            RoomMsg::PublishRefused { token } => self.pending.refuse(token),
            RoomMsg::RoomInfo {
                room,
                token,
                reply_to,
            } => {
                let counts = self.local_counts(&room);
                let reply = RoomMsg::RoomInfoReply { token, counts };
                self.send_reliable(reply_to, ShardMsg::Room(reply));
            }
            RoomMsg::RoomInfoReply { token, counts } => self.pending.info_reply(token, counts),
        }
    }

    fn handle_registry(self: &Rc<Self>, msg: RegistryMsg) {
        match msg {
            RegistryMsg::Lookup {
                query,
                token,
                reply_to,
            } => {
                let (infos, truncated) = self.local_lookup(&query);
                let reply = RegistryMsg::LookupReply {
                    token,
                    infos,
                    truncated,
                };
                self.send_reliable(reply_to, ShardMsg::Registry(reply));
            }
            RegistryMsg::LookupReply {
                token,
                infos,
                truncated,
            } => self.pending.list_reply(token, infos, truncated),
            RegistryMsg::SendTo { to, msg, ack } => {
                let delivered = self.deliver_direct(to, &msg);
                if let Some(ack) = ack {
                    let token = ack.token;
                    let reply = RegistryMsg::SendToAck { token, delivered };
                    self.send_reliable(ack.shard, ShardMsg::Registry(reply));
                }
            }
            RegistryMsg::SendToAck { token, delivered } => {
                self.pending.flag_reply(token, delivered)
            }
            RegistryMsg::BroadcastAll { msg } => self.deliver_to_everyone(&msg),
        }
    }

    fn handle_presence(self: &Rc<Self>, msg: PresenceMsg) {
        match msg {
            PresenceMsg::Join { room, member } => self.presence_join(room, member),
            PresenceMsg::Leave { room, member } => self.presence_leave(room, member),
            PresenceMsg::List {
                room,
                token,
                reply_to,
            } => {
                let members = self.presence_members(&room);
                let reply = PresenceMsg::ListReply { token, members };
                self.send_reliable(reply_to, ShardMsg::Presence(reply));
            }
            PresenceMsg::ListReply { token, members } => {
                self.pending.presence_reply(token, members)
            }
        }
    }

    /// Send to `shard` (itself included, handled inline) in order with everything
    /// else this shard sent it: a full inbox queues the message in the outbox (see
    /// [`crate::net::outbox`]). For control messages (interest, replay, acks, presence)
    /// whose loss would break a guarantee; only a shard so far behind that its outbox
    /// is full too loses one, counted in `mesh_overflows` and logged.
    pub(crate) fn send_reliable(self: &Rc<Self>, shard: usize, msg: ShardMsg) {
        if shard == self.id {
            self.handle(msg);
            return;
        }
        if self.outbox.send(shard, msg).is_err() {
            ShardStats::add(&self.stats.mesh_overflows, 1);
            tracing::error!(
                shard = self.id,
                to = shard,
                "cross-shard control message lost: the target shard's inbox and outbox are full"
            );
        }
    }
}
