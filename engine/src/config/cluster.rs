//! The `cluster:` section: several corecast nodes sharing rooms through Redis.
//! Absent: the node runs alone (the embedded default).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

/// The broker nodes share rooms through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// Redis (or a protocol-compatible server such as Valkey), 6.0 or newer.
    Redis,
}

/// Cluster membership through a Redis broker (docs/ARCHITECTURE.md, "Cluster").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The broker: `redis`.
    pub broker: Broker,
    /// `redis://[user:password@]host:port[/db]` (`env:NAME` reads it from the
    /// environment).
    pub url: String,
    /// This node's name, unique in the cluster: 1 to 64 of `A-Z a-z 0-9 _ -`.
    /// Default: `<hostname>-<pid>`.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel corecast uses, so several clusters
    /// can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How often a node refreshes its liveness key and member counts.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: ConfigDuration,
    /// A node whose liveness key is this old is dead: its members leave presence
    /// and member counts. At least twice `heartbeat`.
    #[serde(default = "default_node_timeout")]
    pub node_timeout: ConfigDuration,
    /// First wait before reconnecting to Redis; doubles per failed attempt.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: ConfigDuration,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: ConfigDuration,
    /// A Redis command with no answer this long counts as a failed connection.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: ConfigDuration,
    /// Messages the shards may queue for the bridge thread; a publish beyond it is
    /// refused as overloaded.
    #[serde(default = "default_bridge_capacity")]
    pub bridge_capacity: usize,
}

fn default_prefix() -> String {
    "corecast".into()
}
fn default_heartbeat() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_node_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(3))
}
fn default_reconnect_min() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(100))
}
fn default_reconnect_max() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn default_command_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}
fn default_bridge_capacity() -> usize {
    65_536
}

/// Whether `id` is a valid node id (also used for ids in API paths).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ClusterConfig {
    /// The node id: the configured one, or `<hostname>-<pid>`.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "node".into());
        let host: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        format!("{host}-{}", std::process::id())
    }

    /// The Redis URL with `env:NAME` resolved.
    pub fn resolved_url(&self) -> Result<String, String> {
        match self.url.strip_prefix("env:") {
            Some(name) => std::env::var(name).map_err(|_| {
                format!("cluster.url reads the environment variable {name}, which is not set")
            }),
            None => Ok(self.url.clone()),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let url = self.resolved_url()?;
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            return Err(format!(
                "cluster.url must be a redis:// or unix:// URL (rediss:// is not supported), got {:?}",
                url.split('@').next_back().unwrap_or("")
            ));
        }
        if let Some(id) = &self.node_id {
            if !valid_node_id(id) {
                return Err(format!(
                    "cluster.node_id must be 1 to 64 of A-Z a-z 0-9 _ -, got {id:?}"
                ));
            }
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || self.key_prefix.contains(char::is_whitespace)
        {
            return Err(format!(
                "cluster.key_prefix must be 1 to 64 characters without spaces, got {:?}",
                self.key_prefix
            ));
        }
        if self.heartbeat.0 < Duration::from_millis(100) {
            return Err("cluster.heartbeat must be at least 100ms".into());
        }
        if self.node_timeout.0 < self.heartbeat.0 * 2 {
            return Err(
                "cluster.node_timeout must be at least twice cluster.heartbeat (one late heartbeat must not kill a node)"
                    .into(),
            );
        }
        if self.reconnect_min.0.is_zero() || self.reconnect_max.0 < self.reconnect_min.0 {
            return Err(
                "cluster.reconnect_min must be above 0 and at most cluster.reconnect_max".into(),
            );
        }
        if self.command_timeout.0 < Duration::from_millis(10) {
            return Err("cluster.command_timeout must be at least 10ms".into());
        }
        if self.bridge_capacity == 0 {
            return Err("cluster.bridge_capacity must be greater than 0".into());
        }
        Ok(())
    }
}
