//! [`Engine`]: build from a [`Config`], register handlers, start the shards.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use corecast_shards::{owner_of, Mesh, MeshSender, PoolConfig, ShardPool};

use super::builtin;
use super::callbacks::WsCallbacks;
use super::conn::WsConn;
use super::message::Message;
use super::router::Router;
use super::sse::SseStream;
use super::wt::WtSession;
use crate::config::{Config, EndpointKind};
use crate::net::accept::accept_loop;
use crate::net::quic::WtShared;
use crate::net::shard::{BroadcastError, Shard, ShardMsg};
use crate::proto::ws::deflate::DeflateSettings;
use crate::stats::ShardStats;

/// A boxed handler future (runs on the connection's shard; need not be `Send`).
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + 'static>>;

/// A WebSocket handler shared by every shard.
pub type WsHandler = Arc<dyn Fn(WsConn) -> HandlerFuture + Send + Sync>;

/// A WebTransport session handler shared by every shard.
pub type WtHandler = Arc<dyn Fn(WtSession) -> HandlerFuture + Send + Sync>;

/// A plain HTTP response from an [`Engine::http_get`] handler.
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
    /// A routed endpoint's router: its `$connect` runs before the upgrade.
    pub(crate) router: Option<Arc<Router>>,
}

/// A WebTransport endpoint.
#[derive(Clone)]
pub(crate) struct WtEndpoint {
    pub(crate) path: String,
    pub(crate) handler: WtHandler,
    /// A routed endpoint's router: its `$connect` runs before the session is
    /// accepted.
    pub(crate) router: Option<Arc<Router>>,
}

/// State every shard shares (read-only after start, apart from atomics).
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) deflate: DeflateSettings,
    pub(crate) endpoints: Vec<(String, Endpoint)>,
    pub(crate) senders: Vec<MeshSender<ShardMsg>>,
    pub(crate) stats: Vec<Arc<ShardStats>>,
    shutdown: AtomicBool,
    /// Epochs of room records derive from this (the start time), so they change
    /// across restarts.
    pub(crate) epoch_base: u64,
    /// The publish API key, if the API is enabled.
    pub(crate) api_key: Option<String>,
    /// WebTransport endpoints by path.
    pub(crate) wt_endpoints: Vec<WtEndpoint>,
    /// Certificate and key when WebTransport is on.
    pub(crate) wt: Option<WtShared>,
    /// Plain HTTP GET routes (pages, small JSON answers).
    pub(crate) http_routes: Vec<(String, HttpHandler)>,
    /// Routed endpoints, for the per-route metrics.
    pub(crate) routers: Vec<crate::metrics::RoutedEndpoint>,
    /// Live connections per source address, when `limits.max_connections_per_ip`
    /// is set.
    pub(crate) ip_table: Option<Arc<crate::net::limits::IpTable>>,
    /// The TLS listener's certificate and settings (`tls:`).
    pub(crate) tls: Option<Arc<crate::net::tls::TlsShared>>,
    /// The cluster bridge, when `cluster:` is set.
    pub(crate) cluster: Option<crate::cluster::ClusterLink>,
}

impl Shared {
    /// The body of `GET /stats`: shard counters, plus `cluster` in cluster mode.
    pub(crate) fn stats_json(&self) -> String {
        let mut json = crate::stats::to_json(&self.stats);
        if let Some(link) = &self.cluster {
            json.pop();
            json.push_str(",\"cluster\":");
            json.push_str(&crate::cluster::stats_json(&link.node_id, &link.stats));
            json.push('}');
        }
        json
    }

    /// The endpoint at `path` and its index.
    pub(crate) fn endpoint(&self, path: &str) -> Option<(usize, &Endpoint)> {
        self.endpoints
            .iter()
            .enumerate()
            .find(|(_, (p, _))| p == path)
            .map(|(i, (_, e))| (i, e))
    }

