//! Starts one glommio executor per shard, each on its own thread pinned to a core.
//!
//! Executors are built inside their thread (`LocalExecutorBuilder::make`) so a failure
//! — most often io_uring's registered memory not fitting `RLIMIT_MEMLOCK` — comes back
//! to the caller as a [`PoolError`] naming the limit, instead of a panic in a thread.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;

pub use glommio::TaskRun;
use glommio::{LocalExecutorBuilder, Placement};

/// How to build the shards.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of shards; 0 means one per CPU this process may run on.
    pub shards: usize,
    /// io_uring registered buffer memory per shard, bytes (counts against RLIMIT_MEMLOCK).
    pub io_memory: usize,
    /// io_uring ring depth per shard.
    pub ring_depth: usize,
    /// Pin shard `i` to the i-th allowed CPU (wrapping when there are more shards).
    pub pin: bool,
    /// Thread name prefix.
    pub name: String,
    /// How the kernel hands network completions to a shard: `Interrupt` (stock
    /// io_uring, an IPI per completion made on another CPU), `Cooperative` or
    /// `Deferred` (no IPI; the shard collects them when it next enters the kernel).
    /// A kernel that refuses the flags falls back to `Interrupt` with a warning.
    pub task_run: TaskRun,
    /// Keep one multishot read poll armed per connection (`true`) instead of
    /// arming a one-shot poll whenever a read finds the socket empty. A kernel
    /// without multishot polls (< 5.13) falls back per thread on first use.
    pub multishot_read_poll: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            io_memory: 512 * 1024,
            ring_depth: 128,
            pin: true,
            name: "shard".into(),
            task_run: TaskRun::Cooperative,
            multishot_read_poll: true,
        }
    }
}

/// Why the pool could not start.
#[derive(Debug)]
pub struct PoolError(pub String);

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PoolError {}

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The shard count `0` ("auto") resolves to.
pub fn auto_shards() -> usize {
    allowed_cpus().len().max(1)
}

/// Current RLIMIT_MEMLOCK soft limit in bytes, if known.
pub fn memlock_limit() -> Option<u64> {
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0).then_some(lim.rlim_cur)
    }
}

/// Running shards.
#[derive(Debug)]
pub struct ShardPool {
    threads: Vec<JoinHandle<()>>,
    /// The task-run mode each shard's executor got (after any fallback).
    task_runs: Vec<TaskRun>,
}

impl ShardPool {
    /// Resolve the shard count of `config` (0 = auto).
    pub fn shard_count(config: &PoolConfig) -> usize {
        if config.shards == 0 {
            auto_shards()
        } else {
            config.shards
        }
    }

    /// Start the shards. `shard_main(i)` builds shard `i`'s main future inside its
    /// thread; the shard runs until that future completes. Returns once every executor
    /// is up, or the first start-up error (the shards that did start are left to the
    /// caller's shutdown signal).
    pub fn start<G, F>(config: &PoolConfig, shard_main: G) -> Result<Self, PoolError>
    where
        G: Fn(usize) -> F + Send + Sync + Clone + 'static,
        F: Future<Output = ()> + 'static,
    {
        let shards = Self::shard_count(config);
        let cpus = allowed_cpus();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(usize, TaskRun), String>>();
        let mut threads = Vec::with_capacity(shards);
        for i in 0..shards {
            let placement = if config.pin && !cpus.is_empty() {
                Placement::Fixed(cpus[i % cpus.len()])
            } else {
                Placement::Unbound
            };
            let builder = LocalExecutorBuilder::new(placement)
                .name(&format!("{}-{i}", config.name))
                .io_memory(config.io_memory)
                .ring_depth(config.ring_depth);
            let ready = ready_tx.clone();
            let main = shard_main.clone();
            let io_memory = config.io_memory;
            let task_run = config.task_run;
            let multishot_read_poll = config.multishot_read_poll;
            let thread = std::thread::Builder::new()
                .name(format!("{}-{i}", config.name))
                .spawn(move || {
                    // The rings are built by make(), on this thread.
                    glommio::set_io_uring_task_run(task_run);
                    glommio::set_io_uring_multishot_poll(multishot_read_poll);
                    match builder.make() {
                        Ok(ex) => {
                            let _ = ready.send(Ok((i, glommio::io_uring_task_run())));
                            ex.run(main(i));
                        }
                        Err(e) => {
                            let _ = ready.send(Err(describe_start_error(i, io_memory, &e)));
                        }
                    }
                })
                .map_err(|e| PoolError(format!("shard {i}: cannot spawn thread: {e}")))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut task_runs = vec![TaskRun::Interrupt; shards];
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok((i, mode))) => task_runs[i] = mode,
                Ok(Err(msg)) => return Err(PoolError(msg)),
                Err(_) => return Err(PoolError("a shard thread died while starting".into())),
            }
        }
        Ok(Self { threads, task_runs })
    }

    /// How each shard's ring delivers completions (index = shard), known once
    /// [`Self::start`] returned.
    pub fn task_runs(&self) -> &[TaskRun] {
        &self.task_runs
    }

    /// Wait for every shard to finish; reports shards that panicked.
    pub fn join(self) -> Result<(), PoolError> {
        let mut panicked = Vec::new();
        for (i, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() {
                panicked.push(i);
            }
        }
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(PoolError(format!("shards {panicked:?} panicked")))
        }
    }
}

