//! The handles handlers hold, defined here because the engine creates and drives
//! them; the public API (`crate::app`) re-exports them. [`client::ClientHandle`]
//! is the vocabulary they share; [`connection::Connection`]
//! (WebSocket/SSE, callback style), [`ws_task::WsConn`] (an async WebSocket handler's
//! connection), [`sse_stream::SseStream`], [`wt_session::WtSession`] (and the
//! session state rooms hold), and the [`callbacks::WsCallbacks`] the driver calls.

pub mod callbacks;
pub mod client;
pub mod connection;
pub mod sse_stream;
pub mod ws_task;
#[cfg(feature = "webtransport")]
pub mod wt_session;
