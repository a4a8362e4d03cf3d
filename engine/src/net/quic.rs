//! A shard's QUIC endpoint: its SO_REUSEPORT UDP socket, the QUIC connections it
//! owns (quiche), address validation with authenticated Retry tokens, connection
//! ids that name the owning shard, timers, and a send path that gathers the
//! packets of every connection with something to say into `sendmmsg` batches.
//!
//! Routing: every connection id we issue starts with our shard number. The kernel
//! keeps a client's 4-tuple on one socket, so packets normally arrive at the owner;
//! one that reaches another shard (say, after the client's address changed) is
//! forwarded to the owner over the shard mesh.
//!
//! The HTTP/3 + WebTransport layer ([`crate::proto::wt::session`]) runs per
//! connection; this module turns its events into sessions, handler tasks and
//! room members.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::FutureExt;
use glommio::net::UdpSocket;
use ring::rand::SecureRandom;
use slab::Slab;

use super::shard::{Shard, ShardMsg};
use super::udp::{self, BATCH, RECV_SIZE};
use super::wt_cert::WtCerts;
use crate::net::handle::wt_session::{
    Incoming, SessionOrigin, SessionState, WtSession, CLOSE_GOING_AWAY, CLOSE_HANDLER_PANIC,
};
use crate::proto::quic_token::RetryTokens;
use crate::proto::wt::session::{WtConn, WtEvent, H3_EXCESSIVE_LOAD, H3_NO_ERROR};
use crate::stats::ShardStats;

/// Our connection ids: 16 bytes, the first naming the owning shard.
const CID_LEN: usize = 16;
/// Largest UDP payload we send (fits every path that carries QUIC's 1200 minimum
/// plus common tunnel overheads).
const MAX_SEND: usize = 1350;
/// Retry tokens live this long.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30);

/// A notification for one waiting task; a wake with nobody waiting is kept for
/// the next wait.
#[derive(Default)]
struct WakeSlot {
    waker: Cell<Option<Waker>>,
    notified: Cell<bool>,
}

