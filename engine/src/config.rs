//! Configuration: `config.yaml`, strictly parsed (unknown keys and wrong types are
//! errors naming the key and line), with the embedded default as the base.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub(crate) mod auth;
mod cluster;
mod tls;
pub use auth::{Algorithm, AuthConfig, RoomRule};
pub use cluster::{valid_node_id, Broker, ClusterConfig};
pub use tls::{TlsConfig, TlsVersion};

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
    pub listen: SocketAddr,
    /// Shard count (`auto` = one per available core).
    pub shards: Shards,
    /// io_uring and mesh sizing.
    pub runtime: RuntimeConfig,
    /// WebSocket settings and endpoints.
    pub websocket: WebSocketConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Per-room history kept for resume.
    pub history: HistoryConfig,
    /// Server-Sent Events.
    pub sse: SseConfig,
    /// The HTTP publish API.
    pub api: ApiConfig,
    /// WebTransport over HTTP/3 (QUIC on UDP).
    pub webtransport: WebTransportConfig,
    /// Rooms whose members are announced to each other.
    pub presence: PresenceConfig,
    /// JWT verification for endpoints with `auth: true` (and for applications'
    /// `JwtMiddleware::from_config`); see docs/AUTH.md.
    pub auth: Option<AuthConfig>,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Logs and traces (read by [`crate::logging::init`]).
    pub log: LogConfig,
    /// Connection and request-head limits (docs/SECURITY.md ("Limits")).
    pub limits: LimitsConfig,
    /// TLS listener for `wss://` and `https://` (absent: none).
    pub tls: Option<TlsConfig>,
    /// What happens to members that read slower than their rooms publish.
    pub slow_consumers: SlowConsumersConfig,
    /// Rooms shared with other nodes through a broker (absent: this node alone).
    pub cluster: Option<ClusterConfig>,
}

/// Connection and request-head limits for the TCP listener (WebSocket, SSE, HTTP).
/// Every refusal is answered (431/400/503) and counted; see docs/SECURITY.md ("Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers), bytes; 431 beyond it.
    pub max_request_head_bytes: usize,
    /// Most header lines in a request head; 431 beyond it.
    pub max_headers: usize,
    /// A connection that has not sent its complete request head this long after
    /// being accepted is dropped (slowloris).
    pub handshake_timeout: ConfigDuration,
    /// TCP connections one shard holds at once: open WebSocket/SSE connections plus
    /// those still sending their request head. More get 503 with `Retry-After`.
    pub max_connections_per_shard: usize,
    /// TCP connections one source IP address may hold at once across all shards
    /// (503 with `Retry-After` beyond it); 0: no per-address limit.
    pub max_connections_per_ip: usize,
}

impl Default for LimitsConfig {
    /// The `limits:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().limits
    }
}

/// What a connection over its inbound rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// Drop the message and send an error frame
    /// `{"type":"error","error":"rate_limited",...}`; the connection stays open.
    #[default]
    Error,
    /// Close the connection with 1008 `rate limit`.
    Close,
}

/// A per-connection inbound rate limit on WebSocket data messages (token buckets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Data messages per second a connection may send (0: no message limit).
    #[serde(default)]
    pub messages_per_second: u32,
    /// Payload bytes per second a connection may send (0: no byte limit).
    #[serde(default)]
    pub bytes_per_second: u64,
    /// How much may be sent at once: each bucket holds `rate x burst`.
    #[serde(default = "defaults::burst")]
    pub burst: ConfigDuration,
    /// `error` (drop the message, send an error frame) or `close` (1008).
    #[serde(default)]
    pub action: RateLimitAction,
}

/// Whether a request's `Origin` passes an allow-list: exact match or `"*"`; an empty
/// list allows any, and a request without `Origin` (not a browser page) is allowed.
/// WebSocket, SSE and WebTransport all use this one rule.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        Some(o) if !allowed.is_empty() => allowed.iter().any(|a| a == "*" || a == o),
        _ => true,
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message, fields.
    #[default]
    Pretty,
    /// One JSON object per line (fields at the top level, with the current span).
    Json,
}

/// Logs (to stderr) and, with the `otlp` cargo feature, span export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive string, e.g. `info` or
    /// `info,corecast::conn=debug`. `RUST_LOG`, when set, replaces it.
    pub level: String,
    /// OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); used only
    /// by builds with the `otlp` feature (others warn at start and ignore it).
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    /// The `log:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().log
    }
}

/// Prometheus metrics (`GET /metrics`, OpenMetrics text format).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    pub enabled: bool,
    /// URL path of the metrics (GET only).
    pub path: String,
    /// A separate address to serve metrics on (e.g. `127.0.0.1:9100`), from its own
    /// thread; when set, the main listener does not serve them. `None`: the main
    /// listener serves `path`.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    /// The `metrics:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().metrics
    }
}

/// Presence: member lists and join/leave events for matching rooms.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// Rules by room pattern; the first match wins. No match: no presence.
    pub rooms: Vec<PresenceRule>,
}

/// Presence for rooms whose name matches `pattern`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRule {
    /// Room name glob (`*` matches any run of characters).
    pub pattern: String,
    /// Metadata keys shown in member lists and events (others stay private).
    #[serde(default)]
    pub meta: Vec<String>,
}

impl PresenceConfig {
    /// The rule for `room`, if it has presence.
    pub fn rule_for(&self, room: &str) -> Option<&PresenceRule> {
        self.rooms
            .iter()
            .find(|r| pattern_matches(&r.pattern, room))
    }
}

