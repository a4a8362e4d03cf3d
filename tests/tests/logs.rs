//! Logs: with `log.format: json` every stderr line is a JSON object; connection
//! open and close events carry the connection's fields; a `token` in the query
//! string never reaches the logs.

use std::time::Duration;

use corecast_tests::client::{self, recv_text, send_text};
use corecast_tests::{eventually, Server, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

fn event<'a>(lines: &'a [serde_json::Value], message: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} event in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_report_connections_without_their_tokens() {
    let mut server = Server::start_with(
        ServerOptions::shards(1)
            .set("log.format", "json")
            .set("log.level", "debug"),
    )
    .await;
    let url = server.url("/ws/echo?room=a&token=SECRET123");
    let mut ws = client::connect(&url).await;
    send_text(&mut ws, "hello").await;
    assert_eq!(recv_text(&mut ws).await, "hello");
    ws.send(Message::Close(None)).await.expect("close");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
    let s = &server;
    eventually(
        Duration::from_secs(5),
        "a connection closed event",
        || async move { s.stderr().contains("connection closed") },
    )
    .await;
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(Duration::from_secs(10)).await;

    let stderr = server.stderr();
    let lines = json_lines(&stderr);
    let listening = event(&lines, "listening");
    assert_eq!(listening["level"], "INFO");

    let opened = event(&lines, "connection opened");
    let closed = event(&lines, "connection closed");
    for e in [opened, closed] {
        assert_eq!(e["level"], "DEBUG");
        assert_eq!(e["target"], "corecast::conn");
        assert_eq!(e["shard"], 0);
        assert_eq!(e["transport"], "websocket");
        assert_eq!(e["path"], "/ws/echo");
        assert!(
            e["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{e}"
        );
    }
    assert!(opened["conn_id"].is_string(), "{opened}");
    assert_eq!(opened["conn_id"], closed["conn_id"]);
    assert_eq!(opened["query"], "room=a&token=REDACTED");
    assert_eq!(closed["close_code"], 1005);
    assert_eq!(closed["closed_by"], "client");
    assert_eq!(closed["reason"], "close handshake");
    assert!(closed["duration_ms"].is_u64(), "{closed}");

    let all = format!("{}{}", server.stdout(), stderr);
    assert!(
        !all.contains("SECRET123"),
        "the token leaked into the output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_events_are_off_at_the_default_level() {
    let mut server = Server::start_with(ServerOptions::shards(1).set("log.format", "json")).await;
    let mut ws = client::connect(&server.url("/ws/echo?token=SECRET123")).await;
    send_text(&mut ws, "x").await;
    assert_eq!(recv_text(&mut ws).await, "x");
    drop(ws);
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(Duration::from_secs(10)).await;
    let stderr = server.stderr();
    let lines = json_lines(&stderr);
    event(&lines, "listening");
    assert!(!stderr.contains("connection opened"), "{stderr}");
    assert!(!stderr.contains("SECRET123"));
}