    /// The WebTransport endpoint at `path`.
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

/// Why the engine could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// An engine being configured: register handlers, then [`Engine::start`].
pub struct Engine {
    config: Config,
    endpoints: Vec<(String, Endpoint)>,
    wt_endpoints: Vec<WtEndpoint>,
    http_routes: Vec<(String, HttpHandler)>,
    /// A configuration problem found while registering (reported by `start`).
    setup_error: Option<String>,
}

impl Engine {
    /// An engine with the endpoints listed in `config.websocket.endpoints`.
    pub fn new(config: Config) -> Self {
        let mut engine = Self {
            config,
            endpoints: Vec::new(),
            wt_endpoints: Vec::new(),
            http_routes: Vec::new(),
            setup_error: None,
        };
        // Built-in endpoints with `auth: true` get a router with only the JWT
        // middleware: it decides before the upgrade; their behaviour is unchanged.
        let auth_router = match engine.config.auth.as_ref() {
            Some(a) => match crate::auth::JwtMiddleware::from_config(a) {
                Ok(m) => {
                    let mut r = Router::new();
                    r.middleware(m);
                    Some(Arc::new(r))
                }
                Err(e) => {
                    engine.setup_error = Some(format!("auth: {e}"));
                    None
                }
            },
            None => None,
        };
        let guard = |auth: bool| if auth { auth_router.clone() } else { None };
        for ep in engine.config.webtransport.endpoints.clone() {
            let handler: WtHandler = match ep.kind {
                EndpointKind::Rooms => {
                    Arc::new(|s| Box::pin(super::wt_builtin::rooms(s)) as HandlerFuture)
                }
                EndpointKind::Echo => {
                    Arc::new(|s| Box::pin(super::wt_builtin::echo(s)) as HandlerFuture)
                }
            };
            engine.add_wt_endpoint(&ep.path, handler, guard(ep.auth));
        }
        for ep in engine.config.websocket.endpoints.clone() {
            match ep.kind {
                EndpointKind::Rooms => engine.websocket_callbacks(&ep.path, builtin::Rooms),
                EndpointKind::Echo => engine.websocket_callbacks(&ep.path, builtin::Echo),
            };
            engine.set_endpoint_router(&ep.path, guard(ep.auth));
        }
        for ep in engine.config.sse.endpoints.clone() {
            engine.add_endpoint(
                &ep.path,
                &[],
                EndpointHandler::Callbacks(Arc::new(builtin::Rooms)),
                EndpointTransport::Sse,
            );
            engine.set_endpoint_router(&ep.path, guard(ep.auth));
        }
        engine
    }

