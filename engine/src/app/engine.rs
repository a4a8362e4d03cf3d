//! [`Engine`]: build from a [`Config`], register handlers, start the shards.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corecast_shards::{Mesh, PoolConfig, ShardPool};

use super::builtin;
use super::callbacks::WsCallbacks;
use super::conn::WsConn;
use super::message::Message;
use super::router::Router;
use super::sse::SseStream;
#[cfg(feature = "webtransport")]
use super::wt::WtSession;
use crate::config::{Config, EndpointKind};
use crate::net::boot::{bind_all, ShardBoot};
pub use crate::net::boot::{Listener, StartError};
#[cfg(feature = "webtransport")]
use crate::net::endpoint::WtEndpoint;
#[cfg(feature = "webtransport")]
pub use crate::net::endpoint::WtHandler;
use crate::net::endpoint::{Endpoint, EndpointHandler, EndpointTransport, Shared};
pub use crate::net::endpoint::{HandlerFuture, HttpHandler, HttpResponse, WsHandler};
use crate::net::shard::RegistryMsg;
use crate::net::shard::{BroadcastError, ShardMsg};
use crate::proto::ws::deflate::DeflateSettings;
use crate::stats::ShardStats;
use crate::vocab::connect::Admission;

/// An engine being configured: register handlers, then [`Engine::start`].
pub struct Engine {
    config: Config,
    endpoints: Vec<(String, Endpoint)>,
    #[cfg(feature = "webtransport")]
    wt_endpoints: Vec<WtEndpoint>,
    http_routes: Vec<(String, HttpHandler)>,
    /// Every router registered, by path (the endpoints hold them only as their
    /// `$connect`; the per-route metrics need them whole).
    routers: Vec<(String, Arc<Router>)>,
    /// A configuration problem found while registering (reported by `start`).
    setup_error: Option<String>,
}

