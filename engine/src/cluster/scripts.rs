//! The publish script: sequence, append to history and publish, atomically.
//!
//! KEYS: meta, log. ARGV: channel, header, payload, maxlen, age_ms, epoch candidate,
//! mode. Mode `set` stores the room's history limits in meta (every user publish
//! carries them); mode `stored` (presence events, which the bridge publishes
//! without knowing the room's configuration) uses the stored ones, else the
//! given defaults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corecast_shards::HistoryLimits;
use ring::rand::{SecureRandom, SystemRandom};

/// The Lua source (see docs/ARCHITECTURE.md, "Cluster").
pub(crate) const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local maxlen = tonumber(ARGV[4])
local age = tonumber(ARGV[5])
if ARGV[7] == 'stored' then
  local kept = redis.call('HMGET', KEYS[1], 'maxlen', 'age')
  maxlen = tonumber(kept[1]) or maxlen
  age = tonumber(kept[2]) or age
else
  redis.call('HSET', KEYS[1], 'maxlen', ARGV[4], 'age', ARGV[5])
end
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, seq .. '-0', 'h', ARGV[2], 'd', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], age)
end
redis.call('PEXPIRE', KEYS[1], math.max(86400000, age))
redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[2] .. '\n' .. ARGV[3])
return {epoch, seq}
";

/// The publish script, hashed once.
pub(crate) fn publish_script() -> redis::Script {
    redis::Script::new(PUBLISH)
}

/// `(max_messages, max_age in ms)` as the script takes them (age at least 1 ms:
/// PEXPIRE 0 would delete the key).
pub(crate) fn limit_args(limits: HistoryLimits) -> (u64, u64) {
    let age = u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX);
    (limits.max_messages as u64, age.max(1))
}

/// The limits presence events fall back on when the room has none stored.
pub(crate) fn default_limits() -> HistoryLimits {
    crate::config::HistoryConfig::default().limits_for("")
}

/// Unix time in microseconds.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// A fresh epoch for a room Redis has no record of: `(unix millis << 20) | 20
/// random bits`, so it differs from any epoch before a data loss.
pub(crate) fn epoch_candidate() -> u64 {
    // One random draw per process (every publish passes a candidate), then a
    // counter, so two candidates of this process never share their low bits
    // within a millisecond.
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(random_u64);
    let low = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) & 0xf_ffff;
    let millis = unix_micros() / 1000;
    (millis << 20) | low
}

/// 64 random bits (falls back on the clock if the OS has none to give).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        return unix_micros().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_candidates_are_time_ordered_and_distinct() {
        let a = epoch_candidate();
        let b = epoch_candidate();
        assert!(a >> 20 > 1_700_000_000_000, "millis in the high bits");
        assert!(b >> 20 >= a >> 20);
        let many: std::collections::HashSet<u64> = (0..64).map(|_| epoch_candidate()).collect();
        assert_eq!(many.len(), 64, "distinct low bits");
    }

    #[test]
    fn limit_args_never_ask_for_a_zero_expiry() {
        let l = HistoryLimits {
            max_messages: 5,
            max_age: Duration::ZERO,
            max_bytes: usize::MAX,
        };
        assert_eq!(limit_args(l), (5, 1));
        let l = HistoryLimits {
            max_messages: 0,
            max_age: Duration::from_secs(300),
            max_bytes: usize::MAX,
        };
        assert_eq!(limit_args(l), (0, 300_000));
    }
}
