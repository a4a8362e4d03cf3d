//! Prometheus metrics: the per-shard [`ShardStats`] encoded by `prometheus-client`
//! in the OpenMetrics text format, served at `metrics.path` on the main listener
//! or, with `metrics.listen`, by a small blocking HTTP/1.1 server on its own
//! thread (off the shards, so a scrape never costs a shard anything but the
//! relaxed loads).
//!
//! Nothing is registered on the hot path: the counters stay plain per-shard
//! atomics, and one [`Collector`] reads them when a scrape asks.
//!
//! Every series carries a `shard` label; connection gauges also a `transport` label.
//! The list of metrics, their types and labels is in docs/METRICS.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stats::{ShardStats, LATENCY_BUCKETS_NS};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where a metric lives in a shard's stats.
type Field = fn(&ShardStats) -> &AtomicU64;

/// Whether a family counts up or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (its samples end in `_total`).
    Counter,
    /// A current value.
    Gauge,
}

/// One counter or gauge read from every shard.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    field: Field,
}

const fn counter(name: &'static str, help: &'static str, field: Field) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        help,
        field,
    }
}

const fn gauge(name: &'static str, help: &'static str, field: Field) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        field,
    }
}

/// The plain per-shard families, in output order.
const FAMILIES: &[Family] = &[
    counter(
        "corecast_accepted_total",
        "TCP connections accepted.",
        |s| &s.accepted,
    ),
    counter(
        "corecast_accept_failures_total",
        "Failed accept() calls (usually EMFILE: the open-file limit is reached).",
        |s| &s.accept_failures,
    ),
    counter(
        "corecast_messages_received_total",
        "Data messages received from WebSocket clients.",
        |s| &s.messages_in,
    ),
    counter(
        "corecast_bytes_received_total",
        "Bytes read from TCP connections after their request head.",
        |s| &s.bytes_in,
    ),
    counter(
        "corecast_messages_sent_total",
        "Frames (WebSocket frames, SSE events) completely written to TCP connections.",
        |s| &s.frames_written,
    ),
    counter(
        "corecast_bytes_sent_total",
        "Bytes written to TCP connections.",
        |s| &s.bytes_written,
    ),
    counter(
        "corecast_writes_total",
        "send() calls on TCP connections that wrote something (frames per write = messages_sent / writes).",
        |s| &s.writes,
    ),
    counter(
        "corecast_broadcasts_total",
        "Room messages sequenced by this shard as the room's owner.",
        |s| &s.broadcasts,
    ),
    counter(
        "corecast_deliveries_total",
        "Room messages queued to local members (fan-out deliveries).",
        |s| &s.deliveries,
    ),
    counter(
        "corecast_slow_consumer_disconnects_total",
        "Connections closed because their outbound queue hit its cap.",
        |s| &s.slow_consumers,
    ),
    counter(
        "corecast_slow_consumer_dropped_total",
        "Room messages dropped from members' full outbound queues (slow_consumers policy drop_oldest or keep_latest).",
        |s| &s.slow_dropped,
    ),
    counter(
        "corecast_slow_consumer_conflated_total",
        "Queued room messages replaced by a newer one of the same room (slow_consumers policy keep_latest).",
        |s| &s.slow_conflated,
    ),
    counter(
        "corecast_write_stall_closes_total",
        "Connections closed because their socket accepted nothing for slow_consumers.write_stall_timeout while bytes were queued.",
        |s| &s.write_stall_closes,
    ),
    counter(
        "corecast_mesh_overflows_total",
        "Cross-shard messages lost or refused: the target shard's inbox and this shard's outbox for it were both full.",
        |s| &s.mesh_overflows,
    ),
    counter(
        "corecast_mesh_deferred_total",
        "Cross-shard messages that found the target inbox full and waited in order in the sender's outbox.",
        |s| &s.mesh_deferred,
    ),
    gauge(
        "corecast_mesh_outbox_messages",
        "Cross-shard messages waiting in this shard's outboxes for a full inbox.",
        |s| &s.mesh_outbox_len,
    ),
    counter(
        "corecast_handler_panics_total",
        "Handlers that panicked (their connection or session was closed).",
        |s| &s.handler_panics,
    ),
    counter(
        "corecast_handler_errors_total",
        "Errors reported by handlers.",
        |s| &s.handler_errors,
    ),
    counter(
        "corecast_tls_handshakes_total",
        "TLS handshakes completed on the tls.listen listener.",
        |s| &s.tls_handshakes,
    ),
    counter(
        "corecast_tls_handshake_failures_total",
        "TLS handshakes that failed (bad ClientHello, no shared version or cipher, plain HTTP on the TLS port) or missed the handshake deadline.",
        |s| &s.tls_handshake_failures,
    ),
    counter(
        "corecast_auth_failures_total",
        "Requests refused because authentication failed.",
        |s| &s.auth_failures,
    ),
    gauge(
        "corecast_outbound_queued_bytes",
        "Bytes queued on TCP connections and not yet written.",
        |s| &s.outbound_queued_bytes,
    ),
    gauge(
        "corecast_flush_hold_microseconds",
        "How long room deliveries are held before writing now (runtime.flush_delay; auto adapts it to load).",
        |s| &s.flush_hold_us,
    ),
    counter(
        "corecast_flush_holds_total",
        "Times runtime.flush_delay: auto started holding room deliveries because the shard was saturated.",
        |s| &s.flush_holds,
    ),
    gauge(
        "corecast_io_uring_task_run",
        "How io_uring hands the shard its completions: 0 interrupt (IPI), 1 cooperative, 2 deferred.",
        |s| &s.io_uring_task_run,
    ),
    gauge(
        "corecast_history_bytes",
        "Accounted bytes of room history kept by this shard as owner (payloads plus per-message and per-room overhead).",
        |s| &s.history_bytes,
    ),
    gauge(
        "corecast_history_rooms",
        "Rooms whose history this shard keeps.",
        |s| &s.history_rooms,
    ),
    gauge(
        "corecast_history_messages",
        "Messages kept in room history by this shard.",
        |s| &s.history_messages,
    ),
    counter(
        "corecast_history_evicted_messages_total",
        "History messages evicted, oldest first, to stay within history.max_total_bytes or history.max_rooms.",
        |s| &s.history_evicted_messages,
    ),
    counter(
        "corecast_history_evicted_bytes_total",
        "Accounted bytes of history evicted for the server-wide bounds.",
        |s| &s.history_evicted_bytes,
    ),
    counter(
        "corecast_history_evicted_rooms_total",
        "Rooms whose whole history was dropped for history.max_rooms.",
        |s| &s.history_evicted_rooms,
    ),
    counter(
        "corecast_history_not_kept_total",
        "Messages not kept in history: heavier than history.max_bytes.",
        |s| &s.history_not_kept,
    ),
    gauge(
        "corecast_handshaking_connections",
        "TCP connections accepted whose request head is still being read.",
        |s| &s.handshaking,
    ),
    counter(
        "corecast_handshake_timeouts_total",
        "Connections dropped for not sending their request head within limits.handshake_timeout.",
        |s| &s.handshake_timeouts,
    ),
    counter(
        "corecast_bad_requests_total",
        "Request heads refused as malformed (400) or over a limits.* size (431).",
        |s| &s.bad_requests,
    ),
    counter(
        "corecast_shard_limit_rejections_total",
        "Connections refused with 503 at limits.max_connections_per_shard.",
        |s| &s.shard_limit_rejected,
    ),
    counter(
        "corecast_ip_limit_rejections_total",
        "Connections refused with 503 at limits.max_connections_per_ip.",
        |s| &s.ip_limit_rejected,
    ),
    counter(
        "corecast_origin_rejections_total",
        "WebSocket and SSE requests refused with 403 for their Origin.",
        |s| &s.origin_rejected,
    ),
    counter(
        "corecast_rate_limited_total",
        "Inbound WebSocket messages over websocket.rate_limit (dropped, or the connection closed 1008).",
        |s| &s.rate_limited,
    ),
    counter(
        "corecast_pongs_skipped_total",
        "Pings not answered because websocket.max_pending_pongs pongs were still unwritten.",
        |s| &s.pongs_skipped,
    ),
    counter(
        "corecast_message_too_big_closes_total",
        "WebSocket connections closed with 1009 (frame, message, inflated size or fragment limit).",
        |s| &s.too_big_closes,
    ),
    gauge(
        "corecast_quic_connections",
        "Live QUIC connections.",
        |s| &s.wt_connections,
    ),
    counter(
        "corecast_wt_rejected_total",
        "WebTransport session requests refused (4xx/5xx).",
        |s| &s.wt_rejected,
    ),
    counter(
        "corecast_quic_retries_total",
        "QUIC Retry packets sent (address validation).",
        |s| &s.wt_retries,
    ),
    counter(
        "corecast_wt_datagrams_dropped_total",
        "WebTransport datagrams not sent (too large, queue full) or not taken (handler inbox full).",
        |s| &s.wt_datagrams_dropped,
    ),
    counter(
        "corecast_wt_datagrams_replaced_total",
        "Queued room datagrams replaced by a newer one of the same room.",
        |s| &s.wt_datagrams_replaced,
    ),
    counter(
        "corecast_quic_packets_sent_total",
        "UDP packets sent.",
        |s| &s.wt_packets_out,
    ),
    counter(
        "corecast_quic_send_calls_total",
        "sendmmsg() calls.",
        |s| &s.wt_send_calls,
    ),
];

