//! JWT on the built-in endpoints (`auth: true` in config): refusals before the
//! upgrade (401 without or with a bad token, 403 for a `?room=` the token does
//! not allow), every token source, SSE too, and the 4001 close when a token
//! expires on a live connection. Tokens are minted here with `ring`'s HMAC — an
//! implementation independent of the server's `jsonwebtoken`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use corecast_tests::raw::{http_request, new_key, upgrade_request, Frame, WsConn};
use corecast_tests::{within, Server, ServerOptions};

const SECRET: &str = "builtin-endpoint-test-secret";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An HS256 token for `claims`, signed with `secret`.
fn token_with(secret: &str, claims: &serde_json::Value) -> String {
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signing = format!("{head}.{body}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = ring::hmac::sign(&key, signing.as_bytes());
    format!("{signing}.{}", b64(sig.as_ref()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    token_with(SECRET, &claims)
}

fn valid_token() -> String {
    token(serde_json::json!({"sub": "ada", "exp": now() + 600, "rooms": ["lobby", "stream-*"]}))
}

fn options() -> ServerOptions {
    ServerOptions::shards(2)
        .replace(
            "    - path: /ws/chat\n      kind: rooms\n",
            "    - path: /ws/chat\n      kind: rooms\n      auth: true\n",
        )
        .replace("    - path: /sse\n", "    - path: /sse\n      auth: true\n")
        .append(&format!(
            "\nauth:\n  algorithm: HS256\n  secret: {SECRET}\n  leeway: 0s\n"
        ))
}

async fn upgrade_status(server: &Server, path: &str, headers: &[&str]) -> (u16, String) {
    let req = upgrade_request(server.addr(), path, &new_key(), headers);
    let resp = http_request(server.addr(), &req).await;
    (resp.status, resp.body_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_the_upgrade() {
    let server = Server::start_with(options()).await;
    let (status, body) = upgrade_status(&server, "/ws/chat?room=lobby", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token"), "{body}");

    let forged = token_with(
        "another-secret",
        &serde_json::json!({"sub": "eve", "exp": now() + 600}),
    );
    let (status, body) =
        upgrade_status(&server, &format!("/ws/chat?room=lobby&token={forged}"), &[]).await;
    assert_eq!(status, 401, "{body}");

    let expired = token(serde_json::json!({"sub": "ada", "exp": now() - 60}));
    let (status, body) = upgrade_status(
        &server,
        &format!("/ws/chat?room=lobby&token={expired}"),
        &[],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");

    // A room the token's `rooms` claim does not cover: 403, still before the upgrade.
    let (status, body) = upgrade_status(
        &server,
        &format!("/ws/chat?room=admin&token={}", valid_token()),
        &[],
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // The unprotected echo endpoint needs nothing.
    let (status, _) = upgrade_status(&server, "/ws/echo", &[]).await;
    assert_eq!(status, 101);

    let stats = server.stats().await;
    assert_eq!(stats["connect_rejected"], 4, "{stats}");
    // The token never shows up in the server's output.
    assert!(!server.output().contains(&valid_token()[..40]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_source_admits_and_the_room_works() {
    let server = Server::start_with(options()).await;
    let t = valid_token();
    let query = format!("/ws/chat?room=stream-1&token={t}");
    let bearer = format!("Authorization: Bearer {t}");
    let cookie = format!("Cookie: theme=dark; corecast_token={t}");
    let mut a = WsConn::connect(server.addr(), &query).await;
    let mut b = WsConn::connect_with(server.addr(), "/ws/chat?room=stream-1", &[&bearer]).await;
    let mut c = WsConn::connect_with(server.addr(), "/ws/chat?room=stream-1", &[&cookie]).await;
    // Joins are in place once a message sent after them comes back to its sender.
    for (i, ws) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let probe = format!("ready-{i}");
        ws.send(&Frame::text(probe.clone())).await.expect("send");
        loop {
            let (_, _, payload) = ws.recv_message().await;
            if payload == probe.as_bytes() {
                break;
            }
        }
    }
    a.send(&Frame::text("hello")).await.expect("send");
    for ws in [&mut b, &mut c] {
        loop {
            let (_, _, payload) = ws.recv_message().await;
            if payload == b"hello" {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_need_a_token_too() {
    let server = Server::start_with(options()).await;
    let addr = server.addr();
    let req = format!(
        "GET /sse?room=lobby HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    let resp = http_request(addr, &req).await;
    assert_eq!(resp.status, 401, "{}", resp.body_text());
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_closes_its_connection_with_4001() {
    let server = Server::start_with(options()).await;
    let short = token(serde_json::json!({"sub": "ada", "exp": now() + 2}));
    let mut ws =
        WsConn::connect(server.addr(), &format!("/ws/chat?room=lobby&token={short}")).await;
    let closed = within(Duration::from_secs(10), "4001 close", ws.expect_close()).await;
    assert_eq!(closed.code, Some(4001), "{closed:?}");
    assert_eq!(closed.reason, b"token expired");
}
