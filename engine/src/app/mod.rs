//! What applications program against: the [`Engine`](engine::Engine), WebSocket
//! handlers and their [`WsConn`](conn::WsConn), messages, built-in endpoints.

pub mod builtin;
pub mod conn;
pub mod engine;
pub mod message;