/// The connection gauge's transports and where each is counted.
const TRANSPORTS: [(&str, Field); 3] = [
    ("websocket", |s| &s.ws_connections),
    ("sse", |s| &s.sse_connections),
    ("webtransport", |s| &s.wt_sessions),
];

/// Every shard's statistics (and the routers' and cluster's families) in the
/// OpenMetrics text format.
pub fn render(
    shards: &[Arc<ShardStats>],
    routers: &[RoutedEndpoint],
    cluster: Option<&ClusterView>,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        shards: shards.to_vec(),
        routers: routers.to_vec(),
        cluster: cluster.cloned(),
    }));
    let mut out = String::with_capacity(4096 + shards.len() * 4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// What one scrape reads: the counter tables, encoded when the registry asks.
struct Snapshot {
    shards: Vec<Arc<ShardStats>>,
    routers: Vec<RoutedEndpoint>,
    cluster: Option<ClusterView>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("shards", &self.shards.len())
            .field("routers", &self.routers.len())
            .finish()
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let shards = &self.shards;
        let m = enc.encode_descriptor(
            "corecast_shards",
            "Shards (one pinned executor each).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(shards.len() as i64).encode(m)?;
        encode_family(
            &mut enc,
            "corecast_connections",
            "Live connections (WebTransport: sessions).",
            Kind::Gauge,
            TRANSPORTS.iter().flat_map(|(transport, field)| {
                shards.iter().enumerate().map(move |(i, s)| {
                    (
                        vec![
                            ("transport", transport.to_string()),
                            ("shard", i.to_string()),
                        ],
                        field(s).load(Relaxed),
                    )
                })
            }),
        )?;
        for f in FAMILIES {
            encode_family(
                &mut enc,
                f.name,
                f.help,
                f.kind,
                shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (vec![("shard", i.to_string())], (f.field)(s).load(Relaxed))),
            )?;
        }
        encode_latency(&mut enc, shards)?;
        encode_routes(&mut enc, &self.routers)?;
        if let Some(families) = &self.cluster {
            for g in families.gather() {
                encode_family(&mut enc, g.name, g.help, g.kind, g.samples.into_iter())?;
            }
        }
        Ok(())
    }
}

