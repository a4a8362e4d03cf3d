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

mod ctx;
mod errors;
mod middleware;
mod serve;
mod stats;

pub use ctx::Ctx;
pub use errors::{parse_body, RouteError};
pub use middleware::Middleware;
#[cfg(feature = "webtransport")]
pub(crate) use serve::serve_wt;
pub(crate) use serve::RoutedWs;
use stats::RouteStats;

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
#[cfg(feature = "webtransport")]
use super::wt::WtSession;
use crate::net::handle::client::ClientHandle;
use crate::net::shard::{BroadcastError, Shard};
use crate::stats::ShardStats;
use crate::vocab::connect::Admitted;
pub use crate::vocab::connect::{Connecting, Reject};
use std::rc::Rc;

/// Close code for a connection whose token expired while it was open.
pub use crate::net::expiry::CLOSE_TOKEN_EXPIRED;
/// Close code for a handler that returned an internal error or panicked.
pub const CLOSE_HANDLER_ERROR: u16 = 1011;
/// Close code for a message that cannot be routed, with
/// [`Router::close_on_bad_message`].
pub const CLOSE_BAD_MESSAGE: u16 = 1008;

type Handler = Arc<dyn Fn(&Ctx, Value) -> Result<(), RouteError> + Send + Sync>;
type ConnectFn = Arc<dyn Fn(&mut Connecting<'_>) -> Result<(), Reject> + Send + Sync>;
type DisconnectFn = Arc<dyn Fn(&Ctx) + Send + Sync>;

struct Route {
    handler: Handler,
    middleware: Vec<Arc<dyn Middleware>>,
    stats: RouteStats,
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