/// WebTransport over HTTP/3.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebTransportConfig {
    /// Serve WebTransport at all.
    pub enabled: bool,
    /// UDP address; `None` = the TCP `listen` address (same port number).
    pub listen: Option<SocketAddr>,
    /// Certificate chain PEM path, or `auto`: a self-signed ECDSA P-256 certificate
    /// made at start, valid 14 days (dev mode; its SHA-256 is logged).
    pub cert: String,
    /// Private key PEM path (with a certificate path).
    pub key: String,
    /// Total validity of a `cert: auto` certificate (backdating included), from
    /// 90s to 14d (the browsers' limit for `serverCertificateHashes`).
    pub cert_validity: ConfigDuration,
    /// A `cert: auto` certificate is renewed when less than this much of its
    /// validity remains: the next one is published then, and installed for new
    /// connections when half of this remains. At least 2s and less than
    /// `cert_validity` minus 60s (the backdating).
    pub cert_renew_before: ConfigDuration,
    /// Allowed `Origin` values (exact match); empty allows any.
    pub allowed_origins: Vec<String>,
    /// Sessions one QUIC connection may hold at once.
    pub max_sessions_per_connection: usize,
    /// QUIC connections one shard holds at once; more are closed right after their
    /// handshake with H3_EXCESSIVE_LOAD.
    pub max_connections_per_shard: usize,
    /// QUIC idle timeout.
    pub idle_timeout: ConfigDuration,
    /// Validate client addresses with a QUIC Retry (HMAC-authenticated token) before
    /// creating any connection state.
    pub retry: bool,
    /// Built-in endpoints (`rooms` or `echo`).
    pub endpoints: Vec<EndpointConfig>,
}

impl Default for WebTransportConfig {
    /// The `webtransport:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().webtransport
    }
}

impl WebTransportConfig {
    /// Whether `origin` may open a session (a request without one is allowed: it
    /// is not a browser page).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        origin_allowed(&self.allowed_origins, origin)
    }
}

/// A duration in config: a number of seconds, or a string with a unit
/// (`"500ms"`, `"15s"`, `"5m"`, `"1h"`, `"2d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// A config value written as a plain number or as a string with a unit: what the
/// number means (`from_number`), how a string is read (`parse`), and what to say
/// when it is neither.
struct NumberOrUnit<T> {
    expecting: &'static str,
    from_number: fn(u64) -> Option<T>,
    parse: fn(&str) -> Option<T>,
}

impl<T> Visitor<'_> for NumberOrUnit<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        (self.from_number)(n).ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(n), &self))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        u64::try_from(n)
            .ok()
            .and_then(self.from_number)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(n), &self))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.parse)(s).ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrUnit {
            expecting: "a duration: seconds as a number, or a string like 500ms, 15s, 5m, 1h, 2d",
            from_number: |n| Some(ConfigDuration(Duration::from_secs(n))),
            parse: |s| parse_duration(s).map(ConfigDuration),
        })
    }
}

/// A size in config: a number of bytes, or a string with a unit (`"512KiB"`,
/// `"4MiB"`, `"1GiB"`; `KB`/`MB`/`GB` are decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigBytes(pub usize);

impl<'de> Deserialize<'de> for ConfigBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrUnit {
            expecting: "a size: bytes as a number, or a string like 512KiB, 4MiB, 1GiB",
            from_number: |n| usize::try_from(n).ok().map(ConfigBytes),
            parse: |s| parse_bytes(s).map(ConfigBytes),
        })
    }
}

fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let unit: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

/// Per-room history kept by the room's owner shard for resume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per room (0: none; resume then always reports a gap).
    pub max_messages: usize,
    /// Oldest message kept.
    pub max_age: ConfigDuration,
    /// Bytes kept per room (payloads plus a fixed per-message overhead); a message
    /// heavier than this is not kept, and resuming from before it reports a gap.
    pub max_bytes: ConfigBytes,
    /// Bytes of history the whole server keeps (split evenly over the shards,
    /// which each own a share of the rooms); beyond it the oldest history is
    /// evicted first, counted in `corecast_history_evicted_messages_total`.
    pub max_total_bytes: ConfigBytes,
    /// Rooms holding history in the whole server (split over the shards like
    /// `max_total_bytes`); beyond it the room holding the oldest message loses
    /// its history.
    pub max_rooms: usize,
    /// Overrides by room-name pattern (`*` matches any run of characters); the first
    /// matching pattern wins.
    pub rooms: Vec<HistoryOverride>,
}

impl Default for HistoryConfig {
    /// The `history:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().history
    }
}

/// History limits for rooms whose name matches `pattern`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryOverride {
    /// Room-name pattern, e.g. `ticker-*`.
    pub pattern: String,
    /// Messages kept (default: the global value).
    pub max_messages: Option<usize>,
    /// Oldest message kept (default: the global value).
    pub max_age: Option<ConfigDuration>,
    /// Bytes kept (default: the global value).
    pub max_bytes: Option<ConfigBytes>,
}

impl HistoryConfig {
    /// The limits that apply to `room`.
    pub fn limits_for(&self, room: &str) -> corecast_shards::HistoryLimits {
        let over = self
            .rooms
            .iter()
            .find(|o| pattern_matches(&o.pattern, room));
        corecast_shards::HistoryLimits {
            max_messages: over
                .and_then(|o| o.max_messages)
                .unwrap_or(self.max_messages),
            max_age: over.and_then(|o| o.max_age).unwrap_or(self.max_age).0,
            max_bytes: over.and_then(|o| o.max_bytes).unwrap_or(self.max_bytes).0,
        }
    }

    /// What one of `shards` owner shards may keep in total.
    pub fn budget_per_shard(&self, shards: usize) -> corecast_shards::HistoryBudget {
        let shards = shards.max(1);
        corecast_shards::HistoryBudget {
            max_bytes: self.max_total_bytes.0 / shards,
            max_rooms: self.max_rooms.div_ceil(shards),
        }
    }
}

/// A room's slow-consumer policy: what a member's full outbound queue does with the
/// room's next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowPolicy {
    /// Close the connection (WebSocket 1008; an SSE stream just ends).
    #[default]
    Disconnect,
    /// Drop the oldest queued messages of droppable rooms not yet being written.
    DropOldest,
    /// Keep one pending message per room: a newer one replaces it.
    KeepLatest,
}

