//! The byte stream under a connection: plain TCP, or TLS over TCP driven by the
//! shard (see [`super::tls`]). The read path, the driver's gathered writes and the
//! accept path's one-shot answers all go through this type, so they do not care
//! which listener accepted the connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

#[cfg(feature = "tls")]
use super::tls::TlsStream;

/// A connection's socket.
pub(crate) enum Socket {
    /// Plain TCP (`ws://`, `http://`).
    Plain(TcpStream),
    /// TLS over TCP (`wss://`, `https://`); boxed: the TLS state is large and the
    /// per-connection struct is a headline figure.
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

impl Socket {
    fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(s) => s,
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.tcp(),
        }
    }

    /// The client's address.
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr().map_err(io::Error::from)
    }

    /// The TCP socket's descriptor.
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// Whether this is a TLS connection.
    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return matches!(self, Socket::Tls(_));
        #[cfg(not(feature = "tls"))]
        false
    }

    /// TLS records are waiting to be written (a reply rustls produced while
    /// reading, e.g. to a key update): the driver schedules a write for them.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Socket::Plain(_) => false,
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.wants_write(),
        }
    }

    /// Write buffered TLS records until none are left or the socket is full.
    /// Plain TCP buffers nothing: always ready.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(crate) fn poll_flush_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Plain(_) => Poll::Ready(Ok(())),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.poll_flush_tls(cx),
        }
    }

    /// The driver's write: send `buf` (already gathered from the queue) and return
    /// how much of it was taken. Plain TCP: one send(). TLS: after earlier records
    /// are flushed, `buf` is encrypted as one batch of records (taken whole or in
    /// part, up to rustls's buffer limit) and flushed with one send where the socket
    /// has room; what does not fit stays buffered for [`Socket::poll_flush_buffered`].
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.poll_send(cx, buf),
        }
    }

    /// Best effort, never waiting: end a TLS session with close_notify. Called
    /// when a connection finishes; plain TCP has nothing to say.
    pub(crate) fn close_notify(&mut self) {
        #[cfg(feature = "tls")]
        if let Socket::Tls(t) = self {
            t.close_notify();
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.poll_read_plain(cx, buf),
        }
    }
}

/// The accept path's writes (`write_all` of an HTTP answer or the upgrade
/// response): for TLS a write completes only once its records are on the wire, so
/// an answer is never lost when the socket is dropped right after it.
impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.poll_write_through(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.poll_flush_tls(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_close(cx),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => {
                t.close_notify();
                futures_lite::ready!(t.poll_flush_tls(cx))?;
                t.poll_close_tcp(cx)
            }
        }
    }
}
