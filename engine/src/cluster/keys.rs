//! Redis key and channel names (docs/ARCHITECTURE.md, "Cluster": Redis layout).
//! `P` is `cluster.key_prefix`, `N` a node id, `R` a room.

/// Names of this node's keys and channels.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// This node's id.
    pub(crate) node: String,
}

impl Keys {
    /// Names under `prefix` for node `node`.
    pub(crate) fn new(prefix: &str, node: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            node: node.to_string(),
        }
    }

    /// `P:room:R` (the room's channel).
    pub(crate) fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// The room a channel name belongs to, if it is a room channel.
    pub(crate) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":room:")
    }

    /// `P:room:R:meta` (hash: epoch, seq).
    pub(crate) fn meta(&self, room: &str) -> String {
        format!("{}:room:{room}:meta", self.prefix)
    }

    /// `P:room:R:log` (stream of the room's history).
    pub(crate) fn log(&self, room: &str) -> String {
        format!("{}:room:{room}:log", self.prefix)
    }

    /// `P:room:R:counts` (hash: node -> "ws sse wt").
    pub(crate) fn counts(&self, room: &str) -> String {
        format!("{}:room:{room}:counts", self.prefix)
    }

    /// `P:room:R:presence` (hash: "N|conn" -> member JSON).
    pub(crate) fn presence(&self, room: &str) -> String {
        format!("{}:room:{room}:presence", self.prefix)
    }

    /// `P:node:N` (liveness key of any node).
    pub(crate) fn node_alive(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// `P:node:N:rooms` (rooms where node `node` has counts or presence).
    pub(crate) fn node_rooms(&self, node: &str) -> String {
        format!("{}:node:{node}:rooms", self.prefix)
    }

    /// `P:nodes` (every node that has heartbeated and not been reaped).
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// `P:reap:N` (lock: one node reaps dead node `node`).
    pub(crate) fn reap_lock(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }

    /// `P:direct:N` (messages for node `node`'s connections).
    pub(crate) fn direct_channel(&self, node: &str) -> String {
        format!("{}:direct:{node}", self.prefix)
    }

    /// The presence hash field of this node's member `conn`.
    pub(crate) fn presence_field(&self, conn: impl std::fmt::Display) -> String {
        format!("{}|{conn}", self.node)
    }
}

/// The node a presence field ("N|conn") belongs to.
pub(crate) fn node_of_field(field: &str) -> Option<&str> {
    field.split_once('|').map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_map_back_to_rooms() {
        let k = Keys::new("cc", "a");
        assert_eq!(k.room_channel("x:y"), "cc:room:x:y");
        assert_eq!(k.room_of_channel("cc:room:x:y"), Some("x:y"));
        assert_eq!(k.room_of_channel("cc:direct:a"), None);
        assert_eq!(k.room_of_channel("ccc:room:x"), None);
        assert_eq!(k.presence_field("1.2.3"), "a|1.2.3");
        assert_eq!(node_of_field("a|1.2.3"), Some("a"));
        assert_eq!(node_of_field("junk"), None);
    }
}
