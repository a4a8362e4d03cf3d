//! Start-up checks, run by `corecast serve` before anything is bound (an embedding
//! application may call [`run`] too):
//!
//! - the open-file limit (`RLIMIT_NOFILE`) is raised from its soft to its hard value,
//!   with a warning when even that is below what the configuration may need;
//! - io_uring must be allowed: container runtimes' default seccomp profiles and the
//!   `kernel.io_uring_disabled` sysctl refuse `io_uring_setup`, and glommio's error
//!   alone does not say so;
//! - locked memory (`RLIMIT_MEMLOCK`) must fit the rings (glommio refuses to start
//!   below 512 KiB) and should fit each shard's `runtime.io_memory`;
//! - a listener on a non-loopback address with no auth, no origin allow-list and no
//!   per-address connection cap gets one loud warning.

use std::net::SocketAddr;

use crate::config::Config;

/// Descriptors a process needs besides its connections: per shard its listeners,
/// UDP socket, io_uring rings, eventfds and timers; per process stdio, the signal
/// thread, the metrics listener and the cluster bridge's Redis connections.
const FILES_PER_SHARD: u64 = 16;
const FILES_PER_PROCESS: u64 = 64;

/// The locked memory glommio requires before it builds a shard's rings.
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why the server must not start: the message says what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupError(pub String);

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

/// A resource limit before and after [`raise_soft_limit`] (`u64::MAX`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now in force.
    pub now: u64,
    /// The hard limit (the most an unprivileged process can raise the soft one to).
    pub hard: u64,
}

/// Raise `resource`'s soft limit to its hard limit (for `RLIMIT_NOFILE` an
/// unlimited hard limit is capped at `fs.nr_open`, which the kernel enforces).
pub fn raise_soft_limit(resource: libc::__rlimit_resource_t) -> std::io::Result<Limit> {
    let mut lim = get_limit(resource)?;
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if resource == libc::RLIMIT_NOFILE && target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if before != libc::RLIM_INFINITY && before < target {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let now = get_limit(resource)?;
    Ok(Limit {
        before,
        now: now.rlim_cur,
        hard: now.rlim_max,
    })
}

fn get_limit(resource: libc::__rlimit_resource_t) -> std::io::Result<libc::rlimit> {
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(resource, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(lim)
    }
}

/// Open files `config` may need at its connection caps: shards ×
/// `limits.max_connections_per_shard`, plus a margin for the process's own
/// descriptors.
pub fn files_needed(config: &Config) -> u64 {
    let shards = config.shard_count() as u64;
    let per_shard = config.limits.max_connections_per_shard as u64;
    shards
        .saturating_mul(per_shard.saturating_add(FILES_PER_SHARD))
        .saturating_add(FILES_PER_PROCESS)
}

/// Locked memory `config`'s shards register with io_uring (`runtime.io_memory` each).
pub fn memlock_wanted(config: &Config) -> u64 {
    (config.shard_count() as u64).saturating_mul(config.runtime.io_memory as u64)
}

/// Whether the kernel lets this process set up an io_uring: a raw `io_uring_setup`
/// of one entry, closed at once. `Err` says why not and what to change.
pub fn probe_io_uring() -> Result<(), StartupError> {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) into
    // `params`; the returned descriptor is ours and closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: closing the descriptor the probe just got.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(StartupError(describe_io_uring_error(&err)))
}