/// Labels of one sample: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Encode one counter or gauge family. A counter's name is given with its
/// `_total` suffix (the sample name); OpenMetrics names the family without it.
fn encode_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: Kind,
    samples: impl Iterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let (family, ty) = match kind {
        Kind::Counter => (
            name.strip_suffix("_total").unwrap_or(name),
            MetricType::Counter,
        ),
        Kind::Gauge => (name, MetricType::Gauge),
    };
    let mut m = enc.encode_descriptor(family, help, None, ty)?;
    for (labels, v) in samples {
        let sample = m.encode_family(&labels)?;
        match kind {
            Kind::Counter => ConstCounter::new(v).encode(sample)?,
            Kind::Gauge => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

/// A route's counters summed over shards (`/metrics`:
/// `corecast_route_messages_total`, `corecast_route_errors_total`,
/// `corecast_route_handler_seconds_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteTotals {
    /// Messages routed to it.
    pub calls: u64,
    /// Answered with an error frame (`RouteError::client`, middleware refusals).
    pub client_errors: u64,
    /// Internal errors (connection closed 1011).
    pub internal_errors: u64,
    /// Panics (connection closed 1011).
    pub panics: u64,
    /// Time spent in middleware and the handler.
    pub handler_seconds: f64,
}

/// A table of per-route counters (the router implements it): the exposition reads
/// it without knowing the router.
pub trait RouteCounters: Send + Sync {
    /// Every route's totals, in the order they are shown.
    fn route_totals(&self) -> Vec<(String, RouteTotals)>;
}

/// One family a subsystem gathered from its own counter table.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// The sample name (counters end in `_total`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Labelled values.
    pub samples: Vec<(Labels, u64)>,
}

/// Metric families a subsystem gathers from its own counter table (the cluster
/// bridge's `corecast_cluster_*`), encoded after the shard families.
pub trait Families: Send + Sync {
    /// The families, with their current values.
    fn gather(&self) -> Vec<Gathered>;
}

/// The cluster families, when the node runs with `cluster:`.
pub type ClusterView = Arc<dyn Families>;