impl SlowPolicy {
    /// The queue's form of this policy.
    pub fn overflow(self) -> corecast_shards::Overflow {
        match self {
            SlowPolicy::Disconnect => corecast_shards::Overflow::Disconnect,
            SlowPolicy::DropOldest => corecast_shards::Overflow::DropOldest,
            SlowPolicy::KeepLatest => corecast_shards::Overflow::KeepLatest,
        }
    }
}

/// Slow consumers: per-room-pattern policies and the write-stall deadline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumersConfig {
    /// The policy of rooms no pattern matches.
    pub policy: SlowPolicy,
    /// A connection with queued bytes whose socket accepts none for this long is
    /// closed (1008), whatever its rooms' policy. `0s` disables.
    pub write_stall_timeout: ConfigDuration,
    /// Policies by room-name pattern (`*` matches any run of characters); the first
    /// match wins.
    pub rooms: Vec<SlowConsumerRule>,
}

impl Default for SlowConsumersConfig {
    /// The `slow_consumers:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().slow_consumers
    }
}

/// The slow-consumer policy of rooms whose name matches `pattern`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumerRule {
    /// Room-name pattern, e.g. `ticker-*`.
    pub pattern: String,
    /// The policy for matching rooms.
    pub policy: SlowPolicy,
}

impl SlowConsumersConfig {
    /// The policy of `room` (first matching pattern, else the default).
    pub fn policy_for(&self, room: &str) -> SlowPolicy {
        self.rooms
            .iter()
            .find(|r| pattern_matches(&r.pattern, room))
            .map_or(self.policy, |r| r.policy)
    }

    fn validate(&self) -> Result<(), String> {
        let stall = self.write_stall_timeout.0;
        if !stall.is_zero() && stall < Duration::from_secs(1) {
            return Err(
                "slow_consumers.write_stall_timeout must be 0s (off) or at least 1s (it is checked once a second)"
                    .into(),
            );
        }
        for (i, r) in self.rooms.iter().enumerate() {
            if r.pattern.is_empty() {
                return Err(format!(
                    "slow_consumers.rooms[{i}].pattern must not be empty"
                ));
            }
            if self.rooms[..i].iter().any(|o| o.pattern == r.pattern) {
                return Err(format!(
                    "slow_consumers.rooms[{i}].pattern {:?} is listed twice (the first match wins, so this rule would never apply)",
                    r.pattern
                ));
            }
        }
        Ok(())
    }
}

/// Every `SECTION.endpoints[i].path` starts with '/' and appears once.
fn check_endpoint_paths(section: &str, endpoints: &[EndpointConfig]) -> Result<(), String> {
    for (i, ep) in endpoints.iter().enumerate() {
        if !ep.path.starts_with('/') {
            return Err(format!(
                "{section}.endpoints[{i}].path must start with '/', got {:?}",
                ep.path
            ));
        }
        if endpoints[..i].iter().any(|e| e.path == ep.path) {
            return Err(format!(
                "{section}.endpoints[{i}].path {:?} is listed twice",
                ep.path
            ));
        }
    }
    Ok(())
}

/// Glob match with `*` only.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// One Server-Sent Events endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseEndpointConfig {
    /// URL path, e.g. `/sse`; streams join `?room=` rooms (repeatable).
    pub path: String,
    /// Require a valid JWT (the `auth:` section) before the stream starts.
    #[serde(default)]
    pub auth: bool,
}

/// Server-Sent Events settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// A comment line is sent this often so proxies and clients keep the stream open.
    pub keep_alive_interval: ConfigDuration,
    /// Reconnect delay suggested to clients (`retry:` field) at stream start, ms
    /// (0: don't send one).
    pub retry_ms: u32,
    /// Allowed `Origin` values (exact match, `"*"` for any); empty allows any.
    /// Others get 403; allowed ones are reflected in `Access-Control-Allow-Origin`.
    pub allowed_origins: Vec<String>,
    /// Built-in room-stream endpoints.
    pub endpoints: Vec<SseEndpointConfig>,
}

impl Default for SseConfig {
    /// The `sse:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().sse
    }
}

/// The HTTP publish API (`POST /api/rooms/{room}/publish`, `GET /api/rooms/{room}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The key clients present as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    /// Empty: the API is disabled (404). `env:NAME` reads it from variable NAME.
    pub key: String,
}

impl ApiConfig {
    /// The effective key (`env:NAME` resolved), or `None` when the API is disabled.
    pub fn resolved_key(&self) -> Option<String> {
        let key = match self.key.strip_prefix("env:") {
            Some(var) => std::env::var(var).unwrap_or_default(),
            None => self.key.clone(),
        };
        (!key.is_empty()).then_some(key)
    }
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
    pub io_memory: usize,
    /// io_uring ring depth.
    pub ring_depth: usize,
    /// Messages a shard's inbox holds before senders see it as full.
    pub mesh_capacity: usize,
    /// Messages a shard holds, per destination shard, while that shard's inbox is
    /// full; they are sent in order as it frees up. Past this, publishes to rooms
    /// that shard owns are refused and deliveries to it are lost (`mesh_overflows`).
    pub mesh_outbox: usize,
    /// Hold room deliveries up to this long before writing, so more frames share
    /// each send(): less CPU per delivery at a fixed rate, more latency. `auto`
    /// (the default) holds for `flush_delay_max` only while the shard is saturated
    /// and the hold batches; 0 writes as soon as frames are queued.
    pub flush_delay: FlushDelaySetting,
    /// The hold `flush_delay: auto` uses while it holds.
    pub flush_delay_max: ConfigDuration,
    /// How io_uring hands network completions to a shard (see [`TaskRunMode`]).
    pub io_uring_task_run: TaskRunMode,
    /// How a connection waits for incoming bytes (see [`ReadPollMode`]).
    pub io_uring_read_poll: ReadPollMode,
}