    fn set_endpoint_router(&mut self, path: &str, router: Option<Arc<Router>>) {
        if let Some((_, ep)) = self.endpoints.iter_mut().find(|(p, _)| p == path) {
            ep.router = router;
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serve WebSocket connections on `path` with callbacks (replacing any endpoint
    /// already there). The leanest way to serve: no task per connection.
    pub fn websocket_callbacks<C: WsCallbacks>(&mut self, path: &str, callbacks: C) -> &mut Self {
        self.add_endpoint(
            path,
            &[],
            EndpointHandler::Callbacks(Arc::new(callbacks)),
            EndpointTransport::WebSocket,
        )
    }

    /// As [`Engine::websocket_callbacks`], offering `protocols`.
    pub fn websocket_callbacks_with_protocols<C: WsCallbacks>(
        &mut self,
        path: &str,
        protocols: &[&str],
        callbacks: C,
    ) -> &mut Self {
        self.add_endpoint(
            path,
            protocols,
            EndpointHandler::Callbacks(Arc::new(callbacks)),
            EndpointTransport::WebSocket,
        )
    }

    fn add_endpoint(
        &mut self,
        path: &str,
        protocols: &[&str],
        handler: EndpointHandler,
        transport: EndpointTransport,
    ) -> &mut Self {
        let endpoint = Endpoint {
            handler,
            protocols: protocols.iter().map(|p| p.to_string()).collect(),
            transport,
            router: None,
        };
        self.endpoints.retain(|(p, _)| p != path);
        self.endpoints.push((path.to_string(), endpoint));
        self
    }

    /// Serve WebSocket connections on `path` with an async `handler` (replacing any
    /// endpoint already there). The handler runs on the connection's shard, one task
    /// per connection, and reads with [`WsConn::recv`].
    pub fn websocket<F, Fut>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Fn(WsConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.websocket_with_protocols(path, &[], handler)
    }

    /// As [`Engine::websocket`], offering `protocols` (first match with the
    /// client's `Sec-WebSocket-Protocol` list wins).
    pub fn websocket_with_protocols<F, Fut>(
        &mut self,
        path: &str,
        protocols: &[&str],
        handler: F,
    ) -> &mut Self
    where
        F: Fn(WsConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let handler: WsHandler = Arc::new(move |c| Box::pin(handler(c)) as HandlerFuture);
        self.add_endpoint(
            path,
            protocols,
            EndpointHandler::Async(handler),
            EndpointTransport::WebSocket,
        )
    }

    /// Serve Server-Sent Events streams on `path` with an async `handler` (one task
    /// per stream). The handler gets an [`SseStream`]: `send_event`, rooms, the
    /// request's resume cursor, and [`SseStream::closed`], which resolves when the
    /// client goes away.
    pub fn sse<F, Fut>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Fn(SseStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let handler: WsHandler =
            Arc::new(move |c: WsConn| Box::pin(handler(SseStream::from_conn(c))) as HandlerFuture);
        self.add_endpoint(
            path,
            &[],
            EndpointHandler::Async(handler),
            EndpointTransport::Sse,
        )
    }

    /// Serve Server-Sent Events streams on `path` with callbacks (no task per
    /// stream); `on_open` typically joins rooms (see `builtin::Rooms`).
    pub fn sse_callbacks<C: WsCallbacks>(&mut self, path: &str, callbacks: C) -> &mut Self {
        self.add_endpoint(
            path,
            &[],
            EndpointHandler::Callbacks(Arc::new(callbacks)),
            EndpointTransport::Sse,
        )
    }

    /// Serve WebTransport sessions on `path` with an async `handler` (one task per
    /// session, on the session's shard; replaces any handler already there). Needs
    /// `webtransport.enabled`. The handler gets a [`WtSession`]: incoming streams
    /// and datagrams ([`WtSession::next`]), `open_uni`/`open_bi`, `send_datagram`,
    /// rooms, query, `close`.
    pub fn webtransport<F, Fut>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Fn(WtSession) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let handler: WtHandler = Arc::new(move |s| Box::pin(handler(s)) as HandlerFuture);
        self.add_wt_endpoint(path, handler, None)
    }

    fn add_wt_endpoint(
        &mut self,
        path: &str,
        handler: WtHandler,
        router: Option<Arc<Router>>,
    ) -> &mut Self {
        self.wt_endpoints.retain(|e| e.path != path);
        self.wt_endpoints.push(WtEndpoint {
            path: path.to_string(),
            handler,
            router,
        });
        self
    }

    /// Answer plain `GET` (and `HEAD`) requests for `path` with `handler` — a page,
    /// a script, a small JSON answer. Runs on the shard: keep it quick.
    pub fn http_get<F>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Fn(&crate::proto::http::Request) -> HttpResponse + Send + Sync + 'static,
    {
        self.http_routes.retain(|(p, _)| p != path);
        self.http_routes.push((path.to_string(), Arc::new(handler)));
        self
    }

    /// The WebTransport endpoint paths registered so far.
    pub fn webtransport_paths(&self) -> Vec<String> {
        self.wt_endpoints.iter().map(|e| e.path.clone()).collect()
    }

    /// Serve WebSocket connections on `path` with `router`: JSON messages are routed
    /// by action, `$connect` runs before the upgrade (see [`Router`]). The same
    /// router (an `Arc`) can also serve a WebTransport path.
    pub fn websocket_router(&mut self, path: &str, router: impl Into<Arc<Router>>) -> &mut Self {
        let router = router.into();
        let callbacks = super::router::RoutedWs {
            router: router.clone(),
        };
        self.add_endpoint(
            path,
            &[],
            EndpointHandler::Callbacks(Arc::new(callbacks)),
            EndpointTransport::WebSocket,
        );
        self.set_endpoint_router(path, Some(router));
        self
    }

    /// Serve WebTransport sessions on `path` with `router`: each text record the
    /// client sends (on any stream, or as a datagram) is routed; replies arrive on
    /// the session's delivery stream as records with an empty room name.
    pub fn webtransport_router(&mut self, path: &str, router: impl Into<Arc<Router>>) -> &mut Self {
        let router = router.into();
        let r = router.clone();
        let handler: WtHandler =
            Arc::new(move |s| Box::pin(super::router::serve_wt(s, r.clone())) as HandlerFuture);
        self.add_wt_endpoint(path, handler, Some(router))
    }

    /// Bind the listeners and start the shards.
    pub fn start(self) -> Result<RunningEngine, StartError> {
        if let Some(e) = &self.setup_error {
            return Err(StartError(e.clone()));
        }
        let shards = self.config.shard_count();
        if shards > corecast_shards::room::MAX_SHARDS {
            return Err(StartError(format!(
                "shards: {shards} is more than the {} supported",
                corecast_shards::room::MAX_SHARDS
            )));
        }
        let (listeners, local_addr) = bind_listeners(self.config.listen, shards)?;
        let (wt, udp_sockets, wt_addr) = if self.config.webtransport.enabled {
            let wt =
                crate::net::quic::prepare_tls(&self.config.webtransport).map_err(StartError)?;
            let udp_addr = self.config.webtransport.listen.unwrap_or(local_addr);
            let (sockets, addr) = bind_udp(udp_addr, shards)?;
            (Some(wt), sockets, Some(addr))
        } else {
            (None, Vec::new(), None)
        };
        let (tls, tls_listeners, tls_addr) = match &self.config.tls {
            Some(c) => {
                let tls = crate::net::tls::TlsShared::new(c).map_err(StartError)?;
                let (ls, addr) = bind_listeners(c.listen, shards)
                    .map_err(|e| StartError(format!("tls.listen: {e}")))?;
                (Some(Arc::new(tls)), ls, Some(addr))
            }
            None => (None, Vec::new(), None),
        };
        // The process-wide clock base of the latency histogram, fixed before any shard.
        let _ = crate::stats::clock_base();
        let stats: Vec<Arc<ShardStats>> = (0..shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();
        // Routed endpoints with declared routes (not the auth-only guards of the
        // built-in endpoints), each router once, for the per-route metrics.
        let mut routers: Vec<crate::metrics::RoutedEndpoint> = Vec::new();
        let routed = self
            .endpoints
            .iter()
            .filter_map(|(p, e)| e.router.as_ref().map(|r| (p, r)))
            .chain(
                self.wt_endpoints
                    .iter()
                    .filter_map(|e| e.router.as_ref().map(|r| (&e.path, r))),
            );
        for (path, router) in routed {
            if !router.actions().is_empty() && !routers.iter().any(|(_, r)| Arc::ptr_eq(r, router))
            {
                routers.push((path.clone(), router.clone()));
            }
        }
        let (cluster, bridge_end) = match &self.config.cluster {
            Some(c) => {
                let node: Arc<str> = Arc::from(c.node_id());
                let (link, end) = crate::cluster::link(node, c.bridge_capacity);
                (Some(link), Some(end))
            }
            None => (None, None),
        };
        let cluster_stats = cluster
            .as_ref()
            .map(|l| (l.node_id.clone(), l.stats.clone()));
        let metrics = match self.config.metrics.listen {
            Some(addr) if self.config.metrics.enabled => Some(
                crate::metrics::MetricsServer::start(
                    addr,
                    self.config.metrics.path.clone(),
                    stats.clone(),
                    routers.clone(),
                    cluster_stats.clone(),
                )
                .map_err(|e| StartError(format!("metrics: cannot listen on {addr}: {e}")))?,
            ),
            _ => None,
        };
        let mut mesh = Mesh::new(shards, self.config.runtime.mesh_capacity)
            .map_err(|e| StartError(format!("cannot build the shard mesh: {e}")))?;
        let deflate = DeflateSettings {
            enabled: self.config.websocket.enable_compression,
            ..DeflateSettings::default()
        };
        let shared = Arc::new(Shared {
            deflate,
            endpoints: self.endpoints,
            senders: mesh.senders(),
            stats,
            shutdown: AtomicBool::new(false),
            epoch_base: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64),
            api_key: self.config.api.resolved_key(),
            wt_endpoints: self.wt_endpoints,
            http_routes: self.http_routes,
            routers,
            wt,
            ip_table: (self.config.limits.max_connections_per_ip > 0).then(|| {
                crate::net::limits::IpTable::new(self.config.limits.max_connections_per_ip)
            }),
            tls,
            cluster,
            config: self.config,
        });
        let bridge = match (bridge_end, shared.config.cluster.clone(), &shared.cluster) {
            (Some(end), Some(cfg), Some(link)) => Some(
                crate::cluster::bridge::spawn(cfg, link.node_id.clone(), end, mesh.senders())
                    .map_err(|e| StartError(format!("cluster: cannot start the bridge: {e}")))?,
            ),
            _ => None,
        };
        let udp_fds: Vec<Mutex<Option<i32>>> = udp_sockets
            .into_iter()
            .map(|s| Mutex::new(Some(s.into_raw_fd())))
            .collect();
        let inboxes: Vec<_> = (0..shards)
            .map(|i| Mutex::new(mesh.take_inbox(i)))
            .collect();
        let listener_fds: Vec<Mutex<Option<i32>>> = listeners
            .into_iter()
            .map(|l| Mutex::new(Some(l.into_raw_fd())))
            .collect();
        let tls_fds: Vec<Mutex<Option<i32>>> = tls_listeners
            .into_iter()
            .map(|l| Mutex::new(Some(l.into_raw_fd())))
            .collect();
        let boot = Arc::new((inboxes, listener_fds, udp_fds, tls_fds));
        let pool_config = PoolConfig {
            shards,
            io_memory: shared.config.runtime.io_memory,
            ring_depth: shared.config.runtime.ring_depth,
            pin: true,
            name: "corecast-shard".into(),
        };
        let shared2 = shared.clone();
        let pool = ShardPool::start(&pool_config, move |i| {
            let shared = shared2.clone();
            let boot = boot.clone();
            async move {
                let inbox = boot.0[i].lock().ok().and_then(|mut g| g.take());
                let fd = boot.1[i].lock().ok().and_then(|mut g| g.take());
                let (Some(inbox), Some(fd)) = (inbox, fd) else {
                    return;
                };
                // SAFETY: `fd` is a listening socket we bound and handed to this shard only.
                let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                let shard = Rc::new(Shard::new(i, shared.clone()));
                let udp = boot
                    .2
                    .get(i)
                    .and_then(|m| m.lock().ok().and_then(|mut g| g.take()));
                if let (Some(fd), Some(wt)) = (udp, shared.wt.as_ref()) {
                    // SAFETY: `fd` is a UDP socket we bound and handed to this shard only.
                    let socket = unsafe { glommio::net::UdpSocket::from_raw_fd(fd) };
                    let endpoint = crate::net::quic::quiche_config(&shared, wt)
                        .and_then(|q| crate::net::quic::Endpoint::new(shard.clone(), socket, q));
                    match endpoint {
                        Ok(ep) => {
                            ep.spawn();
                            *shard.quic.borrow_mut() = Some(ep);
                        }
                        Err(e) => tracing::error!(shard = i, error = %e, "WebTransport disabled"),
                    }
                }
                glommio::spawn_local(accept_loop(shard.clone(), listener, None)).detach();
                let tls_fd = boot
                    .3
                    .get(i)
                    .and_then(|m| m.lock().ok().and_then(|mut g| g.take()));
                if let (Some(fd), Some(tls)) = (tls_fd, shared.tls.clone()) {
                    // SAFETY: `fd` is a listening socket we bound and handed to this shard only.
                    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                    glommio::spawn_local(accept_loop(shard.clone(), listener, Some(tls))).detach();
                }
                glommio::spawn_local(shard.clone().run_driver()).detach();
                glommio::spawn_local(shard.clone().run_sweeper()).detach();
                glommio::spawn_local(shard.clone().run_idle_sweeper()).detach();
                glommio::spawn_local(shard.clone().run_stall_sweeper()).detach();
                glommio::spawn_local(shard.clone().run_keepalive()).detach();
                glommio::spawn_local(shard.clone().run_flusher()).detach();
                glommio::spawn_local(shard.clone().run_bridge_backlog()).detach();
                glommio::spawn_local(shard.clone().run_cluster_counts()).detach();
                shard.run_inbox(inbox).await;
            }
        })
        .map_err(|e| StartError(e.to_string()))?;
        Ok(RunningEngine {
            pool: Some(pool),
            bridge,
            handle: EngineHandle { shared },
            local_addr,
            wt_addr,
            tls_addr,
            metrics,
        })
    }
}

/// Bind one SO_REUSEPORT listener per shard on `addr` (port 0: the first bind
/// picks the port and the rest share it).
fn bind_listeners(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let l = bind_reuseport(addr)
            .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
        }
        out.push(l);
    }
    Ok((out, addr))
}

/// Bind one SO_REUSEPORT UDP socket per shard on `addr` (port 0: the first bind
/// picks the port).
fn bind_udp(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::UdpSocket>, SocketAddr), StartError> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let s = bind_udp_reuseport(addr).map_err(|e| {
            StartError(format!(
                "webtransport: cannot bind UDP {addr}: {e} (set webtransport.listen)"
            ))
        })?;
        if addr.port() == 0 {
            addr = s
                .local_addr()
                .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
        }
        out.push(s);
    }
    Ok((out, addr))
}

