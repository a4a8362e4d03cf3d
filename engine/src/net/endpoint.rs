//! The endpoint table and the state every shard shares ([`Shared`]): what the public
//! builder registers, in the form the accept path, the driver and the QUIC endpoint
//! read. Handler types are defined here, below the API that fills them in.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corecast_shards::MeshSender;

use super::handle::callbacks::WsCallbacks;
use super::handle::ws_task::WsConn;
#[cfg(feature = "webtransport")]
use super::handle::wt_session::WtSession;
use super::shard::ShardMsg;
#[cfg(feature = "webtransport")]
use super::wt_cert::WtCerts;
use crate::config::Config;
use crate::proto::ws::deflate::DeflateSettings;
use crate::stats::ShardStats;
use crate::vocab::connect::Admission;

/// The TLS listener's certificate and settings (`tls:`).
#[cfg(feature = "tls")]
pub(crate) use super::tls::TlsShared;
/// Built without TLS: there is never a TLS listener.
#[cfg(not(feature = "tls"))]
pub(crate) enum TlsShared {}

/// A boxed handler future (runs on the connection's shard; need not be `Send`).
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + 'static>>;

/// A WebSocket handler shared by every shard.
pub type WsHandler = Arc<dyn Fn(WsConn) -> HandlerFuture + Send + Sync>;

/// A WebTransport session handler shared by every shard.
#[cfg(feature = "webtransport")]
pub type WtHandler = Arc<dyn Fn(WtSession) -> HandlerFuture + Send + Sync>;

/// A plain HTTP response from an [`Engine::http_get`](crate::Engine::http_get) handler.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// 200 with `content_type` and `body`.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type: content_type.to_string(),
            body: body.into(),
        }
    }

    /// `status` with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8".to_string(),
            body: body.into().into_bytes(),
        }
    }

    /// 200 with a JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::ok("application/json", value.to_string())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let phrase = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Response",
        };
        crate::proto::http::response_with_type(
            self.status,
            phrase,
            &[("Cache-Control", "no-store")],
            &self.content_type,
            &self.body,
        )
    }
}

/// A plain HTTP GET handler.
pub type HttpHandler =
    Arc<dyn Fn(&crate::proto::http::Request) -> HttpResponse + Send + Sync + 'static>;

/// How an endpoint serves its connections.
#[derive(Clone)]
pub(crate) enum EndpointHandler {
    /// Callbacks run by the shard's driver (no task per connection).
    Callbacks(Arc<dyn WsCallbacks>),
    /// An async handler task per connection.
    Async(WsHandler),
}

/// Which protocol a path speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndpointTransport {
    /// WebSocket upgrade.
    WebSocket,
    /// Server-Sent Events stream.
    Sse,
}

/// A routed path.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) handler: EndpointHandler,
    pub(crate) protocols: Vec<String>,
    pub(crate) transport: EndpointTransport,
    /// A routed endpoint's `$connect` (middleware, then the hook), run before the
    /// upgrade.
    pub(crate) admission: Option<Arc<dyn Admission>>,
}

/// A WebTransport endpoint.
#[cfg(feature = "webtransport")]
#[derive(Clone)]
pub(crate) struct WtEndpoint {
    pub(crate) path: String,
    pub(crate) handler: WtHandler,
    /// A routed endpoint's `$connect`, run before the session is accepted.
    pub(crate) admission: Option<Arc<dyn Admission>>,
}

/// State every shard shares (read-only after start, apart from atomics).
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) deflate: DeflateSettings,
    pub(crate) endpoints: Vec<(String, Endpoint)>,
    pub(crate) senders: Vec<MeshSender<ShardMsg>>,
    pub(crate) stats: Vec<Arc<ShardStats>>,
    pub(crate) shutdown: AtomicBool,
    /// Shards that have finished booting (accept loops spawned); `/readyz` says
    /// `starting` until it reaches the shard count.
    pub(crate) booted: std::sync::atomic::AtomicUsize,
    /// Shards still running (the future [`crate::EngineHandle::stopped`] waits on).
    pub(crate) stopped: Stopped,
    /// Epochs of room records derive from this (the start time), so they change
    /// across restarts.
    pub(crate) epoch_base: u64,
    /// The publish API key, if the API is enabled.
    pub(crate) api_key: Option<String>,
    /// WebTransport endpoints by path.
    #[cfg(feature = "webtransport")]
    pub(crate) wt_endpoints: Vec<WtEndpoint>,
    /// Certificate and key when WebTransport is on.
    #[cfg(feature = "webtransport")]
    pub(crate) wt: Option<WtCerts>,
    /// Plain HTTP GET routes (pages, small JSON answers).
    pub(crate) http_routes: Vec<(String, HttpHandler)>,
    /// Routed endpoints, for the per-route metrics.
    pub(crate) routers: Vec<crate::metrics::RoutedEndpoint>,
    /// Live connections per source address, when `limits.max_connections_per_ip`
    /// is set.
    pub(crate) ip_table: Option<Arc<crate::net::limits::IpTable>>,
    /// The TLS listener's certificate and settings (`tls:`).
    pub(crate) tls: Option<Arc<TlsShared>>,
    /// Who sequences rooms: the owner shard, or Redis through the cluster bridge.
    pub(crate) sequencer: super::sequencer::Sequencer,
}

