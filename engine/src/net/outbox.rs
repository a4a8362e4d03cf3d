//! Ordered, bounded overflow for cross-shard messages.
//!
//! Every shard's inbox is a bounded channel (`runtime.mesh_capacity`). When a shard
//! falls behind and its inbox fills, the shards sending to it must neither block (a
//! shard thread never waits on another) nor drop what they already accepted, nor let
//! a later message overtake an earlier one. So each sending shard keeps, per
//! destination, an outbox: once one message to a destination had to wait, every later
//! one queues behind it, and a single task per destination moves them into the inbox
//! in order as room frees up. The outbox is bounded too (`runtime.mesh_capacity`
//! messages per destination); a message that finds it full is handed back to the
//! caller, which refuses it (publish: an error to the publisher) or counts it as lost
//! (`mesh_overflows`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use corecast_shards::MeshSender;

use super::shard::ShardMsg;
use crate::stats::ShardStats;

/// How often a waiting outbox retries a full inbox.
const RETRY_EVERY: Duration = Duration::from_millis(1);

/// One shard's outboxes, one per destination shard.
pub(crate) struct Outbox {
    senders: Vec<MeshSender<ShardMsg>>,
    queues: RefCell<Vec<VecDeque<ShardMsg>>>,
    /// Messages one destination's outbox holds at most.
    cap: usize,
    /// Destinations with a drain task running (bit per shard; at most 64 shards).
    draining: Cell<u64>,
    stats: Arc<ShardStats>,
}

impl Outbox {
    pub(crate) fn new(
        senders: Vec<MeshSender<ShardMsg>>,
        cap: usize,
        stats: Arc<ShardStats>,
    ) -> Self {
        let queues = (0..senders.len()).map(|_| VecDeque::new()).collect();
        Self {
            senders,
            queues: RefCell::new(queues),
            cap: cap.max(1),
            draining: Cell::new(0),
            stats,
        }
    }

    /// Send `msg` to shard `dest` after everything sent to it before. `Err(msg)`:
    /// the destination's inbox and this outbox are both full; nothing was queued.
    pub(crate) fn send(self: &Rc<Self>, dest: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[dest];
        let msg = if queue.is_empty() {
            match self.senders[dest].send(msg) {
                Ok(()) => return Ok(()),
                Err(m) => m,
            }
        } else {
            msg
        };
        if queue.len() >= self.cap {
            return Err(msg);
        }
        queue.push_back(msg);
        ShardStats::add(&self.stats.mesh_deferred, 1);
        ShardStats::add_local(&self.stats.mesh_outbox_len, 1);
        drop(queues);
        let bit = 1u64 << dest;
        if self.draining.get() & bit == 0 {
            self.draining.set(self.draining.get() | bit);
            glommio::spawn_local(self.clone().drain(dest)).detach();
        }
        Ok(())
    }

    /// Messages waiting for `dest`.
    #[cfg(test)]
    pub(crate) fn waiting(&self, dest: usize) -> usize {
        self.queues.borrow()[dest].len()
    }

    /// Move `dest`'s outbox into its inbox, in order, as room frees up.
    async fn drain(self: Rc<Self>, dest: usize) {
        loop {
            let moved = {
                let mut queues = self.queues.borrow_mut();
                let queue = &mut queues[dest];
                let mut moved = 0u64;
                while let Some(msg) = queue.pop_front() {
                    match self.senders[dest].send(msg) {
                        Ok(()) => moved += 1,
                        Err(m) => {
                            queue.push_front(m);
                            break;
                        }
                    }
                }
                ShardStats::sub_local(&self.stats.mesh_outbox_len, moved);
                if queue.is_empty() {
                    self.draining.set(self.draining.get() & !(1u64 << dest));
                    return;
                }
                moved
            };
            if moved == 0 {
                glommio::timer::sleep(RETRY_EVERY).await;
            } else {
                glommio::yield_if_needed().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::shard::RoomMsg;
    use corecast_shards::Mesh;

    fn deliver_marker(n: u64) -> ShardMsg {
        ShardMsg::Room(RoomMsg::PublishAck {
            token: n,
            pos: corecast_shards::Position { epoch: 1, seq: n },
        })
    }

    fn token(msg: &ShardMsg) -> u64 {
        match msg {
            ShardMsg::Room(RoomMsg::PublishAck { token, .. }) => *token,
            _ => panic!("unexpected message"),
        }
    }

    #[test]
    fn a_full_inbox_queues_in_order_and_a_full_outbox_hands_the_message_back() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 * 1024)
            .ring_depth(32)
            .spawn(|| async {
                let mut mesh = Mesh::new(2, 2).unwrap();
                let stats = Arc::new(ShardStats::default());
                let outbox = Rc::new(Outbox::new(mesh.senders(), 3, stats.clone()));
                // 2 fit the inbox, 3 wait in the outbox, the 6th is refused.
                for n in 1..=5 {
                    assert!(outbox.send(1, deliver_marker(n)).is_ok());
                }
                assert_eq!(outbox.waiting(1), 3);
                let refused = outbox.send(1, deliver_marker(6)).unwrap_err();
                assert_eq!(token(&refused), 6);
                assert_eq!(
                    stats
                        .mesh_deferred
                        .load(std::sync::atomic::Ordering::Relaxed),
                    3
                );

                // The destination catches up: everything arrives once, in order.
                let mut inbox = mesh.take_inbox(1).unwrap().attach();
                let mut got = Vec::new();
                let mut batch = Vec::new();
                while got.len() < 5 {
                    inbox.recv_batch(&mut batch, 1).await.unwrap();
                    got.extend(batch.drain(..).map(|m| token(&m)));
                }
                assert_eq!(got, vec![1, 2, 3, 4, 5]);
                // Once drained, a send goes straight to the inbox again.
                glommio::timer::sleep(Duration::from_millis(5)).await;
                assert_eq!(outbox.waiting(1), 0);
                assert!(outbox.send(1, deliver_marker(7)).is_ok());
                assert_eq!(outbox.waiting(1), 0);
                assert_eq!(
                    stats
                        .mesh_outbox_len
                        .load(std::sync::atomic::Ordering::Relaxed),
                    0
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
