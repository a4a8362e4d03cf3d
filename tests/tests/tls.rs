//! TLS listener (`tls:`): wss:// echo and rooms, SSE over https, plain HTTP on the
//! TLS port, a client that never finishes its handshake, certificate reload on
//! SIGHUP (live connections keep working, new ones see the new certificate, a broken
//! file keeps the old one) and config errors. Clients: tokio-rustls (ring) under
//! tokio-tungstenite, a raw HTTP/1.1 client over tokio-rustls, raw TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corecast_tests::client::{self, recv_text, send_text};
use corecast_tests::{eventually, free_port, run_corecast, within, Server, ServerOptions, TempDir};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const STEP: Duration = Duration::from_secs(10);

/// A test CA and the files the server reads.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "corecast test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        Pki {
            dir: TempDir::new("tls"),
            ca,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Issue a leaf for localhost/127.0.0.1 and write chain (leaf, CA) and key;
    /// returns the leaf's SHA-256.
    fn write_leaf(&self) -> [u8; 32] {
        let key = KeyPair::generate().expect("leaf key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
        let leaf = params.signed_by(&key, &self.ca).expect("leaf cert");
        std::fs::write(self.cert_path(), format!("{}{}", leaf.pem(), self.ca.pem()))
            .expect("write cert");
        std::fs::write(self.key_path(), key.serialize_pem()).expect("write key");
        sha256(leaf.der())
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }

    fn tls_section(&self, port: u16) -> String {
        format!(
            "\ntls:\n  listen: 127.0.0.1:{port}\n  cert: {}\n  key: {}\n",
            self.cert_path().display(),
            self.key_path().display()
        )
    }
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

/// A two-shard server with the TLS listener on a free port.
async fn start(pki: &Pki) -> (Server, SocketAddr) {
    let port = free_port();
    let server = Server::start_with(ServerOptions::shards(2).append(&pki.tls_section(port))).await;
    let tls_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // The TLS line follows the `listening on` line the harness waits for.
    let line = format!("tls on wss://{tls_addr}");
    eventually(STEP, "the TLS listening line", || {
        let ok = server.stdout().contains(&line);
        async move { ok }
    })
    .await;
    (server, tls_addr)
}

async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = within(STEP, "tcp connect", TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    let name = ServerName::try_from("localhost").expect("name");
    within(
        STEP,
        "TLS handshake",
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

fn peer_sha(tls: &TlsStream<TcpStream>) -> [u8; 32] {
    let certs: &[CertificateDer<'_>] = tls.get_ref().1.peer_certificates().expect("peer certs");
    sha256(certs[0].as_ref())
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

async fn wss(addr: SocketAddr, path: &str, config: Arc<rustls::ClientConfig>) -> (Wss, [u8; 32]) {
    let tls = tls_connect(addr, config).await;
    let sha = peer_sha(&tls);
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = within(
        STEP,
        "wss upgrade",
        tokio_tungstenite::client_async(url, tls),
    )
    .await
    .expect("wss upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    (ws, sha)
}

async fn wss_recv_text(ws: &mut Wss) -> String {
    loop {
        let m = within(STEP, "wss message", ws.next())
            .await
            .expect("wss ended")
            .expect("wss error");
        match m {
            Message::Text(t) => return t,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn wss_echo(ws: &mut Wss, text: &str) {
    within(STEP, "wss send", ws.send(Message::Text(text.to_string())))
        .await
        .expect("wss send");
    assert_eq!(wss_recv_text(ws).await, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_and_rooms_with_plain_clients() {
    let pki = Pki::new();
    let sha = pki.write_leaf();
    let (server, tls_addr) = start(&pki).await;
    let config = pki.client_config();

    let (mut echo, seen) = wss(tls_addr, "/ws/echo", config.clone()).await;
    assert_eq!(seen, sha, "the server presents the configured certificate");
    wss_echo(&mut echo, "hello over TLS").await;
    // Larger than one TLS record (16 KiB) and than rustls's buffer limit.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    within(STEP, "send binary", echo.send(Message::Binary(big.clone())))
        .await
        .expect("send binary");
    let got = within(STEP, "binary echo", echo.next())
        .await
        .expect("ended")
        .expect("error");
    assert_eq!(got, Message::Binary(big));

    // A room shared by wss and plain ws members on two shards.
    let mut secure: Vec<Wss> = Vec::new();
    for _ in 0..4 {
        secure.push(wss(tls_addr, "/ws/chat?room=mixed", config.clone()).await.0);
    }
    let mut plain = client::connect_many(&server.url("/ws/chat?room=mixed"), 4).await;
    for i in 0..20 {
        within(STEP, "send", secure[0].send(Message::Text(format!("s{i}"))))
            .await
            .expect("send");
    }
    send_text(&mut plain[0], "from-plain").await;
    for (k, ws) in secure.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..21 {
            got.push(wss_recv_text(ws).await);
        }
        let firsts: Vec<&String> = got.iter().filter(|m| m.starts_with('s')).collect();
        let want: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        assert_eq!(firsts, want.iter().collect::<Vec<_>>(), "wss member {k}");
        assert!(got.iter().any(|m| m == "from-plain"), "wss member {k}");
    }
    for (k, ws) in plain.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..21 {
            got.push(recv_text(ws).await);
        }
        assert!(got.iter().any(|m| m == "s19"), "plain member {k}: {got:?}");
        assert!(got.iter().any(|m| m == "from-plain"), "plain member {k}");
    }
    // Clean close over TLS.
    within(STEP, "close", echo.close(None))
        .await
        .expect("close");
    let stats = server.stats().await;
    assert!(stats["tls_handshakes"].as_u64().unwrap() >= 5, "{stats}");
}

/// Reads an HTTP response head plus at least `until` in the body.
async fn read_until(tls: &mut TlsStream<TcpStream>, until: &str) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    within(STEP, &format!("response containing {until:?}"), async {
        while !String::from_utf8_lossy(&buf).contains(until) {
            let n = tls.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "EOF before {until:?}: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_stats_over_https() {
    let pki = Pki::new();
    pki.write_leaf();
    let (_server, tls_addr) = start(&pki).await;
    let config = pki.client_config();

    let mut stats = tls_connect(tls_addr, config.clone()).await;
    stats
        .write_all(b"GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = Vec::new();
    within(STEP, "stats response", stats.read_to_end(&mut body))
        .await
        .expect("read stats to EOF");
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"tls_handshakes\""), "{text}");

    let mut sse = tls_connect(tls_addr, config.clone()).await;
    sse.write_all(
        b"GET /sse?room=news HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_until(&mut sse, "retry:").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Publish from a wss member of the room until the stream has it (the SSE
    // member joins on its own shard).
    let (mut publisher, _) = wss(tls_addr, "/ws/chat?room=news", config).await;
    let mut seen = String::new();
    let mut chunk = [0u8; 4096];
    for i in 0..25 {
        within(
            STEP,
            "publish",
            publisher.send(Message::Text(format!("breaking-{i}"))),
        )
        .await
        .expect("publish");
        if let Ok(n) = tokio::time::timeout(Duration::from_millis(400), sse.read(&mut chunk)).await
        {
            let n = n.expect("read");
            assert!(n > 0, "SSE stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
            if seen.contains("data: breaking-") {
                break;
            }
        }
    }
    assert!(
        seen.contains("data: breaking-"),
        "no event arrived: {seen:?}"
    );
    assert!(seen.contains("id: "), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_garbage_on_the_tls_port_fail_cleanly() {
    let pki = Pki::new();
    pki.write_leaf();
    let (mut server, tls_addr) = start(&pki).await;

    for junk in [
        &b"GET /stats HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
    ] {
        let mut tcp = TcpStream::connect(tls_addr).await.expect("connect");
        tcp.write_all(junk).await.expect("write");
        let mut got = Vec::new();
        within(STEP, "server closes", tcp.read_to_end(&mut got))
            .await
            .ok();
        // Either a TLS alert record (content type 21) or nothing: never HTTP.
        assert!(
            got.is_empty() || got[0] == 21,
            "unexpected answer {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(server.is_running());
    let (mut ws, _) = wss(tls_addr, "/ws/echo", pki.client_config()).await;
    wss_echo(&mut ws, "still serving").await;
    let stats = server.stats().await;
    assert!(
        stats["tls_handshake_failures"].as_u64().unwrap() >= 2,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped_by_the_deadline() {
    let pki = Pki::new();
    pki.write_leaf();
    let (server, tls_addr) = start(&pki).await;
    let mut idle = TcpStream::connect(tls_addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // The handshake deadline is 10 s; the server must close well before 20 s.
    let n = within(
        Duration::from_secs(20),
        "server drops the silent client",
        idle.read(&mut buf),
    )
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "dropped too early"
    );
    let stats = server.stats().await;
    assert!(
        stats["tls_handshake_failures"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let pki = Pki::new();
    let first = pki.write_leaf();
    let (mut server, tls_addr) = start(&pki).await;
    let config = pki.client_config();
    let (mut live, seen) = wss(tls_addr, "/ws/echo", config.clone()).await;
    assert_eq!(seen, first);
    wss_echo(&mut live, "before reload").await;

    let second = pki.write_leaf();
    assert_ne!(first, second);
    server.signal(libc::SIGHUP);
    let cfg = config.clone();
    eventually(
        Duration::from_secs(10),
        "new handshakes use the new certificate",
        || {
            let cfg = cfg.clone();
            async move { peer_sha(&tls_connect(tls_addr, cfg).await) == second }
        },
    )
    .await;
    wss_echo(&mut live, "after reload").await;
    let (mut fresh, seen) = wss(tls_addr, "/ws/echo", config.clone()).await;
    assert_eq!(seen, second);
    wss_echo(&mut fresh, "new connection").await;

    // A broken certificate file: the one in use stays.
    std::fs::write(
        pki.cert_path(),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .expect("write");
    server.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the reload error is logged",
        || {
            let out = server.stderr();
            async move { out.contains("not reloaded") && out.contains("tls.cert") }
        },
    )
    .await;
    let tls = tls_connect(tls_addr, config.clone()).await;
    assert_eq!(peer_sha(&tls), second, "the old certificate stays in use");
    wss_echo(&mut live, "after a failed reload").await;
    wss_echo(&mut fresh, "still here").await;
    assert!(server.is_running());
}

#[test]
fn config_errors_name_the_key_and_file() {
    let pki = Pki::new();
    pki.write_leaf();
    let dir = TempDir::new("tls-config");
    let check = |section: String| {
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, format!("listen: 127.0.0.1:8080{section}")).expect("write");
        let out = run_corecast(
            &["check-config", file.to_str().expect("utf-8")],
            Duration::from_secs(20),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let section = |cert: &str, key: &str| {
        format!("\ntls:\n  listen: 127.0.0.1:8443\n  cert: {cert}\n  key: {key}\n")
    };
    let cert = pki.cert_path().display().to_string();
    let key = pki.key_path().display().to_string();
    let (ok, err) = check(section(&cert, &key));
    assert!(ok, "{err}");

    let (ok, err) = check(section("/nonexistent/cert.pem", &key));
    assert!(
        !ok && err.contains("tls.cert /nonexistent/cert.pem"),
        "{err}"
    );

    let other = TempDir::new("tls-other");
    let stray = KeyPair::generate().expect("key");
    let stray_path = other.path().join("stray.pem");
    std::fs::write(&stray_path, stray.serialize_pem()).expect("write");
    let (ok, err) = check(section(&cert, &stray_path.display().to_string()));
    assert!(!ok && err.contains("does not match"), "{err}");
    assert!(err.contains("tls.key"), "{err}");

    let junk = other.path().join("junk.pem");
    std::fs::write(&junk, "hello").expect("write");
    let (ok, err) = check(section(&junk.display().to_string(), &key));
    assert!(
        !ok && err.contains("tls.cert") && err.contains("no CERTIFICATE"),
        "{err}"
    );
    let (ok, err) = check(section(&cert, &junk.display().to_string()));
    assert!(!ok && err.contains("tls.key"), "{err}");

    let (ok, err) = check("\ntls:\n  listen: 127.0.0.1:8080\n  cert: a\n  key: b\n".into());
    assert!(!ok && err.contains("tls.listen"), "{err}");
    let (ok, err) = check(format!(
        "\ntls:\n  listen: 127.0.0.1:8443\n  cert: {cert}\n  key: {key}\n  min_version: 1.1\n"
    ));
    assert!(!ok && err.contains("min_version"), "{err}");
}
