//! Prometheus metrics: `GET /metrics` follows WebSocket and SSE room traffic
//! (connection gauges by transport, exact delivery counts, the publish-to-write
//! histogram, outbound queue bytes back to 0), other methods get 405, and
//! `metrics.listen` moves the endpoint to its own address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use corecast_tests::client::{self, recv_text, send_text, Ws};
use corecast_tests::raw::{http_request, HttpResponse};
use corecast_tests::sse::SseClient;
use corecast_tests::{eventually, free_port, within, Server, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// One scrape: every sample as (name, labels) -> value.
struct Scrape {
    samples: Vec<(String, HashMap<String, String>, f64)>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), HashMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    let labels = body
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label k=v");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Scrape {
            samples,
            text: text.to_string(),
        }
    }

    /// Sum of `name` over the samples whose labels include every `filter` pair.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        let mut found = false;
        let total = self
            .samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| {
                found = true;
                *v
            })
            .sum();
        assert!(found, "no sample {name} {filter:?} in\n{}", self.text);
        total
    }
}

async fn get(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    http_request(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn scrape_at(addr: SocketAddr, path: &str) -> Scrape {
    let resp = get(addr, "GET", path).await;
    assert_eq!(resp.status, 200, "GET {path}: {resp:?}");
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/openmetrics-text") && ct.contains("version=1.0.0"),
        "content type {ct:?}"
    );
    assert!(resp.body_text().ends_with("# EOF\n"), "no # EOF");
    Scrape::parse(&resp.body_text())
}

async fn scrape(server: &Server) -> Scrape {
    scrape_at(server.addr(), "/metrics").await
}

/// Close a client cleanly: send a close frame and wait for the server's reply.
async fn close(mut ws: Ws) {
    ws.send(Message::Close(None)).await.expect("send close");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_room_traffic_across_two_shards() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let before = scrape(&server).await;
    assert_eq!(before.sum("corecast_shards", &[]), 2.0);
    assert_eq!(before.sum("corecast_connections", &[]), 0.0);
    assert_eq!(before.sum("corecast_deliveries_total", &[]), 0.0);

    const MEMBERS: usize = 6;
    const MESSAGES: usize = 5;
    let mut clients = client::connect_many(&server.url("/ws/chat?room=metrics"), MEMBERS).await;
    let mut sse = SseClient::connect(server.addr(), "/sse?room=metrics").await;
    let addr = server.addr();
    eventually(
        Duration::from_secs(5),
        "connection gauges count 6 WebSocket and 1 SSE",
        || async move {
            let s = scrape_at(addr, "/metrics").await;
            s.sum("corecast_connections", &[("transport", "websocket")]) == MEMBERS as f64
                && s.sum("corecast_connections", &[("transport", "sse")]) == 1.0
        },
    )
    .await;
    // Both shards report every series.
    let s = scrape(&server).await;
    for shard in ["0", "1"] {
        s.sum(
            "corecast_connections",
            &[("transport", "webtransport"), ("shard", shard)],
        );
        s.sum("corecast_outbound_queued_bytes", &[("shard", shard)]);
    }

    for i in 0..MESSAGES {
        send_text(&mut clients[0], format!("m{i}")).await;
    }
    for (c, ws) in clients.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            let got = within(
                Duration::from_secs(10),
                &format!("client {c} message {i}"),
                recv_text(ws),
            )
            .await;
            assert_eq!(got, format!("m{i}"));
        }
    }
    let events = sse.next_events(MESSAGES).await;
    assert_eq!(events.len(), MESSAGES);

    // Every member (the SSE stream too) got every message: the counts are exact.
    let members = (MEMBERS + 1) as f64;
    eventually(
        Duration::from_secs(5),
        "deliveries and queue drained",
        || async move {
            let s = scrape_at(addr, "/metrics").await;
            s.sum("corecast_deliveries_total", &[]) == members * MESSAGES as f64
                && s.sum("corecast_outbound_queued_bytes", &[]) == 0.0
        },
    )
    .await;
    let s = scrape(&server).await;
    assert_eq!(s.sum("corecast_broadcasts_total", &[]), MESSAGES as f64);
    assert_eq!(
        s.sum("corecast_messages_received_total", &[]),
        MESSAGES as f64
    );
    assert!(s.sum("corecast_bytes_received_total", &[]) >= (MESSAGES * 8) as f64);
    assert!(s.sum("corecast_messages_sent_total", &[]) >= members * MESSAGES as f64);
    assert!(s.sum("corecast_bytes_sent_total", &[]) > 0.0);
    assert!(s.sum("corecast_writes_total", &[]) >= members);
    assert_eq!(s.sum("corecast_handler_panics_total", &[]), 0.0);
    assert_eq!(s.sum("corecast_handler_errors_total", &[]), 0.0);
    assert_eq!(s.sum("corecast_auth_failures_total", &[]), 0.0);
    assert_eq!(s.sum("corecast_slow_consumer_disconnects_total", &[]), 0.0);
    assert_eq!(s.sum("corecast_mesh_overflows_total", &[]), 0.0);
    // At least one write per member drained a queue holding room messages.
    let count = s.sum("corecast_publish_to_write_seconds_count", &[]);
    assert!(count >= members, "histogram count {count}");
    assert_eq!(
        s.sum(
            "corecast_publish_to_write_seconds_bucket",
            &[("le", "+Inf")]
        ),
        count
    );
    let sum = s.sum("corecast_publish_to_write_seconds_sum", &[]);
    assert!(sum > 0.0 && sum < count * 5.0, "histogram sum {sum}");

    // The JSON stats still agree.
    let stats = server.stats().await;
    assert_eq!(stats["deliveries"], (MEMBERS + 1) * MESSAGES);
    assert_eq!(stats["connections"], MEMBERS + 1);

    for ws in clients {
        close(ws).await;
    }
    drop(sse);
    eventually(
        Duration::from_secs(10),
        "connection gauges back to 0",
        || async move {
            let s = scrape_at(addr, "/metrics").await;
            s.sum("corecast_connections", &[]) == 0.0
                && s.sum("corecast_outbound_queued_bytes", &[]) == 0.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_get_405() {
    let server = Server::start().await;
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let resp = get(server.addr(), method, "/metrics").await;
        assert_eq!(resp.status, 405, "{method}: {resp:?}");
        assert_eq!(resp.header("allow"), Some("GET"));
    }
    // A query string is not part of the path.
    let s = scrape_at(server.addr(), "/metrics?x=1").await;
    s.sum("corecast_accepted_total", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_listener_serves_metrics_instead_of_the_main_one() {
    let port = free_port();
    let server = Server::start_with(
        ServerOptions::shards(1)
            .set("metrics.listen", &format!("127.0.0.1:{port}"))
            .set("metrics.path", "/prom"),
    )
    .await;
    let metrics_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    send_text(&mut ws, "hi").await;
    assert_eq!(recv_text(&mut ws).await, "hi");

    let s = scrape_at(metrics_addr, "/prom").await;
    assert_eq!(
        s.sum("corecast_connections", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(s.sum("corecast_messages_received_total", &[]), 1.0);
    assert_eq!(get(metrics_addr, "POST", "/prom").await.status, 405);
    assert_eq!(get(metrics_addr, "GET", "/metrics").await.status, 404);
    // The main listener no longer serves them.
    assert_eq!(get(server.addr(), "GET", "/prom").await.status, 404);
    assert_eq!(get(server.addr(), "GET", "/metrics").await.status, 404);
    // Garbage on the metrics port gets an answer, not a crash.
    let resp = http_request(metrics_addr, "NONSENSE\r\n\r\n").await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        scrape_at(metrics_addr, "/prom")
            .await
            .sum("corecast_shards", &[]),
        1.0
    );
    close(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let server = Server::start_with(ServerOptions::shards(1).set("metrics.enabled", "false")).await;
    assert_eq!(get(server.addr(), "GET", "/metrics").await.status, 404);
    assert_eq!(server.stats().await["connections"], 0);
}
