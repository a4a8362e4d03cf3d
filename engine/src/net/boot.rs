//! Binding at start-up, on the main thread: one SO_REUSEPORT socket per shard for
//! each listener (so bind errors surface before anything starts, and `host:0`
//! works), handed to the shards afterwards.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use corecast_shards::Inbox;

use super::accept::accept_loop;
use super::endpoint::Shared;
use super::shard::{Shard, ShardMsg};
use crate::config::Config;

/// Which listener a [`StartError::Bind`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `listen` (WebSocket, SSE, the API).
    Main,
    /// `tls.listen`.
    Tls,
    /// `webtransport.listen` (UDP).
    WebTransport,
    /// `metrics.listen`.
    Metrics,
}

/// Why the engine could not start. `Display` gives the message the binary prints.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration or a registration cannot be served (e.g. a bad `auth:`
    /// section, more shards than supported).
    Config(String),
    /// A listener could not be bound.
    Bind {
        /// Which one.
        listener: Listener,
        /// The address it was to bind.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A certificate or key (`tls:`, `webtransport.cert`) could not be loaded or made.
    Certificate(String),
    /// The shard runtime could not start or a shard failed (io_uring set-up over
    /// `RLIMIT_MEMLOCK`, threads, the mesh), with the reason.
    Runtime(String),
    /// The cluster bridge thread could not start (`cluster.url`, its runtime).
    Cluster(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(m) | StartError::Certificate(m) | StartError::Runtime(m) => {
                f.write_str(m)
            }
            StartError::Bind {
                listener,
                addr,
                source,
            } => match listener {
                Listener::Main => write!(f, "cannot listen on {addr}: {source}"),
                Listener::Tls => write!(f, "tls.listen: cannot listen on {addr}: {source}"),
                Listener::Metrics => write!(f, "metrics: cannot listen on {addr}: {source}"),
                Listener::WebTransport => write!(
                    f,
                    "webtransport: cannot bind UDP {addr}: {source} (set webtransport.listen)"
                ),
            },
            StartError::Cluster(e) => write!(f, "cluster: cannot start the bridge: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. } | StartError::Cluster(source) => Some(source),
            _ => None,
        }
    }
}

impl StartError {
    /// A listener's address was taken or not allowed.
    pub fn is_bind(&self) -> bool {
        matches!(self, StartError::Bind { .. })
    }
}

/// Every socket the configuration asks for, bound on the main thread before any
/// shard starts, with the TLS and WebTransport material they need.
pub(crate) struct Bound {
    /// The main listener, one socket per shard, and its address.
    pub(crate) tcp: Vec<std::net::TcpListener>,
    pub(crate) local_addr: SocketAddr,
    /// WebTransport's UDP sockets and address (empty / `None` when off).
    pub(crate) udp: Vec<std::net::UdpSocket>,
    pub(crate) wt_addr: Option<SocketAddr>,
    /// WebTransport's certificate and key.
    #[cfg(feature = "webtransport")]
    pub(crate) wt: Option<super::wt_cert::WtCerts>,
    /// The TLS listener (`tls:`): settings, sockets, address.
    pub(crate) tls: Option<std::sync::Arc<super::endpoint::TlsShared>>,
    pub(crate) tls_listeners: Vec<std::net::TcpListener>,
    pub(crate) tls_addr: Option<SocketAddr>,
}

