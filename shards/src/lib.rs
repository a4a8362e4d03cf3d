//! corecast-shards: the thread-per-core runtime under corecast.
//!
//! This crate knows bytes and handles, not protocols:
//! - [`pool`] starts one pinned glommio executor per shard and joins them;
//! - [`mesh`] carries messages between shards over bounded crossbeam channels, with a
//!   [`doorbell`] so an idle shard sleeps in io_uring instead of polling;
//! - [`room`] keeps per-shard room membership and, on a room's owner shard, the
//!   interest set (which shards have members) and the room's sequence;
//! - [`conn`] addresses connections by `(shard, slot, generation)` in a slab;
//! - [`queue`] is the per-connection outbound queue, bounded in bytes.

pub mod doorbell;
pub mod history;
pub mod mesh;
pub mod pool;
pub mod queue;
pub mod room;
pub mod slab;

pub use history::{HistoryBudget, HistoryCounters, HistoryLimits, Weigh};
pub use mesh::{Inbox, LocalInbox, Mesh, MeshSender};
pub use pool::{PoolConfig, PoolError, ShardPool};
pub use queue::{FrameClass, OutboundQueue, Overflow, Pushed, QueueFull};
pub use room::{owner_of, GapReason, InterestTable, MemberList, Position, Replay, RoomTable};
pub use slab::{ConnId, ConnSlab, ParseConnIdError};
