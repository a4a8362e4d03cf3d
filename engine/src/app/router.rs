//! Action routing: JSON messages on WebSocket and WebTransport select a handler by
//! their route key (the `action` field unless configured otherwise), AWS API
//! Gateway style.
//!
//! ```
//! use corecast::router::{Router, RouteError};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Say { room: String, text: String }
//!
//! let mut router = Router::new();
//! router
//!     .on_connect(|c| {
//!         let name = c.query_get("name").unwrap_or_else(|| "anonymous".into());
//!         c.set_meta("name", name)?;
//!         Ok(())
//!     })
//!     .route("room.join", |ctx, body: serde_json::Value| {
//!         let room = body["room"].as_str().ok_or_else(|| RouteError::client("invalid_body", "room: missing"))?;
//!         ctx.join(room)
//!     })
//!     .route("chat.message", |ctx, say: Say| {
//!         let from: String = ctx.meta("name").unwrap_or_default();
//!         ctx.broadcast(&say.room, &serde_json::json!({"type": "chat", "from": from, "text": say.text}))
//!     })
//!     .on_disconnect(|ctx| println!("{} left", ctx.id()));
//! ```
//!
//! - `$connect` ([`Router::on_connect`]) runs before the upgrade completes: it can
//!   reject with an HTTP status and reason, or attach metadata.
//! - `$disconnect` ([`Router::on_disconnect`]) runs exactly once per connection,
//!   whatever ended it.
//! - `$default` ([`Router::on_default`]) takes unknown actions; without it they get
//!   an `unknown_action` error frame.
//! - Messages that are not JSON objects with a string route key get an error frame
//!   (or, with [`Router::close_on_bad_message`], close 1008).
//! - A handler's [`RouteError::client`] becomes an error frame; any other error or
//!   a panic closes only that connection with 1011 and is counted.
//!
//! Error frames: `{"type":"error","error":CODE,"message":TEXT}` plus the request's
//! `action` and `id` when it had them (see docs/PROTOCOL.md).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corecast_shards::ConnId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::connection::Connection;
use super::message::Message;
use super::meta::{Meta, MetaError};
use super::registry::{ConnInfo, LookupError, PresenceMember, TransportKind};
use super::wt::{Delivery, WtSession};
use crate::net::shard::{BroadcastError, Shard};
use crate::stats::ShardStats;
use crate::vocab::connect::Admitted;
pub use crate::vocab::connect::{Connecting, Reject};

/// Close code for a connection whose token expired while it was open.
pub use crate::net::expiry::CLOSE_TOKEN_EXPIRED;
/// Close code for a handler that returned an internal error or panicked.
pub const CLOSE_HANDLER_ERROR: u16 = 1011;
/// Close code for a message that cannot be routed, with
/// [`Router::close_on_bad_message`].
pub const CLOSE_BAD_MESSAGE: u16 = 1008;

impl From<MetaError> for Reject {
    fn from(e: MetaError) -> Self {
        Reject::new(500, e.to_string())
    }
}

/// What a handler can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The client's fault (bad body, unknown stream, not allowed): answered with an
    /// error frame; the connection stays.
    Client {
        /// Machine-readable code, e.g. `invalid_body`.
        code: String,
        /// What was wrong, naming the field where there is one.
        message: String,
    },
    /// The server's fault: the connection is closed with 1011 and the error counted.
    Internal(String),
}

impl RouteError {
    /// A client error answered with an error frame.
    pub fn client(code: impl Into<String>, message: impl Into<String>) -> Self {
        RouteError::Client {
            code: code.into(),
            message: message.into(),
        }
    }

    /// An internal error: closes the connection (1011).
    pub fn internal(message: impl Into<String>) -> Self {
        RouteError::Internal(message.into())
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Client { code, message } => write!(f, "{code}: {message}"),
            RouteError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// Any other error a handler `?`-propagates is internal.
impl<E: std::error::Error> From<E> for RouteError {
    fn from(e: E) -> Self {
        RouteError::Internal(e.to_string())
    }
}

/// Parse a message body (or part of one) into `T`; a mismatch is a client error
/// (`invalid_body`) naming the field serde could not read.
pub fn parse_body<T: DeserializeOwned>(body: Value) -> Result<T, RouteError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        RouteError::client("invalid_body", message)
    })
}

