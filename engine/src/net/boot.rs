//! Binding at start-up, on the main thread: one SO_REUSEPORT socket per shard for
//! each listener (so bind errors surface before anything starts, and `host:0`
//! works), handed to the shards afterwards.

use std::net::SocketAddr;

/// Why the engine could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Bind one SO_REUSEPORT listener per shard on `addr` (port 0: the first bind
/// picks the port and the rest share it).
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let l = bind_reuseport(addr)
            .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
        }
        out.push(l);
    }
    Ok((out, addr))
}

/// Bind one SO_REUSEPORT UDP socket per shard on `addr` (port 0: the first bind
/// picks the port).
pub(crate) fn bind_udp(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::UdpSocket>, SocketAddr), StartError> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let s = bind_udp_reuseport(addr).map_err(|e| {
            StartError(format!(
                "webtransport: cannot bind UDP {addr}: {e} (set webtransport.listen)"
            ))
        })?;
        if addr.port() == 0 {
            addr = s
                .local_addr()
                .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
        }
        out.push(s);
    }
    Ok((out, addr))
}

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
