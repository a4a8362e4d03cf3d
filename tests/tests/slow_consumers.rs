//! Slow-consumer policies (`slow_consumers:` config) against a real server over
//! real sockets: `disconnect` closes with 1008 after a gapless prefix, `drop_oldest`
//! leaves a slow reader a valid stream with the newest messages and gaps, in order
//! (WebSocket and SSE), `keep_latest` leaves it the last message of each room, the
//! write-stall deadline closes a reader that stopped, and the headline: 1,000
//! subscribers that never read beside 100 that do, with the server's peak memory
//! bounded by baseline + 1,000 x queue cap + a documented constant.
//!
//! Slow clients use a fixed 4 KiB receive buffer (no loopback autotuning) and never
//! read until the test drains them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corecast_tests::api::{publish, room_info};
use corecast_tests::raw::{Closed, Frame, WsConn, OP_CLOSE, OP_PING, OP_PONG};
use corecast_tests::sse::{split_cursor, sse_path, stream_request, SseClient};
use corecast_tests::{eventually, within, Server, ServerOptions};

/// `websocket.outbound_queue_bytes` in these tests: small, so the bounds mean something.
const CAP: usize = 64 * 1024;
/// Receive buffer of the clients that do not read.
const SLOW_RCVBUF: u32 = 4096;

fn opts() -> ServerOptions {
    ServerOptions::shards(1)
        .api_key()
        .set("websocket.outbound_queue_bytes", &CAP.to_string())
        .set("sse.keep_alive_interval", "1h")
        .set(
            "slow_consumers.rooms",
            r#"[{pattern: "feed-*", policy: drop_oldest}, {pattern: "ticker-*", policy: keep_latest}]"#,
        )
}

async fn wait_members(addr: SocketAddr, room: &str, kind: &str, n: u64) {
    eventually(Duration::from_secs(20), "room members", || async move {
        room_info(addr, room).await["members"][kind] == n
    })
    .await;
}

/// A ~1 KiB message whose first 8 characters are its index.
fn body(i: usize) -> String {
    format!("{i:08} {}", "p".repeat(1000))
}

fn index_of(data: &str) -> usize {
    data[..8]
        .parse()
        .unwrap_or_else(|e| panic!("message {data:?} has no index: {e}"))
}

async fn stat(server: &Server, key: &str) -> u64 {
    let s = server.stats().await;
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats has no {key}: {s}"))
}

/// One envelope message: room, sequence number, data.
#[derive(Debug)]
struct Env {
    room: String,
    seq: u64,
    data: String,
}

/// Reads frames until `done` says enough, a close frame, EOF, or `quiet` without a
/// frame; returns the envelope messages and the close frame if one came.
async fn drain(
    ws: &mut WsConn,
    quiet: Duration,
    mut done: impl FnMut(&[Env]) -> bool,
) -> (Vec<Env>, Option<Closed>) {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !done(&got) {
        let frame = match tokio::time::timeout(quiet, ws.read_frame()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => panic!("the slow reader's stream is not valid WebSocket: {e}"),
        };
        match frame.opcode {
            OP_PING | OP_PONG => {}
            OP_CLOSE => {
                let closed = Closed {
                    code: frame.close_code(),
                    reason: frame.payload.get(2..).unwrap_or_default().to_vec(),
                };
                return (got, Some(closed));
            }
            _ => {
                assert!(frame.fin, "room messages are single frames");
                let v: serde_json::Value =
                    serde_json::from_slice(&frame.payload).unwrap_or_else(|e| {
                        panic!(
                            "not an envelope ({e}): {:?}",
                            String::from_utf8_lossy(&frame.payload)
                        )
                    });
                got.push(Env {
                    room: v["room"].as_str().expect("room").to_string(),
                    seq: split_cursor(v["id"].as_str().expect("id")).1,
                    data: v["data"].as_str().expect("data").to_string(),
                });
            }
        }
    }
    (got, None)
}