fn bind_udp_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Room for bursts of fan-out packets and incoming acks.
    let _ = s.set_send_buffer_size(4 << 20);
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd as _;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor we own; errors are checked.
    unsafe {
        let fd = libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let (storage, len) = sockaddr(addr);
        if libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::listen(fd, 4096) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

pub(crate) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is big enough and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: storage is big enough and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A cheap, `Send + Sync` handle to a running engine: broadcast from any thread,
/// request shutdown.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Publish `msg` to `room` from any thread; it is sequenced by the room's owner
    /// shard and reaches every member on every shard.
    pub fn broadcast(&self, room: &str, msg: Message) -> Result<(), BroadcastError> {
        if let Some(link) = &self.shared.cluster {
            if !link.is_connected() {
                crate::cluster::ClusterStats::add(&link.stats.publish_failures, 1);
                return Err(BroadcastError::Unavailable);
            }
            let cmd = crate::cluster::ToBridge::Publish {
                room: Arc::from(room),
                msg,
                except: None,
                origin: None,
                ack: None,
                limits: self.shared.config.history.limits_for(room),
            };
            return link.send(cmd).map_err(|_| {
                crate::cluster::ClusterStats::add(&link.stats.publish_failures, 1);
                BroadcastError::Overloaded
            });
        }
        let owner = owner_of(room, self.shared.senders.len());
        self.shared.senders[owner]
            .send(ShardMsg::Publish {
                room: Arc::from(room),
                msg,
                ack: None,
                except: None,
            })
            .map_err(|_| BroadcastError::Overloaded)
    }

    /// Send `msg` to connection `to` (any shard, any transport) from any thread.
    pub fn send_to(&self, to: corecast_shards::ConnId, msg: Message) -> Result<(), BroadcastError> {
        let shard = usize::from(to.shard);
        let sender = self
            .shared
            .senders
            .get(shard)
            .ok_or(BroadcastError::Overloaded)?;
        sender
            .send(ShardMsg::SendTo { to, msg, ack: None })
            .map_err(|_| BroadcastError::Overloaded)
    }

    /// Begin a graceful shutdown: stop accepting, close every connection with 1001
    /// after flushing what is queued, bounded by `shutdown.drain_timeout_ms`.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for s in &self.shared.senders {
            if s.send(ShardMsg::Shutdown).is_err() {
                s.ring();
            }
        }
    }

    /// Counters summed over shards, as JSON (the body of `GET /stats`).
    pub fn stats_json(&self) -> String {
        self.shared.stats_json()
    }

    /// Per-shard metrics in the Prometheus text format 0.0.4 (the body of
    /// `GET /metrics`).
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(
            &self.shared.stats,
            &self.shared.routers,
            self.shared
                .cluster
                .as_ref()
                .map(|l| (l.node_id.clone(), l.stats.clone()))
                .as_ref(),
        )
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.senders.len()
    }

    /// Re-read the `tls.cert` and `tls.key` files (what `SIGHUP` does for the
    /// `corecast` binary): handshakes from now on present the new certificate;
    /// connections already open keep theirs and are not interrupted. On an error
    /// (unreadable file, bad PEM, key not matching the certificate, or no `tls:`
    /// section) the certificate in use stays and the error names the file.
    /// Returns the SHA-256 of the new leaf certificate.
    pub fn reload_tls(&self) -> Result<[u8; 32], crate::config::ConfigError> {
        let tls = self.shared.tls.as_ref().ok_or_else(|| {
            crate::config::ConfigError("tls: no tls section: nothing to reload".into())
        })?;
        tls.reload().map_err(crate::config::ConfigError)
    }
}

