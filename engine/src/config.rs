//! Configuration: `config.yaml`, strictly parsed (unknown keys and wrong types are
//! errors naming the key and line), with the embedded default as the base.

use std::net::SocketAddr;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The default configuration shipped with corecast (the repository's `config.yaml`).
pub const DEFAULT_YAML: &str = include_str!("../../config.yaml");

/// A configuration error, with the file, key and line where serde could tell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TCP address every shard listens on.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Shard count (`auto` = one per available core).
    #[serde(default)]
    pub shards: Shards,
    /// io_uring and mesh sizing.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// WebSocket settings and endpoints.
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// How many shards to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shards {
    /// One per CPU the process may run on.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
}

impl<'de> Deserialize<'de> for Shards {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Shards;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`auto` or a shard count from 1 to 64")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Shards, E> {
                if (1..=64).contains(&n) {
                    Ok(Shards::Count(n as usize))
                } else {
                    Err(E::invalid_value(de::Unexpected::Unsigned(n), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Shards, E> {
                if n < 0 {
                    return Err(E::invalid_value(de::Unexpected::Signed(n), &self));
                }
                self.visit_u64(n as u64)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Shards, E> {
                if s == "auto" {
                    Ok(Shards::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// io_uring and mesh sizing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Registered io_uring buffer memory per shard, bytes.
    #[serde(default = "defaults::io_memory")]
    pub io_memory: usize,
    /// io_uring ring depth.
    #[serde(default = "defaults::ring_depth")]
    pub ring_depth: usize,
    /// Messages a shard's inbox holds before senders see it as full.
    #[serde(default = "defaults::mesh_capacity")]
    pub mesh_capacity: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            io_memory: defaults::io_memory(),
            ring_depth: defaults::ring_depth(),
            mesh_capacity: defaults::mesh_capacity(),
        }
    }
}

/// What an endpoint does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Join `?room=` rooms; broadcast every received message to them.
    Rooms,
    /// Send every received message back.
    Echo,
}

/// One configured WebSocket endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// URL path, e.g. `/ws/chat`.
    pub path: String,
    /// Behaviour.
    pub kind: EndpointKind,
}

/// WebSocket settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Bytes read per recv().
    #[serde(default = "defaults::read_buffer_size")]
    pub read_buffer_size: usize,
    /// Bytes gathered from the outbound queue into one send().
    #[serde(default = "defaults::write_buffer_size")]
    pub write_buffer_size: usize,
    /// Offer permessage-deflate.
    #[serde(default = "defaults::yes")]
    pub enable_compression: bool,
    /// Largest message, bytes (1009 beyond).
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: usize,
    /// Largest frame payload, bytes (1009 beyond).
    #[serde(default = "defaults::max_message_size")]
    pub max_frame_size: usize,
    /// Outbound queue cap per connection, bytes.
    #[serde(default = "defaults::outbound_queue_bytes")]
    pub outbound_queue_bytes: usize,
    /// Built-in endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            read_buffer_size: defaults::read_buffer_size(),
            write_buffer_size: defaults::write_buffer_size(),
            enable_compression: true,
            max_message_size: defaults::max_message_size(),
            max_frame_size: defaults::max_message_size(),
            outbound_queue_bytes: defaults::outbound_queue_bytes(),
            endpoints: Vec::new(),
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for queues to drain and clients to close, ms.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: defaults::drain_timeout_ms(),
        }
    }
}

mod defaults {
    use std::net::SocketAddr;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn io_memory() -> usize {
        512 * 1024
    }
    pub fn ring_depth() -> usize {
        128
    }
    pub fn mesh_capacity() -> usize {
        65536
    }
    pub fn read_buffer_size() -> usize {
        16 * 1024
    }
    pub fn write_buffer_size() -> usize {
        64 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_message_size() -> usize {
        1 << 20
    }
    pub fn outbound_queue_bytes() -> usize {
        4 << 20
    }
    pub fn drain_timeout_ms() -> u64 {
        5000
    }
}

impl Default for Config {
    /// The embedded `config.yaml`.
    fn default() -> Self {
        Self::from_yaml(DEFAULT_YAML, "config.yaml (embedded)")
            .expect("the embedded config.yaml is valid")
    }
}

impl Config {
    /// Parse and validate YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Read, parse and validate a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The shard count this configuration resolves to on this machine.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            Shards::Auto => corecast_shards::pool::auto_shards(),
            Shards::Count(n) => n,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let ws = &self.websocket;
        let positive = [
            ("websocket.read_buffer_size", ws.read_buffer_size),
            ("websocket.write_buffer_size", ws.write_buffer_size),
            ("websocket.max_message_size", ws.max_message_size),
            ("websocket.max_frame_size", ws.max_frame_size),
            ("websocket.outbound_queue_bytes", ws.outbound_queue_bytes),
            ("runtime.ring_depth", self.runtime.ring_depth),
            ("runtime.mesh_capacity", self.runtime.mesh_capacity),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if ws.read_buffer_size < 1024 {
            return Err("websocket.read_buffer_size must be at least 1024".into());
        }
        for (i, ep) in ws.endpoints.iter().enumerate() {
            if !ep.path.starts_with('/') {
                return Err(format!(
                    "websocket.endpoints[{i}].path must start with '/', got {:?}",
                    ep.path
                ));
            }
            if ws.endpoints[..i].iter().any(|e| e.path == ep.path) {
                return Err(format!(
                    "websocket.endpoints[{i}].path {:?} is listed twice",
                    ep.path
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::default();
        assert_eq!(c.websocket.endpoints.len(), 2);
        assert_eq!(c.shards, Shards::Auto);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::from_yaml(
            "listen: 127.0.0.1:1\nwebsocket:\n  bogus_key: 1\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(e.0.contains("bogus_key"), "{e}");
        assert!(e.0.contains("line 3"), "{e}");
    }

    #[test]
    fn mistyped_value_is_rejected() {
        let e = Config::from_yaml("shards: lots\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("auto"), "{e}");
        let e = Config::from_yaml("websocket:\n  max_message_size: big\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("max_message_size"), "{e}");
    }

    #[test]
    fn zero_sizes_are_rejected_by_name() {
        let e = Config::from_yaml("websocket:\n  write_buffer_size: 0\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("websocket.write_buffer_size"), "{e}");
    }
}