/// Bind what `config` asks for, `shards` sockets each.
pub(crate) fn bind_all(config: &Config, shards: usize) -> Result<Bound, StartError> {
    let (listeners, local_addr) = bind_listeners(Listener::Main, config.listen, shards)?;
    #[cfg(feature = "webtransport")]
    let (wt, udp_sockets, wt_addr) = if config.webtransport.enabled {
        let wt =
            super::wt_cert::WtCerts::new(&config.webtransport).map_err(StartError::Certificate)?;
        let udp_addr = config.webtransport.listen.unwrap_or(local_addr);
        let (sockets, addr) = bind_udp(udp_addr, shards)?;
        (Some(wt), sockets, Some(addr))
    } else {
        (None, Vec::new(), None)
    };
    #[cfg(not(feature = "webtransport"))]
    let (udp_sockets, wt_addr) = if config.webtransport.enabled {
        return Err(StartError::Config(
            "webtransport.enabled: this build has no WebTransport support (the \
             `webtransport` cargo feature); set webtransport.enabled: false"
                .into(),
        ));
    } else {
        (Vec::new(), None)
    };
    let (tls, tls_listeners, tls_addr) = match &config.tls {
        #[cfg(feature = "tls")]
        Some(c) => {
            let tls = crate::net::tls::TlsShared::new(c).map_err(StartError::Certificate)?;
            let (ls, addr) = bind_listeners(Listener::Tls, c.listen, shards)?;
            (Some(std::sync::Arc::new(tls)), ls, Some(addr))
        }
        #[cfg(not(feature = "tls"))]
        Some(_) => {
            return Err(StartError::Config(
                "tls: this build has no TLS support (the `tls` cargo feature)".into(),
            ))
        }
        None => (None, Vec::new(), None),
    };
    Ok(Bound {
        tcp: listeners,
        local_addr,
        udp: udp_sockets,
        wt_addr,
        #[cfg(feature = "webtransport")]
        wt,
        tls,
        tls_listeners,
        tls_addr,
    })
}

/// Bind `shards` sockets on `addr` with `bind` (SO_REUSEPORT); port 0: the first
/// bind picks the port and the rest share it. Errors name `listener`.
fn bind_each<S>(
    listener: Listener,
    addr: SocketAddr,
    shards: usize,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
    local_addr: impl Fn(&S) -> std::io::Result<SocketAddr>,
) -> Result<(Vec<S>, SocketAddr), StartError> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let s = bind(addr).map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })?;
        if addr.port() == 0 {
            addr = local_addr(&s)
                .map_err(|e| StartError::Runtime(format!("cannot read the bound address: {e}")))?;
        }
        out.push(s);
    }
    Ok((out, addr))
}

/// One SO_REUSEPORT TCP listener per shard on `addr`.
pub(crate) fn bind_listeners(
    listener: Listener,
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    bind_each(listener, addr, shards, bind_reuseport, |l| l.local_addr())
}

/// One SO_REUSEPORT UDP socket per shard on `addr` (WebTransport).
#[cfg(feature = "webtransport")]
pub(crate) fn bind_udp(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::UdpSocket>, SocketAddr), StartError> {
    bind_each(
        Listener::WebTransport,
        addr,
        shards,
        bind_udp_reuseport,
        |s| s.local_addr(),
    )
}

