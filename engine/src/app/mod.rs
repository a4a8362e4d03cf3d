//! What applications program against: the [`Engine`](engine::Engine), callback
//! handlers ([`WsCallbacks`](callbacks::WsCallbacks)) and async handlers
//! ([`WsConn`](conn::WsConn)), the [`Connection`](connection::Connection) handle,
//! messages, and the built-in endpoints.

#[cfg(feature = "jwt")]
pub mod auth;
pub mod builtin;
pub mod engine;
pub mod router;
#[cfg(feature = "webtransport")]
pub mod wt_builtin;

// The vocabulary types live below the engine (crate::vocab); kept here under their old paths.
pub use crate::vocab::{message, meta, registry};
// The handles are created and driven by the engine (crate::net::handle); they are
// public API under their old paths.
pub use crate::net::handle::sse_stream as sse;
pub use crate::net::handle::ws_task as conn;
#[cfg(feature = "webtransport")]
pub use crate::net::handle::wt_session as wt;
pub use crate::net::handle::{callbacks, client, connection};
