//! Room membership on this shard: joins and leaves of connections and sessions,
//! the interest edges they cause, member counts and room info.

use super::*;

impl Shard {
    /// Members of `room` on this shard, by transport.
    pub(crate) fn local_member_counts(&self, room: &str) -> crate::vocab::registry::MemberCounts {
        let mut counts = crate::vocab::registry::MemberCounts::default();
        if let Some(members) = self.rooms.borrow().members(room) {
            for (_, m) in members.iter() {
                match m {
                    Member::Conn(c) if c.is_sse() => counts.sse += 1,
                    Member::Conn(_) => counts.websocket += 1,
                    #[cfg(feature = "webtransport")]
                    Member::Wt(_) => counts.webtransport += 1,
                    #[cfg(test)]
                    Member::Probe(_) => counts.websocket += 1,
                }
            }
        }
        counts
    }

    /// Members of `room` on this shard by transport, plus the owner's record.
    pub(super) fn local_counts(&self, room: &str) -> RoomCounts {
        let members = self.local_member_counts(room);
        let mut counts = RoomCounts {
            websocket: members.websocket,
            sse: members.sse,
            webtransport: members.webtransport,
            position: None,
        };
        if owner_of(room, self.senders().len()) == self.id
            && self.shared.sequencer.position_known(self, room)
        {
            counts.position = self
                .interest
                .borrow()
                .get(room)
                .map(|(epoch, seq, _)| Position { epoch, seq });
        }
        counts
    }

