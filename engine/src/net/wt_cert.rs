//! The WebTransport certificate: where its files live, renewal of `cert: auto`, and
//! reload of configured files (`SIGHUP`).
//!
//! Every certificate the QUIC endpoints load is a copy in a private key directory
//! (mode 0700, files 0600, a random name under `$XDG_RUNTIME_DIR` or the temporary
//! directory), numbered by generation: `cert-N.pem` / `key-N.pem`. A shard builds a
//! new `quiche::Config` when it sees a new generation, before accepting its next
//! connection; connections already open keep the TLS keys they negotiated. Copies
//! (rather than the configured paths) make what a shard loads exactly what was
//! checked and hashed, whatever happens to the configured files afterwards.
//!
//! Renewal (`cert: auto`): once less than `webtransport.cert_renew_before` of the
//! certificate's validity remains, the next certificate is made and its hash is
//! published next to the current one; when half of that margin remains, it is
//! installed. A page that fetched the hashes in between passes both to
//! `serverCertificateHashes` and connects before and after the switch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom;

use crate::cert;
use crate::config::WebTransportConfig;

/// Host names and addresses of an automatic certificate.
const AUTO_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Renewal retries this often after a failure (key generation, disk full).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// A private directory for key files, removed (best effort) when dropped.
pub(crate) struct KeyDir {
    path: PathBuf,
}

impl KeyDir {
    /// Create `corecast-wt-<random>` with mode 0700 under `$XDG_RUNTIME_DIR` (when
    /// set to an existing directory) or the system temporary directory. The name
    /// is random and creation fails rather than reuse an existing entry, so nobody
    /// can prepare the directory (or a symlink) in advance.
    fn create() -> Result<Self, String> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let rng = ring::rand::SystemRandom::new();
        let mut last = String::new();
        for _ in 0..8 {
            let mut bytes = [0u8; 8];
            rng.fill(&mut bytes)
                .map_err(|_| "webtransport: no system randomness".to_string())?;
            let path = base.join(format!("corecast-wt-{}", cert::hex(&bytes)));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    last = format!("{}: {e}", path.display());
                }
                Err(e) => {
                    return Err(format!(
                        "webtransport: cannot create the key directory {}: {e}",
                        path.display()
                    ))
                }
            }
        }
        Err(format!(
            "webtransport: cannot create a key directory: {last}"
        ))
    }

    fn remove(&self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                dir = %self.path.display(),
                error = %e,
                "cannot remove the WebTransport key directory"
            ),
        }
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where the certificate comes from.
enum Source {
    /// `cert: auto`: self-signed, made here, renewed before it expires.
    Auto {
        validity: Duration,
        renew_before: Duration,
    },
    /// Configured PEM files, re-read on reload.
    Files { cert: String, key: String },
}

/// One certificate's copy in the key directory.
#[derive(Clone)]
struct Installed {
    generation: u64,
    cert_path: PathBuf,
    key_path: PathBuf,
    sha256: [u8; 32],
    /// End of validity (automatic certificates only).
    not_after: Option<SystemTime>,
}

struct State {
    current: Installed,
    /// Made and published, not yet presented (automatic renewal).
    next: Option<Installed>,
    last_generation: u64,
}

/// The WebTransport certificate every shard shares.
pub(crate) struct WtCerts {
    source: Source,
    state: Mutex<State>,
    /// The generation of `state.current`, read by shards on their accept path.
    generation: AtomicU64,
    dir: KeyDir,
}

impl WtCerts {
    /// Make (`cert: auto`) or read (files) the first certificate and copy it into
    /// a new private key directory. Errors name the config key and file.
    pub(crate) fn new(c: &WebTransportConfig) -> Result<Self, String> {
        let dir = KeyDir::create()?;
        let source = if c.cert == "auto" {
            Source::Auto {
                validity: c.cert_validity.0,
                renew_before: c.cert_renew_before.0,
            }
        } else {
            Source::Files {
                cert: c.cert.clone(),
                key: c.key.clone(),
            }
        };
        let first = match &source {
            Source::Auto { validity, .. } => make_auto(&dir.path, 1, *validity)?,
            Source::Files { cert, key } => copy_files(&dir.path, 1, cert, key)?,
        };
        Ok(Self {
            source,
            generation: AtomicU64::new(1),
            state: Mutex::new(State {
                current: first,
                next: None,
                last_generation: 1,
            }),
            dir,
        })
    }

    /// Whether the certificate is automatic (and so renewed by [`Self::renew`]).
    pub(crate) fn is_auto(&self) -> bool {
        matches!(self.source, Source::Auto { .. })
    }

