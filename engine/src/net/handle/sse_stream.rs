//! [`SseStream`]: what an async Server-Sent Events handler gets.

use std::future::poll_fn;
use std::ops::Deref;
use std::task::Poll;

use super::connection::Connection;
use super::ws_task::WsConn;
use crate::net::driver::WRITE;
use crate::net::tcp_conn::SendError;
pub use crate::proto::sse::Event;

/// One Server-Sent Events stream, owned by its handler on the stream's shard.
///
/// Room membership, `send`, metadata and the request's query come from
/// [`Connection`] through `Deref`; room messages reach the stream with their
/// `epoch:seq` ids. When the handler returns, the stream ends.
pub struct SseStream {
    conn: WsConn,
}

impl SseStream {
    pub(crate) fn from_conn(conn: WsConn) -> Self {
        Self { conn }
    }

    /// Queue one event for this client.
    pub fn send_event(&self, event: &Event) -> Result<(), SendError> {
        let handle: &Connection = &self.conn;
        let bytes = crate::proto::sse::encode(event).map_err(|_| SendError::Closed)?;
        let queued = handle.conn.enqueue(bytes, &handle.shard.stats);
        handle.shard.schedule(&handle.conn, WRITE);
        queued
    }

    /// Resolves when the client has gone away (or the server closed the stream):
    /// the place to end a ticker loop.
    pub async fn closed(&self) {
        let handle: &Connection = &self.conn;
        let Some(inbox) = handle.conn.task_inbox() else {
            return;
        };
        poll_fn(|cx| {
            if inbox.ended.get() {
                Poll::Ready(())
            } else {
                inbox.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

impl Deref for SseStream {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("id", &self.conn.conn.id)
            .finish()
    }
}
