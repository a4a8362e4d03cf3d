//! `/healthz` and `/readyz` on the main listener (docs/OPERATIONS.md#health-checks):
//! 200 while up; readiness 503 `draining` during a graceful drain (a silent client
//! keeps the drain going) and, in cluster mode, 503 `redis_unreachable` while the
//! test's own redis-server is stopped, 200 again once it is back on the same port.

use std::net::SocketAddr;
use std::time::Duration;

use corecast_tests::raw::{http_request, HttpResponse, WsConn};
use corecast_tests::redis::RedisServer;
use corecast_tests::{eventually, within, Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn request(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    http_request(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

fn json(resp: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", resp.body_text()))
}

/// `/readyz`'s status and body.
async fn readyz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let resp = request(addr, "GET", "/readyz").await;
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{resp:?}"
    );
    (resp.status, json(&resp))
}

fn reasons(body: &serde_json::Value) -> Vec<String> {
    body["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200_while_up() {
    let server = Server::start_with(ServerOptions::shards(2).api_key()).await;
    let addr = server.addr();

    let live = request(addr, "GET", "/healthz").await;
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(json(&live), serde_json::json!({"status": "ok"}));
    assert_eq!(live.header("cache-control"), Some("no-store"));

    let (status, body) = readyz(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["shards"], 2, "{body}");

    // No credentials sent, although the API is keyed: the probes need none.
    for path in ["/healthz", "/readyz"] {
        // HEAD: the GET head, Content-Length included, and no body.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut raw = Vec::new();
        within(
            Duration::from_secs(5),
            "HEAD response",
            s.read_to_end(&mut raw),
        )
        .await
        .expect("read");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "HEAD answer has a body: {text:?}"
        );
        assert!(!text.contains("Content-Length: 0\r\n"), "{text}");

        let post = request(addr, "POST", path).await;
        assert_eq!(post.status, 405, "{post:?}");
        assert_eq!(post.header("allow"), Some("GET, HEAD"), "{post:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_draining_during_a_graceful_drain() {
    let mut server =
        Server::start_with(ServerOptions::shards(1).set("shutdown.drain_timeout_ms", "4000")).await;
    let addr = server.addr();
    assert_eq!(readyz(addr).await.0, 200);
    // This client never answers the close frame, so the drain lasts its timeout.
    let mut holder = WsConn::connect(addr, "/ws/echo").await;
    server.signal(libc::SIGTERM);
    let first = holder.recv().await;
    assert_eq!(first.close_code(), Some(1001), "{first:?}");

    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(reasons(&body), ["draining"], "{body}");
    // Still alive while it drains.
    assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
    // Nothing new is served meanwhile.
    let upgrade = request(addr, "GET", "/ws/echo").await;
    assert_eq!(upgrade.status, 503, "{upgrade:?}");

    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("server still running 10 s after SIGTERM");
    assert!(status.success(), "{status}");
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_redis_connection_in_cluster_mode() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis start");
    let cluster = format!(
        "\ncluster:\n  broker: redis\n  url: {}\n  node_id: health-a\n  key_prefix: hctest\n  \
         heartbeat: 200ms\n  node_timeout: 1s\n  reconnect_min: 50ms\n  reconnect_max: 300ms\n  \
         command_timeout: 1s\n",
        redis.url()
    );
    let server = Server::start_with(ServerOptions::shards(2).append(&cluster)).await;
    let addr = server.addr();
    let s = &server;
    eventually(
        Duration::from_secs(10),
        "readyz 200 with redis up",
        || async move { readyz(s.addr()).await.0 == 200 },
    )
    .await;

    tokio::task::block_in_place(|| redis.kill());
    eventually(
        Duration::from_secs(10),
        "readyz 503 redis_unreachable with redis down",
        || async move {
            let (status, body) = readyz(addr).await;
            status == 503 && reasons(&body) == ["redis_unreachable"]
        },
    )
    .await;
    // Liveness does not depend on Redis.
    assert_eq!(request(addr, "GET", "/healthz").await.status, 200);

    tokio::task::block_in_place(|| redis.restart());
    eventually(
        Duration::from_secs(15),
        "readyz 200 again once redis is back on its port",
        || async move { readyz(addr).await.0 == 200 },
    )
    .await;
}
