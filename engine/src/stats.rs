//! Per-shard counters, written by their shard with relaxed atomics and summed for
//! `GET /stats` (and exported per shard by [`crate::metrics`]). Frames per write is
//! the figure that decides fan-out speed here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// The process-wide time base of [`clock_ns`].
static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();

/// The process-wide time base (the first call fixes it).
pub(crate) fn clock_base() -> Instant {
    *CLOCK_BASE.get_or_init(Instant::now)
}

/// `at` as nanoseconds since the process-wide base, never 0 (0 means "none").
#[inline]
pub(crate) fn instant_ns(at: Instant) -> u64 {
    let ns = at.saturating_duration_since(clock_base()).as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX).max(1)
}

/// Now, as nanoseconds since the process-wide base (a vDSO clock read, no syscall).
#[inline]
pub(crate) fn clock_ns() -> u64 {
    instant_ns(Instant::now())
}

/// Upper bounds of the latency histogram's buckets, nanoseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_NS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A lock-free latency histogram with fixed buckets ([`LATENCY_BUCKETS_NS`] and
/// `+Inf`), written by one shard with relaxed atomics. Buckets are stored
/// non-cumulatively; readers add them up.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket; the last one is `+Inf`.
    pub buckets: [AtomicU64; LATENCY_BUCKETS_NS.len() + 1],
    /// Sum of all observations, nanoseconds.
    pub sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Record one observation of `ns` nanoseconds. Only the owning shard's thread
    /// observes (plain loads and stores, no locked read-modify-write).
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let i = LATENCY_BUCKETS_NS.partition_point(|&le| le < ns);
        ShardStats::add_local(&self.buckets[i], 1);
        ShardStats::add_local(&self.sum_ns, ns);
    }

    /// Observations so far (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Live TCP connections (WebSocket and SSE).
    pub connections: AtomicU64,
    /// Live WebSocket connections.
    pub ws_connections: AtomicU64,
    /// Live Server-Sent Events streams.
    pub sse_connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Failed `accept()` calls (usually EMFILE: the open-file limit is reached);
    /// each is retried 10 ms later.
    pub accept_failures: AtomicU64,
    /// Data messages received from clients.
    pub messages_in: AtomicU64,
    /// Bytes read from TCP connections after their request head.
    pub bytes_in: AtomicU64,
    /// Room messages sequenced by this shard as owner.
    pub broadcasts: AtomicU64,
    /// Frames queued to local members by room fan-out.
    pub deliveries: AtomicU64,
    /// Frames fully written to sockets.
    pub frames_written: AtomicU64,
    /// send() calls that wrote something.
    pub writes: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_written: AtomicU64,
    /// Connections closed because their outbound queue hit its cap.
    pub slow_consumers: AtomicU64,
    /// Room messages dropped from (or not admitted to) members' full queues by the
    /// `drop_oldest` / `keep_latest` slow-consumer policies.
    pub slow_dropped: AtomicU64,
    /// Queued room messages replaced by a newer one of the same room (`keep_latest`).
    pub slow_conflated: AtomicU64,
    /// Connections closed because their socket accepted nothing for
    /// `slow_consumers.write_stall_timeout` while bytes were queued.
    pub write_stall_closes: AtomicU64,
    /// Cross-shard messages refused because the target inbox was full.
    pub mesh_overflows: AtomicU64,
    /// Cross-shard messages that found the target inbox full and waited, in order, in
    /// the sending shard's outbox (not lost).
    pub mesh_deferred: AtomicU64,
    /// Messages waiting in this shard's outboxes right now (a gauge).
    pub mesh_outbox_len: AtomicU64,
    /// Handlers that panicked (their connection was closed with 1011).
    pub handler_panics: AtomicU64,
    /// Route handlers that returned an internal error (connection closed 1011).
    pub handler_errors: AtomicU64,
    /// Connection attempts refused by `$connect` or middleware (401/403/...).
    pub connect_rejected: AtomicU64,
    /// WebSocket connections dropped after `websocket.idle_timeout` x 2 of silence.
    pub idle_timeouts: AtomicU64,
    /// `send_to` messages whose connection had gone.
    pub send_to_missed: AtomicU64,
    /// Requests refused for failed authentication (counted by the application layer).
    pub auth_failures: AtomicU64,
    /// Bytes queued on this shard's TCP connections, not yet written (a gauge).
    pub outbound_queued_bytes: AtomicU64,
    /// How long room deliveries are held before writing now, µs (a gauge;
    /// `runtime.flush_delay`).
    pub flush_hold_us: AtomicU64,
    /// Times `flush_delay: auto` started holding (the shard was saturated).
    pub flush_holds: AtomicU64,
    /// How io_uring hands this shard its completions (a gauge): 0 interrupt,
    /// 1 cooperative, 2 deferred (`runtime.io_uring_task_run`, after fallback).
    pub io_uring_task_run: AtomicU64,
    /// Accounted bytes of room history this shard keeps as owner (a gauge).
    pub history_bytes: AtomicU64,
    /// Rooms whose history this shard keeps (a gauge).
    pub history_rooms: AtomicU64,
    /// Messages this shard keeps in room history (a gauge).
    pub history_messages: AtomicU64,
    /// History messages evicted to stay within `history.max_total_bytes` /
    /// `history.max_rooms`.
    pub history_evicted_messages: AtomicU64,
    /// Accounted bytes of those messages.
    pub history_evicted_bytes: AtomicU64,
    /// Rooms whose whole history was dropped for `history.max_rooms`.
    pub history_evicted_rooms: AtomicU64,
    /// Messages not kept in history: heavier than `history.max_bytes` (or the
    /// shard's share of `max_total_bytes`).
    pub history_not_kept: AtomicU64,
    /// Time from a room message's sequencing by its owner shard to the write that
    /// emptied a member's queue with it (one observation per such write).
    pub publish_to_write: LatencyHistogram,
    /// TCP connections accepted whose request head is still being read (a gauge);
    /// they count against `limits.max_connections_per_shard`.
    pub handshaking: AtomicU64,
    /// Connections dropped for not sending a complete request head within
    /// `limits.handshake_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Request heads refused as malformed (400) or over `limits.*` (431).
    pub bad_requests: AtomicU64,
    /// Connections refused with 503 at `limits.max_connections_per_shard`.
    pub shard_limit_rejected: AtomicU64,
    /// Connections refused with 503 at `limits.max_connections_per_ip`.
    pub ip_limit_rejected: AtomicU64,
    /// WebSocket/SSE requests (and SSE preflights) refused with 403 for their `Origin`.
    pub origin_rejected: AtomicU64,
    /// Inbound messages over `websocket.rate_limit` (dropped, or the connection closed).
    pub rate_limited: AtomicU64,
    /// Pings not answered because `websocket.max_pending_pongs` pongs were unwritten.
    pub pongs_skipped: AtomicU64,
    /// Connections closed with 1009 (frame, message, inflated size or fragment limit).
    pub too_big_closes: AtomicU64,
    /// Live QUIC connections.
    pub wt_connections: AtomicU64,
    /// Live WebTransport sessions.
    pub wt_sessions: AtomicU64,
    /// WebTransport session requests refused (4xx/5xx).
    pub wt_rejected: AtomicU64,
    /// QUIC Retry packets sent (address validation).
    pub wt_retries: AtomicU64,
    /// Datagrams not sent (too large, queue full) or not taken (handler inbox full).
    pub wt_datagrams_dropped: AtomicU64,
    /// Queued room datagrams replaced by a newer one of the same room (latest wins).
    pub wt_datagrams_replaced: AtomicU64,
    /// UDP packets sent.
    pub wt_packets_out: AtomicU64,
    /// sendmmsg() calls.
    pub wt_send_calls: AtomicU64,
    /// TLS handshakes completed on the `tls.listen` listener.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or missed the handshake deadline.
    pub tls_handshake_failures: AtomicU64,
}

