//! Messages from the bridge to shards, each shard's in order.

use std::collections::VecDeque;

use crate::cluster::{FromBridge, ShardPort};

/// Messages for shards, each shard's in order. A full inbox keeps the rest in a
/// per-shard backlog the bridge retries every millisecond.
pub(super) struct Outbox {
    /// One per shard.
    pub(super) port: Box<dyn ShardPort>,
    /// What waits for each shard, in order.
    pub(super) backlog: Vec<VecDeque<FromBridge>>,
    /// Messages in the backlogs.
    pub(super) queued: usize,
}

impl Outbox {
    /// Send `msg` to `shard` now, or after what waits for it.
    pub(super) fn send(&mut self, shard: usize, msg: FromBridge) {
        let Some(backlog) = self.backlog.get_mut(shard) else {
            tracing::warn!(
                shard,
                "cluster: message for a shard that does not exist dropped"
            );
            return;
        };
        let msg = if backlog.is_empty() {
            match self.port.send(shard, msg) {
                Ok(()) => return,
                Err(m) => m,
            }
        } else {
            msg
        };
        backlog.push_back(msg);
        self.queued += 1;
    }

    /// Retry the backlogs.
    pub(super) fn flush(&mut self) {
        for (shard, backlog) in self.backlog.iter_mut().enumerate() {
            while let Some(msg) = backlog.pop_front() {
                match self.port.send(shard, msg) {
                    Ok(()) => self.queued -= 1,
                    Err(m) => {
                        backlog.push_front(m);
                        break;
                    }
                }
            }
        }
    }
}