/// The message for an `io_uring_setup` failure (also used for a shard whose
/// executor could not be built).
pub fn describe_io_uring_error(err: &std::io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string());
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => {
            let sysctl = match disabled.as_deref() {
                Some("0") | None => String::new(),
                Some(v) => format!(" (kernel.io_uring_disabled is {v} here)"),
            };
            format!(
                "io_uring is not allowed: io_uring_setup failed with {err}{sysctl}. \
                 corecast runs every shard on io_uring. io_uring is blocked by seccomp or \
                 io_uring_disabled: container runtimes' default seccomp profiles block it \
                 (docker/podman: run with --security-opt seccomp=unconfined or a profile \
                 that allows io_uring_setup, io_uring_enter and io_uring_register; \
                 Kubernetes: securityContext.seccompProfile.type: Unconfined or a Localhost \
                 profile allowing them), and the kernel.io_uring_disabled sysctl blocks it \
                 for everyone (sysctl -w kernel.io_uring_disabled=0, or 1 with this user in \
                 kernel.io_uring_group)"
            )
        }
        Some(libc::ENOMEM) => format!(
            "io_uring_setup failed with {err}: on kernels before 5.12 the rings count \
             against the locked-memory limit ({}); raise it: ulimit -l unlimited, \
             docker --ulimit memlock=-1, systemd LimitMEMLOCK=infinity",
            memlock_text()
        ),
        _ => format!("io_uring_setup failed with {err}"),
    }
}

fn memlock_text() -> String {
    match get_limit(libc::RLIMIT_MEMLOCK) {
        Ok(l) if l.rlim_cur == libc::RLIM_INFINITY => "unlimited".into(),
        Ok(l) => format!("ulimit -l is {} KiB", l.rlim_cur / 1024),
        Err(_) => "unknown".into(),
    }
}

/// The warning for a server that anyone who can reach it may use: a listener on a
/// non-loopback address while there is no `auth:` section, no origin allow-list
/// and no `limits.max_connections_per_ip`. `None` when that is not the case.
pub fn exposure_warning(config: &Config) -> Option<String> {
    let exposed: Vec<String> = listeners(config)
        .into_iter()
        .filter(|(_, a)| !a.ip().is_loopback())
        .map(|(name, a)| format!("{name} {a}"))
        .collect();
    let origins = !config.websocket.allowed_origins.is_empty()
        || !config.sse.allowed_origins.is_empty()
        || !config.webtransport.allowed_origins.is_empty();
    if exposed.is_empty()
        || config.auth.is_some()
        || origins
        || config.limits.max_connections_per_ip > 0
    {
        return None;
    }
    Some(format!(
        "OPEN SERVER: {} is reachable beyond this machine and anyone who can connect may \
         use every endpoint: there is no auth (set `auth:` for JWTs; api.key only guards \
         /api), no origin allow-list (set websocket.allowed_origins, sse.allowed_origins, \
         webtransport.allowed_origins) and no per-address connection cap (set \
         limits.max_connections_per_ip). Set at least one, or listen on 127.0.0.1 behind \
         a proxy that does this",
        exposed.join(", ")
    ))
}

/// The client-facing listeners `config` binds, named by their config field.
fn listeners(config: &Config) -> Vec<(&'static str, SocketAddr)> {
    let mut out = vec![("listen", config.listen)];
    if let Some(tls) = &config.tls {
        out.push(("tls.listen", tls.listen));
    }
    if config.webtransport.enabled {
        if let Some(wt) = config.webtransport.listen {
            out.push(("webtransport.listen", wt));
        }
    }
    out
}

/// Every check, logged through `tracing`: `Err` when the server cannot run here
/// (io_uring blocked, locked memory below what glommio requires), with the fix.
pub fn run(config: &Config) -> Result<(), StartupError> {
    check_open_files(config);
    check_memlock(config)?;
    probe_io_uring()?;
    if let Some(warning) = exposure_warning(config) {
        tracing::warn!("{warning}");
    }
    Ok(())
}