    /// Ask every shard about `room` and add up the answers.
    pub(crate) async fn room_info(
        self: &Rc<Self>,
        room: &str,
        timeout: Duration,
    ) -> Option<RoomCounts> {
        let shards = self.senders().len();
        let (token, slot) = self.pending.new_info(shards);
        let room: Arc<str> = Arc::from(room);
        for s in 0..shards {
            self.send_reliable(
                s,
                ShardMsg::Room(RoomMsg::RoomInfo {
                    room: room.clone(),
                    token,
                    reply_to: self.id,
                }),
            );
        }
        let got = futures_lite::future::or(async { Some(slot.wait().await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        self.pending.forget(token);
        got
    }

    /// Add `conn` to `room`.
    /// Add `conn` to `room`; false if it was already a member (or is finished).
    pub(crate) fn join(self: &Rc<Self>, room: &str, conn: &Rc<Conn>) -> bool {
        if conn.state() == ConnState::Done {
            return false;
        }
        let (change, room) =
            self.rooms
                .borrow_mut()
                .join(room, u64::from(conn.id.slot), Member::Conn(conn.clone()));
        if change == Change::None {
            return false;
        }
        // The table's own key is shared, so members don't each allocate the name.
        conn.rooms.borrow_mut().push(room.clone());
        if change == Change::FirstJoined {
            self.set_interest(&room, true);
        }
        self.shared.sequencer.members_changed(self, &room);
        self.announce_presence(&room, conn.id, &conn.meta, true);
        true
    }

    /// Join `room`; with `since`, first replay what `conn` missed after that
    /// position (from the owner's history), then continue live with no gap and no
    /// duplicate.
    pub(crate) fn join_since(
        self: &Rc<Self>,
        room: &str,
        conn: &Rc<Conn>,
        since: Option<Position>,
    ) {
        if !self.join(room, conn) || conn.state() != ConnState::Open {
            return;
        }
        // A multi-room stream needs every room's position in its event ids from the
        // start, so a room it joins without a cursor asks the owner for its position.
        let multi_room = conn.transport == crate::net::tcp_conn::Transport::SseMultiRoom;
        if since.is_none() && !multi_room {
            return;
        }
        let owner = owner_of(room, self.senders().len());
        let room = conn.room_name(room);
        conn.begin_replay(room.clone());
        self.send_reliable(
            owner,
            ShardMsg::Room(RoomMsg::Replay {
                room,
                since,
                conn: conn.id,
            }),
        );
    }

    /// Remove `conn` from `room`.
    pub(crate) fn leave(self: &Rc<Self>, room: &str, conn: &Conn) {
        let change = self
            .rooms
            .borrow_mut()
            .leave(room, &u64::from(conn.id.slot));
        if change == Change::None {
            return;
        }
        let mut rooms = conn.rooms.borrow_mut();
        let Some(pos) = rooms.iter().position(|r| &**r == room) else {
            return;
        };
        let room = rooms.swap_remove(pos);
        drop(rooms);
        self.shared.sequencer.members_changed(self, &room);
        self.announce_presence(&room, conn.id, &conn.meta, false);
        if change == Change::LastLeft {
            self.set_interest(&room, false);
        }
    }

    pub(super) fn set_interest(self: &Rc<Self>, room: &Arc<str>, interested: bool) {
        let owner = owner_of(room, self.senders().len());
        let msg = ShardMsg::Room(RoomMsg::Interest {
            room: room.clone(),
            shard: self.id,
            interested,
        });
        // Interest must not be lost (handled inline when this shard is the owner).
        self.send_reliable(owner, msg);
    }

    /// Take a connection out of all its rooms.
    pub(crate) fn leave_all(self: &Rc<Self>, conn: &Conn) {
        // `leave` removes each room from `conn.rooms`, so walk a copy.
        let rooms: Vec<Arc<str>> = conn.rooms.borrow().clone();
        for room in rooms {
            self.leave(&room, conn);
        }
    }

    /// Add a WebTransport session to `room`; returns the table's shared room name.
    #[cfg(feature = "webtransport")]
    pub(crate) fn join_wt(self: &Rc<Self>, room: &str, session: &Rc<SessionState>) -> Arc<str> {
        let (change, name) =
            self.rooms
                .borrow_mut()
                .join(room, session.member_key, Member::Wt(session.clone()));
        if change == Change::FirstJoined {
            self.set_interest(&name, true);
        }
        if change != Change::None {
            self.shared.sequencer.members_changed(self, &name);
            self.announce_presence(&name, session.reg_id, &session.meta, true);
        }
        name
    }

    /// Take a WebTransport session out of `room`.
    #[cfg(feature = "webtransport")]
    pub(crate) fn leave_wt(self: &Rc<Self>, room: &str, session: &SessionState) {
        let change = self.rooms.borrow_mut().leave(room, &session.member_key);
        session.rooms.borrow_mut().retain(|(r, _)| &**r != room);
        if change == Change::None {
            return;
        }
        let room: Arc<str> = Arc::from(room);
        self.shared.sequencer.members_changed(self, &room);
        self.announce_presence(&room, session.reg_id, &session.meta, false);
        if change == Change::LastLeft {
            self.set_interest(&room, false);
        }
    }

    /// Take a WebTransport session out of all its rooms.
    #[cfg(feature = "webtransport")]
    pub(crate) fn leave_all_wt(self: &Rc<Self>, session: &SessionState) {
        let rooms: Vec<Arc<str>> = session
            .rooms
            .borrow()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        for room in rooms {
            self.leave_wt(&room, session);
        }
    }

    /// Free a finished connection's slot.
    pub(crate) fn forget(&self, conn: &Conn) {
        if self.conns.borrow_mut().remove(conn.id).is_some() {
            ShardStats::sub(&self.stats.connections, 1);
            ShardStats::sub(
                if conn.is_sse() {
                    &self.stats.sse_connections
                } else {
                    &self.stats.ws_connections
                },
                1,
            );
        }
        if self.drain_started.get() && self.conns.borrow().is_empty() {
            self.idle.fire();
        }
    }

    /// Add a harness probe to `room`, resuming after `since` if given (tests only;
    /// the same steps as [`Shard::join_since`] for a connection).
    #[cfg(test)]
    pub(crate) fn join_probe(
        self: &Rc<Self>,
        room: &str,
        probe: &Rc<crate::net::harness::Probe>,
        since: Option<Position>,
    ) {
        let (change, name) = self.rooms.borrow_mut().join(
            room,
            u64::from(probe.id.slot),
            Member::Probe(probe.clone()),
        );
        if change == Change::FirstJoined {
            self.set_interest(&name, true);
        }
        if since.is_some() {
            probe.begin_replay(name.clone());
            let owner = owner_of(room, self.senders().len());
            let conn = probe.id;
            self.send_reliable(
                owner,
                ShardMsg::Room(RoomMsg::Replay {
                    room: name,
                    since,
                    conn,
                }),
            );
        }
    }
}