fn describe_start_error(shard: usize, io_memory: usize, e: &glommio::GlommioError<()>) -> String {
    use glommio::{GlommioError, ReactorErrorKind};
    let limit = memlock_limit()
        .map(|l| format!("{l} bytes"))
        .unwrap_or_else(|| "unknown".into());
    let io = match e {
        GlommioError::IoError(io) | GlommioError::EnhancedIoError { source: io, .. } => Some(io),
        _ => None,
    };
    let refused = io
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|c| [libc::EPERM, libc::ENOSYS, libc::EACCES].contains(&c));
    if refused {
        // The kernel refused the ring itself (io_uring_setup), not its memory.
        return format!(
            "shard {shard}: cannot start the io_uring executor: {e}. io_uring blocked by \
             seccomp or io_uring_disabled: run the container with --security-opt \
             seccomp=unconfined (or a profile allowing io_uring_setup, io_uring_enter, \
             io_uring_register), or sysctl -w kernel.io_uring_disabled=0"
        );
    }
    if let GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(have, need)) = e {
        return format!(
            "shard {shard}: cannot start the io_uring executor: the locked-memory limit \
             (ulimit -l) is {have} bytes and io_uring needs at least {need}: raise it \
             (ulimit -l unlimited; docker --ulimit memlock=-1; systemd LimitMEMLOCK=infinity)"
        );
    }
    format!(
        "shard {shard}: cannot start the io_uring executor: {e}. Each shard registers \
         runtime.io_memory = {io_memory} bytes of locked memory and the locked-memory limit \
         (ulimit -l) is {limit}: lower runtime.io_memory or runtime.ring_depth, use fewer \
         shards, or raise the limit (ulimit -l unlimited; docker --ulimit memlock=-1; \
         systemd LimitMEMLOCK=infinity)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// The kernel refusing io_uring (seccomp, kernel.io_uring_disabled) and a
    /// locked-memory limit below glommio's minimum each get their own reason and fix.
    #[test]
    fn start_errors_name_their_cause_and_fix() {
        use glommio::{GlommioError, ReactorErrorKind};
        for errno in [libc::EPERM, libc::ENOSYS] {
            let e = GlommioError::<()>::IoError(std::io::Error::from_raw_os_error(errno));
            let m = describe_start_error(1, 65536, &e);
            assert!(m.starts_with("shard 1: "), "{m}");
            assert!(
                m.contains("io_uring blocked by seccomp or io_uring_disabled"),
                "{m}"
            );
            assert!(m.contains("--security-opt seccomp=unconfined"), "{m}");
        }
        let e = GlommioError::<()>::ReactorError(ReactorErrorKind::MemLockLimit(65536, 524288));
        let m = describe_start_error(0, 65536, &e);
        assert!(m.contains("is 65536 bytes"), "{m}");
        assert!(m.contains("LimitMEMLOCK=infinity"), "{m}");
        assert!(!m.contains("seccomp"), "{m}");
    }

    /// Each task-run mode with each read poll: the shard reports the mode it
    /// got, and real TCP round trips over glommio's io_uring complete
    /// (completions that the kernel defers must still reach the shard without
    /// any IPI). The first burst sends three messages in one write: a multishot
    /// poll wakes once for them, so the reads after the first must find the
    /// rest without a new wake-up.
    #[test]
    fn every_task_run_mode_delivers_network_completions() {
        let modes = [TaskRun::Interrupt, TaskRun::Cooperative, TaskRun::Deferred];
        for (mode, multishot) in modes.into_iter().flat_map(|m| [(m, true), (m, false)]) {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = mpsc::channel::<TaskRun>();
            let config = PoolConfig {
                shards: 1,
                io_memory: 64 * 1024,
                ring_depth: 32,
                pin: false,
                name: "taskrun-test".into(),
                task_run: mode,
                multishot_read_poll: multishot,
            };
            let pool = ShardPool::start(&config, move |_| {
                let tx = tx.clone();
                async move {
                    use futures_lite::{AsyncReadExt, AsyncWriteExt};
                    let _ = tx.send(glommio::io_uring_task_run());
                    let mut s = glommio::net::TcpStream::connect(addr).await.unwrap();
                    // A burst of three, then three round trips: each read
                    // waits for a completion.
                    for _ in 0..6 {
                        let mut buf = [0u8; 5];
                        s.read_exact(&mut buf).await.unwrap();
                        s.write_all(&buf).await.unwrap();
                    }
                }
            })
            .unwrap();
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(pool.task_runs(), &[got]);
            // Linux >= 6.1 grants every mode; older kernels fall back to interrupts.
            if kernel_at_least(6, 1) {
                assert_eq!(got, mode);
            } else {
                assert!(
                    got == mode || got == TaskRun::Interrupt,
                    "{mode:?}: got {got:?}"
                );
            }
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let burst = b"burs0burs1burs2";
            c.write_all(burst).unwrap();
            let mut back = [0u8; 15];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, burst, "{mode:?} multishot={multishot}");
            for i in 0..3u8 {
                let msg = [b'p', b'i', b'n', b'g', b'0' + i];
                c.write_all(&msg).unwrap();
                let mut back = [0u8; 5];
                c.read_exact(&mut back).unwrap();
                assert_eq!(back, msg, "{mode:?} multishot={multishot}");
            }
            pool.join().unwrap();
        }
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }
}