    /// Generation of the certificate new connections get; it changes on renewal
    /// and reload.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The certificate new connections get: generation, certificate and key files.
    pub(crate) fn current_files(&self) -> Option<(u64, PathBuf, PathBuf)> {
        let s = self.state.lock().ok()?;
        let c = &s.current;
        Some((c.generation, c.cert_path.clone(), c.key_path.clone()))
    }

    /// SHA-256 of the certificate new connections get.
    pub(crate) fn current_sha256(&self) -> [u8; 32] {
        self.state
            .lock()
            .map(|s| s.current.sha256)
            .unwrap_or_default()
    }

    /// Hashes a client should trust: the current certificate's, then the next
    /// one's while a renewal is pending.
    pub(crate) fn hashes(&self) -> Vec<[u8; 32]> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        let mut out = vec![s.current.sha256];
        out.extend(s.next.as_ref().map(|n| n.sha256));
        out
    }

    /// The key directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Remove the key directory (at exit).
    pub(crate) fn remove_dir(&self) {
        self.dir.remove();
    }

    /// Re-read the configured certificate and key files and install them for new
    /// connections. On any error the certificate in use stays. Returns the new
    /// certificate's SHA-256.
    pub(crate) fn reload(&self) -> Result<[u8; 32], String> {
        let Source::Files { cert, key } = &self.source else {
            return Err(
                "webtransport.cert is auto: nothing to reload (it is renewed by itself)".into(),
            );
        };
        let mut s = self
            .state
            .lock()
            .map_err(|_| "webtransport: certificate lock poisoned".to_string())?;
        let generation = s.last_generation + 1;
        let new = copy_files(&self.dir.path, generation, cert, key)?;
        s.last_generation = generation;
        let sha = new.sha256;
        self.install(&mut s, new);
        Ok(sha)
    }

    /// Automatic renewal: publish or install the next certificate when due, and
    /// say how long until the next step. Called by one shard's renewal task.
    pub(crate) fn renew(&self, now: SystemTime) -> Duration {
        let Source::Auto {
            validity,
            renew_before,
        } = self.source
        else {
            return Duration::MAX;
        };
        let Ok(mut s) = self.state.lock() else {
            return RETRY_AFTER;
        };
        let remaining = s
            .current
            .not_after
            .and_then(|t| t.duration_since(now).ok())
            .unwrap_or_default();
        if s.next.is_none() {
            if remaining > renew_before {
                return remaining - renew_before;
            }
            let generation = s.last_generation + 1;
            match make_auto(&self.dir.path, generation, validity) {
                Ok(next) => {
                    tracing::info!(
                        next_sha256 = %cert::hex(&next.sha256),
                        current_sha256 = %cert::hex(&s.current.sha256),
                        installed_in_s = remaining.saturating_sub(renew_before / 2).as_secs(),
                        "WebTransport certificate renewal: next certificate made; \
                         /webtransport/cert-hash lists both"
                    );
                    s.last_generation = generation;
                    s.next = Some(next);
                }
                Err(e) => {
                    tracing::error!(error = %e, "WebTransport certificate renewal failed; retrying");
                    return RETRY_AFTER.min(remaining.max(Duration::from_secs(1)));
                }
            }
        }
        let half = renew_before / 2;
        if remaining > half {
            return remaining - half;
        }
        if let Some(next) = s.next.take() {
            tracing::info!(
                sha256 = %cert::hex(&next.sha256),
                previous_sha256 = %cert::hex(&s.current.sha256),
                "WebTransport certificate renewed: new connections get the new one"
            );
            self.install(&mut s, next);
        }
        Duration::ZERO
    }

    /// Make `new` the current certificate and remove files older than the one it
    /// replaces (a shard may still be loading that one).
    fn install(&self, s: &mut State, new: Installed) {
        let old = std::mem::replace(&mut s.current, new);
        self.generation
            .store(s.current.generation, Ordering::Release);
        let keep = [
            Some(s.current.generation),
            Some(old.generation),
            s.next.as_ref().map(|n| n.generation),
        ];
        remove_old_files(&self.dir.path, &keep);
    }
}

fn cert_file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("cert-{generation}.pem"))
}

fn key_file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("key-{generation}.pem"))
}

