//! Connection limits on the TCP listener: the per-shard and per-address connection
//! caps checked at accept, the handshake gauge, and the per-connection inbound rate
//! limit (token buckets) checked where data messages are decoded. See docs/SECURITY.md ("Limits").

use bytes::Bytes;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::driver::WRITE;
use super::shard::Shard;
use super::tcp_conn::Conn;
use crate::config::{RateLimitAction, RateLimitConfig};
use crate::proto::ws::{close, frame};
use crate::stats::ShardStats;

/// Lock stripes of the per-address table: a connection storm from many addresses
/// spreads over them; one address always maps to the same stripe.
const STRIPES: usize = 64;

/// Live TCP connections per source address, across all shards (one table per
/// process, so `limits.max_connections_per_ip` is a true per-address limit whatever
/// shard SO_REUSEPORT picks). Touched twice per connection (accept and close), never
/// per message.
pub(crate) struct IpTable {
    max: u32,
    stripes: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl IpTable {
    /// A table allowing `max` connections per address (`max` > 0).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
        })
    }

    fn stripe(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h =
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(ip);
        &self.stripes[(h as usize) % STRIPES]
    }

    /// Count one more connection from `ip`; `None` when it already holds the maximum.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds now.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> u32 {
        let map = self.stripe(&ip).lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

/// One connection counted against its address; dropping it releases the count
/// (with the connection, whatever ends it).
pub(crate) struct IpSlot {
    table: Arc<IpTable>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self
            .table
            .stripe(&self.ip)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Counts a connection in the shard's `handshaking` gauge until dropped (when the
/// connection is registered as open, or refused, or gone).
pub(crate) struct Handshaking(Arc<ShardStats>);

impl Handshaking {
    pub(crate) fn new(stats: &Arc<ShardStats>) -> Self {
        ShardStats::add(&stats.handshaking, 1);
        Self(stats.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        ShardStats::sub(&self.0.handshaking, 1);
    }
}

/// What the accept path reserved for a connection: it stays counted in the
/// handshake gauge until `handshaking` is dropped, and against its address while
/// `ip` lives (moved into the connection).
pub(crate) struct Admission {
    pub(crate) handshaking: Handshaking,
    pub(crate) ip: Option<IpSlot>,
}

/// Per-connection limit state, boxed on the connection and only allocated when a
/// per-address cap or a rate limit is configured.
#[derive(Default)]
pub(crate) struct ConnLimits {
    /// Held for the connection's life (released on drop).
    pub(crate) _ip: Option<IpSlot>,
    pub(crate) rate: Option<TokenBucket>,
    /// Pongs queued and not yet written (`websocket.max_pending_pongs`).
    pongs: Cell<u16>,
    /// Queued bytes up to and including the last pong queued: once that many more
    /// are written, every pong is (the queue is FIFO).
    pong_end: Cell<usize>,
}

impl ConnLimits {
    /// `n` bytes of the outbound queue were written (or dropped: `usize::MAX`).
    pub(crate) fn pongs_written(&self, n: usize) {
        if self.pongs.get() > 0 {
            let left = self.pong_end.get().saturating_sub(n);
            self.pong_end.set(left);
            if left == 0 {
                self.pongs.set(0);
            }
        }
    }

    /// The state a connection needs, or `None` (nothing to allocate).
    pub(crate) fn new(
        ip: Option<IpSlot>,
        rate: Option<&RateLimitConfig>,
        now_ns: u64,
    ) -> Option<Box<Self>> {
        if ip.is_none() && rate.is_none() {
            return None;
        }
        Some(Box::new(Self {
            _ip: ip,
            rate: rate.map(|r| TokenBucket::new(r, now_ns)),
            ..Self::default()
        }))
    }
}

/// Two token buckets (messages and bytes), each holding `rate x burst`, refilled
/// continuously. A message passes when a message token is there and the byte
/// bucket is not in debt; it then takes one message token and its length in bytes
/// (so one message larger than the byte bucket can pass, and the debt is repaid by
/// time). Sans-IO: the caller passes the time.
pub(crate) struct TokenBucket {
    messages: Cell<f64>,
    bytes: Cell<f64>,
    last_ns: Cell<u64>,
    /// An error frame was sent for the current run of refused messages (one per
    /// run, so a flood does not fill the outbound queue with them).
    notified: Cell<bool>,
}

/// What to do with one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateVerdict {
    /// Within the limit: deliver it.
    Pass,
    /// Over the limit: drop it (and, if `notify`, send one error frame).
    Drop {
        /// First refusal since the last message that passed.
        notify: bool,
    },
    /// Over the limit with `action: close`.
    Close,
}

impl TokenBucket {
    /// Full buckets at `now_ns`.
    pub(crate) fn new(cfg: &RateLimitConfig, now_ns: u64) -> Self {
        let (m, b) = capacity(cfg);
        Self {
            messages: Cell::new(m),
            bytes: Cell::new(b),
            last_ns: Cell::new(now_ns),
            notified: Cell::new(false),
        }
    }