impl Engine {
    /// An engine with the endpoints listed in `config.websocket.endpoints`.
    pub fn new(config: Config) -> Self {
        let mut engine = Self {
            config,
            endpoints: Vec::new(),
            #[cfg(feature = "webtransport")]
            wt_endpoints: Vec::new(),
            http_routes: Vec::new(),
            routers: Vec::new(),
            setup_error: None,
        };
        // Built-in endpoints with `auth: true` get a router with only the JWT
        // middleware: it decides before the upgrade; their behaviour is unchanged.
        let auth_router = engine.auth_router();
        let guard = |auth: bool| if auth { auth_router.clone() } else { None };
        #[cfg(feature = "webtransport")]
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

    /// For built-in endpoints with `auth: true`: a router with only the JWT
    /// middleware of the `auth:` section.
    #[cfg(feature = "jwt")]
    fn auth_router(&mut self) -> Option<Arc<Router>> {
        match crate::app::auth::JwtMiddleware::from_config(self.config.auth.as_ref()?) {
            Ok(m) => {
                let mut r = Router::new();
                r.middleware(m);
                Some(Arc::new(r))
            }
            Err(e) => {
                self.setup_error = Some(format!("auth: {e}"));
                None
            }
        }
    }

    /// Built without JWT: an `auth:` section cannot be served.
    #[cfg(not(feature = "jwt"))]
    fn auth_router(&mut self) -> Option<Arc<Router>> {
        self.config.auth.as_ref()?;
        self.setup_error =
            Some("auth: this build has no JWT support (the `jwt` cargo feature)".into());
        None
    }

    fn set_endpoint_router(&mut self, path: &str, router: Option<Arc<Router>>) {
        if let Some((_, ep)) = self.endpoints.iter_mut().find(|(p, _)| p == path) {
            if let Some(r) = &router {
                self.routers.push((path.to_string(), r.clone()));
            }
            ep.admission = router.map(|r| r as Arc<dyn Admission>);
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
            admission: None,
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
    #[cfg(feature = "webtransport")]
    pub fn webtransport<F, Fut>(&mut self, path: &str, handler: F) -> &mut Self
    where
        F: Fn(WtSession) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let handler: WtHandler = Arc::new(move |s| Box::pin(handler(s)) as HandlerFuture);
        self.add_wt_endpoint(path, handler, None)
    }

    #[cfg(feature = "webtransport")]
    fn add_wt_endpoint(
        &mut self,
        path: &str,
        handler: WtHandler,
        router: Option<Arc<Router>>,
    ) -> &mut Self {
        self.wt_endpoints.retain(|e| e.path != path);
        if let Some(r) = &router {
            self.routers.push((path.to_string(), r.clone()));
        }
        self.wt_endpoints.push(WtEndpoint {
            path: path.to_string(),
            handler,
            admission: router.map(|r| r as Arc<dyn Admission>),
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
    #[cfg(feature = "webtransport")]
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
    #[cfg(feature = "webtransport")]
    pub fn webtransport_router(&mut self, path: &str, router: impl Into<Arc<Router>>) -> &mut Self {
        let router = router.into();
        let r = router.clone();
        let handler: WtHandler =
            Arc::new(move |s| Box::pin(super::router::serve_wt(s, r.clone())) as HandlerFuture);
        self.add_wt_endpoint(path, handler, Some(router))
    }

    /// Routed endpoints with declared routes (not the auth-only guards of the
    /// built-in endpoints), each router once, for the per-route metrics.
    fn metric_routers(&self) -> Vec<crate::metrics::RoutedEndpoint> {
        let mut routers: Vec<crate::metrics::RoutedEndpoint> = Vec::new();
        // The routers still serving an endpoint (a later registration may have
        // replaced one), found by the `$connect` each endpoint holds.
        let serving = |r: &Arc<Router>| {
            let is = |a: &Arc<dyn Admission>| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(r));
            #[cfg(feature = "webtransport")]
            let wt = self
                .wt_endpoints
                .iter()
                .any(|e| e.admission.as_ref().is_some_and(is));
            #[cfg(not(feature = "webtransport"))]
            let wt = false;
            wt || self
                .endpoints
                .iter()
                .any(|(_, e)| e.admission.as_ref().is_some_and(is))
        };
        let mut seen: Vec<&Arc<Router>> = Vec::new();
        for (path, router) in &self.routers {
            if !router.actions().is_empty()
                && serving(router)
                && !seen.iter().any(|r| Arc::ptr_eq(r, router))
            {
                seen.push(router);
                routers.push((path.clone(), router.clone()));
            }
        }
        routers
    }

    /// Bind the listeners and start the shards.
    pub fn start(self) -> Result<RunningEngine, StartError> {
        if let Some(e) = &self.setup_error {
            return Err(StartError::Config(e.clone()));
        }
        let shards = self.config.shard_count();
        if shards > corecast_shards::room::MAX_SHARDS {
            return Err(StartError::Config(format!(
                "shards: {shards} is more than the {} supported",
                corecast_shards::room::MAX_SHARDS
            )));
        }
        let bound = bind_all(&self.config, shards)?;
        // The process-wide clock base of the latency histogram, fixed before any shard.
        let _ = crate::stats::clock_base();
        let stats: Vec<Arc<ShardStats>> = (0..shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();
        let routers = self.metric_routers();
        let (sequencer, bridge_end) = crate::net::sequencer::Sequencer::start(&self.config)?;
        let cluster_stats = sequencer.families();
        let metrics = match self.config.metrics.listen {
            Some(addr) if self.config.metrics.enabled => Some(
                crate::metrics::MetricsServer::start(
                    addr,
                    self.config.metrics.path.clone(),
                    stats.clone(),
                    routers.clone(),
                    cluster_stats.clone(),
                )
                .map_err(|source| StartError::Bind {
                    listener: Listener::Metrics,
                    addr,
                    source,
                })?,
            ),
            _ => None,
        };
        let mut mesh = Mesh::new(shards, self.config.runtime.mesh_capacity)
            .map_err(|e| StartError::Runtime(format!("cannot build the shard mesh: {e}")))?;
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
            booted: std::sync::atomic::AtomicUsize::new(0),
            stopped: crate::net::endpoint::Stopped::new(shards),
            epoch_base: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64),
            api_key: self.config.api.resolved_key(),
            #[cfg(feature = "webtransport")]
            wt_endpoints: self.wt_endpoints,
            http_routes: self.http_routes,
            routers,
            #[cfg(feature = "webtransport")]
            wt: bound.wt,
            ip_table: (self.config.limits.max_connections_per_ip > 0).then(|| {
                crate::net::limits::IpTable::new(self.config.limits.max_connections_per_ip)
            }),
            tls: bound.tls,
            sequencer,
            config: self.config,
        });
        let bridge = crate::net::sequencer::spawn_bridge(&shared, bridge_end, mesh.senders())?;
        let boot = Arc::new(ShardBoot::new(
            (0..shards).map(|i| mesh.take_inbox(i)).collect(),
            bound.tcp,
            bound.udp,
            bound.tls_listeners,
        ));
        let pool_config = PoolConfig {
            shards,
            io_memory: shared.config.runtime.io_memory,
            ring_depth: shared.config.runtime.ring_depth,
            pin: true,
            name: "corecast-shard".into(),
            task_run: shared.config.runtime.io_uring_task_run.into(),
            multishot_read_poll: shared.config.runtime.io_uring_read_poll
                == crate::config::ReadPollMode::Multishot,
        };
        let shared2 = shared.clone();
        let pool = ShardPool::start(&pool_config, move |i| {
            crate::net::boot::run_shard(i, shared2.clone(), boot.clone())
        })
        .map_err(|e| StartError::Runtime(e.to_string()))?;
        crate::net::shard::publish_task_runs(&shared.stats, pool_config.task_run, pool.task_runs());
        Ok(RunningEngine {
            pool: Some(pool),
            bridge,
            handle: EngineHandle { shared },
            local_addr: bound.local_addr,
            wt_addr: bound.wt_addr,
            tls_addr: bound.tls_addr,
            metrics,
        })
    }
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
        let shared = &self.shared;
        shared.sequencer.publish_from_outside(shared, room, msg)
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
            .send(ShardMsg::Registry(RegistryMsg::SendTo {
                to,
                msg,
                ack: None,
            }))
            .map_err(|_| BroadcastError::Overloaded)
    }

    /// Begin a graceful shutdown: refuse new clients (503; `/readyz` answers 503
    /// `draining`), close every connection with 1001
    /// after flushing what is queued, bounded by `shutdown.drain_timeout_ms`.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for s in &self.shared.senders {
            if s.send(ShardMsg::Shutdown).is_err() {
                s.ring();
            }
        }
    }

    /// Resolves once every shard has stopped (after [`EngineHandle::shutdown`] and
    /// the drain): await it from any executor or thread, e.g. a tokio task, instead
    /// of blocking in [`RunningEngine::wait`]. The future is `Send`.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        std::future::poll_fn(move |cx| shared.stopped.poll(cx))
    }

    /// Counters summed over shards, as JSON (the body of `GET /stats`).
    pub fn stats_json(&self) -> String {
        self.shared.stats_json()
    }

    /// Per-shard metrics in the OpenMetrics text format (the body of
    /// `GET /metrics`).
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(
            &self.shared.stats,
            &self.shared.routers,
            self.shared.sequencer.families().as_ref(),
        )
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.senders.len()
    }

    /// Re-read the `webtransport.cert` and `webtransport.key` files (what `SIGHUP`
    /// does for the `corecast` binary): QUIC connections from now on present the
    /// new certificate; open ones keep theirs. On an error (unreadable file, bad
    /// PEM, key not matching the certificate, `cert: auto`, or WebTransport off)
    /// the certificate in use stays and the error names the file. Returns the
    /// SHA-256 of the new certificate.
    pub fn reload_webtransport_cert(&self) -> Result<[u8; 32], crate::config::ConfigError> {
        #[cfg(feature = "webtransport")]
        if let Some(wt) = self.shared.wt.as_ref() {
            return wt.reload().map_err(crate::config::ConfigError);
        }
        Err(crate::config::ConfigError(
            "webtransport: not enabled: nothing to reload".into(),
        ))
    }

    /// The private directory holding the WebTransport certificate and key files
    /// (mode 0700, removed at exit), when WebTransport is on.
    pub fn webtransport_key_dir(&self) -> Option<std::path::PathBuf> {
        #[cfg(feature = "webtransport")]
        return self.shared.wt.as_ref().map(|w| w.dir().to_path_buf());
        #[cfg(not(feature = "webtransport"))]
        None
    }

    /// Remove the WebTransport key directory now. [`RunningEngine::wait`] does
    /// this after the shards stop; this is for an exit that skips it (a second
    /// signal, a panic hook). New connections fail to switch certificates after it.
    pub fn remove_webtransport_keys(&self) {
        #[cfg(feature = "webtransport")]
        if let Some(wt) = self.shared.wt.as_ref() {
            wt.remove_dir();
        }
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
        #[cfg(feature = "tls")]
        return tls.reload().map_err(crate::config::ConfigError);
        #[cfg(not(feature = "tls"))]
        match **tls {}
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
        #[cfg(feature = "tls")]
        return self.handle.shared.tls.as_ref().map(|t| t.cert_sha256());
        #[cfg(not(feature = "tls"))]
        None
    }

    /// The separate metrics address (`metrics.listen`), when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// SHA-256 of the WebTransport certificate new connections get (for
    /// `serverCertificateHashes`; changes on renewal and reload).
    pub fn webtransport_cert_sha256(&self) -> Option<[u8; 32]> {
        self.handle.shared.wt_cert_sha256()
    }

    /// A handle for broadcasting and shutdown.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Wait until every shard has finished (after [`EngineHandle::shutdown`]).
    pub fn wait(mut self) -> Result<(), StartError> {
        let joined = match self.pool.take() {
            Some(pool) => pool.join().map_err(|e| StartError::Runtime(e.to_string())),
            None => Ok(()),
        };
        if let Some(mut m) = self.metrics.take() {
            m.stop();
        }
        self.stop_bridge();
        // Private keys do not outlive the server (the handle may live on).
        self.handle.remove_webtransport_keys();
        joined
    }

    /// After the shards: tell the bridge to leave the cluster (its liveness key goes,
    /// so other nodes drop its members now) and wait for it, bounded.
    fn stop_bridge(&mut self) {
        let Some(bridge) = self.bridge.take() else {
            return;
        };
        crate::net::sequencer::leave_cluster(&self.handle.shared);
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
        self.handle.remove_webtransport_keys();
    }
}