/// A routed endpoint's path and its per-route counters.
pub type RoutedEndpoint = (String, Arc<dyn RouteCounters>);

/// A label value with `\`, `"` and newlines escaped. `prometheus-client` writes
/// label values as given (prometheus/client_rust#151), so values that come from
/// configuration or code (endpoint paths, route names, node ids) pass through here.
pub(crate) fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per-route counters of routed endpoints (labels come from the declared routes,
/// never from client input: unknown actions count under `$unrouted`).
fn encode_routes(enc: &mut DescriptorEncoder<'_>, routers: &[RoutedEndpoint]) -> std::fmt::Result {
    if routers.is_empty() {
        return Ok(());
    }
    let totals: Vec<(String, Vec<(String, RouteTotals)>)> = routers
        .iter()
        .map(|(path, r)| {
            let routes = r.route_totals();
            let routes = routes.into_iter().map(|(n, t)| (escape_label(&n), t));
            (escape_label(path), routes.collect())
        })
        .collect();
    let each = || {
        totals
            .iter()
            .flat_map(|(ep, routes)| routes.iter().map(move |(route, t)| (ep, route, t)))
    };
    encode_family(
        enc,
        "corecast_route_messages_total",
        "Messages routed, by endpoint and route ($default: the default handler; $unrouted: unknown actions and messages that are not routable).",
        Kind::Counter,
        each().map(|(ep, route, t)| {
            (vec![("endpoint", ep.to_string()), ("route", route.clone())], t.calls)
        }),
    )?;
    encode_family(
        enc,
        "corecast_route_errors_total",
        "Route outcomes other than success: client (error frame), internal and panic (connection closed 1011).",
        Kind::Counter,
        each().flat_map(|(ep, route, t)| {
            [
                ("client", t.client_errors),
                ("internal", t.internal_errors),
                ("panic", t.panics),
            ]
            .into_iter()
            .map(move |(kind, n)| {
                (
                    vec![
                        ("endpoint", ep.to_string()),
                        ("route", route.clone()),
                        ("kind", kind.to_string()),
                    ],
                    n,
                )
            })
        }),
    )?;
    let mut m = enc.encode_descriptor(
        "corecast_route_handler_seconds",
        "Time spent in middleware and handlers, by route.",
        None,
        MetricType::Counter,
    )?;
    for (ep, route, t) in each() {
        let labels: Labels = vec![("endpoint", ep.to_string()), ("route", route.clone())];
        ConstCounter::new(t.handler_seconds).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_latency(enc: &mut DescriptorEncoder<'_>, shards: &[Arc<ShardStats>]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(
        "corecast_publish_to_write_seconds",
        "Time from a room message's sequencing by its owner shard to the write that emptied a member's queue with it (WebSocket, SSE).",
        None,
        MetricType::Histogram,
    )?;
    for (i, s) in shards.iter().enumerate() {
        let h = &s.publish_to_write;
        // Read each bucket once: the buckets and the count agree even while the
        // shard keeps observing. The encoder makes the counts cumulative.
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_NS
            .iter()
            .enumerate()
            .map(|(b, le)| (*le as f64 / 1e9, h.buckets[b].load(Relaxed)))
            .collect();
        buckets.push((f64::MAX, h.buckets[LATENCY_BUCKETS_NS.len()].load(Relaxed)));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum_ns.load(Relaxed) as f64 / 1e9;
        let labels: Labels = vec![("shard", i.to_string())];
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// The HTTP response for a request to the metrics path: 200 with the exposition
/// for GET, 405 for any other method.
pub(crate) fn http_response(
    method: &str,
    shards: &[Arc<ShardStats>],
    routers: &[RoutedEndpoint],
    cluster: Option<&ClusterView>,
) -> Vec<u8> {
    use crate::proto::http;
    if method == "GET" {
        http::response_with_type(
            200,
            "OK",
            &[],
            CONTENT_TYPE,
            render(shards, routers, cluster).as_bytes(),
        )
    } else {
        http::response(
            405,
            "Method Not Allowed",
            &[("Allow", "GET")],
            "metrics are read with GET",
        )
    }
}

/// The separate metrics listener (`metrics.listen`): one thread, one request per
/// connection, blocking I/O with timeouts.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Bind `addr` now (so errors surface at start) and serve `path` from a thread.
    pub(crate) fn start(
        addr: SocketAddr,
        path: String,
        shards: Vec<Arc<ShardStats>>,
        routers: Vec<RoutedEndpoint>,
        cluster: Option<ClusterView>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corecast-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Relaxed) {
                        break;
                    }
                    match stream {
                        Ok(s) => serve_one(s, &path, &shards, &routers, cluster.as_ref()),
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics listener: accept failed");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when configured with 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop the thread: set the flag and wake its blocking accept with a connection.
    pub(crate) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Relaxed);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read one request head (bounded: 8 KiB, 5 s) and answer it.
fn serve_one(
    mut stream: TcpStream,
    path: &str,
    shards: &[Arc<ShardStats>],
    routers: &[RoutedEndpoint],
    cluster: Option<&ClusterView>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(&buf[..end]);
        }
        if buf.len() > 8192 {
            break None;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let resp = match head.and_then(request_line) {
        None => crate::proto::http::response(400, "Bad Request", &[], "bad request"),
        Some((method, target)) => {
            let target_path = target.split('?').next().unwrap_or_default();
            if target_path == path {
                http_response(method, shards, routers, cluster)
            } else {
                crate::proto::http::response(404, "Not Found", &[], "try the metrics path")
            }
        }
    };
    let _ = stream.write_all(&resp);
}

/// Method and target of an HTTP/1.x request head.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    (version.starts_with("HTTP/1.") && parts.next().is_none()).then_some((method, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let s = Arc::new(ShardStats::default());
        for ns in [10_000, 60_000, 60_000, 3_000_000, 2_000_000_000] {
            s.publish_to_write.observe_ns(ns);
        }
        let text = render(&[s.clone(), Arc::new(ShardStats::default())], &[], None);
        let line = |prefix: &str| -> u64 {
            let l = text
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
            l.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let b = "corecast_publish_to_write_seconds_bucket{";
        assert_eq!(line(&format!("{b}le=\"0.00005\",shard=\"0\"}}")), 1);
        assert_eq!(line(&format!("{b}le=\"0.0001\",shard=\"0\"}}")), 3);
        assert_eq!(line(&format!("{b}le=\"0.005\",shard=\"0\"}}")), 4);
        assert_eq!(line(&format!("{b}le=\"1.0\",shard=\"0\"}}")), 4);
        assert_eq!(line(&format!("{b}le=\"+Inf\",shard=\"0\"}}")), 5);
        assert_eq!(
            line("corecast_publish_to_write_seconds_count{shard=\"0\"}"),
            5
        );
        assert_eq!(
            line("corecast_publish_to_write_seconds_count{shard=\"1\"}"),
            0
        );
        assert!(text.contains("corecast_publish_to_write_seconds_sum{shard=\"0\"} 2.00313\n"));
    }

    #[test]
    fn every_family_has_help_and_type_and_one_series_per_shard() {
        let shards = [
            Arc::new(ShardStats::default()),
            Arc::new(ShardStats::default()),
        ];
        ShardStats::add(&shards[1].ws_connections, 3);
        let text = render(&shards, &[], None);
        assert!(text.contains("corecast_connections{transport=\"websocket\",shard=\"1\"} 3\n"));
        for f in FAMILIES {
            let (family, kind) = match f.kind {
                Kind::Counter => (f.name.strip_suffix("_total").unwrap(), "counter"),
                Kind::Gauge => (f.name, "gauge"),
            };
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family}"
            );
            for i in 0..2 {
                assert!(text.contains(&format!("{}{{shard=\"{i}\"}} 0\n", f.name)));
            }
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(
            request_line(b"GET /metrics?x=1 HTTP/1.1"),
            Some(("GET", "/metrics?x=1"))
        );
        assert_eq!(request_line(b"GET /metrics"), None);
        assert_eq!(request_line(b"GET /metrics HTTP/1.1 extra"), None);
        assert_eq!(request_line(b"\xff\xfe HTTP/1.1"), None);
    }

    #[test]
    fn other_methods_get_405() {
        let resp = http_response("POST", &[], &[], None);
        assert!(resp.starts_with(b"HTTP/1.1 405"));
        let resp = http_response("GET", &[], &[], None);
        assert!(resp.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn routes_are_listed_with_escaped_labels() {
        let mut r = crate::app::router::Router::new();
        r.route("chat.message", |_ctx, _b: serde_json::Value| Ok(()));
        let routers: Vec<RoutedEndpoint> = vec![("/ws/\"app\"".to_string(), Arc::new(r))];
        let text = render(&[Arc::new(ShardStats::default())], &routers, None);
        assert!(text.contains(
            "corecast_route_messages_total{endpoint=\"/ws/\\\"app\\\"\",route=\"chat.message\"} 0"
        ), "{text}");
        assert!(
            text.contains("route=\"$unrouted\",kind=\"client\"} 0"),
            "{text}"
        );
        assert!(text.contains("# TYPE corecast_route_handler_seconds counter"));
    }
}