    /// Account a message of `len` bytes arriving at `now_ns`.
    pub(crate) fn check(&self, cfg: &RateLimitConfig, len: usize, now_ns: u64) -> RateVerdict {
        let dt = now_ns.saturating_sub(self.last_ns.get()) as f64 / 1e9;
        self.last_ns.set(now_ns.max(self.last_ns.get()));
        let (cap_m, cap_b) = capacity(cfg);
        let m = (self.messages.get() + dt * f64::from(cfg.messages_per_second)).min(cap_m);
        let b = (self.bytes.get() + dt * cfg.bytes_per_second as f64).min(cap_b);
        let ok =
            (cfg.messages_per_second == 0 || m >= 1.0) && (cfg.bytes_per_second == 0 || b > 0.0);
        if ok {
            self.messages.set(m - 1.0);
            self.bytes.set(b - len as f64);
            self.notified.set(false);
            return RateVerdict::Pass;
        }
        self.messages.set(m);
        self.bytes.set(b);
        match cfg.action {
            RateLimitAction::Close => RateVerdict::Close,
            RateLimitAction::Error => RateVerdict::Drop {
                notify: !self.notified.replace(true),
            },
        }
    }
}

impl Shard {
    /// Queue `pong` (the encoded answer to a ping, from the connection's session),
    /// unless `websocket.max_pending_pongs` pongs are still unwritten
    /// (a client flooding pings without reading gets no more until it reads). A
    /// pong into an empty queue is not tracked (no allocation for keepalive
    /// pings), so the bound is `max_pending_pongs + 1`.
    pub(crate) fn answer_ping(&self, conn: &Conn, pong: Bytes) {
        let max = self.shared.config.websocket.max_pending_pongs;
        if conn.queue.borrow().is_empty() {
            // Nothing queued, so no pong is pending: the usual keepalive ping needs
            // no bookkeeping (and no allocation) until pongs start to pile up.
            if let Some(l) = conn.limits.get() {
                l.pongs.set(0);
            }
            if conn.enqueue(pong, &self.stats).is_ok() {
                self.schedule(conn, WRITE);
            }
            return;
        }
        // From here pongs are counted; an untracked one queued into an empty queue
        // may still be pending, so at most `max + 1` are.
        let l = conn.limits.get_or_init(Box::default);
        if usize::from(l.pongs.get()) >= max {
            ShardStats::add(&self.stats.pongs_skipped, 1);
            return;
        }
        if conn.enqueue(pong, &self.stats).is_ok() {
            l.pongs.set(l.pongs.get() + 1);
            l.pong_end.set(conn.queue.borrow().len_bytes());
            self.schedule(conn, WRITE);
        }
    }