/// Asserts sequence numbers strictly increase and each message's data is the one
/// published at that sequence (index i was published as sequence i + 1).
fn assert_in_order(msgs: &[&Env]) {
    for w in msgs.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "out of order: {} then {}",
            w[0].seq,
            w[1].seq
        );
    }
    for m in msgs {
        assert_eq!(index_of(&m.data) as u64 + 1, m.seq, "data of seq {}", m.seq);
    }
}

/// Publishes ~1 KiB messages to `room` (indexes from `*next`) until `stop` holds
/// (checked every 32) or `max` messages; returns how many were published.
async fn publish_until(
    server: &Server,
    room: &str,
    next: &mut usize,
    max: usize,
    stop: impl Fn(serde_json::Value) -> bool,
) -> usize {
    let addr = server.addr();
    let start = *next;
    while *next - start < max {
        let p = publish(addr, room, body(*next)).await;
        assert_eq!(p.seq, *next as u64 + 1, "one publisher, consecutive seqs");
        *next += 1;
        if (*next - start).is_multiple_of(32) && stop(server.stats().await) {
            break;
        }
    }
    *next - start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_with_1008_after_a_gapless_prefix() {
    let server = Server::start_with(opts()).await;
    let addr = server.addr();
    let mut slow = WsConn::connect_opts(
        addr,
        "/ws/chat?room=plain&envelope=1",
        &[],
        Some(SLOW_RCVBUF),
    )
    .await;
    wait_members(addr, "plain", "websocket", 1).await;
    let mut next = 0;
    let sent = publish_until(&server, "plain", &mut next, 8192, |s| {
        s["slow_consumers"] == 1
    })
    .await;
    assert_eq!(
        stat(&server, "slow_consumers").await,
        1,
        "not closed after {sent} x 1 KiB with a {CAP}-byte queue"
    );
    assert_eq!(
        stat(&server, "slow_dropped").await,
        0,
        "disconnect drops none"
    );
    let (msgs, closed) = drain(&mut slow, Duration::from_secs(5), |_| false).await;
    let closed = closed.expect("a close frame after the data");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert_eq!(closed.reason, b"slow consumer: outbound queue full");
    // Everything before the close is the room's first messages, none missing.
    assert!(
        !msgs.is_empty() && msgs.len() < sent,
        "{} of {sent}",
        msgs.len()
    );
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "gapless prefix");
    }
    assert_in_order(&msgs.iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_leaves_the_newest_messages_with_gaps_in_order() {
    let server = Server::start_with(opts()).await;
    let addr = server.addr();
    let mut slow = WsConn::connect_opts(
        addr,
        "/ws/chat?room=feed-1&envelope=1",
        &[],
        Some(SLOW_RCVBUF),
    )
    .await;
    // A member that reads keeps getting everything.
    let mut fast = WsConn::connect(addr, "/ws/chat?room=feed-1&envelope=1").await;
    wait_members(addr, "feed-1", "websocket", 2).await;
    let mut next = 0;
    let mut fast_got = Vec::new();
    // Publish until well over a queue's worth has been dropped.
    let mut sent = 0;
    while sent < 8192 {
        sent += publish_until(&server, "feed-1", &mut next, 64, |_| false).await;
        let (m, closed) = drain(&mut fast, Duration::from_secs(5), |g| g.len() == 64).await;
        assert!(closed.is_none(), "the fast member was closed");
        fast_got.extend(m);
        if stat(&server, "slow_dropped").await > 2 * (CAP as u64 / 1024) {
            break;
        }
    }
    assert!(
        stat(&server, "slow_dropped").await > 0,
        "nothing dropped after {sent}"
    );
    assert_eq!(
        stat(&server, "slow_consumers").await,
        0,
        "drop_oldest closes none"
    );
    assert_eq!(fast_got.len(), sent, "the fast member got every message");
    assert_in_order(&fast_got.iter().collect::<Vec<_>>());

    let last = sent as u64;
    let (msgs, closed) = drain(&mut slow, Duration::from_secs(5), |g| {
        g.last().is_some_and(|m| m.seq == last)
    })
    .await;
    assert!(closed.is_none(), "the slow member was closed: {closed:?}");
    assert_eq!(
        msgs.last().map(|m| m.seq),
        Some(last),
        "the newest message arrives"
    );
    assert!(msgs.len() < sent, "some messages were dropped");
    assert!(
        msgs.windows(2).any(|w| w[1].seq > w[0].seq + 1),
        "the gap shows in the sequence numbers"
    );
    assert_in_order(&msgs.iter().collect::<Vec<_>>());
    // Still a member, still served.
    let p = publish(addr, "feed-1", body(next)).await;
    let (m, _) = drain(&mut slow, Duration::from_secs(5), |g| !g.is_empty()).await;
    assert_eq!(m.first().map(|m| m.seq), Some(p.seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_sse_stream_keeps_valid_ids_with_gaps() {
    let server = Server::start_with(opts()).await;
    let addr = server.addr();
    let mut slow = SseClient::open_opts(
        addr,
        &stream_request(addr, &sse_path(&["feed-sse"]), &[]),
        Some(SLOW_RCVBUF),
    )
    .await
    .expect("stream");
    wait_members(addr, "feed-sse", "sse", 1).await;
    let mut next = 0;
    let sent = publish_until(&server, "feed-sse", &mut next, 8192, |s| {
        s["slow_dropped"].as_u64().unwrap_or(0) > 2 * (CAP as u64 / 1024)
    })
    .await;
    assert!(
        stat(&server, "slow_dropped").await > 0,
        "nothing dropped after {sent}"
    );
    let mut seqs = Vec::new();
    while seqs.last() != Some(&(sent as u64)) {
        let ev = slow
            .next_event_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("stream ended or went quiet after {seqs:?}"));
        let seq = split_cursor(ev.id.as_deref().expect("room events carry an id")).1;
        assert_eq!(
            index_of(&ev.data) as u64 + 1,
            seq,
            "event data matches its id"
        );
        seqs.push(seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert!(seqs.windows(2).any(|w| w[1] > w[0] + 1), "a gap in the ids");
    assert!(seqs.len() < sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_latest_leaves_the_last_message_of_each_room() {
    let server = Server::start_with(opts()).await;
    let addr = server.addr();
    let mut slow = WsConn::connect_opts(
        addr,
        "/ws/chat?room=ticker-a&room=ticker-b&envelope=1",
        &[],
        Some(SLOW_RCVBUF),
    )
    .await;
    wait_members(addr, "ticker-a", "websocket", 1).await;
    wait_members(addr, "ticker-b", "websocket", 1).await;
    let (mut na, mut nb) = (0, 0);
    for _ in 0..64 {
        publish_until(&server, "ticker-a", &mut na, 32, |_| false).await;
        publish_until(&server, "ticker-b", &mut nb, 32, |_| false).await;
        if stat(&server, "slow_conflated").await > 200 {
            break;
        }
    }
    let conflated = stat(&server, "slow_conflated").await;
    assert!(conflated > 0, "nothing conflated after {na} + {nb}");
    assert_eq!(stat(&server, "slow_consumers").await, 0);
    let (last_a, last_b) = (na as u64, nb as u64);
    let (msgs, closed) = drain(&mut slow, Duration::from_secs(5), |g| {
        let last = |room: &str| g.iter().rev().find(|m| m.room == room).map(|m| m.seq);
        last("ticker-a") == Some(last_a) && last("ticker-b") == Some(last_b)
    })
    .await;
    assert!(closed.is_none(), "closed: {closed:?}");
    for (room, last) in [("ticker-a", last_a), ("ticker-b", last_b)] {
        let of_room: Vec<&Env> = msgs.iter().filter(|m| m.room == room).collect();
        assert_eq!(
            of_room.last().map(|m| m.seq),
            Some(last),
            "{room}: the last message arrives"
        );
        assert_in_order(&of_room);
    }
    assert!(msgs.len() < na + nb, "conflated messages are not delivered");
    // Nothing else is pending.
    let (extra, _) = drain(&mut slow, Duration::from_millis(500), |_| false).await;
    assert!(extra.is_empty(), "{extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stall_timeout_closes_a_reader_that_stopped() {
    let server = Server::start_with(opts().set("slow_consumers.write_stall_timeout", "1s")).await;
    let addr = server.addr();
    // drop_oldest: the queue never fills to a disconnect; only the deadline ends it.
    let mut slow = WsConn::connect_opts(
        addr,
        "/ws/chat?room=feed-stall&envelope=1",
        &[],
        Some(SLOW_RCVBUF),
    )
    .await;
    let mut fast = WsConn::connect(addr, "/ws/chat?room=feed-stall&envelope=1").await;
    wait_members(addr, "feed-stall", "websocket", 2).await;
    let mut next = 0;
    // Fill the kernel buffers and then some: queued bytes stop moving.
    let sent = publish_until(&server, "feed-stall", &mut next, 8192, |s| {
        s["slow_dropped"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let (got, _) = drain(&mut fast, Duration::from_secs(5), |g| g.len() == sent).await;
    assert_eq!(got.len(), sent);
    eventually(Duration::from_secs(10), "write stall close", || async {
        stat(&server, "write_stall_closes").await == 1
    })
    .await;
    // The reader that kept reading is not stalled (its queue empties).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(stat(&server, "write_stall_closes").await, 1);
    let p = publish(addr, "feed-stall", body(next)).await;
    let (got, closed) = drain(&mut fast, Duration::from_secs(5), |g| !g.is_empty()).await;
    assert!(closed.is_none());
    assert_eq!(got.first().map(|m| m.seq), Some(p.seq));
    // The stalled one, read now, ends with whole frames and then close 1008 (its
    // close frame goes out once the buffers drain, within the close timeout).
    let (msgs, closed) = drain(&mut slow, Duration::from_secs(5), |_| false).await;
    assert_in_order(&msgs.iter().collect::<Vec<_>>());
    let closed = closed.expect("close frame");
    assert_eq!(closed.code, Some(1008));
    assert_eq!(closed.reason, b"slow consumer: write stalled");
    assert_eq!(stat(&server, "slow_consumers").await, 0);
}

/// VmRSS and VmHWM (peak) of `pid`, bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What the bound allows beyond baseline + 1,000 x queue cap (docs/BENCHMARKS.md):
/// the room's history (1,000 messages of ~1 KiB, kept by the owner shard), the
/// per-queue ring buffers (40 bytes per queued frame), the publish API's request
/// buffers, and allocator slack.
const MEMORY_CONSTANT: u64 = 16 << 20;
const SLOW: usize = 1000;
const NORMAL: usize = 100;
const MESSAGES: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_readers_that_never_read_do_not_hurt_the_others_or_memory() {
    let server = Server::start_with(opts()).await;
    let addr = server.addr();
    let pid = server.pid();
    // 1,000 subscribers that handshake and never read.
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW / 50 {
        let batch = (0..50)
            .map(|_| WsConn::connect_opts(addr, "/ws/chat?room=feed-big", &[], Some(SLOW_RCVBUF)));
        slow.extend(futures_util::future::join_all(batch).await);
    }
    // 100 subscribers that read everything and check the order.
    let mut normal = Vec::with_capacity(NORMAL);
    for _ in 0..NORMAL {
        let mut ws = WsConn::connect(addr, "/ws/chat?room=feed-big").await;
        normal.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                let (_, _, payload) = within(
                    Duration::from_secs(30),
                    "a normal subscriber's next message",
                    ws.recv_message(),
                )
                .await;
                let got = index_of(std::str::from_utf8(&payload).expect("utf-8"));
                assert_eq!(got, i, "normal subscriber: message {i} in order");
            }
            ws
        }));
    }
    wait_members(addr, "feed-big", "websocket", (SLOW + NORMAL) as u64).await;
    let (baseline, _) = memory(pid);

    // A steady stream: 2,000 x 1 KiB, one every 2 ms.
    let started = Instant::now();
    let mut peak_rss = 0;
    for i in 0..MESSAGES {
        let due = started + Duration::from_millis(2 * i as u64);
        tokio::time::sleep_until(due.into()).await;
        publish(addr, "feed-big", body(i)).await;
        if i.is_multiple_of(100) {
            peak_rss = peak_rss.max(memory(pid).0);
        }
    }
    for task in normal {
        within(Duration::from_secs(60), "normal subscribers", task)
            .await
            .expect("a normal subscriber failed");
    }
    let (rss, hwm) = memory(pid);
    peak_rss = peak_rss.max(rss);
    let stats = server.stats().await;
    let bound = baseline + (SLOW * CAP) as u64 + MEMORY_CONSTANT;
    eprintln!(
        "baseline {} KiB, end {} KiB, peak (VmHWM) {} KiB, bound {} KiB, queued {} KiB, dropped {}, publishing took {:?}",
        baseline >> 10,
        rss >> 10,
        hwm >> 10,
        bound >> 10,
        stats["outbound_queued_bytes"].as_u64().unwrap_or(0) >> 10,
        stats["slow_dropped"],
        started.elapsed()
    );
    assert!(
        hwm <= bound,
        "peak RSS {hwm} > bound {bound} (baseline {baseline})"
    );
    assert!(peak_rss <= bound);
    // The slow ones are still connected, holding full queues (the worst case).
    assert_eq!(stats["slow_consumers"], 0);
    assert!(stats["slow_dropped"].as_u64().unwrap_or(0) > 0);
    let queued = stats["outbound_queued_bytes"].as_u64().unwrap_or(0);
    assert!(
        queued <= (SLOW * CAP) as u64,
        "queued {queued} > {SLOW} x {CAP}"
    );
    assert!(
        queued >= (SLOW * CAP / 2) as u64,
        "slow queues should be nearly full: {queued}"
    );
    drop(slow);
}

/// A client that sends empty messages to an echo endpoint and never reads makes
/// the server queue 2-byte replies. Each queued frame is charged its entry
/// (`shards::queue::ENTRY_COST`) against `websocket.outbound_queue_bytes`, so the
/// default 4 MiB cap holds ~63,000 of them (≈ 5 MiB of memory), not 2 million
/// (≈ 150 MiB): the server's peak RSS stays within the cap plus a margin, and the
/// client is closed as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_replies_to_a_client_that_never_reads_are_charged_their_entries() {
    let server = Server::start_with(ServerOptions::shards(1)).await;
    let pid = server.pid();
    let mut ws = WsConn::connect_opts(server.addr(), "/ws/echo", &[], Some(SLOW_RCVBUF)).await;
    let (baseline, _) = memory(pid);
    // 5 M empty binary frames (30 MB): the first ~2 M replies fit in the kernel's
    // send buffer (4 MiB of 2-byte frames), the rest would go to the queue.
    let chunk: Vec<u8> = (0..10_000)
        .flat_map(|_| Frame::binary(Vec::new()).encode(Some([1, 2, 3, 4])))
        .collect();
    let mut sent = 0usize;
    for _ in 0..500 {
        match tokio::time::timeout(Duration::from_secs(3), ws.send_bytes(&chunk)).await {
            Ok(Ok(())) => sent += 10_000,
            // Closed, or the server stopped reading (it closed us): stop.
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, hwm) = memory(pid);
    let stats = server.stats().await;
    let bound = baseline + 4 * 1024 * 1024 + 16 * 1024 * 1024;
    eprintln!(
        "sent {sent} frames; baseline {} KiB, peak {} KiB, bound {} KiB, slow consumers {}",
        baseline >> 10,
        hwm >> 10,
        bound >> 10,
        stats["slow_consumers"]
    );
    assert!(
        hwm <= bound,
        "peak RSS {hwm} > {bound} (baseline {baseline})"
    );
    assert!(
        stats["slow_consumers"].as_u64().unwrap_or(0) >= 1,
        "the reader was closed as a slow consumer: {stats}"
    );
}
