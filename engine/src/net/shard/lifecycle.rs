//! The shard's periodic tasks (keep-alive pings, idle and history sweeps) and the
//! graceful drain at shutdown.

use super::*;

impl Shard {
    /// Send a comment to every open SSE stream each `sse.keep_alive_interval`, so
    /// proxies and clients keep idle streams open.
    pub(crate) async fn run_keepalive(self: Rc<Self>) {
        let every = self.shared.config.sse.keep_alive_interval.0;
        let ping = crate::proto::sse::comment("keep-alive");
        loop {
            glommio::timer::sleep(every).await;
            let conns: Vec<Rc<Conn>> = self
                .conns
                .borrow()
                .iter()
                .filter(|c| c.is_sse() && c.state() == ConnState::Open)
                .cloned()
                .collect();
            for c in conns {
                let _ = c.enqueue(ping.clone(), &self.stats);
                self.schedule(&c, WRITE);
            }
        }
    }

    /// Tick the shard clock each second; ping WebSocket connections silent for
    /// `websocket.idle_timeout` and drop those silent for twice that.
    pub(crate) async fn run_idle_sweeper(self: Rc<Self>) {
        let idle = self.shared.config.websocket.idle_timeout.0.as_secs() as u32;
        let start = std::time::Instant::now();
        let ping = frame::encode(frame::OpCode::Ping, false, b"idle");
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let now = start.elapsed().as_secs() as u32;
            self.clock.set(now);
            if idle == 0 || !now.is_multiple_of(idle.div_ceil(4).max(1)) {
                continue;
            }
            let (mut to_ping, mut to_drop) = (Vec::new(), Vec::new());
            for c in self.conns.borrow().iter() {
                if c.is_sse() || c.state() == ConnState::Done {
                    continue;
                }
                let silent = now.saturating_sub(c.last_read.get());
                if silent >= 2 * idle {
                    to_drop.push(c.clone());
                } else if silent >= idle && c.state() == ConnState::Open {
                    to_ping.push(c.clone());
                }
            }
            for c in to_ping {
                let _ = c.enqueue(ping.clone(), &self.stats);
                self.schedule(&c, WRITE);
            }
            for c in to_drop {
                ShardStats::add(&self.stats.idle_timeouts, 1);
                self.finish(&c, "idle timeout");
            }
        }
    }

    /// Forget expired history and idle room records; runs every few seconds.
    pub(crate) async fn run_sweeper(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            let mut table = self.interest.borrow_mut();
            table.sweep(std::time::Instant::now());
            self.stats.set_history(&table.history_counters());
        }
    }

    /// Shutdown: refuse new clients, close every connection with 1001 after what is
    /// already queued, and wait (bounded) for them to finish.
    pub(super) async fn drain(self: &Rc<Self>) {
        let deadline = std::time::Instant::now()
            + Duration::from_millis(self.shared.config.shutdown.drain_timeout_ms);
        #[cfg(feature = "webtransport")]
        {
            let quic = self.quic.borrow().clone();
            let quic_drain = async move {
                if let Some(ep) = quic {
                    ep.drain(deadline).await;
                }
            };
            futures_lite::future::zip(self.drain_tcp(), quic_drain).await;
        }
        #[cfg(not(feature = "webtransport"))]
        {
            let _ = deadline;
            self.drain_tcp().await;
        }
    }

    pub(super) async fn drain_tcp(self: &Rc<Self>) {
        self.drain_started.set(true);
        self.draining.fire();
        // Reading resumes (it stopped while quiescing) for the clients' close replies;
        // data they send after our close frame is ignored.
        self.quiescing.set(false);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
        for c in &conns {
            self.close(c, close::GOING_AWAY, "server shutting down");
            self.schedule(c, READ);
        }
        if self.conns.borrow().is_empty() {
            return;
        }
        let deadline = Duration::from_millis(self.shared.config.shutdown.drain_timeout_ms);
        let timed_out = futures_lite::future::or(
            async {
                self.idle.wait().await;
                false
            },
            async {
                glommio::timer::sleep(deadline).await;
                true
            },
        )
        .await;
        if timed_out {
            let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
            for c in &conns {
                self.finish(c, "shutdown timeout");
            }
        }
    }
}