/// `runtime.flush_delay` as written: `auto` or a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDelaySetting {
    /// Decide from the shard's load (see [`FlushDelay::Auto`]).
    Auto,
    /// Always this long (0: never hold).
    Fixed(ConfigDuration),
}

impl<'de> Deserialize<'de> for FlushDelaySetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrUnit {
            expecting: "`auto`, or a duration: seconds as a number, or a string like 2ms",
            from_number: |n| {
                Some(FlushDelaySetting::Fixed(ConfigDuration(
                    Duration::from_secs(n),
                )))
            },
            parse: |s| {
                if s.trim() == "auto" {
                    Some(FlushDelaySetting::Auto)
                } else {
                    parse_duration(s).map(|d| FlushDelaySetting::Fixed(ConfigDuration(d)))
                }
            },
        })
    }
}

/// How long a shard holds room deliveries before writing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDelay {
    /// Always this long (zero: write as soon as frames are queued).
    Fixed(Duration),
    /// Zero while the shard has CPU to spare; `max` while it is saturated and
    /// holding puts several frames in each write (engine `net::shard::flush`).
    Auto {
        /// The hold while holding.
        max: Duration,
    },
}

impl RuntimeConfig {
    /// `flush_delay` and `flush_delay_max` together.
    pub fn flush_delay(&self) -> FlushDelay {
        match self.flush_delay {
            FlushDelaySetting::Auto => FlushDelay::Auto {
                max: self.flush_delay_max.0,
            },
            FlushDelaySetting::Fixed(d) => FlushDelay::Fixed(d.0),
        }
    }
}

/// `runtime.io_uring_task_run`: how the kernel delivers a shard's network
/// completions, which mostly happen on another CPU (the peer's, on loopback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskRunMode {
    /// Stock io_uring: each completion interrupts the shard's core (an IPI).
    Interrupt,
    /// `IORING_SETUP_COOP_TASKRUN` (Linux 6.0): no IPI; completions are posted
    /// when the shard next enters the kernel, which it does for every send.
    Cooperative,
    /// `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1): no IPI; completions are posted
    /// only when the shard asks for them.
    Deferred,
}

impl From<TaskRunMode> for corecast_shards::pool::TaskRun {
    fn from(m: TaskRunMode) -> Self {
        match m {
            TaskRunMode::Interrupt => Self::Interrupt,
            TaskRunMode::Cooperative => Self::Cooperative,
            TaskRunMode::Deferred => Self::Deferred,
        }
    }
}

/// `runtime.io_uring_read_poll`: how a shard learns that a connection has
/// bytes to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPollMode {
    /// One multishot poll (Linux 5.13) armed when the connection is accepted
    /// and kept for its life; each wake-up posts a completion.
    Multishot,
    /// A one-shot poll armed each time a read finds the socket empty (stock
    /// glommio).
    Oneshot,
}

impl Default for RuntimeConfig {
    /// The `runtime:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().runtime
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
    /// Require a valid JWT (the `auth:` section) before the upgrade; `?room=`
    /// joins are checked against the token's room rules (403).
    #[serde(default)]
    pub auth: bool,
}

/// WebSocket settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Bytes read per recv().
    pub read_buffer_size: usize,
    /// Bytes gathered from the outbound queue into one send().
    pub write_buffer_size: usize,
    /// Offer permessage-deflate.
    pub enable_compression: bool,
    /// Largest message, bytes (1009 beyond).
    pub max_message_size: usize,
    /// Largest frame payload, bytes (1009 beyond).
    pub max_frame_size: usize,
    /// Outbound queue cap per connection, bytes.
    pub outbound_queue_bytes: usize,
    /// A WebSocket connection silent this long is pinged; silent for twice as long
    /// (no pong, no data) it is dropped and its rooms and registry entry freed
    /// (half-open sockets, killed clients). `0s` disables.
    pub idle_timeout: ConfigDuration,
    /// Most frames one fragmented message may arrive in (1009 beyond). The bytes an
    /// incomplete message holds are bounded by `max_message_size`.
    pub max_fragments: usize,
    /// Pongs a connection may have queued and unwritten; pings beyond that are not
    /// answered until the client reads (RFC 6455 5.5.3 lets a pong answer only the
    /// latest ping), so a ping flood from a client that does not read costs bounded
    /// memory.
    pub max_pending_pongs: usize,
    /// Per-connection inbound rate limit; `null`: none.
    pub rate_limit: Option<RateLimitConfig>,
    /// Allowed `Origin` values (exact match, `"*"` for any); empty allows any.
    /// Others get 403 before the upgrade and before any handler runs.
    pub allowed_origins: Vec<String>,
    /// Built-in endpoints.
    pub endpoints: Vec<EndpointConfig>,
}

impl Default for WebSocketConfig {
    /// The `websocket:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().websocket
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for queues to drain and clients to close, ms.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    /// The `shutdown:` section of the embedded `config.yaml`.
    fn default() -> Self {
        Config::default().shutdown
    }
}

mod defaults {

    pub fn burst() -> super::ConfigDuration {
        super::ConfigDuration(std::time::Duration::from_secs(1))
    }
}

/// Merge `over` into `base`: mappings key by key, recursively; any other value
/// (scalar, list, null) replaces what `base` had. An empty document (null at the
/// top) changes nothing.
fn merge_over(base: &mut serde_yaml_ng::Value, over: serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_mapping() && v.is_mapping() => merge_over(slot, v),
                    Some(slot) => *slot = v,
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (b, o) => *b = o,
    }
}

impl Default for Config {
    /// The embedded `config.yaml` (parsed once per process).
    fn default() -> Self {
        static EMBEDDED: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
        EMBEDDED
            .get_or_init(|| {
                Self::from_yaml(DEFAULT_YAML, "config.yaml (embedded)")
                    .expect("the embedded config.yaml is valid")
            })
            .clone()
    }
}

