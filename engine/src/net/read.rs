//! The read path. Every shard owns one read arena: a connection reads into the
//! arena's free tail and splits off exactly the bytes it got, so idle connections
//! hold no read buffer at all and complete frames leave as `Bytes` slices of the
//! arena (no copy). Only a partial frame left at the end of a read is kept by the
//! connection, and a small one is copied out so it does not pin a whole arena block.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_lite::AsyncRead;

use super::socket::Socket;

/// Per-shard arena blocks are this big.
const BLOCK: usize = 256 * 1024;
/// Partial frames at most this big are copied out of the arena.
const COPY_OUT_BELOW: usize = 4 * 1024;

/// A shard's read arena.
#[derive(Debug)]
pub(crate) struct ReadArena {
    block: BytesMut,
}

impl ReadArena {
    pub(crate) fn new() -> Self {
        Self {
            block: BytesMut::new(),
        }
    }

    /// A zero-initialised free region of at least `want` bytes (and at most `want`).
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.block.len() < want {
            // Old block stays alive only while frames cut from it are alive.
            self.block = BytesMut::zeroed(BLOCK.max(want));
        }
        &mut self.block[..want]
    }

    fn take(&mut self, n: usize) -> BytesMut {
        self.block.split_to(n)
    }
}

/// Poll one read from `stream` into the arena and append what arrived to `pending`.
/// `Ready(Ok(0))` means the peer closed its side.
pub(crate) fn poll_read_into(
    stream: &RefCell<Socket>,
    arena: &RefCell<ReadArena>,
    read_size: usize,
    pending: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let chunk = {
        let mut arena = arena.borrow_mut();
        let mut stream = stream.borrow_mut();
        let spare = arena.spare(read_size);
        match Pin::new(&mut *stream).poll_read(cx, spare) {
            Poll::Ready(Ok(n)) => arena.take(n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    };
    let n = chunk.len();
    if pending.is_empty() {
        *pending = chunk;
    } else {
        pending.extend_from_slice(&chunk);
    }
    Poll::Ready(Ok(n))
}

/// Read once (awaiting readiness) and append to `pending`; 0 means EOF.
pub(crate) async fn read_into(
    stream: &RefCell<Socket>,
    arena: &RefCell<ReadArena>,
    read_size: usize,
    pending: &mut BytesMut,
) -> io::Result<usize> {
    poll_fn(|cx| poll_read_into(stream, arena, read_size, pending, cx)).await
}

/// After decoding: release the arena if nothing is pending, and copy a small partial
/// frame out so it does not keep a whole arena block alive.
pub(crate) fn settle(pending: &mut BytesMut) {
    if pending.is_empty() {
        *pending = BytesMut::new();
    } else if pending.len() < COPY_OUT_BELOW {
        *pending = BytesMut::from(&pending[..]);
    }
}
