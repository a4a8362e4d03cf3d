//! The WebTransport certificate over a server's life (docs/OPERATIONS.md,
//! "WebTransport certificates"), with the `wtransport` crate as the client:
//!
//! - `cert: auto` renewal, made quick with `webtransport.cert_validity` /
//!   `cert_renew_before`: `/webtransport/cert-hash` first lists the next hash
//!   beside the current one, then serves it as `sha256`; a new session trusting
//!   only the new hash opens, one trusting only the old hash no longer does, one
//!   trusting the list fetched before the switch does, and a session opened
//!   before the switch still echoes;
//! - the key directory: 0700 under `$XDG_RUNTIME_DIR`, files 0600, gone after a
//!   SIGTERM exit;
//! - SIGHUP with certificate files: new sessions get the new certificate, a
//!   session opened before keeps working; a broken certificate file or a key that
//!   does not match keeps the old one, with an error log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use corecast_tests::wt::{self, CertHash, Session};
use corecast_tests::{eventually, within, Server, ServerOptions, TempDir, STEP_TIMEOUT};

/// Writes `data` with FIN on a new bidirectional stream of an `/wt/echo` session
/// and checks the same bytes come back.
async fn echo(session: &Session, data: &[u8]) {
    let (mut send, mut recv) = within(STEP_TIMEOUT, "open a bidirectional stream", async {
        session
            .open_bi()
            .await
            .expect("open_bi")
            .await
            .expect("bidirectional stream opened")
    })
    .await;
    let write = async {
        within(STEP_TIMEOUT, "write and finish", async {
            send.write_all(data).await.expect("write_all");
            send.finish().await.expect("finish");
        })
        .await
    };
    let (_, back) = futures_util::future::join(write, wt::read_to_end(&mut recv)).await;
    assert_eq!(back.expect("echo read"), data, "echoed bytes differ");
}