/// A started engine.
pub struct RunningEngine {
    pool: Option<ShardPool>,
    handle: EngineHandle,
    local_addr: SocketAddr,
    wt_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    metrics: Option<crate::metrics::MetricsServer>,
    /// The cluster bridge thread, when `cluster:` is set.
    bridge: Option<std::thread::JoinHandle<()>>,
}

impl RunningEngine {
    /// The address the listeners are bound to (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The UDP address WebTransport is served on, when enabled.
    pub fn webtransport_addr(&self) -> Option<SocketAddr> {
        self.wt_addr
    }

    /// The TLS listener's address (`tls.listen`; the real port when configured
    /// with 0), when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// SHA-256 of the TLS listener's certificate in use (changes on reload).
    pub fn tls_cert_sha256(&self) -> Option<[u8; 32]> {
        self.handle.shared.tls.as_ref().map(|t| t.cert_sha256())
    }

    /// The separate metrics address (`metrics.listen`), when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// SHA-256 of the WebTransport certificate (for `serverCertificateHashes`).
    pub fn webtransport_cert_sha256(&self) -> Option<[u8; 32]> {
        self.handle.shared.wt.as_ref().map(|w| w.cert_sha256)
    }

    /// A handle for broadcasting and shutdown.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Wait until every shard has finished (after [`EngineHandle::shutdown`]).
    pub fn wait(mut self) -> Result<(), StartError> {
        let joined = match self.pool.take() {
            Some(pool) => pool.join().map_err(|e| StartError(e.to_string())),
            None => Ok(()),
        };
        if let Some(mut m) = self.metrics.take() {
            m.stop();
        }
        self.stop_bridge();
        joined
    }

    /// After the shards: tell the bridge to leave the cluster (its liveness key goes,
    /// so other nodes drop its members now) and wait for it, bounded.
    fn stop_bridge(&mut self) {
        let Some(bridge) = self.bridge.take() else {
            return;
        };
        if let Some(link) = &self.handle.shared.cluster {
            let _ = link.send(crate::cluster::ToBridge::Shutdown);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !bridge.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if bridge.is_finished() {
            let _ = bridge.join();
        }
    }

    /// Shut down gracefully and wait for the shards.
    pub fn stop(self) -> Result<(), StartError> {
        self.handle.shutdown();
        self.wait()
    }
}

impl Drop for RunningEngine {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.handle.shutdown();
            let _ = pool.join();
        }
    }
}