impl WakeSlot {
    fn wake(&self) {
        self.notified.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Wait for the next `wake` (or return at once if one came since the last wait).
    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// The connection and its session layer.
pub(crate) struct QuicInner {
    pub(crate) conn: quiche::Connection,
    pub(crate) wt: WtConn,
}

#[derive(Default)]
struct StreamWakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

/// One QUIC connection on its shard.
pub(crate) struct QuicConn {
    slot: usize,
    pub(crate) peer: SocketAddr,
    inner: RefCell<Option<QuicInner>>,
    sessions: RefCell<HashMap<u64, Rc<SessionState>>>,
    wakers: RefCell<HashMap<u64, StreamWakers>>,
    /// Tasks waiting for the peer to allow more streams.
    credit_waiters: RefCell<Vec<Waker>>,
    dirty: Cell<bool>,
    /// The earliest timer entry queued for this connection.
    armed: Cell<Option<Instant>>,
    cids: RefCell<Vec<Vec<u8>>>,
    endpoint: Weak<Endpoint>,
    /// Counted against `max_connections_per_shard` (decided once the handshake is
    /// done: before that a refusal cannot be sent protected).
    admitted: Cell<Option<bool>>,
}

impl QuicConn {
    /// Run `f` on the live connection; `None` once it is gone.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut QuicInner) -> R) -> Option<R> {
        self.inner.borrow_mut().as_mut().map(f)
    }

    /// Whether the connection has been torn down.
    pub(crate) fn is_gone(&self) -> bool {
        self.inner
            .borrow()
            .as_ref()
            .is_none_or(|i| i.conn.is_closed())
    }

    /// Something is queued: have the endpoint's sender visit this connection.
    pub(crate) fn mark_dirty(&self) {
        if self.dirty.replace(true) {
            return;
        }
        if let Some(ep) = self.endpoint.upgrade() {
            ep.dirty.borrow_mut().push(self.slot);
            ep.send_wake.wake();
        }
    }

    pub(crate) fn set_read_waker(&self, id: u64, w: Waker) {
        self.wakers.borrow_mut().entry(id).or_default().read = Some(w);
    }

    pub(crate) fn set_write_waker(&self, id: u64, w: Waker) {
        self.wakers.borrow_mut().entry(id).or_default().write = Some(w);
    }

    /// Wake `w` after the next batch of packets (or when the connection goes).
    pub(crate) fn wait_for_credit(&self, w: Waker) {
        let mut waiters = self.credit_waiters.borrow_mut();
        if !waiters.iter().any(|x| x.will_wake(&w)) {
            waiters.push(w);
        }
    }

    fn wake_credit_waiters(&self) {
        let waiters = std::mem::take(&mut *self.credit_waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    fn wake_stream(&self, id: u64, read: bool, write: bool) {
        let mut wakers = self.wakers.borrow_mut();
        if let Some(w) = wakers.get_mut(&id) {
            if read {
                if let Some(r) = w.read.take() {
                    r.wake();
                }
            }
            if write {
                if let Some(r) = w.write.take() {
                    r.wake();
                }
            }
        }
    }

    /// Every handle to stream `id` was dropped; `reset_send`: its sending side was
    /// neither finished nor reset, so it is reset now (code 0).
    pub(crate) fn forget_stream(&self, id: u64, reset_send: bool) {
        self.wakers.borrow_mut().remove(&id);
        self.with(|inner| {
            if reset_send {
                let _ = inner.conn.stream_shutdown(
                    id,
                    quiche::Shutdown::Write,
                    crate::proto::wt::session::app_code_to_h3(0),
                );
            }
            inner.wt.forget_stream(&mut inner.conn, id);
        });
        self.mark_dirty();
    }

    /// Close `state`'s session from our side (capsule + FIN) and end it here.
    pub(crate) fn close_session(&self, state: &Rc<SessionState>, code: u32, reason: &str) {
        if state.is_closed() {
            return;
        }
        let streams = self
            .with(|inner| {
                inner
                    .wt
                    .close_session(&mut inner.conn, state.id, code, reason)
            })
            .unwrap_or_default();
        self.end_session(state.id, code, reason.to_string(), &streams);
        self.mark_dirty();
    }

    /// Forget an ended session: leave its rooms, wake its handler and streams.
    fn end_session(&self, id: u64, code: u32, reason: String, streams: &[u64]) {
        let Some(state) = self.sessions.borrow_mut().remove(&id) else {
            return;
        };
        tracing::debug!(
            target: crate::logging::CONN_TARGET,
            session_id = id,
            transport = "webtransport",
            close_code = code,
            "session closed"
        );
        state.mark_closed(code, reason);
        if let Some(ep) = self.endpoint.upgrade() {
            ep.shard.wt_sessions.borrow_mut().remove(state.reg_id);
            ep.shard.leave_all_wt(&state);
            ShardStats::sub(&ep.shard.stats.wt_sessions, 1);
        }
        for s in streams {
            self.wake_stream(*s, true, true);
        }
        // An `open_uni`/`open_bi` of this session waiting for credit must see the end.
        self.wake_credit_waiters();
    }

    /// Push the sessions' queued room records into their delivery streams.
    /// What stays queued waits for flow-control or stream credit: the peer's
    /// MAX_STREAM_DATA / MAX_STREAMS arrive as packets, and processing them marks
    /// the connection dirty again.
    fn flush_deliveries(&self) {
        for s in self.sessions.borrow().values() {
            if !s.delivery.borrow().queue.is_empty() {
                self.flush_delivery(s);
            }
        }
    }

    fn flush_delivery(&self, s: &SessionState) {
        let mut d = s.delivery.borrow_mut();
        let mut guard = self.inner.borrow_mut();
        let Some(inner) = guard.as_mut() else {
            return;
        };
        let id = match d.id {
            Some(id) => id,
            None => match inner.wt.open_stream(&mut inner.conn, s.id, false) {
                Ok(id) => *d.id.insert(id),
                Err(_) => return, // no stream credit yet; retried on the next flush
            },
        };
        if !inner.wt.stream_ready(id) {
            return;
        }
        // One stream_send for everything queued that flow control admits: quiche
        // copies (and allocates) per call, so records go in together, not one by one.
        let room = inner.conn.stream_capacity(id).unwrap_or(0);
        if room == 0 || d.queue.is_empty() {
            return;
        }
        GATHER.with(|g| {
            let mut buf = g.borrow_mut();
            buf.clear();
            for frame in d.queue.frames() {
                let take = frame.len().min(room - buf.len());
                buf.extend_from_slice(&frame[..take]);
                if buf.len() == room {
                    break;
                }
            }
            if let Ok(n) = inner.conn.stream_send(id, &buf, false) {
                d.queue.consume(n);
            }
        });
    }
}

thread_local! {
    /// Scratch for gathering a session's queued records into one stream write.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A shard's QUIC endpoint.
pub(crate) struct Endpoint {
    pub(crate) shard: Rc<Shard>,
    socket: UdpSocket,
    fd: RawFd,
    local: SocketAddr,
    qconfig: RefCell<quiche::Config>,
    /// The certificate generation `qconfig` was built with.
    cert_generation: Cell<u64>,
    conns: RefCell<Slab<Rc<QuicConn>>>,
    cids: RefCell<HashMap<Vec<u8>, usize>>,
    tokens: RetryTokens,
    rng: ring::rand::SystemRandom,
    dirty: RefCell<Vec<usize>>,
    send_wake: WakeSlot,
    timers: RefCell<BinaryHeap<Reverse<(Instant, usize)>>>,
    timer_wake: WakeSlot,
    next_member: Cell<u64>,
    stopped: Cell<bool>,
    /// Connections admitted past their handshake (see `admit`).
    admitted: Cell<usize>,
}

/// Build the quiche configuration shared by a shard's connections, with the
/// current certificate; returns it with that certificate's generation.
pub(crate) fn quiche_config(
    shared: &crate::net::endpoint::Shared,
    certs: &WtCerts,
) -> Result<(quiche::Config, u64), String> {
    let c = &shared.config.webtransport;
    let (generation, cert_path, key_path) = certs
        .current_files()
        .ok_or("webtransport: certificate lock poisoned")?;
    let (cert_path, key_path) = (cert_path.to_string_lossy(), key_path.to_string_lossy());
    let mut q = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(|e| e.to_string())?;
    q.load_cert_chain_from_pem_file(&cert_path)
        .map_err(|e| format!("webtransport certificate {cert_path}: {e}"))?;
    q.load_priv_key_from_pem_file(&key_path)
        .map_err(|e| format!("webtransport key {key_path}: {e}"))?;
    q.set_application_protos(&[b"h3"])
        .map_err(|e| e.to_string())?;
    q.set_max_idle_timeout(c.idle_timeout.0.as_millis() as u64);
    q.set_max_recv_udp_payload_size(1500);
    q.set_max_send_udp_payload_size(MAX_SEND);
    q.set_initial_max_data(16 << 20);
    q.set_initial_max_stream_data_bidi_local(1 << 20);
    q.set_initial_max_stream_data_bidi_remote(1 << 20);
    q.set_initial_max_stream_data_uni(1 << 20);
    q.set_initial_max_streams_bidi(256);
    q.set_initial_max_streams_uni(256);
    q.set_disable_active_migration(true);
    // Browsers drop datagrams unless max_datagram_frame_size is advertised.
    q.enable_dgram(true, 1024, 256);
    Ok((q, generation))
}

impl Endpoint {
    pub(crate) fn new(
        shard: Rc<Shard>,
        socket: UdpSocket,
        (qconfig, cert_generation): (quiche::Config, u64),
    ) -> Result<Rc<Self>, String> {
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let tokens = RetryTokens::new(TOKEN_LIFETIME).map_err(|e| e.to_string())?;
        Ok(Rc::new(Self {
            fd: socket.as_raw_fd(),
            shard,
            socket,
            local,
            qconfig: RefCell::new(qconfig),
            cert_generation: Cell::new(cert_generation),
            conns: RefCell::new(Slab::new()),
            cids: RefCell::new(HashMap::new()),
            tokens,
            rng: ring::rand::SystemRandom::new(),
            dirty: RefCell::new(Vec::new()),
            send_wake: WakeSlot::default(),
            timers: RefCell::new(BinaryHeap::new()),
            timer_wake: WakeSlot::default(),
            next_member: Cell::new(1 << 63),
            admitted: Cell::new(0),
            stopped: Cell::new(false),
        }))
    }

    /// After a certificate renewal or reload, build the configuration new
    /// connections get (open ones keep theirs). On an error the previous
    /// certificate stays in use on this shard.
    fn refresh_config(&self) {
        let Some(certs) = self.shard.shared.wt.as_ref() else {
            return;
        };
        let generation = certs.generation();
        if generation == self.cert_generation.get() {
            return;
        }
        match quiche_config(&self.shard.shared, certs) {
            Ok((q, g)) => {
                *self.qconfig.borrow_mut() = q;
                self.cert_generation.set(g);
            }
            Err(e) => {
                // Not retried per packet: a broken file would make every new
                // connection pay for it.
                self.cert_generation.set(generation);
                tracing::error!(shard = self.shard.id, error = %e,
                    "WebTransport certificate not switched; the previous one stays on this shard");
            }
        }
    }

    fn new_cid(&self) -> [u8; CID_LEN] {
        let mut cid = [0u8; CID_LEN];
        let _ = self.rng.fill(&mut cid);
        cid[0] = self.shard.id as u8;
        cid
    }

    /// Start the receive, send and timer tasks.
    pub(crate) fn spawn(self: &Rc<Self>) {
        glommio::spawn_local(self.clone().recv_loop()).detach();
        glommio::spawn_local(self.clone().send_loop()).detach();
        glommio::spawn_local(self.clone().timer_loop()).detach();
    }

    async fn recv_loop(self: Rc<Self>) {
        let mut bufs = vec![0u8; BATCH * RECV_SIZE];
        let mut got = Vec::with_capacity(BATCH);
        let mut peek = [0u8; 1];
        let mut touched: Vec<Rc<QuicConn>> = Vec::with_capacity(BATCH);
        while !self.stopped.get() {
            // Readiness through io_uring; the datagrams are then taken in batches.
            if self.socket.peek_from(&mut peek).await.is_err() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            loop {
                match udp::recv_batch(self.fd, &mut bufs, &mut got) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(shard = self.shard.id, error = %e, "udp recv failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        break;
                    }
                }
                // Feed the whole batch first, then let each connection's session
                // layer look once, however many of its packets arrived.
                touched.clear();
                for (i, (len, from)) in got.iter().enumerate() {
                    if *len == 0 {
                        continue;
                    }
                    let buf = &mut bufs[i * RECV_SIZE..i * RECV_SIZE + len];
                    if let Some(qc) = self.recv_packet(buf, *from, false) {
                        if !touched.iter().any(|t: &Rc<QuicConn>| t.slot == qc.slot) {
                            touched.push(qc);
                        }
                    }
                }
                for qc in touched.drain(..) {
                    self.process(&qc);
                }
                if got.len() < BATCH {
                    break;
                }
                glommio::yield_if_needed().await;
            }
        }
    }

    /// A datagram forwarded by another shard: feed it and process at once.
    pub(crate) fn on_forwarded(self: &Rc<Self>, buf: &mut [u8], from: SocketAddr) {
        if let Some(qc) = self.recv_packet(buf, from, true) {
            self.process(&qc);
        }
    }

    /// Feed a datagram from `from` to its connection (creating it, answering with a
    /// Retry or version negotiation, or forwarding it to its shard as needed);
    /// returns the connection it went to.
    fn recv_packet(
        self: &Rc<Self>,
        buf: &mut [u8],
        from: SocketAddr,
        forwarded: bool,
    ) -> Option<Rc<QuicConn>> {
        let hdr = quiche::Header::from_slice(buf, CID_LEN).ok()?;
        let known = self.cids.borrow().get(hdr.dcid.as_ref()).copied();
        let slot = match known {
            Some(slot) => slot,
            None => {
                let owner = hdr.dcid.first().map_or(self.shard.id, |b| usize::from(*b));
                if !forwarded
                    && hdr.dcid.len() == CID_LEN
                    && owner != self.shard.id
                    && owner < self.shard.shared.senders.len()
                    && hdr.ty != quiche::Type::Initial
                {
                    self.forward(owner, buf, from);
                    return None;
                }
                self.accept(&hdr, from)?
            }
        };
        let qc = self.conns.borrow().get(slot).cloned()?;
        let info = quiche::RecvInfo {
            from,
            to: self.local,
        };
        let _ = qc.with(|inner| inner.conn.recv(buf, info));
        Some(qc)
    }

    fn forward(&self, owner: usize, buf: &[u8], from: SocketAddr) {
        let msg = ShardMsg::QuicPacket {
            data: buf.to_vec(),
            from,
        };
        if self.shard.shared.senders[owner].send(msg).is_err() {
            ShardStats::add(&self.shard.stats.mesh_overflows, 1);
        }
    }

    /// A packet for no connection: version negotiation, Retry, or a new connection.
    fn accept(self: &Rc<Self>, hdr: &quiche::Header<'_>, from: SocketAddr) -> Option<usize> {
        if hdr.ty != quiche::Type::Initial || self.shard.draining.fired() {
            return None;
        }
        let mut out = [0u8; MAX_SEND];
        if !quiche::version_is_supported(hdr.version) {
            let n = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out).ok()?;
            udp::send_batch(self.fd, &out[..n], &[(0..n, from)]);
            return None;
        }
        let token = hdr.token.as_deref().unwrap_or_default();
        let retry = self.shard.shared.config.webtransport.retry;
        let scid = if retry && token.is_empty() {
            let new_scid = self.new_cid();
            let token = self
                .tokens
                .mint(from, &hdr.dcid, &new_scid, SystemTime::now())
                .ok()?;
            let n = quiche::retry(
                &hdr.scid,
                &hdr.dcid,
                &quiche::ConnectionId::from_ref(&new_scid),
                &token,
                hdr.version,
                &mut out,
            )
            .ok()?;
            udp::send_batch(self.fd, &out[..n], &[(0..n, from)]);
            ShardStats::add(&self.shard.stats.wt_retries, 1);
            return None;
        } else {
            self.new_cid()
        };
        self.refresh_config();
        let conn = if retry {
            // The token must be ours, for this address, unexpired, and name the
            // connection id the client now uses.
            let (odcid, rscid) = self.tokens.validate(token, from, SystemTime::now()).ok()?;
            if rscid.as_slice() != hdr.dcid.as_ref() {
                return None;
            }
            let scid = quiche::ConnectionId::from_vec(rscid.clone());
            let odcid = quiche::ConnectionId::from_vec(odcid);
            let ids = quiche::RetryConnectionIds {
                original_destination_cid: &odcid,
                retry_source_cid: &scid,
            };
            quiche::accept_with_retry(&scid, ids, self.local, from, &mut self.qconfig.borrow_mut())
        } else {
            let scid = quiche::ConnectionId::from_ref(&scid);
            quiche::accept(
                &scid,
                None,
                self.local,
                from,
                &mut self.qconfig.borrow_mut(),
            )
        };
        let conn = conn.ok()?;
        let max_sessions = self
            .shard
            .shared
            .config
            .webtransport
            .max_sessions_per_connection;
        let mut cids = vec![conn.source_id().as_ref().to_vec()];
        if !retry {
            cids.push(hdr.dcid.as_ref().to_vec());
        }
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let slot = entry.key();
        entry.insert(Rc::new(QuicConn {
            slot,
            peer: from,
            inner: RefCell::new(Some(QuicInner {
                conn,
                wt: WtConn::new(max_sessions),
            })),
            sessions: RefCell::new(HashMap::new()),
            wakers: RefCell::new(HashMap::new()),
            credit_waiters: RefCell::new(Vec::new()),
            dirty: Cell::new(false),
            armed: Cell::new(None),
            cids: RefCell::new(cids.clone()),
            endpoint: Rc::downgrade(self),
            admitted: Cell::new(None),
        }));
        let mut map = self.cids.borrow_mut();
        for c in cids {
            map.insert(c, slot);
        }
        ShardStats::add(&self.shard.stats.wt_connections, 1);
        Some(slot)
    }

    /// Once the handshake is done, admit the connection or refuse it (the shard is
    /// at `max_connections_per_shard`) with H3_EXCESSIVE_LOAD.
    fn admit(&self, qc: &QuicConn) {
        if qc.admitted.get().is_some() || qc.with(|i| i.conn.is_established()) != Some(true) {
            return;
        }
        let max = self
            .shard
            .shared
            .config
            .webtransport
            .max_connections_per_shard;
        let admitted = self.admitted.get() < max;
        qc.admitted.set(Some(admitted));
        if admitted {
            self.admitted.set(self.admitted.get() + 1);
        } else {
            ShardStats::add(&self.shard.stats.wt_rejected, 1);
            qc.with(|i| {
                i.conn.close(
                    true,
                    H3_EXCESSIVE_LOAD,
                    b"server at webtransport.max_connections_per_shard",
                )
            });
        }
    }

    /// Let the session layer read what arrived, act on its events, wake streams.
    fn process(self: &Rc<Self>, qc: &Rc<QuicConn>) {
        self.admit(qc);
        if qc.admitted.get() == Some(false) {
            qc.mark_dirty();
            return;
        }
        let events = qc
            .with(|inner| {
                let (conn, wt) = (&mut inner.conn, &mut inner.wt);
                wt.poll(conn);
                let mut events = Vec::new();
                while let Some(ev) = wt.next_event() {
                    events.push(ev);
                }
                let writable: Vec<u64> = conn.writable().collect();
                (events, writable)
            })
            .unwrap_or_default();
        let (events, writable) = events;
        for ev in events {
            self.on_event(qc, ev);
        }
        for id in writable {
            qc.wake_stream(id, false, true);
        }
        qc.wake_credit_waiters();
        qc.mark_dirty();
    }

    fn on_event(self: &Rc<Self>, qc: &Rc<QuicConn>, ev: WtEvent) {
        match ev {
            WtEvent::Request { stream_id, request } => self.on_request(qc, stream_id, request),
            WtEvent::Stream {
                session,
                stream_id,
                bidi,
            } => {
                let state = qc.sessions.borrow().get(&session).cloned();
                let taken = state.is_some_and(|s| {
                    s.push(Incoming::Stream {
                        id: stream_id,
                        bidi,
                    })
                });
                if !taken {
                    // The handler is not keeping up: refuse rather than buffer.
                    qc.with(|inner| {
                        let _ = inner.conn.stream_shutdown(
                            stream_id,
                            quiche::Shutdown::Read,
                            crate::proto::wt::session::H3_REQUEST_CANCELLED,
                        );
                        inner.wt.forget_stream(&mut inner.conn, stream_id);
                    });
                }
            }
            WtEvent::Readable { stream_id } => qc.wake_stream(stream_id, true, false),
            WtEvent::Datagram { session, payload } => {
                let state = qc.sessions.borrow().get(&session).cloned();
                if let Some(s) = state {
                    if !s.push(Incoming::Datagram(payload.into())) {
                        ShardStats::add(&self.shard.stats.wt_datagrams_dropped, 1);
                    }
                }
            }
            WtEvent::Drain { .. } => {}
            WtEvent::SessionClosed {
                session,
                code,
                reason,
                streams,
            } => qc.end_session(session, code, reason, &streams),
        }
    }

    /// An extended CONNECT: check it, run `$connect`, then accept the session
    /// and start its handler, or answer with the refusal.
    fn on_request(
        self: &Rc<Self>,
        qc: &Rc<QuicConn>,
        stream_id: u64,
        req: crate::proto::wt::session::Request,
    ) {
        let full_path = req.path.clone().unwrap_or_default();
        let (path, query) = full_path.split_once('?').unwrap_or((&full_path, ""));
        let admitted = self.check_request(qc, &req, path).and_then(|endpoint| {
            let admitted = self.admit_session(qc, &req, endpoint, path, query)?;
            Ok((endpoint, admitted))
        });
        let (endpoint, admitted) = match admitted {
            Ok(ok) => ok,
            Err((status, why)) => {
                qc.with(|inner| inner.wt.reject(&mut inner.conn, stream_id, status, &why));
                ShardStats::add(&self.shard.stats.wt_rejected, 1);
                return;
            }
        };
        qc.with(|inner| inner.wt.accept(&mut inner.conn, stream_id));
        let origin = req.origin.clone();
        let state = self.open_session(qc, stream_id, &endpoint.path, query, origin, admitted);
        tracing::debug!(
            target: crate::logging::CONN_TARGET,
            session_id = stream_id,
            shard = self.shard.id,
            transport = "webtransport",
            path,
            query = %crate::logging::redact_query(query),
            origin = req.origin.as_deref().unwrap_or("-"),
            "session opened"
        );
        self.run_session_handler(endpoint.handler.clone(), state, path);
    }

    /// The CONNECT's method, pseudo-headers, path, origin, drain state and the
    /// connection's session count: the endpoint, or the status and reason to refuse.
    fn check_request<'a>(
        &'a self,
        qc: &QuicConn,
        req: &crate::proto::wt::session::Request,
        path: &str,
    ) -> Result<&'a crate::net::endpoint::WtEndpoint, (u16, String)> {
        let shared = &self.shard.shared;
        let refuse = |status: u16, why: &str| Err((status, why.to_string()));
        if req.method != "CONNECT" || !req.is_webtransport() {
            return refuse(
                405,
                "only extended CONNECT with :protocol webtransport is served",
            );
        }
        if req.authority.is_none() || req.path.is_none() || req.scheme.is_none() {
            return refuse(400, "missing :authority, :path or :scheme");
        }
        let Some(endpoint) = shared.wt_endpoint(path) else {
            return refuse(404, &format!("no WebTransport endpoint at {path}"));
        };
        if !shared
            .config
            .webtransport
            .origin_allowed(req.origin.as_deref())
        {
            return refuse(403, "origin not allowed");
        }
        if self.shard.draining.fired() {
            return refuse(503, "server is shutting down");
        }
        let open = qc
            .with(|inner| inner.wt.session_count())
            .unwrap_or(usize::MAX);
        if open >= shared.config.webtransport.max_sessions_per_connection {
            return refuse(429, "too many sessions on this connection");
        }
        Ok(endpoint)
    }

