//! The HTTP publish API: `POST /api/rooms/{room}/publish` and `GET /api/rooms/{room}`
//! — authentication, status codes, the JSON answers, percent-decoded room names,
//! text versus binary bodies, member counts summed over 2 shards, and delivery to
//! WebSocket and SSE members. Clients: raw HTTP over TCP, `tokio-tungstenite`, the
//! spec-written SSE client.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use corecast_tests::api::{parse_published, publish, publish_raw, request_bytes, room_info};
use corecast_tests::client::{self, connect};
use corecast_tests::raw::HttpResponse;
use corecast_tests::sse::{percent_encode, split_cursor, SseClient};
use corecast_tests::{eventually, Server, ServerOptions, TEST_API_KEY};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

async fn start() -> Server {
    Server::start_with(ServerOptions::shards(2).api_key()).await
}

async fn post(addr: SocketAddr, path: &str, headers: &[&str], body: &[u8]) -> HttpResponse {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    request_bytes(addr, &head, body).await
}

async fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> HttpResponse {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    request_bytes(addr, &head, b"").await
}

fn bearer() -> String {
    format!("Authorization: Bearer {TEST_API_KEY}")
}

#[tokio::test]
async fn publish_answers_the_position_as_json() {
    let server = start().await;
    let addr = server.addr();
    let mut epoch = None;
    for (i, key_header) in [bearer(), format!("X-API-Key: {TEST_API_KEY}")]
        .iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        let resp = post(
            addr,
            "/api/rooms/news/publish",
            &[key_header, "Content-Length: 5"],
            b"hello",
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON");
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["epoch", "id", "room", "seq"], "{v}");
        let p = parse_published(&resp);
        assert_eq!(p.room, "news");
        assert_eq!(p.seq, i as u64 + 1, "seq counts publishes");
        assert!(
            !p.epoch.is_empty() && p.epoch.bytes().all(|b| b.is_ascii_hexdigit()),
            "epoch is hex: {}",
            p.epoch
        );
        assert_eq!(*epoch.get_or_insert(p.epoch.clone()), p.epoch, "one epoch");
    }
    // Another room has its own sequence.
    assert_eq!(publish(addr, "other", "x").await.seq, 1);
}

#[tokio::test]
async fn room_names_are_percent_decoded() {
    let server = start().await;
    let addr = server.addr();
    for room in ["hello world", "é😀", "a/b", "a=b;c", "100%"] {
        let mut sse =
            SseClient::connect(addr, &format!("/sse?room={}", percent_encode(room))).await;
        eventually(Duration::from_secs(10), "sse member", || async {
            room_info(addr, room).await["members"]["sse"] == 1
        })
        .await;
        let p = publish(addr, room, format!("to {room}")).await;
        assert_eq!(p.room, room, "the answer names the decoded room");
        let ev = sse.next_event().await;
        assert_eq!(ev.data, format!("to {room}"));
        assert_eq!(ev.id.as_deref(), Some(p.id.as_str()));
        let info = room_info(addr, room).await;
        assert_eq!(info["room"], room);
    }
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_with_www_authenticate() {
    let server = start().await;
    let addr = server.addr();
    let wrong = [
        vec![],
        vec!["Authorization: Bearer nope".to_string()],
        vec![format!(
            "Authorization: Bearer {}",
            &TEST_API_KEY[..TEST_API_KEY.len() - 1]
        )],
        vec![format!("Authorization: Bearer {TEST_API_KEY}x")],
        vec![format!("Authorization: Basic {TEST_API_KEY}")],
        vec![format!("Authorization: {TEST_API_KEY}")],
        vec!["X-API-Key: nope".to_string()],
        vec![format!("X-API-Key: {}", TEST_API_KEY.to_uppercase())],
    ];
    for headers in &wrong {
        let mut h: Vec<&str> = headers.iter().map(String::as_str).collect();
        h.push("Content-Length: 2");
        let resp = post(addr, "/api/rooms/sec/publish", &h, b"hi").await;
        assert_eq!(resp.status, 401, "{headers:?}: {}", resp.body_text());
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Bearer"),
            "{headers:?}"
        );
        let h: Vec<&str> = headers.iter().map(String::as_str).collect();
        let resp = get(addr, "/api/rooms/sec", &h).await;
        assert_eq!(resp.status, 401, "GET with {headers:?}");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    }
    // Nothing was published by the refused requests.
    assert_eq!(room_info(addr, "sec").await["seq"], 0);
    assert_eq!(publish(addr, "sec", "ok").await.seq, 1);
}

