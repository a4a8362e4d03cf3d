//! TLS for WebSocket and SSE (`wss://`, `https://`) on the `tls.listen` listener.
//!
//! rustls is driven by the shard like the plain socket: there is no thread or task
//! per connection. Reads pull ciphertext from the socket into the connection's
//! rustls state and hand plaintext to the usual read path (the decoders do not know
//! about TLS); the driver's gathered write is encrypted as one batch and sent with
//! one send where the socket has room. The certificate is read once per handshake
//! from [`CertResolver`], which `SIGHUP` / [`crate::EngineHandle::reload_tls`]
//! swap: new handshakes use the new certificate, live connections keep their keys.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_lite::{ready, AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;

use super::shard::Shard;
use super::socket::Socket;
use crate::cert::load_certified_key;
use crate::config::{TlsConfig, TlsVersion};
use crate::stats::ShardStats;

/// Plaintext rustls may hold encrypted and unsent per connection: the driver hands
/// it at most this much before the previous batch is on the wire.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;
/// Bound on the copy that turns rustls's record list into one send().
const GATHER_MAX: usize = TLS_BUFFER_LIMIT + 4 * 1024;

thread_local! {
    /// Per-shard scratch for gathering queued TLS records into one send().
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The certificate in use, swapped on reload and read once per handshake.
#[derive(Debug)]
pub(crate) struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

/// TLS state every shard shares.
pub(crate) struct TlsShared {
    pub(crate) server_config: Arc<ServerConfig>,
    resolver: Arc<CertResolver>,
    cert_path: String,
    key_path: String,
    /// SHA-256 of the leaf certificate in use.
    sha256: std::sync::Mutex<[u8; 32]>,
}

impl TlsShared {
    /// Load `tls.cert` and `tls.key` and build the server configuration.
    pub(crate) fn new(c: &TlsConfig) -> Result<Self, String> {
        let (key, sha) = load_certified_key(&c.cert, &c.key)?;
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(Arc::new(key)),
        });
        let versions: &[&'static rustls::SupportedProtocolVersion] = match c.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .map_err(|e| format!("tls.min_version: {e}"))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        // WebSocket and SSE are served over HTTP/1.1 only: a client that offers ALPN
        // without it is refused in the handshake (no_application_protocol).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server_config: Arc::new(config),
            resolver,
            cert_path: c.cert.clone(),
            key_path: c.key.clone(),
            sha256: std::sync::Mutex::new(sha),
        })
    }

    /// SHA-256 of the leaf certificate in use.
    pub(crate) fn cert_sha256(&self) -> [u8; 32] {
        self.sha256.lock().map(|g| *g).unwrap_or_default()
    }

    /// Read the certificate and key files again and use them for new handshakes.
    /// On any error the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<[u8; 32], String> {
        let (key, sha) = load_certified_key(&self.cert_path, &self.key_path)?;
        match self.resolver.current.write() {
            Ok(mut g) => *g = Arc::new(key),
            Err(_) => return Err("tls: certificate lock poisoned".into()),
        }
        if let Ok(mut g) = self.sha256.lock() {
            *g = sha;
        }
        Ok(sha)
    }
}

/// A TLS session over a shard's TCP socket.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Plaintext taken by a write-through write whose records are not all on the
    /// wire yet: reported once they are (see [`TlsStream::poll_write_through`]).
    unreported: usize,
    /// close_notify was queued.
    notified: bool,
}