    /// Whether a data message of `len` bytes is within the connection's inbound rate
    /// limit. Over it, the message is dropped (one error frame per run of refused
    /// messages) or the connection closed with 1008, per `websocket.rate_limit.action`.
    pub(crate) fn rate_admit(&self, conn: &Conn, len: usize) -> bool {
        let Some(cfg) = &self.shared.config.websocket.rate_limit else {
            return true;
        };
        let Some(bucket) = conn.limits.get().and_then(|l| l.rate.as_ref()) else {
            return true;
        };
        match bucket.check(cfg, len, crate::stats::clock_ns()) {
            RateVerdict::Pass => true,
            RateVerdict::Drop { notify } => {
                ShardStats::add(&self.stats.rate_limited, 1);
                if notify {
                    let text = rate_limited_frame(cfg);
                    let f = frame::encode(frame::OpCode::Text, false, text.as_bytes());
                    if conn.enqueue(f, &self.stats).is_ok() {
                        self.schedule(conn, WRITE);
                    }
                }
                false
            }
            RateVerdict::Close => {
                ShardStats::add(&self.stats.rate_limited, 1);
                self.close(conn, close::POLICY_VIOLATION, "rate limit");
                false
            }
        }
    }
}

/// Bucket sizes: `rate x burst`, at least one message.
fn capacity(cfg: &RateLimitConfig) -> (f64, f64) {
    let burst = cfg.burst.0.as_secs_f64();
    (
        (f64::from(cfg.messages_per_second) * burst).max(1.0),
        cfg.bytes_per_second as f64 * burst,
    )
}

/// The error frame a connection gets for a message dropped by its rate limit.
pub(crate) fn rate_limited_frame(cfg: &RateLimitConfig) -> String {
    let mut what = Vec::new();
    if cfg.messages_per_second > 0 {
        what.push(format!("{} messages/s", cfg.messages_per_second));
    }
    if cfg.bytes_per_second > 0 {
        what.push(format!("{} bytes/s", cfg.bytes_per_second));
    }
    format!(
        "{{\"type\":\"error\",\"error\":\"rate_limited\",\"message\":\"inbound rate limit ({}) exceeded: message dropped\"}}",
        what.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use std::time::Duration;

    fn cfg(mps: u32, bps: u64, burst_ms: u64, action: RateLimitAction) -> RateLimitConfig {
        RateLimitConfig {
            messages_per_second: mps,
            bytes_per_second: bps,
            burst: ConfigDuration(Duration::from_millis(burst_ms)),
            action,
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn message_bucket_allows_the_burst_then_the_rate() {
        let c = cfg(10, 0, 1000, RateLimitAction::Error);
        let b = TokenBucket::new(&c, 0);
        for _ in 0..10 {
            assert_eq!(b.check(&c, 1, 0), RateVerdict::Pass);
        }
        assert_eq!(b.check(&c, 1, 0), RateVerdict::Drop { notify: true });
        assert_eq!(b.check(&c, 1, MS), RateVerdict::Drop { notify: false });
        // 100 ms later one token is back; the next refusal notifies again.
        assert_eq!(b.check(&c, 1, 101 * MS), RateVerdict::Pass);
        assert_eq!(b.check(&c, 1, 102 * MS), RateVerdict::Drop { notify: true });
        // A long pause refills to the burst, not beyond it.
        let later = 60_000 * MS;
        for _ in 0..10 {
            assert_eq!(b.check(&c, 1, later), RateVerdict::Pass);
        }
        assert_ne!(b.check(&c, 1, later), RateVerdict::Pass);
    }

    #[test]
    fn byte_bucket_goes_into_debt_and_close_action_closes() {
        let c = cfg(0, 1000, 1000, RateLimitAction::Close);
        let b = TokenBucket::new(&c, 0);
        // One message larger than the bucket passes, then the debt must be repaid.
        assert_eq!(b.check(&c, 3000, 0), RateVerdict::Pass);
        assert_eq!(b.check(&c, 1, 1000 * MS), RateVerdict::Close);
        assert_eq!(b.check(&c, 1, 2001 * MS), RateVerdict::Pass);
    }

    #[test]
    fn per_address_slots_are_released_on_drop() {
        let t = IpTable::new(2);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "::1".parse().unwrap();
        let a = t.try_acquire(ip).unwrap();
        let b = t.try_acquire(ip).unwrap();
        assert!(t.try_acquire(ip).is_none());
        assert!(t.try_acquire(other).is_some());
        drop(a);
        assert_eq!(t.count(ip), 1);
        let c = t.try_acquire(ip).unwrap();
        drop((b, c));
        assert_eq!(t.count(ip), 0);
    }

    #[test]
    fn error_frame_names_the_limit() {
        let f = rate_limited_frame(&cfg(5, 100, 1000, RateLimitAction::Error));
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"], "rate_limited");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("5 messages/s, 100 bytes/s"));
    }
}