#[cfg(feature = "webtransport")]
fn bind_udp_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Room for bursts of fan-out packets and incoming acks.
    let _ = s.set_send_buffer_size(4 << 20);
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd as _;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor we own; errors are checked.
    unsafe {
        let fd = libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let (storage, len) = sockaddr(addr);
        if libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::listen(fd, 4096) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

pub(crate) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is big enough and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: storage is big enough and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// What each shard takes at start-up, once: its mesh inbox and the sockets bound for
/// it on the main thread (as raw descriptors: glommio sockets are made on the shard).
pub(crate) struct ShardBoot {
    inboxes: Vec<Mutex<Option<Inbox<ShardMsg>>>>,
    tcp: Vec<Mutex<Option<RawFd>>>,
    #[cfg_attr(not(feature = "webtransport"), allow(dead_code))]
    udp: Vec<Mutex<Option<RawFd>>>,
    tls: Vec<Mutex<Option<RawFd>>>,
}

impl ShardBoot {
    pub(crate) fn new(
        inboxes: Vec<Option<Inbox<ShardMsg>>>,
        tcp: Vec<std::net::TcpListener>,
        udp: Vec<std::net::UdpSocket>,
        tls: Vec<std::net::TcpListener>,
    ) -> Self {
        let fds = |v: Vec<RawFd>| v.into_iter().map(|fd| Mutex::new(Some(fd))).collect();
        Self {
            inboxes: inboxes.into_iter().map(Mutex::new).collect(),
            tcp: fds(tcp.into_iter().map(IntoRawFd::into_raw_fd).collect()),
            udp: fds(udp.into_iter().map(IntoRawFd::into_raw_fd).collect()),
            tls: fds(tls.into_iter().map(IntoRawFd::into_raw_fd).collect()),
        }
    }
}

/// `webtransport.cert: auto`: renew the certificate before it expires (one task,
/// on shard 0; the shards pick the new one up on their next connection).
#[cfg(feature = "webtransport")]
async fn renew_wt_cert(shared: Arc<Shared>) {
    // Sleep in bounded steps: the wait is computed from the wall clock, which
    // may jump (suspend, NTP) while the timer runs on the monotonic one.
    const MAX_STEP: std::time::Duration = std::time::Duration::from_secs(60);
    while !shared.is_shutting_down() {
        let Some(certs) = shared.wt.as_ref() else {
            return;
        };
        let wait = certs.renew(std::time::SystemTime::now());
        glommio::timer::sleep(wait.min(MAX_STEP)).await;
    }
}

/// Take slot `i` of `v` (each is taken by its shard, once).
fn take<T>(v: &[Mutex<Option<T>>], i: usize) -> Option<T> {
    v.get(i)
        .and_then(|m| m.lock().ok().and_then(|mut g| g.take()))
}

/// Shard `i`'s life on its executor: make its sockets, spawn its accept loops,
/// QUIC endpoint, driver and periodic tasks, then run its inbox until shutdown.
pub(crate) async fn run_shard(i: usize, shared: Arc<Shared>, boot: Arc<ShardBoot>) {
    let (Some(inbox), Some(fd)) = (take(&boot.inboxes, i), take(&boot.tcp, i)) else {
        return;
    };
    // SAFETY: `fd` is a listening socket we bound and handed to this shard only.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
    let shard = Rc::new(Shard::new(i, shared.clone()));
    #[cfg(feature = "webtransport")]
    if let (Some(fd), Some(wt)) = (take(&boot.udp, i), shared.wt.as_ref()) {
        // SAFETY: `fd` is a UDP socket we bound and handed to this shard only.
        let socket = unsafe { glommio::net::UdpSocket::from_raw_fd(fd) };
        let endpoint = super::quic::quiche_config(&shared, wt)
            .and_then(|q| super::quic::Endpoint::new(shard.clone(), socket, q));
        match endpoint {
            Ok(ep) => {
                ep.spawn();
                *shard.quic.borrow_mut() = Some(ep);
            }
            Err(e) => tracing::error!(shard = i, error = %e, "WebTransport disabled"),
        }
    }
    #[cfg(feature = "webtransport")]
    if i == 0 && shared.wt.as_ref().is_some_and(|w| w.is_auto()) {
        glommio::spawn_local(renew_wt_cert(shared.clone())).detach();
    }
    glommio::spawn_local(accept_loop(shard.clone(), listener, None)).detach();
    if let (Some(fd), Some(tls)) = (take(&boot.tls, i), shared.tls.clone()) {
        // SAFETY: `fd` is a listening socket we bound and handed to this shard only.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        glommio::spawn_local(accept_loop(shard.clone(), listener, Some(tls))).detach();
    }
    glommio::spawn_local(shard.clone().run_driver()).detach();
    glommio::spawn_local(shard.clone().run_sweeper()).detach();
    glommio::spawn_local(shard.clone().run_idle_sweeper()).detach();
    glommio::spawn_local(shard.clone().run_stall_sweeper()).detach();
    glommio::spawn_local(shard.clone().run_keepalive()).detach();
    shard.publish_flush_hold();
    glommio::spawn_local(shard.clone().run_flusher()).detach();
    #[cfg(feature = "cluster")]
    {
        glommio::spawn_local(shard.clone().run_bridge_backlog()).detach();
        glommio::spawn_local(shard.clone().run_cluster_counts()).detach();
    }
    shared
        .booted
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    shard.run_inbox(inbox).await;
    shared.stopped.shard_done();
}
