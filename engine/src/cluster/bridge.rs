//! The bridge thread: the node's Redis client.

use std::sync::Arc;

use corecast_shards::MeshSender;

use super::BridgeEnd;
use crate::config::ClusterConfig;
use crate::net::shard::ShardMsg;

/// Start the bridge thread.
pub(crate) fn spawn(
    _config: ClusterConfig,
    _node_id: Arc<str>,
    _end: BridgeEnd,
    _senders: Vec<MeshSender<ShardMsg>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    Err(std::io::Error::other("the cluster bridge is not built yet"))
}
