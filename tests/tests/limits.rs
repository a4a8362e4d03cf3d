//! Limits (docs/SECURITY.md ("Limits")), each against a real server over raw sockets: request
//! head size and header count (431/400), the handshake deadline under a slowloris
//! of 5,000 trickling connections, per-shard and per-address connection caps (503),
//! fragments per message (1009), a deflate bomb (1009, bounded RSS), a ping flood
//! from a client that does not read (bounded pongs), the inbound rate limit (error
//! frame / 1008) and the WebSocket and SSE origin allow-lists (403, CORS).
//! WebTransport's 403 for a disallowed origin is in tests/webtransport.rs.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use corecast_tests::raw::{self, new_key, upgrade_request, Frame, HttpResponse, WsConn};
use corecast_tests::{eventually, within, Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` from source address `from` (any port).
async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    within(Duration::from_secs(5), "connect", socket.connect(addr))
        .await
        .expect("connect")
}

/// Reads until the end of a response head (and at most a little past it).
async fn read_response_head(stream: &mut TcpStream) -> HttpResponse {
    let mut buf = Vec::new();
    within(Duration::from_secs(5), "response head", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let mut resp = raw::parse_head(&buf[..end + 4]);
                resp.body = buf[end + 4..].to_vec();
                return resp;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Sends `request` from `from` and returns the response head (the connection stays
/// open with it, for upgrades).
async fn request_from(from: IpAddr, addr: SocketAddr, request: &str) -> (HttpResponse, TcpStream) {
    let mut s = connect_from(from, addr).await;
    s.write_all(request.as_bytes()).await.expect("write");
    (read_response_head(&mut s).await, s)
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats has no {key}: {stats}"))
}

#[tokio::test]
async fn request_head_limits_answer_431_naming_the_limit_and_garbage_400() {
    let server = Server::start_with(
        ServerOptions::default()
            .set("limits.max_headers", "12")
            .set("limits.max_request_head_bytes", "2048"),
    )
    .await;
    let addr = server.addr();
    // The upgrade request has five header lines of its own.
    let many: Vec<String> = (0..8).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let resp = raw::http_request(addr, &upgrade_request(addr, "/ws/echo", &new_key(), &many)).await;
    assert_eq!(resp.status, 431, "{resp:?}");
    assert!(
        resp.body_text().contains("limits.max_headers (12)"),
        "{resp:?}"
    );

    let big = format!("X-Big: {}", "a".repeat(3000));
    let resp = raw::http_request(
        addr,
        &upgrade_request(addr, "/ws/echo", &new_key(), &[&big]),
    )
    .await;
    assert_eq!(resp.status, 431, "{resp:?}");
    assert!(
        resp.body_text()
            .contains("limits.max_request_head_bytes (2048 bytes)"),
        "{resp:?}"
    );

    let resp = raw::http_request(addr, "GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(!resp.body_text().trim().is_empty(), "{resp:?}");

    // Within the limits the same endpoint upgrades.
    let few: Vec<&str> = many[..7].to_vec();
    WsConn::connect_with(addr, "/ws/echo", &few).await;
    assert_eq!(stat(&server.stats().await, "bad_requests"), 3);
}

/// 5,000 connections trickle a request head, one byte a second. Meanwhile normal
/// clients complete their handshake promptly (each connection has its own task:
/// nothing waits behind a slow one), and the slow ones are dropped at the
/// handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_delay_a_normal_handshake_and_is_dropped_at_the_deadline() {
    const SLOW: usize = 5000;
    let timeout = Duration::from_secs(4);
    let server =
        Server::start_with(ServerOptions::default().set("limits.handshake_timeout", "4s")).await;
    let addr = server.addr();
    let opened = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Duration>(SLOW);
    let mut tasks = Vec::new();
    for i in 0..SLOW {
        // Spread source addresses so 5,000 connections never run short of ports.
        let from = IpAddr::from([127, 0, 1 + (i / 1000) as u8, 2]);
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            // Timed from before connect: the server's deadline starts at its accept,
            // later, so no connection may be seen dropped before the deadline.
            let started = Instant::now();
            let mut s = connect_from(from, addr).await;
            let head = b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaa";
            let mut buf = [0u8; 64];
            for b in head.iter().cycle() {
                // One byte, then a second in which the server may hang up.
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => panic!("the server answered a request head that never ended"),
                    Err(_) => {}
                }
                if started.elapsed() > Duration::from_secs(20) {
                    panic!("a trickling connection was not dropped within 20 s");
                }
            }
            let _ = tx.send(started.elapsed()).await;
        }));
        if i % 100 == 99 {
            // Let the server accept in batches (listen backlog).
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    drop(tx);
    let all_open = opened.elapsed();

    // While all of them trickle: normal handshakes, each timed.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let mut ws = WsConn::connect(addr, "/ws/echo").await;
        ws.send(&Frame::text("hi")).await.expect("send");
        let (_, _, payload) = ws.recv_message().await;
        assert_eq!(payload, b"hi");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        worst < Duration::from_secs(2),
        "a normal handshake + echo took {worst:?} during the slowloris"
    );

    // Every slow connection is dropped at the deadline (a little after: the
    // client notices within its one-second read).
    let mut dropped = Vec::with_capacity(SLOW);
    within(Duration::from_secs(30), "slow connections dropped", async {
        while let Some(d) = rx.recv().await {
            dropped.push(d);
        }
    })
    .await;
    for t in tasks {
        t.await.expect("slow client task");
    }
    assert_eq!(dropped.len(), SLOW);
    dropped.sort();
    let early = dropped
        .iter()
        .filter(|d| **d < timeout - Duration::from_millis(200))
        .count();
    let (min, max) = (
        dropped.iter().min().copied().unwrap(),
        dropped.iter().max().copied().unwrap(),
    );
    assert!(
        min >= timeout - Duration::from_millis(200),
        "{early} slow connections were dropped before the {timeout:?} deadline, the first after {min:?}"
    );
    assert!(
        max <= timeout + Duration::from_secs(4),
        "a slow connection lived {max:?}, past the {timeout:?} deadline"
    );
    let stats = server.stats().await;
    assert!(
        stat(&stats, "handshake_timeouts") >= SLOW as u64,
        "opened all in {all_open:?}; {stats}"
    );
    assert_eq!(
        stat(&stats, "handshaking"),
        1,
        "only /stats itself: {stats}"
    );
}

#[tokio::test]
async fn shard_connection_cap_answers_503_with_retry_after() {
    let server =
        Server::start_with(ServerOptions::default().set("limits.max_connections_per_shard", "3"))
            .await;
    let addr = server.addr();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(WsConn::connect(addr, "/ws/echo").await);
    }
    let req = upgrade_request(addr, "/ws/echo", &new_key(), &[]);
    let (resp, _s) = request_from(localhost(), addr, &req).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("retry-after"), Some("1"), "{resp:?}");
    assert!(
        resp.body_text()
            .contains("limits.max_connections_per_shard"),
        "{resp:?}"
    );
    drop(_s);
    // One leaves: a new one fits again.
    let mut first = open.remove(0);
    first.send(&Frame::close(1000, b"")).await.expect("close");
    first.expect_close_code(1000).await;
    eventually(Duration::from_secs(5), "a slot frees up", || async {
        let (resp, _s) = request_from(localhost(), addr, &req).await;
        resp.status == 101
    })
    .await;
    drop(open);
    eventually(Duration::from_secs(5), "stats reachable", || async {
        let (resp, _s) =
            request_from(localhost(), addr, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").await;
        resp.status == 200
    })
    .await;
    assert!(stat(&server.stats().await, "shard_limit_rejected") >= 1);
}

#[tokio::test]
async fn per_address_cap_answers_503_and_other_addresses_still_connect() {
    // Two shards: the cap is per address across shards, wherever SO_REUSEPORT
    // puts each connection.
    let server =
        Server::start_with(ServerOptions::shards(2).set("limits.max_connections_per_ip", "2"))
            .await;
    let addr = server.addr();
    let req = upgrade_request(addr, "/ws/echo", &new_key(), &[]);
    let a = IpAddr::from([127, 0, 0, 2]);
    let b = IpAddr::from([127, 0, 0, 3]);
    let (r1, s1) = request_from(a, addr, &req).await;
    let (r2, _s2) = request_from(a, addr, &req).await;
    assert_eq!((r1.status, r2.status), (101, 101));
    for _ in 0..4 {
        let (r, _) = request_from(a, addr, &req).await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
        assert!(
            r.body_text()
                .contains("connection limit reached: limits.max_connections_per_ip"),
            "{r:?}"
        );
    }
    let (r, _s3) = request_from(b, addr, &req).await;
    assert_eq!(r.status, 101, "another address is not limited: {r:?}");
    // Closing one of a's connections frees its slot.
    drop(s1);
    eventually(Duration::from_secs(5), "a's slot frees up", || async {
        let (r, _s) = request_from(a, addr, &req).await;
        r.status == 101
    })
    .await;
    assert!(stat(&server.stats().await, "ip_limit_rejected") >= 4);
}

#[tokio::test]
async fn fragments_over_max_fragments_close_1009() {
    let server =
        Server::start_with(ServerOptions::default().set("websocket.max_fragments", "4")).await;
    let mut ws = WsConn::connect(server.addr(), "/ws/echo").await;
    // Four frames make a message.
    ws.send(&Frame::text("a").fin(false)).await.unwrap();
    for i in 0..3 {
        ws.send(&Frame::cont("b").fin(i == 2)).await.unwrap();
    }
    let (_, _, payload) = ws.recv_message().await;
    assert_eq!(payload, b"abbb");
    // A fifth (even empty) is one too many.
    ws.send(&Frame::binary("").fin(false)).await.unwrap();
    for _ in 0..4 {
        ws.send(&Frame::cont("").fin(false)).await.unwrap();
    }
    ws.expect_close_code(1009).await;
    assert_eq!(stat(&server.stats().await, "too_big_closes"), 1);
}

/// Resident set size of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A raw-deflate message that inflates to `mib` MiB of zeros: one compressed MiB
/// repeated (every back-reference points into zeros, and each piece ends on a
/// sync flush, so the pieces concatenate).
fn deflate_bomb(mib: usize) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let piece = |c: &mut flate2::Compress| {
        let mut out = Vec::with_capacity(8192);
        let start = c.total_in();
        loop {
            let done = (c.total_in() - start) as usize;
            out.reserve(8192);
            c.compress_vec(&zeros[done..], &mut out, flate2::FlushCompress::Sync)
                .expect("deflate");
            if (c.total_in() - start) as usize == zeros.len() && out.ends_with(&[0, 0, 0xff, 0xff])
            {
                return out;
            }
        }
    };
    let mut bomb = piece(&mut c);
    let steady = piece(&mut c);
    for _ in 2..mib {
        bomb.extend_from_slice(&steady);
    }
    bomb.extend_from_slice(&steady);
    bomb.truncate(bomb.len() - 4);
    bomb
}

#[tokio::test]
async fn deflate_bomb_closes_1009_and_rss_stays_flat() {
    let server = Server::start().await;
    let bomb = deflate_bomb(512);
    assert!(bomb.len() < 1 << 20, "bomb of {} bytes", bomb.len());
    // The bomb is well formed: its first MiBs inflate to zeros.
    let mut d = flate2::Decompress::new(false);
    let mut head = vec![0u8; 4 << 20];
    d.decompress(&bomb, &mut head, flate2::FlushDecompress::None)
        .expect("the bomb is valid deflate");
    assert_eq!(d.total_out(), 4 << 20);
    assert!(head.iter().all(|b| *b == 0));

    let mut ws = WsConn::connect_with(
        server.addr(),
        "/ws/echo",
        &["Sec-WebSocket-Extensions: permessage-deflate"],
    )
    .await;
    // Warm up the server's buffers, then measure.
    ws.send(&Frame::text("warm")).await.unwrap();
    ws.recv_message().await;
    let before = rss(server.pid());
    for _ in 0..3 {
        let mut ws = WsConn::connect_with(
            server.addr(),
            "/ws/echo",
            &["Sec-WebSocket-Extensions: permessage-deflate"],
        )
        .await;
        ws.send(&Frame::binary(bomb.clone()).rsv(0b100))
            .await
            .unwrap();
        ws.expect_close_code(1009).await;
    }
    let after = rss(server.pid());
    let growth = after.saturating_sub(before);
    assert!(
        growth < 64 << 20,
        "server RSS grew by {} MiB for three 512 MiB bombs",
        growth >> 20
    );
    assert_eq!(stat(&server.stats().await, "too_big_closes"), 3);
}

/// A client floods pings and never reads: the server keeps at most
/// `max_pending_pongs` pongs queued (skipping the rest) instead of queueing one
/// per ping until the connection is closed as a slow consumer.
#[tokio::test]
async fn ping_flood_from_a_client_that_does_not_read_keeps_pongs_bounded() {
    let server = Server::start().await;
    let addr = server.addr();
    let mut ws = WsConn::connect_opts(addr, "/ws/echo", &[], Some(4096)).await;
    let before = rss(server.pid());
    let payload = vec![b'p'; 125];
    let mut batch = Vec::new();
    let mut mask = 1u32;
    for _ in 0..1000 {
        mask = mask.wrapping_mul(2_654_435_761).wrapping_add(7);
        batch.extend(Frame::ping(payload.clone()).encode(Some(mask.to_be_bytes())));
    }
    // 100,000 pings (12.5 MB of pongs if each were queued: past the 4 MiB
    // outbound queue cap).
    within(Duration::from_secs(60), "ping flood", async {
        for _ in 0..100 {
            ws.send_bytes(&batch).await.expect("flood");
        }
    })
    .await;
    // Most pings go unanswered (how many pongs the kernel's socket buffers absorb
    // varies; without the bound none would be skipped and the queue would hit its
    // cap, closing the connection as a slow consumer).
    eventually(Duration::from_secs(20), "pings skipped", || async {
        stat(&server.stats().await, "pongs_skipped") > 80_000
    })
    .await;
    let stats = server.stats().await;
    assert_eq!(stat(&stats, "slow_consumers"), 0, "{stats}");
    let growth = rss(server.pid()).saturating_sub(before);
    assert!(growth < 64 << 20, "RSS grew {} MiB", growth >> 20);
    // The connection is alive: the client reads its pongs and an echo comes back.
    ws.send(&Frame::text("still here")).await.unwrap();
    let (op, _, payload) = ws.recv_message().await;
    assert_eq!((op, payload.as_slice()), (1, &b"still here"[..]));
}

async fn send_burst(ws: &mut WsConn, n: usize) {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(Frame::text(format!("m{i}")).encode(Some([1, 2, 3, (i % 250) as u8])));
    }
    ws.send_bytes(&bytes).await.expect("burst");
}

#[tokio::test]
async fn rate_limit_error_action_drops_with_one_error_frame() {
    let server = Server::start_with(ServerOptions::default().set(
        "websocket.rate_limit",
        "{messages_per_second: 5, burst: 1s, action: error}",
    ))
    .await;
    let mut ws = WsConn::connect(server.addr(), "/ws/echo").await;
    send_burst(&mut ws, 20).await;
    for i in 0..5 {
        let (_, _, p) = ws.recv_message().await;
        assert_eq!(p, format!("m{i}").as_bytes());
    }
    let (op, _, p) = ws.recv_message().await;
    assert_eq!(op, 1);
    let v: serde_json::Value = serde_json::from_slice(&p).expect("error frame is JSON");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "rate_limited", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("5 messages/s"),
        "{v}"
    );
    // After the bucket refills, messages flow again; the 14 other refusals sent
    // nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.send(&Frame::text("later")).await.unwrap();
    let (_, _, p) = ws.recv_message().await;
    assert_eq!(p, b"later");
    assert_eq!(stat(&server.stats().await, "rate_limited"), 15);
}

#[tokio::test]
async fn rate_limit_close_action_closes_1008() {
    let server = Server::start_with(ServerOptions::default().set(
        "websocket.rate_limit",
        "{bytes_per_second: 1000, burst: 1s, action: close}",
    ))
    .await;
    let mut ws = WsConn::connect(server.addr(), "/ws/echo").await;
    ws.send(&Frame::binary(vec![7u8; 1500])).await.unwrap();
    let (_, _, p) = ws.recv_message().await;
    assert_eq!(p.len(), 1500, "one message larger than the bucket passes");
    ws.send(&Frame::binary(vec![7u8; 10])).await.unwrap();
    let closed = ws.expect_close().await;
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert_eq!(closed.reason, b"rate limit", "{closed:?}");
    assert_eq!(stat(&server.stats().await, "rate_limited"), 1);
}

#[tokio::test]
async fn websocket_origin_allow_list_refuses_403_before_the_upgrade() {
    let server = Server::start_with(
        ServerOptions::default().set("websocket.allowed_origins", "[\"https://good.example\"]"),
    )
    .await;
    let addr = server.addr();
    let resp = raw::http_request(
        addr,
        &upgrade_request(
            addr,
            "/ws/echo",
            &new_key(),
            &["Origin: https://evil.example"],
        ),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body_text().contains("https://evil.example"),
        "{resp:?}"
    );
    WsConn::connect_with(addr, "/ws/echo", &["Origin: https://good.example"]).await;
    // Not a browser page: no Origin, no check.
    WsConn::connect(addr, "/ws/echo").await;
    assert_eq!(stat(&server.stats().await, "origin_rejected"), 1);
}

fn sse_request(method: &str, origin: Option<&str>, extra: &[&str]) -> String {
    let mut r =
        format!("{method} /sse?room=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n");
    if let Some(o) = origin {
        r.push_str(&format!("Origin: {o}\r\n"));
    }
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

#[tokio::test]
async fn sse_origin_allow_list_answers_403_cors_and_preflight() {
    let server = Server::start_with(
        ServerOptions::default().set("sse.allowed_origins", "[\"https://good.example\"]"),
    )
    .await;
    let addr = server.addr();
    let (r, _) = request_from(
        localhost(),
        addr,
        &sse_request("GET", Some("https://evil.example"), &[]),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");

    let (r, _s) = request_from(
        localhost(),
        addr,
        &sse_request("GET", Some("https://good.example"), &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    let pre = sse_request(
        "OPTIONS",
        Some("https://good.example"),
        &[
            "Access-Control-Request-Method: GET",
            "Access-Control-Request-Headers: last-event-id",
        ],
    );
    let (r, _) = request_from(localhost(), addr, &pre).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    assert!(
        r.header("access-control-allow-headers")
            .is_some_and(|h| h.to_ascii_lowercase().contains("last-event-id")),
        "{r:?}"
    );
    let (r, _) = request_from(
        localhost(),
        addr,
        &sse_request(
            "OPTIONS",
            Some("https://evil.example"),
            &["Access-Control-Request-Method: GET"],
        ),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    // OPTIONS that is not a preflight is still 405.
    let (r, _) = request_from(
        localhost(),
        addr,
        &sse_request("OPTIONS", Some("https://good.example"), &[]),
    )
    .await;
    assert_eq!(r.status, 405, "{r:?}");
    // No Origin: a same-origin or non-browser client, no CORS headers.
    let (r, _s2) = request_from(localhost(), addr, &sse_request("GET", None, &[])).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(stat(&server.stats().await, "origin_rejected"), 2);
}

#[tokio::test]
async fn sse_wildcard_origin_is_reflected_without_credentials() {
    let server =
        Server::start_with(ServerOptions::default().set("sse.allowed_origins", "[\"*\"]")).await;
    let (r, _s) = request_from(
        localhost(),
        server.addr(),
        &sse_request("GET", Some("https://any.example"), &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://any.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), None);
}

/// `websocket.idle_timeout` T: a silent connection is pinged after T and dropped
/// after 2T; one that answers the ping stays.
#[tokio::test]
async fn idle_connections_are_pinged_then_dropped_unless_they_answer() {
    let server =
        Server::start_with(ServerOptions::default().set("websocket.idle_timeout", "2s")).await;
    let addr = server.addr();
    let started = Instant::now();
    let mut silent = WsConn::connect(addr, "/ws/echo").await;
    let mut alive = WsConn::connect(addr, "/ws/echo").await;
    let answer = tokio::spawn(async move {
        // Answer every ping for 7 s, then show the connection still echoes.
        let until = Instant::now() + Duration::from_secs(7);
        let mut pings = 0;
        while let Ok(Ok(Some(f))) = tokio::time::timeout_at(until.into(), alive.read_frame()).await
        {
            assert_eq!(f.opcode, raw::OP_PING, "{f:?}");
            pings += 1;
            alive
                .send(&Frame::new(raw::OP_PONG, f.payload))
                .await
                .unwrap();
        }
        alive.send(&Frame::text("alive")).await.unwrap();
        let (_, _, p) = alive.recv_message().await;
        assert_eq!(p, b"alive");
        pings
    });
    let ping = within(Duration::from_secs(5), "idle ping", silent.read_frame())
        .await
        .expect("read")
        .expect("a frame");
    assert_eq!(ping.opcode, raw::OP_PING, "{ping:?}");
    let pinged_after = started.elapsed();
    assert!(
        pinged_after >= Duration::from_millis(1900),
        "pinged after {pinged_after:?}, before idle_timeout"
    );
    // Not answered: the connection is dropped (no close frame) by 2T and a sweep.
    // (Pinged again on every sweep meanwhile.)
    within(Duration::from_secs(6), "idle drop", async {
        while let Ok(Some(f)) = silent.read_frame().await {
            assert_eq!(f.opcode, raw::OP_PING, "only pings until the drop: {f:?}");
        }
    })
    .await;
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(3900),
        "dropped after {dropped_after:?}, before 2 x idle_timeout"
    );
    let pings = answer.await.expect("answering client");
    assert!(pings >= 1, "the answering client was never pinged");
    assert_eq!(stat(&server.stats().await, "idle_timeouts"), 1);
}

/// The origin check comes before `$connect` and middleware: on an endpoint that
/// requires a token, a disallowed origin gets 403 (not the middleware's 401) and
/// the auth middleware never counts a failure; an allowed one reaches it (401).
#[tokio::test]
async fn origin_is_checked_before_connect_middleware() {
    let server = Server::start_with(
        ServerOptions::default()
            .set("websocket.allowed_origins", "[\"https://good.example\"]")
            .replace(
                "    - path: /ws/chat\n      kind: rooms\n",
                "    - path: /ws/chat\n      kind: rooms\n      auth: true\n",
            )
            .append("\nauth:\n  algorithm: HS256\n  secret: limits-test-secret\n"),
    )
    .await;
    let addr = server.addr();
    let req = |origin: &str| {
        upgrade_request(
            addr,
            "/ws/chat?room=a",
            &new_key(),
            &[&format!("Origin: {origin}")],
        )
    };
    let resp = raw::http_request(addr, &req("https://evil.example")).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body_text().contains("origin"), "{resp:?}");
    let stats = server.stats().await;
    assert_eq!(stat(&stats, "connect_rejected"), 0, "{stats}");
    let resp = raw::http_request(addr, &req("https://good.example")).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    let stats = server.stats().await;
    assert_eq!(stat(&stats, "connect_rejected"), 1, "{stats}");
    assert_eq!(stat(&stats, "origin_rejected"), 1, "{stats}");
}

/// What an incomplete (fragmented) message may hold is bounded by
/// `websocket.max_message_size`: the fragment that would cross it closes 1009
/// without the message ever completing.
#[tokio::test]
async fn incomplete_message_over_max_message_size_closes_1009() {
    let server = Server::start_with(
        ServerOptions::default()
            .set("websocket.max_message_size", "4096")
            .set("websocket.max_frame_size", "4096"),
    )
    .await;
    let mut ws = WsConn::connect(server.addr(), "/ws/echo").await;
    ws.send(&Frame::binary(vec![1u8; 3000]).fin(false))
        .await
        .unwrap();
    ws.send(&Frame::cont(vec![2u8; 1096]).fin(false))
        .await
        .unwrap();
    // 4096 bytes held: at the limit, still open (a ping is answered).
    ws.send(&Frame::ping(b"p".to_vec())).await.unwrap();
    let pong = ws.recv().await;
    assert_eq!(pong.opcode, raw::OP_PONG, "{pong:?}");
    // One more byte, no FIN: 1009 at once.
    ws.send(&Frame::cont(vec![3u8; 1]).fin(false))
        .await
        .unwrap();
    ws.expect_close_code(1009).await;
}