/// rustls's blocking `Read`/`Write` view of the non-blocking socket: `Pending`
/// becomes `WouldBlock` (the waker is registered by the poll underneath).
struct SyncIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// rustls hands over one buffer per record: copy them together so a batch of
    /// records leaves in one send() (the frames-per-write the plain path gets).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let bufs: Vec<&[u8]> = bufs
            .iter()
            .map(|b| &**b)
            .filter(|b| !b.is_empty())
            .collect();
        match bufs.as_slice() {
            [] => Ok(0),
            [one] => self.write(one),
            _ => GATHER.with(|g| {
                let mut g = g.borrow_mut();
                g.clear();
                for b in &bufs {
                    if !g.is_empty() && g.len() + b.len() > GATHER_MAX {
                        break;
                    }
                    g.extend_from_slice(b);
                }
                self.write(&g)
            }),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    pub(crate) fn new(tcp: TcpStream, mut tls: ServerConnection) -> Self {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Self {
            tcp,
            tls,
            unreported: 0,
            notified: false,
        }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub(crate) fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Write buffered records until none are left or the socket is full.
    pub(crate) fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut io = SyncIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Run the handshake to completion (our last flight included).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_flush_tls(cx))?;
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            let mut io = SyncIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.read_tls(&mut io) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed during the TLS handshake",
                    )))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued the matching alert: send it if the socket takes it.
                let _ = self.poll_flush_tls(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }

    /// Decrypt into `buf`: as much plaintext as is available, reading the socket
    /// until `buf` is full or it would block. `Ok(0)`: the client closed.
    pub(crate) fn poll_read_plain(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut filled = 0;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                // close_notify: end of stream after what was read.
                Ok(0) => return Poll::Ready(Ok(filled)),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Poll::Ready(Ok(filled));
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: an error after what was read.
                Err(e) if filled == 0 => return Poll::Ready(Err(e)),
                Err(_) => return Poll::Ready(Ok(filled)),
            }
            let mut io = SyncIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.read_tls(&mut io) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if filled > 0 {
                        Poll::Ready(Ok(filled))
                    } else {
                        Poll::Pending
                    };
                }
                Err(e) if filled == 0 => return Poll::Ready(Err(e)),
                Err(_) => return Poll::Ready(Ok(filled)),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert goes out with the driver's next write, or not at all:
                // the connection is failing either way.
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }

    /// The driver's write (see [`Socket::poll_send`]).
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_flush_tls(cx))?;
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        // One send for the batch; a full socket leaves the rest for the next turn
        // (the waker is registered).
        if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    /// `AsyncWrite::poll_write` for the accept path: reports a write only once its
    /// records are on the wire, so `write_all` followed by a drop loses nothing.
    /// The caller polls again with the same bytes while this is pending
    /// (`write_all` does).
    pub(crate) fn poll_write_through(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_flush_tls(cx))?;
            if self.unreported > 0 {
                return Poll::Ready(Ok(std::mem::take(&mut self.unreported)));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = self.tls.writer().write(buf)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unreported = n;
        }
    }

    /// Queue close_notify and send it if the socket has room (never waits).
    pub(crate) fn close_notify(&mut self) {
        if std::mem::replace(&mut self.notified, true) {
            return;
        }
        self.tls.send_close_notify();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll_flush_tls(&mut cx);
    }

    pub(crate) fn poll_close_tcp(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_close(cx)
    }
}

/// Every way a TLS connection ends (an HTTP answer written, a finished stream)
/// says so with close_notify where the socket takes it: clients tell a clean end
/// from a truncation by it.
impl Drop for TlsStream {
    fn drop(&mut self) {
        if !self.tls.is_handshaking() {
            self.close_notify();
        }
    }
}

/// The TLS side of an accepted connection (its handshake runs later, in
/// [`super::accept::serve`], within the handshake deadline); `None` if rustls could
/// not set up a session (logged).
pub(crate) fn wrap(shard: &Shard, tls: &TlsShared, stream: TcpStream) -> Option<Socket> {
    match ServerConnection::new(tls.server_config.clone()) {
        Ok(conn) => Some(Socket::Tls(Box::new(TlsStream::new(stream, conn)))),
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "TLS session setup failed");
            None
        }
    }
}

/// Counts a handshake that did not complete (failed, or cut by the handshake
/// deadline, which drops the future) when dropped armed.
struct HandshakeGuard<'a> {
    shard: &'a Shard,
    armed: bool,
}

impl Drop for HandshakeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            ShardStats::add(&self.shard.stats.tls_handshake_failures, 1);
            tracing::debug!(
                shard = self.shard.id,
                "TLS handshake not completed before the handshake deadline"
            );
        }
    }
}

/// Complete a TLS connection's handshake before its request head is read (a no-op
/// for plain TCP). `Err`: the connection failed (an alert was sent if possible);
/// the caller drops it.
pub(crate) async fn handshake(shard: &Shard, stream: &RefCell<Socket>) -> Result<(), ()> {
    if !stream.borrow().is_tls() {
        return Ok(());
    }
    let mut guard = HandshakeGuard { shard, armed: true };
    let done = poll_fn(|cx| match &mut *stream.borrow_mut() {
        Socket::Tls(t) => t.poll_handshake(cx),
        Socket::Plain(_) => Poll::Ready(Ok(())),
    })
    .await;
    guard.armed = false;
    match done {
        Ok(()) => {
            ShardStats::add(&shard.stats.tls_handshakes, 1);
            Ok(())
        }
        Err(e) => {
            ShardStats::add(&shard.stats.tls_handshake_failures, 1);
            tracing::debug!(
                shard = shard.id,
                remote = %stream.borrow().peer_addr().map_or_else(|_| "-".to_string(), |a| a.to_string()),
                error = %e,
                "TLS handshake failed"
            );
            Err(())
        }
    }
}