impl ShardStats {
    /// Add `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Subtract `n` from a gauge.
    #[inline]
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Add `n` to a counter only this shard's thread writes: a plain load and
    /// store (no locked read-modify-write), for per-delivery paths. Readers on
    /// other threads still see whole values.
    #[inline]
    pub fn add_local(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtract `n` from a gauge only this shard's thread writes (see
    /// [`ShardStats::add_local`]).
    #[inline]
    pub fn sub_local(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// Publish the owner table's history counters (written by the owning shard
    /// only, after each change).
    pub fn set_history(&self, c: &corecast_shards::HistoryCounters) {
        self.history_bytes.store(c.bytes as u64, Relaxed);
        self.history_rooms.store(c.rooms as u64, Relaxed);
        self.history_messages.store(c.messages as u64, Relaxed);
        self.history_evicted_messages
            .store(c.evicted_messages, Relaxed);
        self.history_evicted_bytes.store(c.evicted_bytes, Relaxed);
        self.history_evicted_rooms.store(c.evicted_rooms, Relaxed);
        self.history_not_kept.store(c.not_kept, Relaxed);
    }
}

/// The sum over shards, as JSON for `GET /stats`.
pub fn to_json(shards: &[std::sync::Arc<ShardStats>]) -> String {
    let sum = |f: fn(&ShardStats) -> &AtomicU64| -> u64 {
        shards.iter().map(|s| f(s).load(Relaxed)).sum()
    };
    let frames = sum(|s| &s.frames_written);
    let writes = sum(|s| &s.writes);
    let per_shard: Vec<String> = shards
        .iter()
        .map(|s| s.connections.load(Relaxed).to_string())
        .collect();
    format!(
        concat!(
            "{{\"shards\":{},\"connections\":{},\"connections_per_shard\":[{}],\"accepted\":{},\"accept_failures\":{},",
            "\"messages_in\":{},\"broadcasts\":{},\"deliveries\":{},\"frames_written\":{},",
            "\"writes\":{},\"bytes_written\":{},\"frames_per_write\":{:.2},",
            "\"slow_consumers\":{},\"slow_dropped\":{},\"slow_conflated\":{},\"write_stall_closes\":{},\"outbound_queued_bytes\":{},\"mesh_overflows\":{},\"mesh_deferred\":{},\"handler_panics\":{},",
            "\"handler_errors\":{},\"connect_rejected\":{},\"idle_timeouts\":{},\"send_to_missed\":{},",
            "\"handshaking\":{},\"handshake_timeouts\":{},\"bad_requests\":{},",
            "\"shard_limit_rejected\":{},\"ip_limit_rejected\":{},\"origin_rejected\":{},",
            "\"rate_limited\":{},\"pongs_skipped\":{},\"too_big_closes\":{},",
            "\"wt_connections\":{},\"wt_sessions\":{},\"wt_rejected\":{},\"wt_retries\":{},",
            "\"wt_datagrams_dropped\":{},\"wt_datagrams_replaced\":{},\"wt_packets_out\":{},",
            "\"wt_send_calls\":{},\"wt_packets_per_send\":{:.2},",
            "\"history_bytes\":{},\"history_rooms\":{},\"history_messages\":{},",
            "\"history_evicted_messages\":{},\"history_evicted_bytes\":{},",
            "\"history_evicted_rooms\":{},\"history_not_kept\":{},",
            "\"tls_handshakes\":{},\"tls_handshake_failures\":{},",
            "\"flush_hold_us_max\":{},\"flush_holds\":{},\"io_uring_task_run\":\"{}\"}}"
        ),
        shards.len(),
        sum(|s| &s.connections),
        per_shard.join(","),
        sum(|s| &s.accepted),
        sum(|s| &s.accept_failures),
        sum(|s| &s.messages_in),
        sum(|s| &s.broadcasts),
        sum(|s| &s.deliveries),
        frames,
        writes,
        sum(|s| &s.bytes_written),
        ratio(frames, writes),
        sum(|s| &s.slow_consumers),
        sum(|s| &s.slow_dropped),
        sum(|s| &s.slow_conflated),
        sum(|s| &s.write_stall_closes),
        sum(|s| &s.outbound_queued_bytes),
        sum(|s| &s.mesh_overflows),
        sum(|s| &s.mesh_deferred),
        sum(|s| &s.handler_panics),
        sum(|s| &s.handler_errors),
        sum(|s| &s.connect_rejected),
        sum(|s| &s.idle_timeouts),
        sum(|s| &s.send_to_missed),
        sum(|s| &s.handshaking),
        sum(|s| &s.handshake_timeouts),
        sum(|s| &s.bad_requests),
        sum(|s| &s.shard_limit_rejected),
        sum(|s| &s.ip_limit_rejected),
        sum(|s| &s.origin_rejected),
        sum(|s| &s.rate_limited),
        sum(|s| &s.pongs_skipped),
        sum(|s| &s.too_big_closes),
        sum(|s| &s.wt_connections),
        sum(|s| &s.wt_sessions),
        sum(|s| &s.wt_rejected),
        sum(|s| &s.wt_retries),
        sum(|s| &s.wt_datagrams_dropped),
        sum(|s| &s.wt_datagrams_replaced),
        sum(|s| &s.wt_packets_out),
        sum(|s| &s.wt_send_calls),
        ratio(sum(|s| &s.wt_packets_out), sum(|s| &s.wt_send_calls)),
        sum(|s| &s.history_bytes),
        sum(|s| &s.history_rooms),
        sum(|s| &s.history_messages),
        sum(|s| &s.history_evicted_messages),
        sum(|s| &s.history_evicted_bytes),
        sum(|s| &s.history_evicted_rooms),
        sum(|s| &s.history_not_kept),
        sum(|s| &s.tls_handshakes),
        sum(|s| &s.tls_handshake_failures),
        shards
            .iter()
            .map(|s| s.flush_hold_us.load(Relaxed))
            .max()
            .unwrap_or(0),
        sum(|s| &s.flush_holds),
        task_run_summary(shards),
    )
}

/// `io_uring_task_run` of every shard: its name when they agree, else `mixed`
/// (some shards fell back to interrupts).
fn task_run_summary(shards: &[std::sync::Arc<ShardStats>]) -> &'static str {
    let name = |v: u64| match v {
        1 => "cooperative",
        2 => "deferred",
        _ => "interrupt",
    };
    let mut modes = shards.iter().map(|s| s.io_uring_task_run.load(Relaxed));
    let Some(first) = modes.next() else {
        return "interrupt";
    };
    if modes.all(|m| m == first) {
        name(first)
    } else {
        "mixed"
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
