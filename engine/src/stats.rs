//! Per-shard counters, written by their shard with relaxed atomics and summed for
//! `GET /stats`. Frames per write is the figure that decides fan-out speed here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Live connections (WebSocket sessions).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Data messages received from clients.
    pub messages_in: AtomicU64,
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
    /// Cross-shard messages refused because the target inbox was full.
    pub mesh_overflows: AtomicU64,
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
            "{{\"shards\":{},\"connections\":{},\"connections_per_shard\":[{}],\"accepted\":{},",
            "\"messages_in\":{},\"broadcasts\":{},\"deliveries\":{},\"frames_written\":{},",
            "\"writes\":{},\"bytes_written\":{},\"frames_per_write\":{:.2},",
            "\"slow_consumers\":{},\"mesh_overflows\":{},\"handler_panics\":{},",
            "\"handler_errors\":{},\"connect_rejected\":{},\"idle_timeouts\":{},\"send_to_missed\":{},",
            "\"wt_connections\":{},\"wt_sessions\":{},\"wt_rejected\":{},\"wt_retries\":{},",
            "\"wt_datagrams_dropped\":{},\"wt_datagrams_replaced\":{},\"wt_packets_out\":{},",
            "\"wt_send_calls\":{},\"wt_packets_per_send\":{:.2}}}"
        ),
        shards.len(),
        sum(|s| &s.connections),
        per_shard.join(","),
        sum(|s| &s.accepted),
        sum(|s| &s.messages_in),
        sum(|s| &s.broadcasts),
        sum(|s| &s.deliveries),
        frames,
        writes,
        sum(|s| &s.bytes_written),
        ratio(frames, writes),
        sum(|s| &s.slow_consumers),
        sum(|s| &s.mesh_overflows),
        sum(|s| &s.handler_panics),
        sum(|s| &s.handler_errors),
        sum(|s| &s.connect_rejected),
        sum(|s| &s.idle_timeouts),
        sum(|s| &s.send_to_missed),
        sum(|s| &s.wt_connections),
        sum(|s| &s.wt_sessions),
        sum(|s| &s.wt_rejected),
        sum(|s| &s.wt_retries),
        sum(|s| &s.wt_datagrams_dropped),
        sum(|s| &s.wt_datagrams_replaced),
        sum(|s| &s.wt_packets_out),
        sum(|s| &s.wt_send_calls),
        ratio(sum(|s| &s.wt_packets_out), sum(|s| &s.wt_send_calls)),
    )
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
