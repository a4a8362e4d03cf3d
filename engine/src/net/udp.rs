//! Batched UDP I/O on a shard's QUIC socket: `recvmmsg`/`sendmmsg` with
//! MSG_DONTWAIT, so one syscall moves up to [`BATCH`] datagrams (to any number of
//! peers) and the shard never blocks in the kernel. Readiness comes from glommio
//! (a 1-byte MSG_PEEK through io_uring), so an idle socket costs no CPU.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams per syscall.
pub(crate) const BATCH: usize = 32;
/// Receive buffer per datagram (we advertise max_udp_payload_size 1500).
pub(crate) const RECV_SIZE: usize = 2048;

/// Receive up to [`BATCH`] datagrams into `bufs` (BATCH * RECV_SIZE bytes); each
/// `(len, from)` goes to `out`. Returns how many arrived (0: none waiting).
pub(crate) fn recv_batch(
    fd: RawFd,
    bufs: &mut [u8],
    out: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<usize> {
    out.clear();
    // SAFETY: zeroed C structs are valid initial values for these plain-data types.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let n = BATCH.min(bufs.len() / RECV_SIZE);
    for i in 0..n {
        iovs[i].iov_base = bufs[i * RECV_SIZE..].as_mut_ptr().cast();
        iovs[i].iov_len = RECV_SIZE;
        msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every pointer in `msgs` points into live locals or `bufs`, sized as told.
    let got = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(0),
            _ => Err(e),
        };
    }
    for i in 0..got as usize {
        if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            // Larger than we allow peers to send: drop it.
            out.push((
                0,
                to_socket_addr(&addrs[i]).unwrap_or(([0, 0, 0, 0], 0).into()),
            ));
            continue;
        }
        if let Some(from) = to_socket_addr(&addrs[i]) {
            out.push((msgs[i].msg_len as usize, from));
        }
    }
    Ok(got as usize)
}

/// Send `packets` (byte ranges of `buf` with destinations) with as few `sendmmsg`
/// calls as possible. Returns how many were sent; the rest hit a full socket buffer
/// (EAGAIN) and are dropped — QUIC retransmits what is lost.
pub(crate) fn send_batch(
    fd: RawFd,
    buf: &[u8],
    packets: &[(std::ops::Range<usize>, SocketAddr)],
) -> usize {
    let mut sent = 0;
    for chunk in packets.chunks(BATCH) {
        // SAFETY: as in recv_batch.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (range, to)) in chunk.iter().enumerate() {
            let (storage, len) = super::boot::sockaddr(*to);
            addrs[i] = storage;
            iovs[i].iov_base = buf[range.clone()].as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = range.len();
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = len;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut off = 0;
        while off < chunk.len() {
            // SAFETY: `msgs[off..]` point into live locals and `buf`; the kernel only reads.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[off..].as_mut_ptr(),
                    (chunk.len() - off) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return sent;
            }
            off += n as usize;
            sent += n as usize;
        }
    }
    sent
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_one_call_each() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let mut buf = Vec::new();
        let mut packets = Vec::new();
        for i in 0..40u8 {
            let start = buf.len();
            buf.extend(std::iter::repeat_n(i, 100 + i as usize));
            packets.push((start..buf.len(), to));
        }
        assert_eq!(send_batch(a.as_raw_fd(), &buf, &packets), 40);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut rbuf = vec![0u8; BATCH * RECV_SIZE];
        let mut got = Vec::new();
        assert_eq!(
            recv_batch(b.as_raw_fd(), &mut rbuf, &mut got).unwrap(),
            BATCH
        );
        assert_eq!(got[5].0, 105);
        assert_eq!(got[5].1, a.local_addr().unwrap());
        assert_eq!(rbuf[5 * RECV_SIZE], 5);
        assert_eq!(recv_batch(b.as_raw_fd(), &mut rbuf, &mut got).unwrap(), 8);
        assert_eq!(recv_batch(b.as_raw_fd(), &mut rbuf, &mut got).unwrap(), 0);
    }
}
