//! # corecast
//!
//! A thread-per-core, io_uring real-time fan-out engine. Each shard is a glommio
//! executor pinned to a core that owns its connections; rooms fan one message out to
//! every member on every shard, sequenced by the room's owner shard.
//!
//! Transports: WebSocket and Server-Sent Events on the TCP listener, WebTransport
//! over HTTP/3 on a UDP socket per shard ([`Engine::webtransport`], [`WtSession`]);
//! members of one room receive each other's messages whatever their transport.
//!
//! Two handler styles share one driver: [`Engine::websocket`] runs an async handler
//! per connection reading with [`WsConn::recv`]; [`Engine::websocket_callbacks`]
//! takes [`WsCallbacks`] and costs no task per connection (the built-in `rooms` and
//! `echo` endpoints use it).
//!
//! ```
//! use corecast::prelude::*;
//! use corecast::Config;
//!
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! config.shards = corecast::config::Shards::Count(1);
//! let mut engine = Engine::new(config);
//! // A chat endpoint: join ?room=..., broadcast what each client says.
//! engine.websocket("/ws/chat", |mut conn| async move {
//!     let rooms = conn.query_all("room");
//!     for r in &rooms {
//!         conn.join(r);
//!     }
//!     while let Some(msg) = conn.recv().await {
//!         for r in &rooms {
//!             let _ = conn.broadcast(r, msg.clone());
//!         }
//!     }
//! });
//! let running = engine.start().expect("start");
//! println!("listening on {}", running.local_addr());
//! // Broadcast from any thread:
//! running.handle().broadcast("general", Message::text("hello")).unwrap();
//! running.stop().unwrap();
//! ```

pub mod app;
#[cfg(feature = "jwt")]
pub use app::auth;

pub mod cert;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod config;
pub mod logging;
pub mod metrics;
pub(crate) mod net;
pub mod proto;
pub mod startup;
pub mod stats;
pub mod vocab;

pub use app::callbacks::WsCallbacks;
pub use app::client::ClientHandle;
pub use app::conn::WsConn;
pub use app::connection::Connection;
pub use app::engine::{Engine, EngineHandle, HttpResponse, RunningEngine, StartError};
pub use app::router::{Connecting, Ctx, Middleware, Reject, RouteError, Router};
pub use corecast_shards::ConnId;
pub use vocab::message::Message;
pub use vocab::meta::{Meta, MetaError};
pub use vocab::registry::{ConnInfo, LookupError, PresenceMember, TransportKind};

/// What a handler needs from the shard's executor, so an embedder needs no direct
/// glommio dependency: handlers run on their connection's shard (a glommio
/// executor pinned to one core), where these spawn and sleep. Futures spawned here
/// need not be `Send`; they must not block the thread.
pub mod rt {
    /// Sleep for a duration on the shard's timer (no thread is blocked).
    pub use glommio::timer::sleep;
    /// A task spawned on the current shard; await it for its output, or
    /// `detach()` it to let it run on its own.
    pub use glommio::Task;

    /// Spawn `future` on the current shard (call it from a handler).
    pub fn spawn<T: 'static>(future: impl std::future::Future<Output = T> + 'static) -> Task<T> {
        glommio::spawn_local(future)
    }
}

/// What most handlers import: `use corecast::prelude::*;` brings the handle
/// types and the [`ClientHandle`] vocabulary their methods come from.
pub mod prelude {
    pub use crate::{
        ClientHandle, ConnId, Connection, Ctx, Engine, Message, RouteError, Router, SseStream,
        WsCallbacks, WsConn,
    };
    #[cfg(feature = "webtransport")]
    pub use crate::{Delivery, WtIncoming, WtSession};
}

/// Action routing (re-exported from `app::router`).
pub mod router {
    pub use crate::app::router::*;
}
/// Entry points for the fuzz targets in `fuzz/` (see docs/TESTING.md): pure
/// functions that are otherwise internal. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{Message, Router};
    use serde_json::Value;

    /// What [`Router`] makes of a message before dispatching it: `(action,
    /// request id, body)`, or the error frame's `(code, message)`.
    #[allow(clippy::type_complexity)]
    pub fn route_decode(
        router: &Router,
        msg: &Message,
    ) -> Result<(String, Option<Value>, Value), (&'static str, String)> {
        router.decode(msg)
    }
}
pub use app::sse::{Event, SseStream};
#[cfg(feature = "webtransport")]
pub use app::wt::{Delivery, WtError, WtIncoming, WtRecvStream, WtSendStream, WtSession, WtStream};
pub use config::Config;
pub use net::shard::BroadcastError;
pub use net::tcp_conn::SendError;
