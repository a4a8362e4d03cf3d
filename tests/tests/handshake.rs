//! Opening handshake: routing, rejections with the right status, and the
//! `/stats` endpoint.

use std::time::Duration;

use corecast_tests::raw::{self, accept_key, new_key, upgrade_request, WsConn};
use corecast_tests::Server;
use tokio::io::AsyncWriteExt;

/// A handshake request with the given request line and header lines.
fn request(line: &str, headers: &[&str]) -> String {
    let mut r = format!("{line}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// Asserts a 400 whose body is a non-empty one-line reason.
fn assert_400_with_reason(resp: &raw::HttpResponse) {
    assert_eq!(resp.status, 400, "expected 400: {resp:?}");
    let body = resp.body_text();
    let reason = body.trim_end_matches(['\r', '\n']);
    assert!(
        !reason.trim().is_empty(),
        "400 without a reason body: {resp:?}"
    );
    assert!(
        !reason.contains('\n'),
        "400 reason is not one line: {body:?}"
    );
}

#[tokio::test]
async fn unknown_path_returns_404() {
    let server = Server::start().await;
    let addr = server.addr();
    let resp = raw::http_request(addr, &upgrade_request(addr, "/nope", &new_key(), &[])).await;
    assert_eq!(resp.status, 404, "{resp:?}");
    let resp = raw::http_request(
        addr,
        &request("GET /ws/echo/extra HTTP/1.1", &[&format!("Host: {addr}")]),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
}

#[tokio::test]
async fn non_get_method_is_rejected_with_400_or_405() {
    let server = Server::start().await;
    let addr = server.addr();
    let key = new_key();
    let resp = raw::http_request(
        addr,
        &request(
            "POST /ws/echo HTTP/1.1",
            &[
                &format!("Host: {addr}"),
                "Upgrade: websocket",
                "Connection: Upgrade",
                &format!("Sec-WebSocket-Key: {key}"),
                "Sec-WebSocket-Version: 13",
                "Content-Length: 0",
            ],
        ),
    )
    .await;
    assert!(
        resp.status == 400 || resp.status == 405,
        "POST upgrade got {resp:?}"
    );
}

#[tokio::test]
async fn missing_upgrade_header_returns_400_with_reason() {
    let server = Server::start().await;
    let addr = server.addr();
    let resp = raw::http_request(
        addr,
        &request(
            "GET /ws/echo HTTP/1.1",
            &[
                &format!("Host: {addr}"),
                "Connection: Upgrade",
                &format!("Sec-WebSocket-Key: {}", new_key()),
                "Sec-WebSocket-Version: 13",
            ],
        ),
    )
    .await;
    assert_400_with_reason(&resp);
}

#[tokio::test]
async fn upgrade_to_other_protocol_returns_400_with_reason() {
    let server = Server::start().await;
    let addr = server.addr();
    let resp = raw::http_request(
        addr,
        &request(
            "GET /ws/echo HTTP/1.1",
            &[
                &format!("Host: {addr}"),
                "Upgrade: h2c",
                "Connection: Upgrade",
                &format!("Sec-WebSocket-Key: {}", new_key()),
                "Sec-WebSocket-Version: 13",
            ],
        ),
    )
    .await;
    assert_400_with_reason(&resp);
}

#[tokio::test]
async fn missing_connection_upgrade_returns_400_with_reason() {
    let server = Server::start().await;
    let addr = server.addr();
    let resp = raw::http_request(
        addr,
        &request(
            "GET /ws/echo HTTP/1.1",
            &[
                &format!("Host: {addr}"),
                "Upgrade: websocket",
                "Connection: keep-alive",
                &format!("Sec-WebSocket-Key: {}", new_key()),
                "Sec-WebSocket-Version: 13",
            ],
        ),
    )
    .await;
    assert_400_with_reason(&resp);
}

#[tokio::test]
async fn missing_key_returns_400_with_reason() {
    let server = Server::start().await;
    let addr = server.addr();
    let resp = raw::http_request(
        addr,
        &request(
            "GET /ws/echo HTTP/1.1",
            &[
                &format!("Host: {addr}"),
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
            ],
        ),
    )
    .await;
    assert_400_with_reason(&resp);
}

#[tokio::test]
async fn key_that_is_not_16_base64_bytes_returns_400_with_reason() {
    let server = Server::start().await;
    let addr = server.addr();
    for key in [
        "abc",
        "not base64 at all!!",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let resp = raw::http_request(addr, &upgrade_request(addr, "/ws/echo", key, &[])).await;
        assert_400_with_reason(&resp);
    }
}

#[tokio::test]
async fn unsupported_version_returns_426_with_version_header() {
    let server = Server::start().await;
    let addr = server.addr();
    for version in ["8", "12", "14"] {
        let resp = raw::http_request(
            addr,
            &request(
                "GET /ws/echo HTTP/1.1",
                &[
                    &format!("Host: {addr}"),
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    &format!("Sec-WebSocket-Key: {}", new_key()),
                    &format!("Sec-WebSocket-Version: {version}"),
                ],
            ),
        )
        .await;
        assert_eq!(resp.status, 426, "version {version}: {resp:?}");
        let advertised = resp
            .header("sec-websocket-version")
            .unwrap_or_else(|| panic!("426 without Sec-WebSocket-Version: {resp:?}"));
        assert!(
            advertised.split(',').any(|v| v.trim() == "13"),
            "426 advertises {advertised:?}, not 13"
        );
    }
}

#[tokio::test]
async fn valid_upgrade_returns_101_with_accept_and_upgrade_headers() {
    let server = Server::start().await;
    // WsConn::connect checks 101 and Sec-WebSocket-Accept.
    let conn = WsConn::connect(server.addr(), "/ws/echo").await;
    let r = &conn.response;
    assert!(
        r.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{r:?}"
    );
    assert!(
        r.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{r:?}"
    );
    // The RFC 6455 sample key, as a fixed point for the accept computation.
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[tokio::test]
async fn header_names_and_tokens_are_case_insensitive_and_listed() {
    let server = Server::start().await;
    let addr = server.addr();
    let key = new_key();
    // Browsers send `Connection: keep-alive, Upgrade`; header names and the
    // upgrade tokens are case-insensitive (RFC 6455 section 4.2.1).
    let req = request(
        "GET /ws/echo HTTP/1.1",
        &[
            &format!("host: {addr}"),
            "UPGRADE: WebSocket",
            "connection: keep-alive, upgrade",
            &format!("sec-websocket-key: {key}"),
            "sec-websocket-version: 13",
        ],
    );
    let resp = raw::http_request(addr, &req).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(accept_key(&key).as_str())
    );
}

#[tokio::test]
async fn query_string_does_not_change_the_route() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo?x=1&y=2").await;
    conn.send(&raw::Frame::text("q")).await.unwrap();
    let (op, _, payload) = conn.recv_message().await;
    assert_eq!((op, payload.as_slice()), (raw::OP_TEXT, &b"q"[..]));
}

#[tokio::test]
async fn handshake_split_across_many_packets_is_accepted() {
    let server = Server::start().await;
    let addr = server.addr();
    let key = new_key();
    let req = upgrade_request(addr, "/ws/echo", &key, &[]);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for chunk in req.as_bytes().chunks(7) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut buf = Vec::new();
    let head = corecast_tests::within(
        Duration::from_secs(10),
        "101 after a trickled handshake",
        async {
            use tokio::io::AsyncReadExt;
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
                buf.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8_lossy(&buf).into_owned()
        },
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains(&accept_key(&key)), "{head}");
}

#[tokio::test]
async fn requested_subprotocol_is_not_echoed() {
    let server = Server::start().await;
    let conn = WsConn::connect_with(
        server.addr(),
        "/ws/echo",
        &["Sec-WebSocket-Protocol: chat, superchat"],
    )
    .await;
    assert_eq!(
        conn.response.header("sec-websocket-protocol"),
        None,
        "server picked a subprotocol it does not support: {:?}",
        conn.response
    );
}

#[tokio::test]
async fn stats_endpoint_reports_json_counters() {
    let server = Server::start().await;
    let before = server.stats().await;
    for key in ["connections", "frames_written", "writes"] {
        assert!(
            before.get(key).is_some_and(|v| v.is_u64()),
            "/stats lacks numeric {key}: {before}"
        );
    }
    let mut a = WsConn::connect(server.addr(), "/ws/echo").await;
    let mut b = WsConn::connect(server.addr(), "/ws/echo").await;
    for conn in [&mut a, &mut b] {
        for i in 0..5 {
            conn.send(&raw::Frame::text(format!("m{i}"))).await.unwrap();
            conn.recv_message().await;
        }
    }
    let after = server.stats().await;
    let get = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    assert!(
        get(&after, "connections") >= 2,
        "2 open clients but {after}"
    );
    assert!(
        get(&after, "frames_written") >= get(&before, "frames_written") + 10,
        "10 echoes written but frames_written went {before} -> {after}"
    );
    assert!(
        get(&after, "writes") > get(&before, "writes"),
        "writes did not grow: {before} -> {after}"
    );
}
