//! Graceful shutdown: on SIGTERM/SIGINT the server stops accepting, flushes
//! what it queued, closes every client with 1001 and exits 0 within
//! `shutdown.drain_timeout_ms`.

use std::time::{Duration, Instant};

use corecast_tests::client::{self, recv_any};
use corecast_tests::raw::{Frame, WsConn, OP_BINARY};
use corecast_tests::{within, Server, ServerOptions};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Margin on top of the drain timeout for process exit.
const EXIT_MARGIN: Duration = Duration::from_secs(3);

async fn assert_exits_zero(server: &mut Server, within_time: Duration) {
    let start = Instant::now();
    // (The server's output is printed by `Server`'s drop on failure.)
    let status = server
        .wait_exit(within_time)
        .await
        .unwrap_or_else(|| panic!("server still running {within_time:?} after the signal"));
    assert!(
        status.success(),
        "server exited with {status} after {:?} (a signal exit right after \
         `listening on` means the handlers were installed too late)",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_zero() {
    let mut server =
        Server::start_with(ServerOptions::shards(2).set("shutdown.drain_timeout_ms", "3000")).await;
    let mut conns = Vec::new();
    for i in 0..24 {
        let path = if i % 2 == 0 {
            "/ws/echo"
        } else {
            "/ws/chat?room=z"
        };
        conns.push(WsConn::connect(server.addr(), path).await);
    }
    // Every connection is live before the signal.
    for c in conns.iter_mut().step_by(2) {
        c.send(&Frame::text("alive")).await.unwrap();
        c.recv_message().await;
    }
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let closes = conns.into_iter().enumerate().map(|(i, mut c)| async move {
        let closed = c.expect_close().await;
        assert_eq!(closed.code, Some(1001), "client {i}: {closed:?}");
    });
    futures_util::future::join_all(closes).await;
    assert_exits_zero(&mut server, Duration::from_millis(3000) + EXIT_MARGIN).await;
    assert!(signalled.elapsed() < Duration::from_millis(3000) + EXIT_MARGIN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_clients_with_1001_and_exits_zero() {
    let mut server =
        Server::start_with(ServerOptions::shards(2).set("shutdown.drain_timeout_ms", "3000")).await;
    let mut clients = client::connect_many(&server.url("/ws/chat?room=q"), 8).await;
    server.signal(libc::SIGINT);
    for (i, ws) in clients.iter_mut().enumerate() {
        loop {
            match recv_any(ws).await {
                Message::Close(Some(frame)) => {
                    assert_eq!(frame.code, CloseCode::Away, "client {i}");
                    break;
                }
                Message::Close(None) => panic!("client {i}: close without code"),
                _ => continue,
            }
        }
    }
    assert_exits_zero(&mut server, Duration::from_millis(3000) + EXIT_MARGIN).await;
}

#[tokio::test]
async fn idle_server_exits_zero_promptly_on_sigterm() {
    let mut server = Server::start_with(ServerOptions::shards(2)).await;
    server.signal(libc::SIGTERM);
    // No clients: nothing to drain, so well under the 5 s drain timeout.
    assert_exits_zero(&mut server, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn shutdown_flushes_queued_frames_before_closing_1001() {
    let mut server = Server::start_with(ServerOptions::shards(1)).await;
    let url = server.url("/ws/chat?room=flush");
    // `reader` does not read until after the signal, so its copies queue up.
    let mut reader = WsConn::connect(server.addr(), "/ws/chat?room=flush").await;
    let mut publisher = client::connect(&url).await;
    const N: usize = 300;
    const SIZE: usize = 8 * 1024; // 2.4 MB in all: under outbound_queue_bytes
    for i in 0..N {
        let mut payload = vec![(i % 256) as u8; SIZE];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        publisher.feed(Message::Binary(payload)).await.unwrap();
    }
    publisher.flush().await.unwrap();
    // Once the publisher has its own copies, the server has processed every
    // message (one order per room), so the reader's copies are queued.
    for _ in 0..N {
        client::recv(&mut publisher).await;
    }
    server.signal(libc::SIGTERM);
    within(Duration::from_secs(20), "reader drains the queue", async {
        for i in 0..N {
            let (op, _, payload) = reader.recv_message().await;
            assert_eq!(op, OP_BINARY);
            assert_eq!(payload.len(), SIZE, "message {i}");
            assert_eq!(
                u64::from_be_bytes(payload[..8].try_into().unwrap()),
                i as u64,
                "queued message {i} lost or reordered by shutdown"
            );
        }
    })
    .await;
    reader.expect_close_code(1001).await;
    assert_exits_zero(&mut server, Duration::from_millis(5000) + EXIT_MARGIN).await;
}

#[tokio::test]
async fn no_new_connections_are_served_after_the_signal() {
    let mut server =
        Server::start_with(ServerOptions::shards(1).set("shutdown.drain_timeout_ms", "3000")).await;
    let addr = server.addr();
    // This client never answers the close, keeping the server draining.
    let mut holder = WsConn::connect(addr, "/ws/echo").await;
    server.signal(libc::SIGTERM);
    let first = holder.recv().await;
    assert_eq!(first.close_code(), Some(1001), "{first:?}");
    // The server has stopped accepting: a new client is refused or never
    // upgraded.
    let attempt = tokio::time::timeout(
        Duration::from_millis(1000),
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/echo")),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a connection made after SIGTERM was upgraded"
    );
    // And it still exits within the drain timeout although `holder` is silent.
    assert_exits_zero(&mut server, Duration::from_millis(3000) + EXIT_MARGIN).await;
}

#[tokio::test]
async fn drain_gives_up_on_a_stuck_client_after_drain_timeout() {
    let mut server =
        Server::start_with(ServerOptions::shards(1).set("shutdown.drain_timeout_ms", "1500")).await;
    // A room member that never reads: its queue cannot be flushed.
    let stuck = WsConn::connect_opts(server.addr(), "/ws/chat?room=stuck", &[], Some(4096)).await;
    let mut publisher = client::connect(&server.url("/ws/chat?room=stuck")).await;
    let chunk = vec![1u8; 64 * 1024];
    // ~3 MiB: fills socket buffers, stays under outbound_queue_bytes (4 MiB).
    for _ in 0..48 {
        publisher
            .feed(Message::Binary(chunk.clone()))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for _ in 0..48 {
        client::recv(&mut publisher).await;
    }
    server.signal(libc::SIGTERM);
    assert_exits_zero(&mut server, Duration::from_millis(1500) + EXIT_MARGIN).await;
    drop(stuck);
}
