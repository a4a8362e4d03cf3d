//! The connection registry, shard side: each shard answers registry questions
//! about the connections and sessions it owns, and delivers messages addressed to
//! one of them (`send_to`) or to all of them (`broadcast_all`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use corecast_shards::ConnId;

use super::driver::WRITE;
use super::shard::{AckTo, BroadcastError, Member, Shard, ShardMsg};
use super::tcp_conn::{Conn, ConnState};
#[cfg(feature = "webtransport")]
use crate::net::handle::wt_session::SessionState;
use crate::net::shard::RegistryMsg;
use crate::stats::ShardStats;
use crate::vocab::message::Message;
use crate::vocab::registry::{ConnInfo, LookupError, TransportKind};

/// How long a registry question waits for the shards' answers.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A registry question.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// The connection with this id.
    Id(ConnId),
    /// Up to `limit` members of `room`.
    Room { room: Arc<str>, limit: usize },
}

impl Shard {
    /// A TCP connection's registry entry.
    pub(crate) fn conn_info(&self, c: &Conn) -> ConnInfo {
        ConnInfo {
            id: c.id,
            transport: if c.is_sse() {
                TransportKind::Sse
            } else {
                TransportKind::WebSocket
            },
            path: self.shared.endpoints[usize::from(c.endpoint)].0.clone(),
            remote: c.remote(),
            connected_at: c.connected_at(),
            rooms: c.rooms.borrow().iter().map(|r| r.to_string()).collect(),
            meta: c.meta.snapshot(),
        }
    }

    /// A WebTransport session's registry entry.
    #[cfg(feature = "webtransport")]
    pub(crate) fn session_info(&self, s: &SessionState) -> ConnInfo {
        ConnInfo {
            id: s.reg_id,
            transport: TransportKind::WebTransport,
            path: s.path.to_string(),
            remote: Some(s.remote),
            connected_at: s.connected_at,
            rooms: s
                .rooms
                .borrow()
                .iter()
                .map(|(r, _)| r.to_string())
                .collect(),
            meta: s.meta.snapshot(),
        }
    }

    fn member_info(&self, m: &Member) -> ConnInfo {
        match m {
            Member::Conn(c) => self.conn_info(c),
            #[cfg(feature = "webtransport")]
            Member::Wt(s) => self.session_info(s),
            #[cfg(test)]
            Member::Probe(p) => ConnInfo {
                id: p.id,
                transport: TransportKind::WebSocket,
                path: "/probe".into(),
                remote: None,
                connected_at: std::time::SystemTime::UNIX_EPOCH,
                rooms: Vec::new(),
                meta: crate::vocab::meta::Meta::new(),
            },
        }
    }

    /// The live connection or session with `id`, if this shard owns it.
    pub(crate) fn member_by_id(&self, id: ConnId) -> Option<Member> {
        if let Some(c) = self.conns.borrow().get(id) {
            return (c.state() != ConnState::Done).then(|| Member::Conn(c.clone()));
        }
        #[cfg(feature = "webtransport")]
        {
            let sessions = self.wt_sessions.borrow();
            let s = sessions.get(id)?;
            (!s.is_closed()).then(|| Member::Wt(s.clone()))
        }
        #[cfg(not(feature = "webtransport"))]
        None
    }

    /// Answer a registry question from this shard's connections.
    pub(crate) fn local_lookup(&self, q: &Lookup) -> (Vec<ConnInfo>, bool) {
        match q {
            Lookup::Id(id) => (
                self.member_by_id(*id)
                    .map(|m| self.member_info(&m))
                    .into_iter()
                    .collect(),
                false,
            ),
            Lookup::Room { room, limit } => {
                let rooms = self.rooms.borrow();
                let Some(members) = rooms.members(room) else {
                    return (Vec::new(), false);
                };
                let mut out = Vec::new();
                let mut truncated = false;
                for (_, m) in members.iter() {
                    if out.len() >= *limit {
                        truncated = true;
                        break;
                    }
                    out.push(self.member_info(m));
                }
                (out, truncated)
            }
        }
    }

    /// Ask `shards` and gather their answers.
    async fn gather(
        self: &Rc<Self>,
        query: Lookup,
        shards: &[usize],
        limit: usize,
    ) -> Result<(Vec<ConnInfo>, bool), LookupError> {
        let (token, slot) = self.pending.new_list(shards.len(), limit);
        for &s in shards {
            self.send_reliable(
                s,
                ShardMsg::Registry(RegistryMsg::Lookup {
                    query: query.clone(),
                    token,
                    reply_to: self.id,
                }),
            );
        }
        let got = with_timeout(slot.wait(), LOOKUP_TIMEOUT).await;
        self.pending.forget(token);
        got.ok_or(LookupError::Timeout)
    }