    /// Run the endpoint's `$connect` on the CONNECT head.
    fn admit_session(
        &self,
        qc: &QuicConn,
        req: &crate::proto::wt::session::Request,
        endpoint: &crate::net::endpoint::WtEndpoint,
        path: &str,
        query: &str,
    ) -> Result<Option<crate::vocab::connect::Admitted>, (u16, String)> {
        let Some(admission) = endpoint.admission.as_deref() else {
            return Ok(None);
        };
        let head = crate::proto::http::Request {
            method: req.method.clone(),
            path: path.to_string(),
            query: query.to_string(),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect(),
        };
        let connecting = crate::vocab::connect::Connecting::new(
            &head,
            Some(qc.peer),
            crate::vocab::registry::TransportKind::WebTransport,
        );
        super::upgrade::run_admission(&self.shard.stats, Some(admission), connecting)
            .map_err(|r| (r.status, r.reason))
    }

    /// The accepted session's state: in the shard's registry slab and the
    /// connection's session table, with what `$connect` attached.
    fn open_session(
        &self,
        qc: &Rc<QuicConn>,
        stream_id: u64,
        path: &str,
        query: &str,
        origin: Option<String>,
        admitted: Option<crate::vocab::connect::Admitted>,
    ) -> Rc<SessionState> {
        let key = self.next_member.get();
        self.next_member.set(key + 1);
        let queue_cap = self.shard.shared.config.websocket.outbound_queue_bytes;
        let state = {
            let mut slab = self.shard.wt_sessions.borrow_mut();
            let id = slab.insert_with(|reg_id| {
                let origin = SessionOrigin {
                    reg_id,
                    path,
                    query,
                    origin,
                };
                Rc::new(SessionState::new(
                    stream_id,
                    key,
                    qc.clone(),
                    origin,
                    queue_cap,
                ))
            });
            slab.get(id).cloned().expect("just inserted")
        };
        if let Some(a) = admitted {
            state.meta.extend(a.meta);
            if let Some(at) = a.expires_at {
                super::expiry::arm_expiry(&self.shard, state.reg_id, at);
            }
        }
        qc.sessions.borrow_mut().insert(stream_id, state.clone());
        ShardStats::add(&self.shard.stats.wt_sessions, 1);
        state
    }

