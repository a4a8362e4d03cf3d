//! A doorbell wakes a shard that sleeps in io_uring when another thread hands it work.
//!
//! It is a non-blocking socketpair: the ringer writes one byte, the shard awaits the
//! read end through glommio (so the wait is an io_uring poll, not a busy loop). An
//! atomic flag makes ringing cheap: only the first ring after the shard last listened
//! costs a syscall; later rings see the flag already set and return at once.

use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The ringing side of a doorbell; cheap to share between threads.
#[derive(Debug)]
pub struct Bell {
    pending: AtomicBool,
    writer: StdUnixStream,
}

impl Bell {
    /// Wake the listener. Costs a syscall only when no ring is already pending.
    pub fn ring(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // A full socket buffer means rings are already waiting: nothing is lost.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// The listening side of a doorbell before it is attached to an executor (`Send`).
#[derive(Debug)]
pub struct Listener {
    bell: Arc<Bell>,
    reader: StdUnixStream,
}

/// The listening side attached to the current glommio executor.
#[derive(Debug)]
pub struct LocalListener {
    bell: Arc<Bell>,
    reader: glommio::net::UnixStream,
}

/// Create a connected (bell, listener) pair.
pub fn doorbell() -> io::Result<(Arc<Bell>, Listener)> {
    let (reader, writer) = StdUnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    let bell = Arc::new(Bell {
        pending: AtomicBool::new(false),
        writer,
    });
    let listener = Listener {
        bell: bell.clone(),
        reader,
    };
    Ok((bell, listener))
}

impl Listener {
    /// Attach to the glommio executor of the calling thread.
    pub fn attach(self) -> LocalListener {
        // SAFETY: the fd comes from a socketpair we own and is handed over exactly once.
        let reader = unsafe { glommio::net::UnixStream::from_raw_fd(self.reader.into_raw_fd()) };
        LocalListener {
            bell: self.bell,
            reader,
        }
    }
}

impl LocalListener {
    /// Wait until the bell rings, then re-arm it.
    ///
    /// After this returns the caller must look for work again: a ring that happens
    /// after re-arming wakes the next `wait`, so no hand-over is missed.
    pub async fn wait(&mut self) -> io::Result<()> {
        use futures_lite::AsyncReadExt;
        let mut scratch = [0u8; 64];
        let n = self.reader.read(&mut scratch).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "doorbell closed",
            ));
        }
        self.bell.pending.store(false, Ordering::SeqCst);
        Ok(())
    }
}