/// `hashes` of `/webtransport/cert-hash`, polled every 200 ms until `done` holds
/// for them; panics after `timeout`.
async fn wait_for_hashes(
    server: &Server,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[CertHash]) -> bool,
) -> Vec<CertHash> {
    let deadline = Instant::now() + timeout;
    loop {
        let hashes = wt::cert_hashes(server.addr()).await;
        if done(&hashes) {
            return hashes;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last hashes {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hash_of(sha: [u8; 32]) -> CertHash {
    CertHash {
        bytes: sha,
        hex: corecast::cert::hex(&sha),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_certificate_is_renewed_with_an_overlap() {
    // 100 s validity, 60 s of it in the past: 40 s remain at issue. The next
    // certificate is published when 20 s remain (~20 s after start) and installed
    // when 10 s remain (~30 s); the next renewal is ~20 s after that.
    let server = Server::start_with(
        ServerOptions::shards(2)
            .set("webtransport.cert_validity", "100s")
            .set("webtransport.cert_renew_before", "20s")
            // The session opened first must outlive the wait for the switch.
            .set("webtransport.idle_timeout", "120s"),
    )
    .await;
    let url = wt::url(server.addr(), "/wt/echo");
    let first = wt::cert_hashes(server.addr()).await;
    assert_eq!(first.len(), 1, "no renewal pending at start: {first:?}");
    let old = first[0].clone();
    let before = wt::connect(&old, &url).await;
    echo(&before, b"before the renewal").await;

    // Published: the next hash beside the current one, which stays `sha256`.
    let overlap = wait_for_hashes(&server, Duration::from_secs(60), "the next hash", |h| {
        h.len() == 2
    })
    .await;
    assert_eq!(overlap[0], old, "the current hash comes first");
    assert_ne!(overlap[1], old);
    let new = overlap[1].clone();
    // Not installed yet: a session trusting only the old hash still opens.
    let during = wt::connect(&old, &url).await;
    echo(&during, b"during the overlap").await;

    // Installed: `sha256` is the new hash, listed alone.
    wait_for_hashes(&server, Duration::from_secs(30), "the switch", |h| {
        h.len() == 1 && h[0] == new
    })
    .await;
    let after = wt::connect(&new, &url).await;
    echo(&after, b"new session, new certificate").await;
    // On both shards' endpoints, whichever gets the connection.
    for i in 0..4 {
        let s = wt::connect(&new, &url).await;
        echo(&s, format!("new session {i}").as_bytes()).await;
    }
    assert!(
        wt::try_connect(&old, &url, &[]).await.is_err(),
        "a session trusting only the retired hash opened: the certificate did not change"
    );
    let from_overlap = wt::try_connect_trusting(&overlap, &url, &[])
        .await
        .expect("a client holding the hashes fetched during the overlap connects");
    echo(&from_overlap, b"hashes fetched before the switch").await;
    // Sessions opened before the switch go on.
    echo(&before, b"opened before the renewal").await;
    echo(&during, b"opened during the overlap").await;
    eventually(Duration::from_secs(10), "the renewal log line", || {
        let out = server.stderr();
        async move { out.contains("WebTransport certificate renewed") }
    })
    .await;
}

/// The one `corecast-wt-*` directory under `base`, if any.
fn key_dirs(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base)
        .expect("read the runtime dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("corecast-wt-"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_directory_is_private_and_removed_at_exit() {
    use std::os::unix::fs::PermissionsExt;
    let runtime = TempDir::new("xdg-runtime");
    let mut server = Server::start_with(
        ServerOptions::default().env("XDG_RUNTIME_DIR", &runtime.path().display().to_string()),
    )
    .await;
    let dirs = key_dirs(runtime.path());
    assert_eq!(
        dirs.len(),
        1,
        "one key directory under $XDG_RUNTIME_DIR: {dirs:?}"
    );
    let dir = &dirs[0];
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the key dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("key-1.pem"))
            && files.iter().any(|f| f.ends_with("cert-1.pem")),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The key in there is the one the handshake uses.
    let served = wt::cert_hash(server.addr()).await;
    let pem = std::fs::read_to_string(dir.join("cert-1.pem")).expect("read cert");
    assert_eq!(
        corecast::cert::sha256_of_pem(&pem).expect("pem"),
        served.bytes
    );
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}\n{}", server.output());
    assert!(
        !dir.exists(),
        "the key directory {} outlived the server",
        dir.display()
    );
}

/// A 14-day self-signed ECDSA certificate and key written to `dir` as
/// `cert.pem` / `key.pem`; returns its SHA-256.
fn write_pair(dir: &Path) -> (corecast::cert::SelfSigned, [u8; 32]) {
    let made = corecast::cert::generate(
        &["localhost".to_string(), "127.0.0.1".to_string()],
        corecast::cert::MAX_VALIDITY,
        SystemTime::now(),
    )
    .expect("generate");
    corecast::cert::write_pair(dir, &made).expect("write pair");
    let sha = made.sha256;
    (made, sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificate_files() {
    let files = TempDir::new("wt-files");
    let (_, first) = write_pair(files.path());
    let cert_path = files.path().join("cert.pem").display().to_string();
    let key_path = files.path().join("key.pem").display().to_string();
    let mut server = Server::start_with(
        ServerOptions::shards(2)
            .set("webtransport.cert", &cert_path)
            .set("webtransport.key", &key_path),
    )
    .await;
    let url = wt::url(server.addr(), "/wt/echo");
    assert_eq!(wt::cert_hash(server.addr()).await.bytes, first);
    let (first, live) = {
        let h = hash_of(first);
        let s = wt::connect(&h, &url).await;
        echo(&s, b"before the reload").await;
        (h, s)
    };

    let (second_pair, second) = write_pair(files.path());
    let second = hash_of(second);
    server.signal(libc::SIGHUP);
    wait_for_hashes(&server, Duration::from_secs(10), "the reloaded hash", |h| {
        h.len() == 1 && h[0] == second
    })
    .await;
    // Logged right after the switch; the log reaches us a moment later.
    eventually(Duration::from_secs(10), "the reload log line", || {
        let out = server.stderr();
        async move { out.contains("SIGHUP: WebTransport certificate reloaded") }
    })
    .await;
    for i in 0..4 {
        let s = wt::connect(&second, &url).await;
        echo(&s, format!("after the reload {i}").as_bytes()).await;
    }
    assert!(
        wt::try_connect(&first, &url, &[]).await.is_err(),
        "a session trusting only the old hash opened after the reload"
    );
    echo(&live, b"opened before the reload").await;

    // Bad files: a broken certificate, then a key that is not the certificate's.
    let not_reloaded = |out: &str| out.matches("WebTransport certificate not reloaded").count();
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("write");
    server.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), "the first reload error", || {
        let out = server.stderr();
        async move { not_reloaded(&out) == 1 && out.contains("webtransport.cert") }
    })
    .await;
    // Certificate of one pair, key of another.
    let other = TempDir::new("wt-other");
    let (third_pair, _) = write_pair(other.path());
    std::fs::write(&cert_path, &third_pair.cert_pem).expect("write");
    std::fs::write(&key_path, &second_pair.key_pem).expect("write");
    server.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), "the second reload error", || {
        let out = server.stderr();
        async move { not_reloaded(&out) == 2 && out.contains("webtransport.key") }
    })
    .await;
    assert_eq!(
        wt::cert_hashes(server.addr()).await,
        vec![second.clone()],
        "the certificate in use stays"
    );
    let s = wt::connect(&second, &url).await;
    echo(&s, b"after the failed reloads").await;
    echo(&live, b"still here").await;
    assert!(server.is_running());
}