fn check_open_files(config: &Config) {
    let needed = files_needed(config);
    match raise_soft_limit(libc::RLIMIT_NOFILE) {
        Ok(l) => {
            if l.now > l.before {
                tracing::info!(
                    from = l.before,
                    to = l.now,
                    hard = l.hard,
                    "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
                );
            } else {
                tracing::info!(
                    limit = l.now,
                    hard = l.hard,
                    "open-file limit (RLIMIT_NOFILE)"
                );
            }
            if l.now < needed {
                let shards = config.shard_count() as u64;
                let per_shard = config.limits.max_connections_per_shard as u64;
                let own = needed.saturating_sub(shards.saturating_mul(per_shard));
                tracing::warn!(
                    limit = l.now,
                    needed,
                    "the open-file limit ({}) is below what the configuration may need \
                     ({needed} = {shards} shards x limits.max_connections_per_shard \
                     {per_shard} + {own} for the process): past about {} connections, \
                     accepts fail with EMFILE. Raise the hard limit (ulimit -n {needed}; \
                     systemd LimitNOFILE={needed}; docker --ulimit nofile={needed}:{needed}) \
                     or lower limits.max_connections_per_shard",
                    l.now,
                    l.now.saturating_sub(own),
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

fn check_memlock(config: &Config) -> Result<(), StartupError> {
    let l = match raise_soft_limit(libc::RLIMIT_MEMLOCK) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the locked-memory limit");
            return Ok(());
        }
    };
    if l.now > l.before {
        tracing::info!(
            from = l.before,
            to = l.now,
            "raised the locked-memory limit (RLIMIT_MEMLOCK) to its hard limit"
        );
    }
    let fix = "ulimit -l unlimited; docker --ulimit memlock=-1; systemd LimitMEMLOCK=infinity";
    if l.now < MIN_MEMLOCK {
        return Err(StartupError(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB and its hard limit {} KiB: \
             io_uring (glommio) needs at least {} KiB. Raise it: {fix}",
            l.now / 1024,
            l.hard / 1024,
            MIN_MEMLOCK / 1024
        )));
    }
    let wanted = memlock_wanted(config);
    if l.now < wanted {
        tracing::warn!(
            limit = l.now,
            wanted,
            "the locked-memory limit (RLIMIT_MEMLOCK, {} KiB) is below {} shards x \
             runtime.io_memory ({} KiB): shards may run without registered io_uring \
             buffers (slower). Raise it ({fix}) or lower runtime.io_memory",
            l.now / 1024,
            config.shard_count(),
            config.runtime.io_memory / 1024
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> Config {
        Config {
            listen: listen.parse().unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn an_open_config_on_a_public_address_is_named() {
        let w = exposure_warning(&config("0.0.0.0:8080")).expect("a warning");
        assert!(w.contains("listen 0.0.0.0:8080"), "{w}");
        for field in [
            "auth:",
            "websocket.allowed_origins",
            "limits.max_connections_per_ip",
        ] {
            assert!(w.contains(field), "{field} missing in {w}");
        }
    }

    #[test]
    fn loopback_or_any_guard_is_quiet() {
        assert_eq!(exposure_warning(&config("127.0.0.1:8080")), None);
        assert_eq!(exposure_warning(&config("[::1]:8080")), None);
        let mut c = config("0.0.0.0:8080");
        c.limits.max_connections_per_ip = 10;
        assert_eq!(exposure_warning(&c), None);
        let mut c = config("0.0.0.0:8080");
        c.sse.allowed_origins = vec!["https://example.com".into()];
        assert_eq!(exposure_warning(&c), None);
    }

    #[test]
    fn files_needed_counts_every_shards_cap() {
        let mut c = config("127.0.0.1:0");
        c.shards = crate::config::Shards::Count(3);
        c.limits.max_connections_per_shard = 1000;
        assert_eq!(
            files_needed(&c),
            3 * (1000 + FILES_PER_SHARD) + FILES_PER_PROCESS
        );
    }

    #[test]
    fn io_uring_refusals_name_seccomp_and_the_sysctl() {
        let m = describe_io_uring_error(&std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(m.contains("blocked by seccomp or io_uring_disabled"), "{m}");
        assert!(m.contains("--security-opt seccomp="), "{m}");
        assert!(m.contains("kernel.io_uring_disabled"), "{m}");
        let m = describe_io_uring_error(&std::io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(m.contains("memlock=-1"), "{m}");
    }
}