impl Config {
    /// Parse YAML text, merge it over the embedded `config.yaml` (keys the text
    /// leaves out keep their defaults; a list given replaces the default list) and
    /// validate the result. `origin` names the text in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let merged = Self::effective_yaml(text, origin)?;
        let cfg: Config =
            serde_path_to_error::deserialize(merged).map_err(|e| Self::explain(text, origin, e))?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// The configuration `text` amounts to once merged over the embedded
    /// defaults, as YAML (`corecast check-config --print`). Values are shown as
    /// written (`env:NAME` references are not resolved); keys and types are not
    /// checked here ([`Config::from_yaml`] does).
    pub fn effective_yaml(text: &str, origin: &str) -> Result<serde_yaml_ng::Value, ConfigError> {
        let user: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        let mut merged: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(DEFAULT_YAML).expect("the embedded config.yaml is YAML");
        merge_over(&mut merged, user);
        Ok(merged)
    }

    /// Why the merged document did not deserialize, with the line in `text` where
    /// possible: the text alone is read again, and its first error is used unless
    /// it is only a key the text leaves to the defaults.
    fn explain(
        text: &str,
        origin: &str,
        merged: serde_path_to_error::Error<serde_yaml_ng::Error>,
    ) -> ConfigError {
        if let Err(e) = serde_yaml_ng::from_str::<Config>(text) {
            if !e.to_string().contains("missing field") {
                return ConfigError(format!("{origin}: {e}"));
            }
        }
        let path = merged.path().to_string();
        ConfigError(format!("{origin}: {path}: {}", merged.into_inner()))
    }

    /// The embedded defaults with no built-in endpoints (no WebSocket, SSE or
    /// WebTransport paths, WebTransport off): for an embedder that registers its
    /// own handlers only.
    pub fn bare() -> Self {
        let mut c = Self::default();
        c.websocket.endpoints.clear();
        c.sse.endpoints.clear();
        c.webtransport.endpoints.clear();
        c.webtransport.enabled = false;
        c
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
            ("runtime.mesh_outbox", self.runtime.mesh_outbox),
            ("websocket.max_fragments", ws.max_fragments),
            ("websocket.max_pending_pongs", ws.max_pending_pongs),
            ("history.max_bytes", self.history.max_bytes.0),
            ("history.max_total_bytes", self.history.max_total_bytes.0),
            ("history.max_rooms", self.history.max_rooms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if ws.read_buffer_size < 1024 {
            return Err("websocket.read_buffer_size must be at least 1024".into());
        }
        // A hold is a latency every room delivery may pay: keep it sub-second.
        let max_hold = Duration::from_secs(1);
        if let FlushDelaySetting::Fixed(d) = self.runtime.flush_delay {
            if d.0 > max_hold {
                return Err("runtime.flush_delay must be `auto` or at most 1s".into());
            }
        }
        if self.runtime.flush_delay_max.0.is_zero() || self.runtime.flush_delay_max.0 > max_hold {
            return Err("runtime.flush_delay_max must be between 1ms and 1s".into());
        }
        if self.sse.keep_alive_interval.0 < Duration::from_millis(10) {
            return Err("sse.keep_alive_interval must be at least 10ms".into());
        }
        for (i, ep) in self.sse.endpoints.iter().enumerate() {
            if !ep.path.starts_with('/') {
                return Err(format!(
                    "sse.endpoints[{i}].path must start with '/', got {:?}",
                    ep.path
                ));
            }
            if ws.endpoints.iter().any(|w| w.path == ep.path)
                || self.sse.endpoints[..i].iter().any(|e| e.path == ep.path)
            {
                return Err(format!(
                    "sse.endpoints[{i}].path {:?} is used twice",
                    ep.path
                ));
            }
        }
        check_endpoint_paths("websocket", &ws.endpoints)?;
        let wants_auth = [
            (
                "websocket",
                ws.endpoints.iter().map(|e| e.auth).collect::<Vec<_>>(),
            ),
            ("sse", self.sse.endpoints.iter().map(|e| e.auth).collect()),
            (
                "webtransport",
                self.webtransport.endpoints.iter().map(|e| e.auth).collect(),
            ),
        ];
        for (section, flags) in wants_auth {
            if let Some(i) = flags.iter().position(|a| *a) {
                if self.auth.is_none() {
                    return Err(format!(
                        "{section}.endpoints[{i}].auth is true but there is no auth: section"
                    ));
                }
            }
        }
        self.validate_metrics()?;
        self.validate_limits()?;
        self.slow_consumers.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(format!(
                "log.level {:?} is not a valid filter: {e}",
                self.log.level
            ));
        }
        if self
            .log
            .otlp_endpoint
            .as_deref()
            .is_some_and(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err("log.otlp_endpoint must be an http:// or https:// URL".into());
        }
        self.validate_webtransport()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        match &self.tls {
            Some(t) => t.validate(self.listen),
            None => Ok(()),
        }
    }