    /// The endpoint's handler task for a session; a panic closes the session.
    fn run_session_handler(
        &self,
        handler: crate::net::endpoint::WtHandler,
        state: Rc<SessionState>,
        path: &str,
    ) {
        let span = tracing::debug_span!(
            target: crate::logging::CONN_TARGET,
            "connection",
            session_id = state.id,
            shard = self.shard.id,
            transport = "webtransport",
            path,
        );
        let session = WtSession {
            shard: self.shard.clone(),
            state: state.clone(),
        };
        let stats = self.shard.stats.clone();
        glommio::spawn_local(async move {
            use futures_lite::FutureExt as _;
            use tracing::Instrument as _;
            let outcome = std::panic::AssertUnwindSafe(handler(session).instrument(span))
                .catch_unwind()
                .await;
            if outcome.is_err() {
                ShardStats::add(&stats.handler_panics, 1);
                state
                    .conn
                    .close_session(&state, CLOSE_HANDLER_PANIC, "handler failed");
            } else {
                state.conn.close_session(&state, 0, "");
            }
        })
        .detach();
    }

    async fn send_loop(self: Rc<Self>) {
        let mut buf = vec![0u8; BATCH * MAX_SEND];
        let mut packets: Vec<(std::ops::Range<usize>, SocketAddr)> = Vec::with_capacity(BATCH);
        loop {
            while self.dirty.borrow().is_empty() {
                self.send_wake.wait().await;
            }
            // The shard's hold (`runtime.flush_delay`), as for TCP: more records per packet
            // (and each packet its sendmmsg) at the price of latency.
            let hold = self.shard.flush.delay();
            if !hold.is_zero() && !self.shard.draining.fired() {
                glommio::timer::sleep(hold).await;
            }
            let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
            let mut used = 0;
            for slot in dirty {
                let Some(qc) = self.conns.borrow().get(slot).cloned() else {
                    continue;
                };
                qc.dirty.set(false);
                qc.flush_deliveries();
                loop {
                    if used + MAX_SEND > buf.len() {
                        self.send_packets(&buf, &mut packets);
                        used = 0;
                    }
                    let r = qc.with(|inner| inner.conn.send(&mut buf[used..used + MAX_SEND]));
                    match r {
                        Some(Ok((n, info))) => {
                            packets.push((used..used + n, info.to));
                            used += n;
                        }
                        _ => break,
                    }
                }
                self.after_io(&qc);
            }
            self.send_packets(&buf, &mut packets);
            glommio::yield_if_needed().await;
        }
    }

