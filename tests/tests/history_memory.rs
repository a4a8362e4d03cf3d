//! History memory is bounded by configuration: one anonymous client publishing a
//! 1 MiB message to each of 10,000 rooms (10 GiB in all) on the default endpoint
//! leaves the server's RSS within `history.max_total_bytes` plus a stated margin,
//! with the evictions counted in `/stats` and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corecast_tests::raw::{new_key, upgrade_request};
use corecast_tests::{eventually, Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;
/// `history.max_total_bytes` in this test.
const BUDGET: u64 = 64 * MIB;
/// What RSS may grow beyond the budget: the read arena blocks and partial-frame
/// buffers of the connections in flight, their outbound queues (each gets its own
/// 1 MiB message back), and allocator slack. Measured growth without the bound
/// would be ~10 GiB.
const MARGIN: u64 = 64 * MIB;
const ROOMS: usize = 10_000;
const IN_FLIGHT: usize = 8;

/// VmRSS of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A masked binary frame of `len` bytes with a zero mask key (the payload goes on
/// the wire as is, so one buffer serves every room).
fn zero_masked_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(len as u64).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.resize(f.len() + len, b'x');
    f
}

/// Join `room` on the default WebSocket endpoint, publish `frame` to it, end our
/// side and read until the server closes (it has read the message by then).
async fn publish_once(addr: SocketAddr, room: &str, frame: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = upgrade_request(addr, &format!("/ws/chat?room={room}"), &new_key(), &[]);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during handshake"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(frame).await.unwrap();
    s.shutdown().await.unwrap();
    let mut sink = vec![0u8; 256 * 1024];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rooms_of_one_mib_stay_within_the_history_budget() {
    let server = Server::start_with(
        ServerOptions::shards(2).set("history.max_total_bytes", &BUDGET.to_string()),
    )
    .await;
    let addr = server.addr();
    let frame = Arc::new(zero_masked_frame(MIB as usize));
    // Warm up (arena blocks, allocator) before the baseline.
    for i in 0..IN_FLIGHT {
        publish_once(addr, &format!("warm-{i}"), &frame).await;
    }
    let baseline = rss(server.pid());

    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (next, frame) = (next.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ROOMS {
                    break;
                }
                publish_once(addr, &format!("h{n}"), &frame).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let total = (ROOMS + IN_FLIGHT) as u64;
    eventually(Duration::from_secs(30), "every message sequenced", || {
        let server = &server;
        async move {
            let s = server.stats().await;
            s["history_messages"].as_u64().unwrap()
                + s["history_evicted_messages"].as_u64().unwrap()
                >= total
        }
    })
    .await;
    let stats = server.stats().await;
    let after = rss(server.pid());
    let grown = after.saturating_sub(baseline);
    eprintln!(
        "history_memory: baseline {} MiB, after {} MiB, grown {} MiB; stats: bytes {} rooms {} messages {} evicted {}",
        baseline / MIB,
        after / MIB,
        grown / MIB,
        stats["history_bytes"],
        stats["history_rooms"],
        stats["history_messages"],
        stats["history_evicted_messages"],
    );
    let held = stats["history_bytes"].as_u64().unwrap();
    assert!(
        held <= BUDGET,
        "history holds {held} bytes, budget {BUDGET}"
    );
    assert!(
        held >= BUDGET / 2,
        "the budget is used, not just emptied: {held}"
    );
    let messages = stats["history_messages"].as_u64().unwrap();
    assert!(
        messages <= BUDGET / MIB,
        "{messages} messages of 1 MiB kept"
    );
    assert_eq!(
        stats["history_evicted_messages"].as_u64().unwrap() + messages,
        total,
        "every message kept or evicted, none lost from the count"
    );
    assert!(
        grown <= BUDGET + MARGIN,
        "RSS grew by {} MiB for a {} MiB history budget (+{} MiB margin)",
        grown / MIB,
        BUDGET / MIB,
        MARGIN / MIB
    );
    // The eviction counter is on /metrics too.
    let metrics = corecast_tests::raw::http_request(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .body_text();
    let evicted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("corecast_history_evicted_messages_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(evicted, total - messages);
}
