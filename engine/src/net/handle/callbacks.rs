//! Callback handlers: the lean way to serve WebSocket connections.
//!
//! A connection served by callbacks has no task of its own — the shard's driver calls
//! these methods as events arrive — so an idle connection costs a few hundred bytes.
//! Use [`Engine::websocket`](crate::Engine::websocket) for an async handler with
//! `recv().await` when sequential code reads better.

use super::connection::Connection;
use crate::vocab::message::Message;

/// Event callbacks for one endpoint; shared by every shard, so `Send + Sync`.
/// Each call runs on the connection's shard and must not block. A panic closes
/// only that connection (1011) and is counted in `handler_panics`.
pub trait WsCallbacks: Send + Sync + 'static {
    /// The handshake completed.
    fn on_open(&self, conn: &Connection) {
        let _ = conn;
    }

    /// A complete data message arrived.
    fn on_message(&self, conn: &Connection, msg: Message);

    /// The connection is over (whatever ended it); called exactly once.
    fn on_close(&self, conn: &Connection) {
        let _ = conn;
    }
}