    fn send_packets(&self, buf: &[u8], packets: &mut Vec<(std::ops::Range<usize>, SocketAddr)>) {
        if packets.is_empty() {
            return;
        }
        let sent = udp::send_batch(self.fd, buf, packets);
        ShardStats::add(&self.shard.stats.wt_packets_out, sent as u64);
        ShardStats::add(
            &self.shard.stats.wt_send_calls,
            packets.len().div_ceil(BATCH) as u64,
        );
        packets.clear();
    }

    /// Re-arm the connection's timer, or tear it down if it closed.
    fn after_io(self: &Rc<Self>, qc: &Rc<QuicConn>) {
        let (closed, deadline) = qc
            .with(|i| (i.conn.is_closed(), i.conn.timeout_instant()))
            .unwrap_or((true, None));
        if closed {
            self.remove(qc);
            return;
        }
        if let Some(t) = deadline {
            if qc.armed.get().is_none_or(|a| t < a) {
                qc.armed.set(Some(t));
                let earliest = self.timers.borrow().peek().map(|Reverse((t, _))| *t);
                self.timers.borrow_mut().push(Reverse((t, qc.slot)));
                if earliest.is_none_or(|e| t < e) {
                    self.timer_wake.wake();
                }
                self.compact_timers();
            }
        }
    }

