//! [`WsConn`]: what an async WebSocket handler gets.

use std::future::poll_fn;
use std::ops::Deref;
use std::task::Poll;

use super::connection::Connection;
use crate::net::driver::READ;
use crate::vocab::message::Message;

/// One WebSocket connection owned by an async handler on the connection's shard.
///
/// The shard's driver reads and decodes frames, answers pings and runs the close
/// handshake; [`WsConn::recv`] hands over data messages (at most a small, fixed
/// number wait — the driver stops reading the socket until the handler catches up).
/// Everything else — `send`, rooms, `broadcast`, metadata — comes from
/// [`Connection`] through `Deref`. When the handler returns, the connection is closed
/// with 1000 after what is queued has been written.
pub struct WsConn {
    handle: Connection,
}

impl WsConn {
    pub(crate) fn new(handle: Connection) -> Self {
        Self { handle }
    }

    /// The next data message; `None` once the connection is over (closed by either
    /// side, a protocol error — answered with its close code — or a network error).
    pub async fn recv(&mut self) -> Option<Message> {
        let conn = &self.handle.conn;
        let shard = &self.handle.shard;
        let inbox = conn.task_inbox()?;
        poll_fn(|cx| {
            let next = inbox.messages.borrow_mut().pop_front();
            match next {
                Some(m) => {
                    if inbox.paused.replace(false) {
                        shard.schedule(conn, READ);
                    }
                    Poll::Ready(Some(m))
                }
                None if inbox.ended.get() => Poll::Ready(None),
                None => {
                    inbox.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Deref for WsConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.handle
    }
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("id", &self.handle.conn.id)
            .finish()
    }
}
