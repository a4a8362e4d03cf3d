//! Resume: the owner answers a cursor from its history (or gap), and the member's
//! shard sends what was missed before live messages.

use super::*;

impl Shard {
    /// As the owner: answer a resume request for `conn` (local or on another shard).
    pub(super) fn serve_replay(
        self: &Rc<Self>,
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    ) {
        let shared = self.shared.clone();
        shared.sequencer.serve_replay(self, room, since, conn);
    }

    /// Alone: answer a resume from this owner's history.
    pub(crate) fn replay_local(
        self: &Rc<Self>,
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    ) {
        let limits = self.shared.config.history.limits_for(&room);
        let shard = usize::from(conn.shard);
        let replay = {
            let mut t = self.interest.borrow_mut();
            // A resume implies interest: set it here so no message falls between the
            // replay's cut and the first live delivery, whatever order things arrived in.
            t.set(&room, shard, true, limits);
            t.replay(&room, since, std::time::Instant::now(), limits)
        };

        self.send_reliable(
            shard,
            ShardMsg::Room(RoomMsg::ReplayData {
                conn,
                room,
                since,
                replay,
            }),
        );
    }

    /// Send `conn` what it missed (after a gap signal if anything is lost), then let
    /// live messages through.
    pub(super) fn apply_replay(
        &self,
        id: ConnId,
        room: &str,
        since: Option<Position>,
        replay: Replay<Message>,
    ) {
        let Some(conn) = self.conns.borrow().get(id).cloned() else {
            #[cfg(test)]
            if let Some(p) = self.probes.borrow().get(&id).cloned() {
                p.apply_replay(room, since, replay);
            }
            return;
        };
        conn.end_replay(room);
        if conn.state() != ConnState::Open {
            return;
        }
        let multi_room = conn.transport == crate::net::tcp_conn::Transport::SseMultiRoom;
        if let (Some(reason), Some(since)) = (replay.gap, since) {
            let signal = crate::net::fanout::gap_signal(&conn, room, since, reason, &replay);
            let _ = conn.enqueue(signal, &self.stats);
        }
        if multi_room {
            // The stream's id must name this room from now on: start it just
            // before the first replayed message (or at the room's position).
            let start = replay
                .messages
                .first()
                .map_or(replay.upto, |(seq, _)| seq.saturating_sub(1));
            conn.set_cursor(
                room,
                Position {
                    epoch: replay.epoch,
                    seq: start,
                },
            );
        }
        for (seq, msg) in &replay.messages {
            let pos = Position {
                epoch: replay.epoch,
                seq: *seq,
            };
            let f = Encodings::new(self, room, pos, msg).for_conn(&conn);
            if conn.enqueue(f, &self.stats).is_err() {
                break;
            }
        }
        self.schedule(&conn, WRITE);
    }
}