    /// Entries superseded by an earlier deadline stay queued until they come due
    /// (up to the idle timeout). Under load that is many per connection, so once
    /// the heap outgrows the connections it is rebuilt from each one's deadline.
    fn compact_timers(&self) {
        let conns = self.conns.borrow();
        if self.timers.borrow().len() <= 2 * conns.len() + 64 {
            return;
        }
        let mut timers = self.timers.borrow_mut();
        timers.clear();
        for (slot, qc) in conns.iter() {
            let t = qc.with(|i| i.conn.timeout_instant()).flatten();
            qc.armed.set(t);
            if let Some(t) = t {
                timers.push(Reverse((t, slot)));
            }
        }
        drop(timers);
        self.timer_wake.wake();
    }

    fn remove(&self, qc: &Rc<QuicConn>) {
        let sessions: Vec<u64> = qc.sessions.borrow().keys().copied().collect();
        for s in sessions {
            qc.end_session(s, 0, "connection closed".into(), &[]);
        }
        let wakers: Vec<u64> = qc.wakers.borrow().keys().copied().collect();
        for id in wakers {
            qc.wake_stream(id, true, true);
        }
        qc.wake_credit_waiters();
        let mut map = self.cids.borrow_mut();
        for c in qc.cids.borrow().iter() {
            map.remove(c);
        }
        if qc.admitted.get() == Some(true) {
            self.admitted.set(self.admitted.get() - 1);
        }
        if self.conns.borrow_mut().try_remove(qc.slot).is_some() {
            ShardStats::sub(&self.shard.stats.wt_connections, 1);
        }
        *qc.inner.borrow_mut() = None;
    }

