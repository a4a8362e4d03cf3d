//! The write-stall deadline: a connection with bytes queued whose socket has taken
//! none for `slow_consumers.write_stall_timeout` is closed as a slow consumer,
//! whatever its rooms' policy (a `drop_oldest` / `keep_latest` member that never
//! reads would otherwise hold its slot and a full queue forever).
//!
//! A client that stops reading first fills the kernel buffers (its receive buffer,
//! our send buffer); only then do writes stop making progress and the count begins.

use std::rc::Rc;
use std::time::Duration;

use super::driver::WRITE;
use super::shard::Shard;
use super::tcp_conn::{Conn, ConnState, SLOW_WRITE_STALLED};
use crate::stats::ShardStats;

impl Shard {
    /// Once a second, count a tick for every open connection with bytes queued
    /// (writes that take bytes reset the count, see `Conn::consume_written`) and
    /// close those past the timeout. Not spawned when the timeout is 0.
    pub(crate) async fn run_stall_sweeper(self: Rc<Self>) {
        let timeout = self.shared.config.slow_consumers.write_stall_timeout.0;
        if timeout.is_zero() {
            return;
        }
        // A connection is closed between `timeout` and `timeout` + 1s after its
        // last write progress.
        let limit = u16::try_from(timeout.as_secs()).unwrap_or(u16::MAX);
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let mut stalled: Vec<Rc<Conn>> = Vec::new();
            for c in self.conns.borrow().iter() {
                if c.state() != ConnState::Open || c.queue.borrow().is_empty() {
                    if c.stalled_ticks.get() != 0 {
                        c.stalled_ticks.set(0);
                    }
                    continue;
                }
                let ticks = c.stalled_ticks.get().saturating_add(1);
                c.stalled_ticks.set(ticks);
                if ticks > limit {
                    stalled.push(c.clone());
                }
            }
            for c in stalled {
                ShardStats::add(&self.stats.write_stall_closes, 1);
                c.close_slow(SLOW_WRITE_STALLED, &self.stats);
                // Nothing more is read: the close timer ends it if the close frame
                // cannot be written either.
                c.session(|s| s.stop_reading());
                self.schedule(&c, WRITE);
            }
        }
    }
}