#[cfg(test)]
impl Shared {
    /// The state a shard reads, for the in-memory harness: `config`'s limits and
    /// history, no endpoints, no listeners, sequenced by the owner shard.
    pub(crate) fn for_harness(config: Config, senders: Vec<MeshSender<ShardMsg>>) -> Self {
        let shards = senders.len();
        Self {
            deflate: DeflateSettings::default(),
            endpoints: Vec::new(),
            senders,
            stats: (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            shutdown: AtomicBool::new(false),
            booted: std::sync::atomic::AtomicUsize::new(0),
            stopped: Stopped::new(shards),
            epoch_base: 1,
            api_key: None,
            #[cfg(feature = "webtransport")]
            wt_endpoints: Vec::new(),
            #[cfg(feature = "webtransport")]
            wt: None,
            http_routes: Vec::new(),
            routers: Vec::new(),
            ip_table: None,
            tls: None,
            sequencer: super::sequencer::Sequencer::Local,
            config,
        }
    }
}

impl Shared {
    /// The body of `GET /stats`: shard counters, plus `cluster` in cluster mode.
    pub(crate) fn stats_json(&self) -> String {
        let mut json = crate::stats::to_json(&self.stats);
        if let Some(cluster) = self.sequencer.stats_json() {
            json.pop();
            json.push_str(",\"cluster\":");
            json.push_str(&cluster);
            json.push('}');
        }
        json
    }

    /// The cluster bridge link, when `cluster:` is set (shutdown, the bridge).
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(&self) -> Option<&crate::cluster::ClusterLink> {
        self.sequencer.cluster()
    }

    /// The endpoint at `path` and its index.
    pub(crate) fn endpoint(&self, path: &str) -> Option<(usize, &Endpoint)> {
        self.endpoints
            .iter()
            .enumerate()
            .find(|(_, (p, _))| p == path)
            .map(|(i, (_, e))| (i, e))
    }

    /// SHA-256 of the WebTransport certificate new connections get, when
    /// WebTransport is on.
    pub(crate) fn wt_cert_sha256(&self) -> Option<[u8; 32]> {
        #[cfg(feature = "webtransport")]
        return self.wt.as_ref().map(|w| w.current_sha256());
        #[cfg(not(feature = "webtransport"))]
        None
    }

    /// SHA-256 of the WebTransport certificates a client should trust: the
    /// current one, then the next one while a renewal is pending.
    pub(crate) fn wt_cert_hashes(&self) -> Option<Vec<[u8; 32]>> {
        #[cfg(feature = "webtransport")]
        return self.wt.as_ref().map(|w| w.hashes());
        #[cfg(not(feature = "webtransport"))]
        None
    }

    /// The WebTransport endpoint at `path`.
    #[cfg(feature = "webtransport")]
    pub(crate) fn wt_endpoint(&self, path: &str) -> Option<&WtEndpoint> {
        self.wt_endpoints.iter().find(|e| e.path == path)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The path the main listener serves metrics at, if it does.
    pub(crate) fn main_metrics_path(&self) -> Option<&str> {
        let m = &self.config.metrics;
        (m.enabled && m.listen.is_none()).then_some(m.path.as_str())
    }
}

/// Counts shards still running and wakes whoever awaits the last one (from any
/// thread, any executor: a tokio task can await it).
pub(crate) struct Stopped {
    running: std::sync::atomic::AtomicUsize,
    waiters: std::sync::Mutex<Vec<std::task::Waker>>,
}

impl Stopped {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            running: std::sync::atomic::AtomicUsize::new(shards),
            waiters: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A shard's inbox loop has returned.
    pub(crate) fn shard_done(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut w) = self.waiters.lock() {
                for waker in w.drain(..) {
                    waker.wake();
                }
            }
        }
    }

    /// Ready once every shard is done.
    pub(crate) fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.running.load(Ordering::Acquire) == 0 {
            return std::task::Poll::Ready(());
        }
        if let Ok(mut w) = self.waiters.lock() {
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
        }
        // Checked again under the registration: the last shard may have just left.
        if self.running.load(Ordering::Acquire) == 0 {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}
