//! Per-route counters, per shard: the metrics middleware that is always on.

use super::*;

/// One shard's counters of one route, on a cache line of its own (shards never
/// write the same line).
#[derive(Default)]
#[repr(align(64))]
pub(super) struct ShardRouteCounters {
    pub(super) calls: AtomicU64,
    pub(super) client_errors: AtomicU64,
    pub(super) internal_errors: AtomicU64,
    pub(super) panics: AtomicU64,
    pub(super) nanos: AtomicU64,
}

/// Per-route counters, per shard (the metrics middleware that is always on).
pub(super) struct RouteStats(Box<[ShardRouteCounters]>);

impl Default for RouteStats {
    fn default() -> Self {
        Self(
            (0..corecast_shards::room::MAX_SHARDS)
                .map(|_| ShardRouteCounters::default())
                .collect(),
        )
    }
}

impl RouteStats {
    pub(super) fn shard(&self, shard: usize) -> &ShardRouteCounters {
        &self.0[shard.min(self.0.len() - 1)]
    }

    pub(super) fn totals(&self) -> RouteTotals {
        let sum = |f: fn(&ShardRouteCounters) -> &AtomicU64| -> u64 {
            self.0.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        RouteTotals {
            calls: sum(|c| &c.calls),
            client_errors: sum(|c| &c.client_errors),
            internal_errors: sum(|c| &c.internal_errors),
            panics: sum(|c| &c.panics),
            handler_seconds: sum(|c| &c.nanos) as f64 / 1e9,
        }
    }
}
