//! What applications program against: the [`Engine`](engine::Engine), callback
//! handlers ([`WsCallbacks`](callbacks::WsCallbacks)) and async handlers
//! ([`WsConn`](conn::WsConn)), the [`Connection`](connection::Connection) handle,
//! messages, and the built-in endpoints.

pub mod builtin;
pub mod callbacks;
pub mod conn;
pub mod connection;
pub mod engine;
pub mod message;
pub mod meta;
pub mod registry;
pub mod router;
pub mod sse;
pub mod wt;
pub mod wt_builtin;
