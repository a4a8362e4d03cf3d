//! The shard side of cluster mode (see [`crate::cluster`]).

use std::rc::Rc;

use super::shard::{Shard, ShardMsg};

impl Shard {
    /// Messages from the cluster bridge.
    pub(crate) fn handle_cluster(self: &Rc<Self>, msg: ShardMsg) {
        let _ = msg;
    }
}