#[tokio::test]
async fn api_is_404_when_no_key_is_configured() {
    // The default config reads env:CORECAST_API_KEY; the harness removes it.
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let addr = server.addr();
    let resp = post(
        addr,
        "/api/rooms/r/publish",
        &[&bearer(), "Content-Length: 1"],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 404, "{}", resp.body_text());
    assert_eq!(get(addr, "/api/rooms/r", &[&bearer()]).await.status, 404);
    // An empty variable disables it too.
    let server = Server::start_with(ServerOptions::shards(2).env("CORECAST_API_KEY", "")).await;
    let resp = post(
        server.addr(),
        "/api/rooms/r/publish",
        &[&bearer(), "Content-Length: 1"],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 404);
    // A literal key in the config works without the variable.
    let server =
        Server::start_with(ServerOptions::shards(2).set("api.key", "\"literal-key\"")).await;
    let resp = post(
        server.addr(),
        "/api/rooms/r/publish",
        &["X-API-Key: literal-key", "Content-Length: 1"],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
}

#[tokio::test]
async fn length_limits_and_methods() {
    let server = Server::start_with(
        ServerOptions::shards(2)
            .api_key()
            .set("websocket.max_message_size", "1024")
            .set("websocket.max_frame_size", "1024"),
    )
    .await;
    let addr = server.addr();
    let key = bearer();
    // No Content-Length, or chunked: 411.
    let resp = post(addr, "/api/rooms/r/publish", &[&key], b"").await;
    assert_eq!(resp.status, 411, "{}", resp.body_text());
    let resp = post(
        addr,
        "/api/rooms/r/publish",
        &[&key, "Transfer-Encoding: chunked"],
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 411, "{}", resp.body_text());
    // Over websocket.max_message_size: 413 (decided from the header; no body sent).
    let resp = post(
        addr,
        "/api/rooms/r/publish",
        &[&key, "Content-Length: 1025"],
        b"",
    )
    .await;
    assert_eq!(resp.status, 413, "{}", resp.body_text());
    // Exactly the limit is fine.
    let body = vec![b'x'; 1024];
    let resp = publish_raw(addr, "r", &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    // Methods.
    let resp = get(addr, "/api/rooms/r/publish", &[&key]).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    let resp = post(addr, "/api/rooms/r", &[&key, "Content-Length: 0"], b"").await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET"));
    let resp = request_bytes(
        addr,
        &format!("DELETE /api/rooms/r HTTP/1.1\r\nHost: {addr}\r\n{key}\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(resp.status, 405);
    // Unknown routes and bad room names.
    assert_eq!(get(addr, "/api/rooms/r/history", &[&key]).await.status, 404);
    assert_eq!(get(addr, "/api/other", &[&key]).await.status, 404);
    let resp = post(
        addr,
        "/api/rooms//publish",
        &[&key, "Content-Length: 1"],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 400, "empty room: {}", resp.body_text());
    let long = "r".repeat(257);
    let resp = post(
        addr,
        &format!("/api/rooms/{long}/publish"),
        &[&key, "Content-Length: 1"],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 400, "257-byte room: {}", resp.body_text());
    let ok = "r".repeat(256);
    let resp = post(
        addr,
        &format!("/api/rooms/{ok}/publish"),
        &[&key, "Content-Length: 1"],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 200, "256-byte room: {}", resp.body_text());
}

#[tokio::test]
async fn body_may_arrive_in_pieces_after_the_head() {
    let server = start().await;
    let addr = server.addr();
    let mut ws = connect(&server.url("/ws/chat?room=slow")).await;
    eventually(Duration::from_secs(10), "ws member", || async {
        room_info(addr, "slow").await["members"]["websocket"] == 1
    })
    .await;
    let body = "piece one|piece two|piece three";
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(
        format!(
            "POST /api/rooms/slow/publish HTTP/1.1\r\nHost: {addr}\r\n{}\r\nContent-Length: {}\r\n\r\npiece",
            bearer(),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    for part in [" one|", "piece two|", "piece three"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(part.as_bytes()).await.expect("part");
    }
    let resp = corecast_tests::api::read_response(&mut s).await;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(client::recv_text(&mut ws).await, body);
}

#[tokio::test]
async fn utf8_bodies_are_text_and_other_bodies_binary_on_every_transport() {
    let server = start().await;
    let addr = server.addr();
    let mut plain = connect(&server.url("/ws/chat?room=kinds")).await;
    let mut env = connect(&server.url("/ws/chat?room=kinds&envelope=1")).await;
    let mut sse = SseClient::connect(addr, "/sse?room=kinds").await;
    eventually(Duration::from_secs(10), "members", || async {
        let v = room_info(addr, "kinds").await;
        v["members"]["websocket"] == 2 && v["members"]["sse"] == 1 && v["members"]["total"] == 3
    })
    .await;
    let text = publish(addr, "kinds", "héllo").await;
    let bin_body = vec![0x00, 0xff, 0x10, 0xc3];
    let bin = publish(addr, "kinds", &bin_body).await;

    assert_eq!(
        client::recv(&mut plain).await,
        Message::Text("héllo".into())
    );
    assert_eq!(
        client::recv(&mut plain).await,
        Message::Binary(bin_body.clone())
    );

    let e1: serde_json::Value =
        serde_json::from_str(&client::recv_text(&mut env).await).expect("envelope");
    assert_eq!(
        e1,
        serde_json::json!({"room": "kinds", "id": text.id, "data": "héllo"})
    );
    let e2: serde_json::Value =
        serde_json::from_str(&client::recv_text(&mut env).await).expect("envelope");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bin_body);
    assert_eq!(
        e2,
        serde_json::json!({"room": "kinds", "id": bin.id, "encoding": "base64", "data": b64})
    );

    let ev = sse.next_event().await;
    assert_eq!((ev.ty.as_str(), ev.data.as_str()), ("message", "héllo"));
    let ev = sse.next_event().await;
    assert_eq!((ev.ty.as_str(), ev.data.as_str()), ("binary", b64.as_str()));
    assert_eq!(ev.id.as_deref(), Some(bin.id.as_str()));
}

#[tokio::test]
async fn room_info_sums_members_over_shards_and_reports_the_position() {
    let server = start().await;
    let addr = server.addr();
    // A room nobody joined or published to.
    let v = room_info(addr, "empty").await;
    assert_eq!(
        v,
        serde_json::json!({"room": "empty", "members": {"websocket": 0, "sse": 0, "webtransport": 0, "total": 0},
                           "epoch": null, "seq": 0, "id": null})
    );
    let mut ws = Vec::new();
    for _ in 0..7 {
        ws.push(connect(&server.url("/ws/chat?room=count")).await);
    }
    let mut sse = Vec::new();
    for _ in 0..5 {
        sse.push(SseClient::connect(addr, "/sse?room=count&room=elsewhere").await);
    }
    eventually(Duration::from_secs(10), "7 ws + 5 sse members", || async {
        let v = room_info(addr, "count").await;
        v["members"]
            == serde_json::json!({"websocket": 7, "sse": 5, "webtransport": 0, "total": 12})
    })
    .await;
    let per: Vec<u64> = server.stats().await["connections_per_shard"]
        .as_array()
        .expect("per shard")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect();
    let a = publish(addr, "count", "1").await;
    let b = publish(addr, "count", "2").await;
    let v = room_info(addr, "count").await;
    assert_eq!(v["epoch"], a.epoch);
    assert_eq!(v["seq"], 2);
    assert_eq!(v["id"], b.id);
    assert_eq!(room_info(addr, "elsewhere").await["members"]["sse"], 5);
    // Leaving is counted too.
    ws.truncate(3);
    sse.truncate(1);
    eventually(Duration::from_secs(10), "3 ws + 1 sse members", || async {
        room_info(addr, "count").await["members"]
            == serde_json::json!({"websocket": 3, "sse": 1, "webtransport": 0, "total": 4})
    })
    .await;
    assert_eq!(per.iter().sum::<u64>(), 12, "connections: {per:?}");
}

#[tokio::test]
async fn api_publishes_reach_websocket_and_sse_members_in_one_order() {
    let server = start().await;
    let addr = server.addr();
    let mut wss = Vec::new();
    for _ in 0..4 {
        wss.push(connect(&server.url("/ws/chat?room=fan")).await);
    }
    let mut sses = Vec::new();
    for _ in 0..4 {
        sses.push(SseClient::connect(addr, "/sse?room=fan").await);
    }
    eventually(Duration::from_secs(10), "members", || async {
        room_info(addr, "fan").await["members"]["total"] == 8
    })
    .await;
    // Two API publishers and one WebSocket member publishing concurrently.
    const EACH: usize = 50;
    let mut tasks = Vec::new();
    for k in 0..2 {
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..EACH {
                let p = publish(addr, "fan", format!("api{k}-{i}")).await;
                assert!(p.seq > last, "seq grows per publisher");
                last = p.seq;
            }
        }));
    }
    let mut pubber = wss.pop().expect("ws");
    for i in 0..EACH {
        client::send_text(&mut pubber, format!("ws-{i}")).await;
    }
    wss.push(pubber);
    for t in tasks {
        t.await.expect("publisher");
    }
    let total = 3 * EACH;
    let mut reference: Option<Vec<String>> = None;
    for ws in &mut wss {
        let mut got = Vec::new();
        for _ in 0..total {
            got.push(client::recv_text(ws).await);
        }
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(&got, r, "one order for every WebSocket member"),
        }
    }
    let reference = reference.expect("reference");
    for prefix in ["api0-", "api1-", "ws-"] {
        let mine: Vec<&String> = reference.iter().filter(|m| m.starts_with(prefix)).collect();
        assert_eq!(mine.len(), EACH, "{prefix}");
        for (i, m) in mine.iter().enumerate() {
            assert_eq!(**m, format!("{prefix}{i}"), "per-publisher order");
        }
    }
    for s in &mut sses {
        let events = s.next_events(total).await;
        let data: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, reference, "SSE members see the same order");
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| split_cursor(e.id.as_deref().expect("id")).1)
            .collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    }
}