/// Ordered hooks around connections and messages; global ([`Router::middleware`])
/// or per route ([`Router::route_with`]). Every method has a pass-through default.
pub trait Middleware: Send + Sync + 'static {
    /// Before `$connect`, in registration order (global middleware only); an `Err`
    /// refuses the connection.
    fn on_connect(&self, c: &mut Connecting<'_>) -> Result<(), Reject> {
        let _ = c;
        Ok(())
    }

    /// Before the route's handler; an `Err` is handled like the handler's own.
    fn before(&self, ctx: &Ctx, action: &str, body: &Value) -> Result<(), RouteError> {
        let _ = (ctx, action, body);
        Ok(())
    }

    /// Before [`Ctx::join`] (global middleware only): may this connection join `room`?
    fn may_join(&self, ctx: &Ctx, room: &str) -> Result<(), RouteError> {
        let _ = (ctx, room);
        Ok(())
    }
}

type Handler = Arc<dyn Fn(&Ctx, Value) -> Result<(), RouteError> + Send + Sync>;
type ConnectFn = Arc<dyn Fn(&mut Connecting<'_>) -> Result<(), Reject> + Send + Sync>;
type DisconnectFn = Arc<dyn Fn(&Ctx) + Send + Sync>;

struct Route {
    handler: Handler,
    middleware: Vec<Arc<dyn Middleware>>,
    stats: RouteStats,
}

/// One shard's counters of one route, on a cache line of its own (shards never
/// write the same line).
#[derive(Default)]
#[repr(align(64))]
struct ShardRouteCounters {
    calls: AtomicU64,
    client_errors: AtomicU64,
    internal_errors: AtomicU64,
    panics: AtomicU64,
    nanos: AtomicU64,
}

/// Per-route counters, per shard (the metrics middleware that is always on).
struct RouteStats(Box<[ShardRouteCounters]>);

impl Default for RouteStats {
    fn default() -> Self {
        Self(
            (0..corecast_shards::room::MAX_SHARDS)
                .map(|_| ShardRouteCounters::default())
                .collect(),
        )
    }
}

impl RouteStats {
    fn shard(&self, shard: usize) -> &ShardRouteCounters {
        &self.0[shard.min(self.0.len() - 1)]
    }

    fn totals(&self) -> RouteTotals {
        let sum = |f: fn(&ShardRouteCounters) -> &AtomicU64| -> u64 {
            self.0.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        RouteTotals {
            calls: sum(|c| &c.calls),
            client_errors: sum(|c| &c.client_errors),
            internal_errors: sum(|c| &c.internal_errors),
            panics: sum(|c| &c.panics),
            handler_seconds: sum(|c| &c.nanos) as f64 / 1e9,
        }
    }
}

pub use crate::metrics::RouteTotals;

impl crate::vocab::connect::Admission for Router {
    fn admit(&self, c: Connecting<'_>) -> Result<Admitted, Reject> {
        Router::admit(self, c)
    }
}

impl crate::metrics::RouteCounters for Router {
    fn route_totals(&self) -> Vec<(String, RouteTotals)> {
        Router::route_totals(self)
    }
}

/// Routes, hooks and middleware for one or more endpoints
/// ([`Engine::websocket_router`](super::engine::Engine::websocket_router),
/// [`Engine::webtransport_router`](super::engine::Engine::webtransport_router)).
pub struct Router {
    route_key: String,
    routes: HashMap<String, Route>,
    default: Option<Handler>,
    connect: Option<ConnectFn>,
    disconnect: Option<DisconnectFn>,
    middleware: Vec<Arc<dyn Middleware>>,
    close_on_bad_message: bool,
    /// Counters of `$default`, and of messages no route took (unknown action or
    /// unroutable input).
    default_stats: RouteStats,
    unrouted_stats: RouteStats,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut routes: Vec<&String> = self.routes.keys().collect();
        routes.sort();
        f.debug_struct("Router")
            .field("route_key", &self.route_key)
            .field("routes", &routes)
            .finish()
    }
}

impl Router {
    /// A router keyed on the `action` field, with no routes.
    pub fn new() -> Self {
        Self {
            route_key: "action".to_string(),
            routes: HashMap::new(),
            default: None,
            connect: None,
            disconnect: None,
            middleware: Vec::new(),
            close_on_bad_message: false,
            default_stats: RouteStats::default(),
            unrouted_stats: RouteStats::default(),
        }
    }

    /// Route on field `key` instead of `action`.
    pub fn route_key(&mut self, key: &str) -> &mut Self {
        self.route_key = key.to_string();
        self
    }

    /// Handle messages whose route key is `action`. The body (the whole message
    /// object) is parsed into `T` first (`serde_json::Value` takes it as is); a body
    /// that does not fit is answered with an `invalid_body` error frame.
    pub fn route<T, F>(&mut self, action: &str, handler: F) -> &mut Self
    where
        T: DeserializeOwned + 'static,
        F: Fn(&Ctx, T) -> Result<(), RouteError> + Send + Sync + 'static,
    {
        self.route_with(action, Vec::new(), handler)
    }

    /// As [`Router::route`], with middleware that runs (in order, after the global
    /// middleware) only for this route.
    pub fn route_with<T, F>(
        &mut self,
        action: &str,
        middleware: Vec<Arc<dyn Middleware>>,
        handler: F,
    ) -> &mut Self
    where
        T: DeserializeOwned + 'static,
        F: Fn(&Ctx, T) -> Result<(), RouteError> + Send + Sync + 'static,
    {
        let handler: Handler = Arc::new(move |ctx, body| handler(ctx, parse_body(body)?));
        self.routes.insert(
            action.to_string(),
            Route {
                handler,
                middleware,
                stats: RouteStats::default(),
            },
        );
        self
    }

    /// `$default`: handle messages whose action has no route.
    pub fn on_default<F>(&mut self, handler: F) -> &mut Self
    where
        F: Fn(&Ctx, Value) -> Result<(), RouteError> + Send + Sync + 'static,
    {
        self.default = Some(Arc::new(handler));
        self
    }

    /// `$connect`: decide a connection attempt before the upgrade completes (after
    /// the global middleware's `on_connect`).
    pub fn on_connect<F>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(&mut Connecting<'_>) -> Result<(), Reject> + Send + Sync + 'static,
    {
        self.connect = Some(Arc::new(hook));
        self
    }

    /// `$disconnect`: runs exactly once per connection that `$connect` admitted,
    /// whatever ended it (close, error, timeout, reset, shutdown). The connection
    /// has already left its rooms.
    pub fn on_disconnect<F>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(&Ctx) + Send + Sync + 'static,
    {
        self.disconnect = Some(Arc::new(hook));
        self
    }

    /// Add global middleware (runs in the order added).
    pub fn middleware(&mut self, m: impl Middleware) -> &mut Self {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Close (1008) instead of answering an error frame when a message is not a
    /// JSON object with a route key.
    pub fn close_on_bad_message(&mut self, close: bool) -> &mut Self {
        self.close_on_bad_message = close;
        self
    }

    /// The routes declared, sorted.
    pub fn actions(&self) -> Vec<String> {
        let mut a: Vec<String> = self.routes.keys().cloned().collect();
        a.sort();
        a
    }

    /// Counters of every route (sorted), then `$default` and `$unrouted` (unknown
    /// actions and messages that could not be routed).
    pub fn route_totals(&self) -> Vec<(String, RouteTotals)> {
        let mut out: Vec<(String, RouteTotals)> = self
            .routes
            .iter()
            .map(|(name, r)| (name.clone(), r.stats.totals()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(("$default".into(), self.default_stats.totals()));
        out.push(("$unrouted".into(), self.unrouted_stats.totals()));
        out
    }

    /// Run the middleware and `$connect` for a connection attempt. A panic in
    /// either refuses only this attempt (500 "connect handler failed", counted by
    /// the caller in `connect_rejected`): it runs on the shard's accept path, where
    /// an unwinding panic would take the shard, and the process, down.
    pub(crate) fn admit(&self, mut c: Connecting<'_>) -> Result<Admitted, Reject> {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            for m in &self.middleware {
                m.on_connect(&mut c)?;
            }
            if let Some(hook) = &self.connect {
                hook(&mut c)?;
            }
            Ok(())
        }));
        match outcome {
            Ok(Ok(())) => Ok(Admitted {
                meta: c.meta,
                expires_at: c.expires_at,
            }),
            Ok(Err(reject)) => Err(reject),
            Err(_) => {
                tracing::warn!(path = %c.path(), "$connect panicked; refusing the connection");
                Err(Reject::new(500, "connect handler failed"))
            }
        }
    }

    /// Route one message from `ctx`'s connection. Never panics: handler panics are
    /// caught here and close only that connection.
    pub(crate) fn dispatch(&self, ctx: &Ctx, msg: Message) {
        let shard = ctx.shard();
        let (action, request_id, body) = match self.decode(&msg) {
            Ok(parts) => parts,
            Err((code, message)) => {
                let c = self.unrouted_stats.shard(shard);
                c.calls.fetch_add(1, Ordering::Relaxed);
                c.client_errors.fetch_add(1, Ordering::Relaxed);
                if self.close_on_bad_message {
                    ctx.close(CLOSE_BAD_MESSAGE, &message);
                } else {
                    ctx.send_error_frame(code, &message, None, None);
                }
                return;
            }
        };
        let route = self.routes.get(&action);
        let (handler, stats) = match (route, &self.default) {
            (Some(r), _) => (&r.handler, &r.stats),
            (None, Some(d)) => (d, &self.default_stats),
            (None, None) => {
                let c = self.unrouted_stats.shard(shard);
                c.calls.fetch_add(1, Ordering::Relaxed);
                c.client_errors.fetch_add(1, Ordering::Relaxed);
                let message = format!("no route for action {action:?}");
                ctx.send_error_frame(
                    "unknown_action",
                    &message,
                    Some(&action),
                    request_id.as_ref(),
                );
                return;
            }
        };
        let counters = stats.shard(shard);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        let route_name = if route.is_some() {
            action.as_str()
        } else {
            "$default"
        };
        let _span =
            tracing::debug_span!("action", conn = %ctx.id(), route = route_name, shard).entered();
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            for m in &self.middleware {
                m.before(ctx, &action, &body)?;
            }
            if let Some(r) = route {
                for m in &r.middleware {
                    m.before(ctx, &action, &body)?;
                }
            }
            handler(ctx, body)
        }));
        counters
            .nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(RouteError::Client { code, message })) => {
                counters.client_errors.fetch_add(1, Ordering::Relaxed);
                ctx.send_error_frame(&code, &message, Some(&action), request_id.as_ref());
            }
            Ok(Err(RouteError::Internal(why))) => {
                counters.internal_errors.fetch_add(1, Ordering::Relaxed);
                ShardStats::add(&ctx.shard_state().stats.handler_errors, 1);
                tracing::warn!(conn = %ctx.id(), route = route_name, error = %why, "handler error; closing the connection");
                ctx.close(CLOSE_HANDLER_ERROR, "handler error");
            }
            Err(_) => {
                counters.panics.fetch_add(1, Ordering::Relaxed);
                ShardStats::add(&ctx.shard_state().stats.handler_panics, 1);
                tracing::warn!(conn = %ctx.id(), route = route_name, "handler panicked; closing the connection");
                ctx.close(CLOSE_HANDLER_ERROR, "handler failed");
            }
        }
    }

    /// The action, request id and body of a message, or the error frame's code and
    /// message.
    #[allow(clippy::type_complexity)]
    pub(crate) fn decode(
        &self,
        msg: &Message,
    ) -> Result<(String, Option<Value>, Value), (&'static str, String)> {
        let Some(text) = msg.as_text() else {
            return Err((
                "binary_not_routed",
                "binary messages are not routed: send a JSON text message".to_string(),
            ));
        };
        let body: Value = serde_json::from_str(text)
            .map_err(|e| ("invalid_json", format!("message is not valid JSON: {e}")))?;
        let Value::Object(obj) = &body else {
            return Err((
                "invalid_message",
                "message must be a JSON object".to_string(),
            ));
        };
        let action = match obj.get(&self.route_key) {
            Some(Value::String(a)) => a.clone(),
            Some(_) => {
                return Err((
                    "missing_route",
                    format!("field {:?} must be a string", self.route_key),
                ))
            }
            None => {
                return Err((
                    "missing_route",
                    format!("message has no {:?} field", self.route_key),
                ))
            }
        };
        let request_id = obj.get("id").cloned();
        Ok((action, request_id, body))
    }

    /// `$disconnect`, with panics caught and counted.
    pub(crate) fn disconnected(&self, ctx: &Ctx) {
        let Some(hook) = &self.disconnect else {
            return;
        };
        if std::panic::catch_unwind(AssertUnwindSafe(|| hook(ctx))).is_err() {
            ShardStats::add(&ctx.shard_state().stats.handler_panics, 1);
        }
    }

    /// Global middleware's verdict on joining `room`.
    fn may_join(&self, ctx: &Ctx, room: &str) -> Result<(), RouteError> {
        for m in &self.middleware {
            m.may_join(ctx, room)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Peer {
    Ws(Connection),
    Wt(WtSession),
}

/// What a route handler gets: the connection (WebSocket or WebTransport session)
/// and everything it can do — reply, send to any connection, rooms, metadata.
///
/// Cloning is cheap (handles to the same connection): move a clone into a task
/// spawned on the shard (`glommio::spawn_local`) to await [`Ctx::lookup`],
/// [`Ctx::room_members`] or [`Ctx::presence`] and reply afterwards.
#[derive(Clone)]
pub struct Ctx {
    peer: Peer,
    router: Arc<Router>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("id", &self.id()).finish()
    }
}

fn to_message<T: Serialize + ?Sized>(value: &T) -> Result<Message, RouteError> {
    serde_json::to_string(value)
        .map(Message::text)
        .map_err(|e| RouteError::internal(format!("reply is not JSON: {e}")))
}

fn overloaded(e: BroadcastError) -> RouteError {
    RouteError::client(e.code(), e.to_string())
}

impl Ctx {
    pub(crate) fn ws(conn: Connection, router: Arc<Router>) -> Self {
        Self {
            peer: Peer::Ws(conn),
            router,
        }
    }

    pub(crate) fn wt(session: WtSession, router: Arc<Router>) -> Self {
        Self {
            peer: Peer::Wt(session),
            router,
        }
    }

    fn shard_state(&self) -> &std::rc::Rc<Shard> {
        match &self.peer {
            Peer::Ws(c) => &c.shard,
            Peer::Wt(s) => &s.shard,
        }
    }

    /// The connection's registry id.
    pub fn id(&self) -> ConnId {
        match &self.peer {
            Peer::Ws(c) => c.id(),
            Peer::Wt(s) => s.state.reg_id,
        }
    }

    /// The shard the connection lives on.
    pub fn shard(&self) -> usize {
        self.shard_state().id
    }

    /// WebSocket or WebTransport.
    pub fn transport(&self) -> TransportKind {
        match &self.peer {
            Peer::Ws(c) => c.transport(),
            Peer::Wt(_) => TransportKind::WebTransport,
        }
    }

    /// The WebSocket connection, for transport-specific calls.
    pub fn connection(&self) -> Option<&Connection> {
        match &self.peer {
            Peer::Ws(c) => Some(c),
            Peer::Wt(_) => None,
        }
    }

    /// The WebTransport session, for transport-specific calls.
    pub fn session(&self) -> Option<&WtSession> {
        match &self.peer {
            Peer::Ws(_) => None,
            Peer::Wt(s) => Some(s),
        }
    }

    fn meta_cell(&self) -> &super::meta::MetaCell {
        match &self.peer {
            Peer::Ws(c) => &c.conn.meta,
            Peer::Wt(s) => &s.state.meta,
        }
    }

    /// The metadata value under `key` as a `T`.
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.meta_cell().get(key)
    }

    /// Set metadata `key` (visible to the registry and, for presence keys, in
    /// later joins).
    pub fn set_meta<T: Serialize>(&self, key: &str, value: T) -> Result<(), MetaError> {
        self.meta_cell().set(key, value)
    }

    /// Remove metadata `key`.
    pub fn remove_meta(&self, key: &str) -> bool {
        self.meta_cell().remove(key)
    }

    /// All metadata.
    pub fn meta_all(&self) -> Meta {
        self.meta_cell().snapshot()
    }

    /// This connection as the registry shows it.
    pub fn info(&self) -> ConnInfo {
        match &self.peer {
            Peer::Ws(c) => c.info(),
            Peer::Wt(s) => s.shard.session_info(&s.state),
        }
    }

    fn send_message(&self, msg: Message) -> Result<(), RouteError> {
        match &self.peer {
            Peer::Ws(c) => c
                .send(msg)
                .map_err(|e| RouteError::client("send_failed", e.to_string())),
            Peer::Wt(s) => {
                if s.state.send_direct(&msg, &s.shard.stats).is_err() {
                    s.state.evict();
                    return Err(RouteError::client(
                        "send_failed",
                        "slow consumer: delivery queue full",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Send `value` as JSON to this connection.
    pub fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), RouteError> {
        self.send_message(to_message(value)?)
    }

    /// Send a raw message to this connection.
    pub fn reply_message(&self, msg: Message) -> Result<(), RouteError> {
        self.send_message(msg)
    }

    /// Send an error frame to this connection (the connection stays).
    pub fn reply_error(&self, code: &str, message: &str) {
        self.send_error_frame(code, message, None, None);
    }

    fn send_error_frame(
        &self,
        code: &str,
        message: &str,
        action: Option<&str>,
        request_id: Option<&Value>,
    ) {
        let mut frame = Map::new();
        frame.insert("type".into(), json!("error"));
        frame.insert("error".into(), json!(code));
        frame.insert("message".into(), json!(message));
        if let Some(a) = action {
            frame.insert("action".into(), json!(a));
        }
        if let Some(id) = request_id {
            frame.insert("id".into(), id.clone());
        }
        let _ = self.send_message(Message::text(Value::Object(frame).to_string()));
    }

    /// Send `value` as JSON to connection `to` on any shard (fire-and-forget).
    pub fn send_to<T: Serialize + ?Sized>(&self, to: ConnId, value: &T) -> Result<(), RouteError> {
        self.shard_state()
            .send_to(to, to_message(value)?)
            .map_err(overloaded)
    }

    /// Cluster mode: send `value` as JSON to connection `to` of node `node` (this
    /// node's own id works too). Fire-and-forget, like [`Ctx::send_to`]; refused
    /// with `broker_unavailable` without a cluster or while Redis is unreachable.
    pub fn send_to_node<T: Serialize + ?Sized>(
        &self,
        node: &str,
        to: ConnId,
        value: &T,
    ) -> Result<(), RouteError> {
        self.shard_state()
            .send_to_node(node, to, to_message(value)?)
            .map_err(overloaded)
    }

    /// This node's id in cluster mode (`None` alone): with [`Ctx::id`] it names
    /// this connection across the cluster (`NODE:SHARD.SLOT.GEN`).
    pub fn node_id(&self) -> Option<String> {
        self.shard_state().node_id().map(str::to_string)
    }

    /// Join `room` (after the global middleware's `may_join`, e.g. the auth
    /// middleware's room rules: a refusal is a `forbidden` client error).
    /// WebTransport sessions receive the room on their reliable delivery stream.
    pub fn join(&self, room: &str) -> Result<(), RouteError> {
        if room.is_empty() || room.len() > 256 {
            return Err(RouteError::client(
                "invalid_room",
                "room names are 1 to 256 bytes",
            ));
        }
        if let Err(e) = self.router.may_join(self, room) {
            ShardStats::add(&self.shard_state().stats.auth_failures, 1);
            return Err(e);
        }
        match &self.peer {
            Peer::Ws(c) => c.join_room(room),
            Peer::Wt(s) => {
                s.join_room(room, Delivery::Reliable);
            }
        }
        Ok(())
    }

    /// Leave `room`.
    pub fn leave(&self, room: &str) {
        match &self.peer {
            Peer::Ws(c) => c.leave_room(room),
            Peer::Wt(s) => s.leave_room(room),
        }
    }

    /// Rooms this connection is in.
    pub fn rooms(&self) -> Vec<String> {
        match &self.peer {
            Peer::Ws(c) => c.rooms().iter().map(|r| r.to_string()).collect(),
            Peer::Wt(s) => s.rooms().into_iter().map(|(r, _)| r).collect(),
        }
    }

    /// True if this connection is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms().iter().any(|r| r == room)
    }

    /// Broadcast `value` as JSON to every member of `room` on every shard.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<(), RouteError> {
        self.shard_state()
            .publish_from(room, to_message(value)?, None, Some(self.id()))
            .map_err(overloaded)
    }

    /// Broadcast `value` to every member of `room` except this connection.
    pub fn broadcast_except_me<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<(), RouteError> {
        self.shard_state()
            .publish_except(room, to_message(value)?, Some(self.id()))
            .map_err(overloaded)
    }

    /// Send `value` to every connection and session of the server.
    pub fn broadcast_all<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), RouteError> {
        self.shard_state()
            .broadcast_all(to_message(value)?)
            .map_err(overloaded)
    }

    /// Close the connection (WebSocket close code; WebTransport session error code).
    pub fn close(&self, code: u16, reason: &str) {
        match &self.peer {
            Peer::Ws(c) => c.close(code, reason),
            Peer::Wt(s) => s.close(u32::from(code), reason),
        }
    }

    /// Look up any live connection by id.
    pub async fn lookup(&self, id: ConnId) -> Result<Option<ConnInfo>, LookupError> {
        self.shard_state().lookup_conn(id).await
    }

    /// Live members of `room` on every shard (at most `limit`; the flag: more
    /// exist).
    pub async fn room_members(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<(Vec<ConnInfo>, bool), LookupError> {
        self.shard_state().lookup_room(room, limit).await
    }

    /// The presence list of `room` (empty unless `presence.rooms` covers it).
    pub async fn presence(&self, room: &str) -> Result<Vec<PresenceMember>, LookupError> {
        self.shard_state().presence_list(room).await
    }
}

/// The callbacks that serve a routed WebSocket endpoint.
pub(crate) struct RoutedWs {
    pub(crate) router: Arc<Router>,
}

impl super::callbacks::WsCallbacks for RoutedWs {
    fn on_message(&self, conn: &Connection, msg: Message) {
        let ctx = Ctx::ws(conn.clone(), self.router.clone());
        self.router.dispatch(&ctx, msg);
    }

    fn on_close(&self, conn: &Connection) {
        let ctx = Ctx::ws(conn.clone(), self.router.clone());
        self.router.disconnected(&ctx);
    }
}

/// Serve a routed WebTransport session: every text record (on any client stream
/// or datagram) is a message to route; replies go on the session's delivery stream
/// as records with an empty room name. `$disconnect` runs when the session ends.
pub(crate) async fn serve_wt(session: WtSession, router: Arc<Router>) {
    use super::wt::WtIncoming;
    use crate::proto::wt::record::{self, RecordReader};
    let max = session.shard.shared.config.websocket.max_message_size;
    let to_message = |rec: record::ClientRecord| {
        if rec.kind == record::TEXT {
            Message::Text(rec.payload)
        } else {
            Message::Binary(rec.payload)
        }
    };
    while let Some(incoming) = session.next().await {
        let mut recv = match incoming {
            WtIncoming::Datagram(d) => {
                if let Ok(rec) = record::parse_body(&d, max) {
                    router.dispatch(&Ctx::wt(session.clone(), router.clone()), to_message(rec));
                }
                continue;
            }
            WtIncoming::Uni(recv) => recv,
            WtIncoming::Bi(stream) => stream.recv,
        };
        let (session, router) = (session.clone(), router.clone());
        glommio::spawn_local(async move {
            let ctx = Ctx::wt(session, router.clone());
            let mut reader = RecordReader::new(max);
            let mut records = Vec::new();
            while let Ok(Some(chunk)) = recv.read().await {
                let fed = reader.feed(&chunk, &mut records);
                for rec in records.drain(..) {
                    router.dispatch(&ctx, to_message(rec));
                }
                if let Err(e) = fed {
                    recv.stop(e.reset_code());
                    return;
                }
            }
        })
        .detach();
    }
    router.disconnected(&Ctx::wt(session, router.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http;
    use std::time::SystemTime;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    #[test]
    fn decode_finds_the_route_key_and_request_id() {
        let r = Router::new();
        let (action, id, body) = r
            .decode(&text(r#"{"action":"chat.message","id":7,"text":"hi"}"#))
            .unwrap();
        assert_eq!(action, "chat.message");
        assert_eq!(id, Some(json!(7)));
        assert_eq!(body["text"], "hi");
    }

    #[test]
    fn decode_errors_name_the_problem() {
        let r = Router::new();
        let code = |m: Message| r.decode(&m).unwrap_err();
        assert_eq!(code(text("not json")).0, "invalid_json");
        assert_eq!(code(text("[1,2]")).0, "invalid_message");
        assert_eq!(code(text("{}")).0, "missing_route");
        assert!(code(text("{}")).1.contains("\"action\""));
        assert_eq!(code(text(r#"{"action":5}"#)).0, "missing_route");
        assert_eq!(code(Message::binary(&b"\x00"[..])).0, "binary_not_routed");
    }

    #[test]
    fn a_custom_route_key_is_used() {
        let mut r = Router::new();
        r.route_key("type");
        let (action, _, _) = r.decode(&text(r#"{"type":"ping"}"#)).unwrap();
        assert_eq!(action, "ping");
        assert!(r.decode(&text(r#"{"action":"ping"}"#)).is_err());
    }

    #[test]
    fn typed_bodies_report_the_missing_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Start {
            title: String,
        }
        for body in [
            json!({"action": "stream.start"}),
            json!({"action": "stream.start", "title": 5}),
        ] {
            match parse_body::<Start>(body).unwrap_err() {
                RouteError::Client { code, message } => {
                    assert_eq!(code, "invalid_body");
                    assert!(message.contains("title"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    struct Stamp(&'static str);

    impl Middleware for Stamp {
        fn on_connect(&self, c: &mut Connecting<'_>) -> Result<(), Reject> {
            let mut seen: Vec<String> = c.meta("order").unwrap_or_default();
            seen.push(self.0.to_string());
            c.set_meta("order", seen)?;
            if c.query_get("deny").as_deref() == Some(self.0) {
                return Err(Reject::forbidden(format!("denied by {}", self.0)));
            }
            Ok(())
        }
    }

    fn request(query: &str) -> http::Request {
        http::Request {
            method: "GET".into(),
            path: "/ws".into(),
            query: query.into(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn admit_runs_middleware_in_order_then_connect() {
        let mut r = Router::new();
        r.middleware(Stamp("a"))
            .middleware(Stamp("b"))
            .on_connect(|c| {
                let order: Vec<String> = c.meta("order").unwrap_or_default();
                assert_eq!(order, ["a", "b"]);
                c.set_meta("name", c.query_get("name"))?;
                c.expire_at(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(20));
                c.expire_at(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10));
                Ok(())
            });
        let req = request("name=ada");
        let a = r
            .admit(Connecting::new(&req, None, TransportKind::WebSocket))
            .unwrap();
        assert_eq!(a.meta["name"], "ada");
        assert_eq!(
            a.expires_at,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10))
        );
        let req = request("deny=a");
        let e = r
            .admit(Connecting::new(&req, None, TransportKind::WebSocket))
            .err()
            .unwrap();
        assert_eq!((e.status, e.reason.as_str()), (403, "denied by a"));
        assert_eq!(e.phrase(), "Forbidden");
    }

    #[test]
    fn other_errors_are_internal() {
        fn fails() -> Result<(), RouteError> {
            let n: u32 = "x".parse()?;
            let _ = n;
            Ok(())
        }
        assert!(matches!(fails(), Err(RouteError::Internal(_))));
    }
}