    async fn timer_loop(self: Rc<Self>) {
        loop {
            let next = self.timers.borrow().peek().map(|Reverse((t, _))| *t);
            match next {
                // Woken when a connection arms the first (or an earlier) timer.
                None => self.timer_wake.wait().await,
                Some(t) => {
                    let now = Instant::now();
                    if t > now {
                        glommio::timer::sleep(t - now)
                            .or(self.timer_wake.wait())
                            .await;
                    }
                }
            }
            self.fire_timers();
        }
    }

    fn fire_timers(self: &Rc<Self>) {
        let now = Instant::now();
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.peek() {
                    Some(Reverse((t, _))) if *t <= now => timers.pop().map(|Reverse(e)| e),
                    _ => None,
                }
            };
            let Some((t, slot)) = due else {
                break;
            };
            let Some(qc) = self.conns.borrow().get(slot).cloned() else {
                continue;
            };
            if qc.armed.get() == Some(t) {
                qc.armed.set(None);
            }
            let actual = qc.with(|i| i.conn.timeout_instant()).flatten();
            if actual.is_some_and(|a| a <= now) {
                qc.with(|i| i.conn.on_timeout());
                self.process(&qc);
            }
            self.after_io(&qc);
        }
    }

    /// Shutdown: DRAIN every session and GOAWAY, let reliable queues empty (bounded
    /// by `deadline`), close every session with 1001, then the connections.
    pub(crate) async fn drain(self: Rc<Self>, deadline: Instant) {
        let conns: Vec<Rc<QuicConn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for qc in &conns {
            let ids: Vec<u64> = qc.sessions.borrow().keys().copied().collect();
            qc.with(|inner| {
                for id in ids {
                    inner.wt.drain_session(&mut inner.conn, id);
                }
            });
            qc.mark_dirty();
        }
        // Let queued room messages go out before the sessions close.
        while Instant::now() < deadline {
            let pending = conns.iter().any(|qc| {
                !qc.is_gone()
                    && qc
                        .sessions
                        .borrow()
                        .values()
                        .any(|s| !s.delivery.borrow().queue.is_empty())
            });
            if !pending {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        for qc in &conns {
            let sessions: Vec<Rc<SessionState>> = qc.sessions.borrow().values().cloned().collect();
            for s in sessions {
                qc.close_session(&s, CLOSE_GOING_AWAY, "server shutting down");
            }
        }
        // A moment for the close capsules (and data before them) to be acknowledged.
        let grace = deadline.min(Instant::now() + Duration::from_millis(300));
        while Instant::now() < grace && conns.iter().any(|qc| !qc.is_gone()) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        for qc in &conns {
            qc.with(|inner| inner.conn.close(true, H3_NO_ERROR, b"server shutting down"));
            qc.mark_dirty();
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
        self.stopped.set(true);
    }
}
