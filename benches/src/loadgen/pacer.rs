//! Precise sleeping for fixed-rate publishing: a per-publisher `timerfd`
//! (nanosecond hrtimer, no timer slack) registered with tokio, instead of
//! tokio's 1 ms timer wheel. Falls back to `tokio::time::sleep_until` if
//! `timerfd_create` fails.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A reusable precise sleeper.
#[derive(Debug)]
pub struct Pacer {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// Creates the timerfd (or the fallback). Must be called inside the runtime.
    pub fn new() -> Self {
        // SAFETY: plain syscall; on success we take ownership of the new fd.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        let fd = if raw >= 0 {
            // SAFETY: `raw` is a fresh fd owned by nobody else.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            // `AsyncFd::new` is deprecated in tokio 1.54 in favour of the unsafe
            // `register` (not in older 1.x); it is sound here because the
            // AsyncFd owns the fd, so it cannot be closed while registered.
            #[allow(deprecated)]
            let afd = AsyncFd::new(owned);
            afd.ok()
        } else {
            None
        };
        Pacer { fd }
    }

    /// Sleeps until `deadline` (returns at once if it has passed).
    pub async fn sleep_until(&mut self, deadline: Instant) {
        let now = Instant::now();
        if deadline <= now {
            return;
        }
        let Some(fd) = &self.fd else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        let d = deadline - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                // Never 0/0, which would disarm the timer.
                tv_nsec: (d.subsec_nanos().max(1)) as libc::c_long,
            },
        };
        // SAFETY: valid timerfd; `spec` lives on our stack; old value not requested.
        let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            let Ok(mut guard) = fd.readable().await else {
                tokio::time::sleep_until(deadline).await;
                return;
            };
            let mut ticks = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte stack buffer from a valid fd.
            let n = unsafe { libc::read(fd.as_raw_fd(), ticks.as_mut_ptr().cast(), ticks.len()) };
            if n == 8 {
                return;
            }
            let err = io::Error::last_os_error();
            if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            if n < 0 && err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Unexpected: don't spin, fall back to the coarse timer.
            tokio::time::sleep_until(deadline).await;
            return;
        }
    }
}