/// Remove `cert-N.pem` / `key-N.pem` for every N not in `keep`.
fn remove_old_files(dir: &Path, keep: &[Option<u64>]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let generation = name
            .strip_suffix(".pem")
            .and_then(|n| n.strip_prefix("cert-").or_else(|| n.strip_prefix("key-")))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(g) = generation {
            if !keep.contains(&Some(g)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A new self-signed certificate, written as generation `generation`.
fn make_auto(dir: &Path, generation: u64, validity: Duration) -> Result<Installed, String> {
    let hosts = AUTO_HOSTS.map(String::from);
    let made = cert::generate(&hosts, validity, SystemTime::now())
        .map_err(|e| format!("webtransport.cert auto: {e}"))?;
    let (cert_path, key_path) = (cert_file(dir, generation), key_file(dir, generation));
    cert::write_private_file(&cert_path, made.cert_pem.as_bytes())
        .and_then(|()| cert::write_private_file(&key_path, made.key_pem.as_bytes()))
        .map_err(|e| format!("webtransport.cert auto: {e}"))?;
    Ok(Installed {
        generation,
        cert_path,
        key_path,
        sha256: made.sha256,
        not_after: Some(made.not_after),
    })
}

/// Copy the configured files into the key directory as generation `generation`
/// and check that BoringSSL takes them (PEM, key type, key matching the
/// certificate). The copies are removed again on an error.
fn copy_files(
    dir: &Path,
    generation: u64,
    cert_src: &str,
    key_src: &str,
) -> Result<Installed, String> {
    let cert_pem = std::fs::read_to_string(cert_src)
        .map_err(|e| format!("webtransport.cert {cert_src}: cannot read: {e}"))?;
    let sha256 =
        cert::sha256_of_pem(&cert_pem).map_err(|e| format!("webtransport.cert {cert_src}: {e}"))?;
    let key_pem = std::fs::read(key_src)
        .map_err(|e| format!("webtransport.key {key_src}: cannot read: {e}"))?;
    let (cert_path, key_path) = (cert_file(dir, generation), key_file(dir, generation));
    let written = cert::write_private_file(&cert_path, cert_pem.as_bytes())
        .and_then(|()| cert::write_private_file(&key_path, &key_pem))
        .map_err(|e| format!("webtransport: copying the certificate: {e}"))
        .and_then(|()| check_pair(&cert_path, &key_path, cert_src, key_src));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&cert_path);
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(Installed {
        generation,
        cert_path,
        key_path,
        sha256,
        not_after: None,
    })
}

/// Load a pair the way a shard will; BoringSSL refuses a key that does not match
/// the certificate.
fn check_pair(cert: &Path, key: &Path, cert_src: &str, key_src: &str) -> Result<(), String> {
    let mut q = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(|e| e.to_string())?;
    q.load_cert_chain_from_pem_file(&cert.to_string_lossy())
        .map_err(|e| {
            format!("webtransport.cert {cert_src}: not a usable PEM certificate chain ({e})")
        })?;
    q.load_priv_key_from_pem_file(&key.to_string_lossy())
        .map_err(|e| {
            format!(
                "webtransport.key {key_src}: not a usable PEM private key, or it does not \
                 match the certificate in webtransport.cert {cert_src} ({e})"
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto_config(validity: u64, renew_before: u64) -> WebTransportConfig {
        WebTransportConfig {
            cert: "auto".into(),
            cert_validity: crate::config::ConfigDuration(Duration::from_secs(validity)),
            cert_renew_before: crate::config::ConfigDuration(Duration::from_secs(renew_before)),
            ..WebTransportConfig::default()
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_dir_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let certs = WtCerts::new(&auto_config(3600, 600)).unwrap();
        let dir = certs.dir().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let (_, cert_path, key_path) = certs.current_files().unwrap();
        assert_eq!(mode(&cert_path), 0o600);
        assert_eq!(mode(&key_path), 0o600);
        drop(certs);
        assert!(!dir.exists());
    }

    #[test]
    fn renewal_publishes_then_installs() {
        let certs = WtCerts::new(&auto_config(3600, 600)).unwrap();
        let first = certs.current_sha256();
        let not_after = certs.state.lock().unwrap().current.not_after.unwrap();
        // Long before: nothing to do; the wait reaches the renewal point.
        let early = not_after - Duration::from_secs(1000);
        assert_eq!(certs.renew(early), Duration::from_secs(400));
        assert_eq!(certs.hashes(), vec![first]);
        // Inside the margin: the next one is published, not yet installed.
        let wait = certs.renew(not_after - Duration::from_secs(500));
        assert_eq!(wait, Duration::from_secs(200));
        let hashes = certs.hashes();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], first);
        assert_eq!(certs.generation(), 1);
        // Half the margin left: installed, and only the new hash is listed.
        assert_eq!(
            certs.renew(not_after - Duration::from_secs(300)),
            Duration::ZERO
        );
        assert_eq!(certs.generation(), 2);
        assert_eq!(certs.current_sha256(), hashes[1]);
        assert_eq!(certs.hashes(), vec![hashes[1]]);
        let (g, cert_path, _) = certs.current_files().unwrap();
        assert_eq!(g, 2);
        assert!(cert_path.exists());
    }

    #[test]
    fn reload_refuses_auto() {
        let certs = WtCerts::new(&auto_config(3600, 600)).unwrap();
        assert!(certs.reload().unwrap_err().contains("auto"));
    }
}