    /// The connection `id`, wherever it lives (`None`: gone or never existed).
    pub(crate) async fn lookup_conn(
        self: &Rc<Self>,
        id: ConnId,
    ) -> Result<Option<ConnInfo>, LookupError> {
        let shard = usize::from(id.shard);
        if shard >= self.shared.senders.len() {
            return Ok(None);
        }
        if shard == self.id {
            return Ok(self.member_by_id(id).map(|m| self.member_info(&m)));
        }
        let (mut infos, _) = self.gather(Lookup::Id(id), &[shard], 1).await?;
        Ok(infos.pop())
    }

    /// Members of `room` on every shard (at most `limit`; the flag: there were more).
    pub(crate) async fn lookup_room(
        self: &Rc<Self>,
        room: &str,
        limit: usize,
    ) -> Result<(Vec<ConnInfo>, bool), LookupError> {
        let shards: Vec<usize> = (0..self.shared.senders.len()).collect();
        let query = Lookup::Room {
            room: Arc::from(room),
            limit,
        };
        self.gather(query, &shards, limit).await
    }

    /// Queue `msg` for the local connection or session `to`; false if it is gone.
    pub(crate) fn deliver_direct(&self, to: ConnId, msg: &Message) -> bool {
        let delivered = match self.member_by_id(to) {
            Some(Member::Conn(c)) => {
                let f = super::fanout::direct_frame(self, &c, msg);
                let queued = c.enqueue(f, &self.stats).is_ok();
                self.schedule(&c, WRITE);
                queued
            }
            #[cfg(feature = "webtransport")]
            Some(Member::Wt(s)) => {
                if s.send_direct(msg, &self.stats).is_err() {
                    s.evict();
                    false
                } else {
                    true
                }
            }
            #[cfg(test)]
            Some(Member::Probe(_)) => false,
            None => false,
        };
        if !delivered {
            ShardStats::add(&self.stats.send_to_missed, 1);
        }
        delivered
    }

    /// Send `msg` to connection `to` on any shard (fire-and-forget).
    pub(crate) fn send_to(&self, to: ConnId, msg: Message) -> Result<(), BroadcastError> {
        let shard = usize::from(to.shard);
        if shard == self.id {
            self.deliver_direct(to, &msg);
            return Ok(());
        }
        let Some(sender) = self.shared.senders.get(shard) else {
            ShardStats::add(&self.stats.send_to_missed, 1);
            return Ok(());
        };
        sender
            .send(ShardMsg::Registry(RegistryMsg::SendTo {
                to,
                msg,
                ack: None,
            }))
            .map_err(|_| {
                ShardStats::add(&self.stats.mesh_overflows, 1);
                BroadcastError::Overloaded
            })
    }

    /// Send `msg` to `to` and learn whether it was found.
    pub(crate) async fn send_to_acked(
        self: &Rc<Self>,
        to: ConnId,
        msg: Message,
    ) -> Result<bool, LookupError> {
        let shard = usize::from(to.shard);
        if shard >= self.shared.senders.len() {
            return Ok(false);
        }
        if shard == self.id {
            return Ok(self.deliver_direct(to, &msg));
        }
        let (token, slot) = self.pending.new_flag();
        let sent = self.shared.senders[shard].send(ShardMsg::Registry(RegistryMsg::SendTo {
            to,
            msg,
            ack: Some(AckTo {
                shard: self.id,
                token,
            }),
        }));
        if sent.is_err() {
            self.pending.forget(token);
            ShardStats::add(&self.stats.mesh_overflows, 1);
            return Err(LookupError::Overloaded);
        }
        let got = with_timeout(slot.wait(), LOOKUP_TIMEOUT).await;
        self.pending.forget(token);
        got.ok_or(LookupError::Timeout)
    }

    /// Send `msg` to every connection and session on every shard.
    pub(crate) fn broadcast_all(&self, msg: Message) -> Result<(), BroadcastError> {
        let mut result = Ok(());
        for (s, sender) in self.shared.senders.iter().enumerate() {
            if s == self.id {
                continue;
            }
            if sender
                .send(ShardMsg::Registry(RegistryMsg::BroadcastAll {
                    msg: msg.clone(),
                }))
                .is_err()
            {
                ShardStats::add(&self.stats.mesh_overflows, 1);
                result = Err(BroadcastError::Overloaded);
            }
        }
        self.deliver_to_everyone(&msg);
        result
    }

    /// Queue `msg` for every open local connection and session.
    pub(crate) fn deliver_to_everyone(&self, msg: &Message) {
        let conns: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .iter()
            .filter(|c| c.state() == ConnState::Open)
            .cloned()
            .collect();
        for c in conns {
            let f = super::fanout::direct_frame(self, &c, msg);
            let _ = c.enqueue(f, &self.stats);
            self.schedule(&c, WRITE);
        }
        #[cfg(feature = "webtransport")]
        let sessions: Vec<Rc<SessionState>> = self.wt_sessions.borrow().iter().cloned().collect();
        #[cfg(feature = "webtransport")]
        for s in sessions {
            if s.send_direct(msg, &self.stats).is_err() {
                s.evict();
            }
        }
    }
}

/// `fut`'s output, or `None` after `timeout`.
pub(crate) async fn with_timeout<T>(
    fut: impl std::future::Future<Output = T>,
    timeout: Duration,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await
}