    fn validate_metrics(&self) -> Result<(), String> {
        let path = &self.metrics.path;
        if !path.starts_with('/') {
            return Err(format!("metrics.path must start with '/', got {path:?}"));
        }
        if path.contains('?') || path.contains(char::is_whitespace) {
            return Err(format!(
                "metrics.path must be a plain path (no query, no spaces), got {path:?}"
            ));
        }
        if !self.metrics.enabled || self.metrics.listen.is_some() {
            return Ok(());
        }
        let taken = path == "/stats"
            || path.starts_with("/api/")
            || self.websocket.endpoints.iter().any(|e| &e.path == path)
            || self.sse.endpoints.iter().any(|e| &e.path == path);
        if taken {
            return Err(format!(
                "metrics.path {path:?} is already served on the main listener"
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), String> {
        let l = &self.limits;
        if !(1024..=1 << 20).contains(&l.max_request_head_bytes) {
            return Err(format!(
                "limits.max_request_head_bytes must be from 1024 to 1048576, got {}",
                l.max_request_head_bytes
            ));
        }
        if !(8..=1024).contains(&l.max_headers) {
            return Err(format!(
                "limits.max_headers must be from 8 to 1024, got {}",
                l.max_headers
            ));
        }
        if l.handshake_timeout.0 < Duration::from_millis(100) {
            return Err("limits.handshake_timeout must be at least 100ms".into());
        }
        if l.max_connections_per_shard == 0 {
            return Err("limits.max_connections_per_shard must be greater than 0".into());
        }
        if self.websocket.max_pending_pongs > 1024 {
            return Err("websocket.max_pending_pongs must be at most 1024".into());
        }
        if let Some(r) = &self.websocket.rate_limit {
            if r.messages_per_second == 0 && r.bytes_per_second == 0 {
                return Err("websocket.rate_limit needs messages_per_second or bytes_per_second greater than 0 (or rate_limit: null)".into());
            }
            if r.burst.0 < Duration::from_millis(1) {
                return Err("websocket.rate_limit.burst must be at least 1ms".into());
            }
        }
        for (key, list) in [
            ("websocket.allowed_origins", &self.websocket.allowed_origins),
            ("sse.allowed_origins", &self.sse.allowed_origins),
            (
                "webtransport.allowed_origins",
                &self.webtransport.allowed_origins,
            ),
        ] {
            if let Some(o) = list.iter().find(|o| o.is_empty() || o.ends_with('/')) {
                return Err(format!(
                    "{key}: {o:?} is not an origin (scheme://host[:port], no trailing '/', or \"*\")"
                ));
            }
        }
        Ok(())
    }

    fn validate_webtransport(&self) -> Result<(), String> {
        let wt = &self.webtransport;
        if wt.max_connections_per_shard == 0 {
            return Err("webtransport.max_connections_per_shard must be greater than 0".into());
        }
        if wt.max_sessions_per_connection == 0 {
            return Err("webtransport.max_sessions_per_connection must be greater than 0".into());
        }
        if wt.idle_timeout.0 < Duration::from_millis(100) {
            return Err("webtransport.idle_timeout must be at least 100ms".into());
        }
        if wt.cert != "auto" && wt.key.is_empty() {
            return Err("webtransport.key is required when webtransport.cert is a file".into());
        }
        let (validity, renew) = (wt.cert_validity.0, wt.cert_renew_before.0);
        if validity < Duration::from_secs(90) || validity > crate::cert::MAX_VALIDITY {
            return Err(
                "webtransport.cert_validity must be between 90s and 14d (browsers refuse longer \
                 for serverCertificateHashes)"
                    .into(),
            );
        }
        // The certificate starts 60s in the past: a margin of the whole remaining
        // validity would renew again at once, forever.
        if renew < Duration::from_secs(2) || renew + Duration::from_secs(60) >= validity {
            return Err(
                "webtransport.cert_renew_before must be at least 2s and less than \
                 webtransport.cert_validity minus 60s"
                    .into(),
            );
        }
        check_endpoint_paths("webtransport", &wt.endpoints)
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
    fn cluster_section_is_optional_and_checked() {
        assert!(Config::default().cluster.is_none(), "standalone by default");
        let ok = Config::from_yaml(
            "cluster:\n  broker: redis\n  url: redis://127.0.0.1:6379/0\n  node_id: a-1\n",
            "t.yaml",
        )
        .unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!(
            (c.node_id().as_str(), c.key_prefix.as_str()),
            ("a-1", "corecast")
        );
        for (yaml, key) in [
            ("broker: kafka\n  url: redis://h:1", "broker"),
            ("broker: redis\n  url: http://h:1", "cluster.url"),
            (
                "broker: redis\n  url: redis://h:1\n  node_id: \"a b\"",
                "cluster.node_id",
            ),
            (
                "broker: redis\n  url: redis://h:1\n  heartbeat: 2s\n  node_timeout: 3s",
                "cluster.node_timeout",
            ),
            (
                "broker: redis\n  url: redis://h:1\n  bridge_capacity: 0",
                "cluster.bridge_capacity",
            ),
            (
                "broker: redis\n  url: env:CORECAST_TEST_UNSET_URL",
                "CORECAST_TEST_UNSET_URL",
            ),
            ("broker: redis", "url"),
        ] {
            let e = Config::from_yaml(&format!("cluster:\n  {yaml}\n"), "t.yaml").unwrap_err();
            assert!(e.0.contains(key), "{yaml}: {e}");
        }
        let generated = ClusterConfig { node_id: None, ..c }.node_id();
        assert!(valid_node_id(&generated), "{generated}");
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
    fn flush_delay_is_auto_or_a_bounded_duration() {
        let d = Config::default();
        assert_eq!(
            d.runtime.flush_delay(),
            FlushDelay::Auto {
                max: Duration::from_millis(8)
            }
        );
        assert_eq!(d.runtime.io_uring_task_run, TaskRunMode::Cooperative);
        assert_eq!(d.runtime.io_uring_read_poll, ReadPollMode::Multishot);
        let c = Config::from_yaml(
            "runtime:\n  flush_delay: 5ms\n  io_uring_task_run: deferred\n  io_uring_read_poll: oneshot\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(
            c.runtime.flush_delay(),
            FlushDelay::Fixed(Duration::from_millis(5))
        );
        assert_eq!(c.runtime.io_uring_task_run, TaskRunMode::Deferred);
        assert_eq!(c.runtime.io_uring_read_poll, ReadPollMode::Oneshot);
        for (yaml, needle) in [
            ("io_uring_read_poll: twice", "multishot"),
            ("flush_delay: soon", "auto"),
            ("flush_delay: 2s", "runtime.flush_delay"),
            ("flush_delay_max: 0ms", "runtime.flush_delay_max"),
            ("flush_delay_max: 5s", "runtime.flush_delay_max"),
            ("io_uring_task_run: sometimes", "cooperative"),
        ] {
            let e = Config::from_yaml(&format!("runtime:\n  {yaml}\n"), "t.yaml").unwrap_err();
            assert!(e.0.contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn history_sizes_take_units_and_are_split_over_shards() {
        let c = Config::from_yaml(
            "history:\n  max_bytes: 256KiB\n  max_total_bytes: 1GiB\n  max_rooms: 5\n  rooms:\n    - pattern: big-*\n      max_bytes: 8MB\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.history.limits_for("chat").max_bytes, 256 * 1024);
        assert_eq!(c.history.limits_for("big-1").max_bytes, 8_000_000);
        let b = c.history.budget_per_shard(4);
        assert_eq!((b.max_bytes, b.max_rooms), (256 << 20, 2));
        for (yaml, needle) in [
            ("history:\n  max_total_bytes: lots\n", "max_total_bytes"),
            ("history:\n  max_bytes: 4XB\n", "max_bytes"),
            (
                "history:\n  max_rooms: 0\n",
                "history.max_rooms must be greater than 0",
            ),
            (
                "history:\n  max_total_bytes: 0\n",
                "history.max_total_bytes must be",
            ),
        ] {
            let e = Config::from_yaml(yaml, "t.yaml").unwrap_err();
            assert!(e.0.contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn durations_take_units_and_patterns_pick_history_limits() {
        let c = Config::from_yaml(
            "history:\n  max_age: 5m\n  rooms:\n    - pattern: tick-*\n      max_messages: 2\n      max_age: 500ms\nsse:\n  keep_alive_interval: 2s\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.sse.keep_alive_interval.0, Duration::from_secs(2));
        let l = c.history.limits_for("tick-eurusd");
        assert_eq!((l.max_messages, l.max_age), (2, Duration::from_millis(500)));
        let l = c.history.limits_for("chat");
        assert_eq!(
            (l.max_messages, l.max_age),
            (1000, Duration::from_secs(300))
        );
        assert!(Config::from_yaml("sse:\n  keep_alive_interval: soon\n", "t").is_err());
        let c = Config::from_yaml("webtransport:\n  cert_renew_before: 2d\n", "t").unwrap();
        assert_eq!(
            c.webtransport.cert_renew_before.0,
            Duration::from_secs(2 * 86_400)
        );
    }

    #[test]
    fn glob_patterns_match_like_a_shell() {
        for (p, n, m) in [
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxc", false),
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(pattern_matches(p, n), m, "{p} ~ {n}");
        }
    }

    #[test]
    fn metrics_section_defaults_and_validation() {
        let c = Config::default();
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.path, "/metrics");
        assert_eq!(c.metrics.listen, None);
        let c = Config::from_yaml(
            "metrics:\n  path: /prom\n  listen: 127.0.0.1:9100\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.metrics.path, "/prom");
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
        let e = Config::from_yaml("metrics:\n  path: metrics\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("metrics.path must start with '/'"), "{e}");
        let e = Config::from_yaml("metrics:\n  path: /stats\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("already served"), "{e}");
        let e = Config::from_yaml("metrics:\n  bogus: 1\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
    }

    #[test]
    fn log_section_defaults_and_validation() {
        let c = Config::default();
        assert_eq!(c.log.format, LogFormat::Pretty);
        assert_eq!(c.log.level, "info");
        let c = Config::from_yaml(
            "log:\n  format: json\n  level: info,corecast::conn=debug\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(Config::from_yaml("log:\n  format: xml\n", "t.yaml").is_err());
        let e = Config::from_yaml("log:\n  level: \"info,[\"\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("log.level"), "{e}");
        let e = Config::from_yaml("log:\n  otlp_endpoint: localhost:4318\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("otlp_endpoint"), "{e}");
    }

    #[test]
    fn limits_section_defaults_and_validation() {
        let c = Config::default();
        assert_eq!(c.limits.max_request_head_bytes, 16384);
        assert_eq!(c.limits.max_headers, 64);
        assert_eq!(c.limits.handshake_timeout.0, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections_per_shard, 100_000);
        assert_eq!(c.limits.max_connections_per_ip, 0);
        assert_eq!(c.websocket.max_fragments, 65_536);
        assert_eq!(c.websocket.max_pending_pongs, 16);
        assert!(c.websocket.rate_limit.is_none());
        let c = Config::from_yaml(
            "websocket:\n  rate_limit:\n    messages_per_second: 5\n    action: close\n  allowed_origins: [\"https://a.example\"]\n",
            "t.yaml",
        )
        .unwrap();
        let r = c.websocket.rate_limit.unwrap();
        assert_eq!(
            (
                r.messages_per_second,
                r.bytes_per_second,
                r.burst.0,
                r.action
            ),
            (5, 0, Duration::from_secs(1), RateLimitAction::Close)
        );
        for (yaml, key) in [
            ("limits:\n  max_headers: 0\n", "limits.max_headers"),
            (
                "limits:\n  max_request_head_bytes: 10\n",
                "limits.max_request_head_bytes",
            ),
            (
                "limits:\n  handshake_timeout: 1ms\n",
                "limits.handshake_timeout",
            ),
            (
                "limits:\n  max_connections_per_shard: 0\n",
                "limits.max_connections_per_shard",
            ),
            (
                "websocket:\n  max_fragments: 0\n",
                "websocket.max_fragments",
            ),
            ("websocket:\n  rate_limit: {}\n", "websocket.rate_limit"),
            (
                "websocket:\n  rate_limit:\n    messages_per_second: 1\n    action: kick\n",
                "action",
            ),
            (
                "sse:\n  allowed_origins: [\"https://a.example/\"]\n",
                "sse.allowed_origins",
            ),
            ("limits:\n  bogus: 1\n", "bogus"),
            (
                "webtransport:\n  cert_validity: 15d\n",
                "webtransport.cert_validity",
            ),
            (
                "webtransport:\n  cert_validity: 1m\n",
                "webtransport.cert_validity",
            ),
            (
                "webtransport:\n  cert_renew_before: 14d\n",
                "webtransport.cert_renew_before",
            ),
            (
                "webtransport:\n  cert_validity: 2m\n  cert_renew_before: 1m\n",
                "webtransport.cert_renew_before",
            ),
            (
                "webtransport:\n  cert_renew_before: 1s\n",
                "webtransport.cert_renew_before",
            ),
        ] {
            let e = Config::from_yaml(yaml, "t.yaml").unwrap_err();
            assert!(e.0.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn one_origin_rule_for_every_transport() {
        let list = vec!["https://a.example".to_string()];
        assert!(origin_allowed(&list, Some("https://a.example")));
        assert!(!origin_allowed(&list, Some("https://a.example.evil")));
        assert!(!origin_allowed(&list, Some("http://a.example")));
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&[], Some("https://any.example")));
        assert!(origin_allowed(&["*".to_string()], Some("null")));
        let wt = WebTransportConfig {
            allowed_origins: list,
            ..WebTransportConfig::default()
        };
        assert!(!wt.origin_allowed(Some("https://b.example")));
    }

    #[test]
    fn slow_consumer_policies_by_pattern_and_validation() {
        let c = Config::default();
        assert_eq!(c.slow_consumers.policy_for("any"), SlowPolicy::Disconnect);
        assert_eq!(
            c.slow_consumers.write_stall_timeout.0,
            Duration::from_secs(30)
        );
        let c = Config::from_yaml(
            "slow_consumers:\n  write_stall_timeout: 5s\n  rooms:\n    - pattern: \"ticker-*\"\n      policy: keep_latest\n    - pattern: \"feed-*\"\n      policy: drop_oldest\n    - pattern: \"*\"\n      policy: disconnect\n",
            "t.yaml",
        )
        .unwrap();
        let s = &c.slow_consumers;
        assert_eq!(s.policy_for("ticker-eurusd"), SlowPolicy::KeepLatest);
        assert_eq!(s.policy_for("feed-1"), SlowPolicy::DropOldest);
        assert_eq!(s.policy_for("chat"), SlowPolicy::Disconnect);
        let e = Config::from_yaml("slow_consumers:\n  policy: drop_newest\n", "t").unwrap_err();
        assert!(
            e.0.contains("drop_newest") && e.0.contains("keep_latest"),
            "{e}"
        );
        let e =
            Config::from_yaml("slow_consumers:\n  write_stall_timeout: 10ms\n", "t").unwrap_err();
        assert!(e.0.contains("slow_consumers.write_stall_timeout"), "{e}");
        let e = Config::from_yaml(
            "slow_consumers:\n  rooms:\n    - pattern: \"\"\n      policy: keep_latest\n",
            "t",
        )
        .unwrap_err();
        assert!(e.0.contains("slow_consumers.rooms[0].pattern"), "{e}");
        let e = Config::from_yaml(
            "slow_consumers:\n  rooms:\n    - pattern: a\n      policy: keep_latest\n    - pattern: a\n      policy: drop_oldest\n",
            "t",
        )
        .unwrap_err();
        assert!(e.0.contains("slow_consumers.rooms[1].pattern"), "{e}");
        assert!(Config::from_yaml("slow_consumers:\n  rooms:\n    - pattern: a\n", "t").is_err());
        assert!(Config::from_yaml("slow_consumers:\n  write_stall_timeout: 0s\n", "t").is_ok());
    }

    #[test]
    fn zero_sizes_are_rejected_by_name() {
        let e = Config::from_yaml("websocket:\n  write_buffer_size: 0\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("websocket.write_buffer_size"), "{e}");
    }

    #[test]
    fn a_partial_file_keeps_every_default_it_leaves_out() {
        let c = Config::from_yaml(
            "listen: 127.0.0.1:9000\nwebsocket:\n  max_frame_size: 4096\n",
            "t",
        )
        .unwrap();
        let d = Config::default();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.websocket.max_frame_size, 4096);
        // Siblings of the override and whole sections keep the embedded values.
        assert_eq!(c.websocket.max_message_size, d.websocket.max_message_size);
        let paths = |c: &Config| -> Vec<String> {
            c.websocket
                .endpoints
                .iter()
                .map(|e| e.path.clone())
                .collect()
        };
        assert_eq!(paths(&c), paths(&d));
        assert!(!paths(&c).is_empty());
        assert_eq!(c.sse.endpoints.len(), d.sse.endpoints.len());
        assert_eq!(c.webtransport.enabled, d.webtransport.enabled);
        assert_eq!(format!("{:?}", c.history), format!("{:?}", d.history));
    }

    #[test]
    fn a_list_in_the_file_replaces_the_default_list() {
        let c = Config::from_yaml(
            "websocket:\n  endpoints: []\nsse:\n  endpoints:\n    - path: /events\n",
            "t",
        )
        .unwrap();
        assert!(c.websocket.endpoints.is_empty());
        assert_eq!(c.sse.endpoints.len(), 1);
        assert_eq!(c.sse.endpoints[0].path, "/events");
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        let c = Config::from_yaml("", "t").unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn the_effective_yaml_shows_overrides_and_defaults() {
        let v = Config::effective_yaml("shards: 3\n", "t").unwrap();
        assert_eq!(v["shards"], serde_yaml_ng::Value::from(3));
        assert_eq!(
            v["websocket"]["endpoints"][0]["path"],
            serde_yaml_ng::Value::from("/ws/chat")
        );
        // Errors carry the line of the text, not of the merged document.
        let e = Config::from_yaml("shards: 2\nwebsocket:\n  nope: 1\n", "t").unwrap_err();
        assert!(e.0.contains("nope") && e.0.contains("line 3"), "{e}");
    }

    #[test]
    fn bare_serves_no_built_in_endpoint() {
        let c = Config::bare();
        assert!(c.websocket.endpoints.is_empty() && c.sse.endpoints.is_empty());
        assert!(c.webtransport.endpoints.is_empty() && !c.webtransport.enabled);
        assert_eq!(
            c.history.max_messages,
            Config::default().history.max_messages
        );
    }
}
