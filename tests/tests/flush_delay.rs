//! `runtime.flush_delay`: write-ready connections are held back so a burst shares
//! sends, without losing or reordering anything.

use std::time::Duration;

use corecast_tests::client::{connect, recv_text};
use corecast_tests::{within, Server, ServerOptions};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn flush_delay_coalesces_a_burst_into_few_writes_in_order() {
    let server =
        Server::start_with(ServerOptions::shards(1).set("runtime.flush_delay", "200ms")).await;
    let url = server.url("/ws/chat?room=burst");
    let mut publisher = connect(&url).await;
    let mut subscriber = connect(&url).await;
    let before = server.stats().await;
    // Spread the messages over ~100 ms, so each arrives in its own read: without
    // the delay every one is written on its own (about 40 writes); with a 200 ms
    // delay they wait for the same flush.
    for i in 0..20 {
        publisher
            .send(Message::Text(format!("m{i}")))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within(Duration::from_secs(10), "burst delivered in order", async {
        for ws in [&mut subscriber, &mut publisher] {
            for i in 0..20 {
                assert_eq!(recv_text(ws).await, format!("m{i}"));
            }
        }
    })
    .await;
    let after = server.stats().await;
    let frames =
        after["frames_written"].as_u64().unwrap() - before["frames_written"].as_u64().unwrap();
    let writes = after["writes"].as_u64().unwrap() - before["writes"].as_u64().unwrap();
    assert!(frames >= 40, "40 frames to two members, got {frames}");
    assert!(
        writes <= 10,
        "a 20-message burst to 2 members should take a few writes, took {writes}"
    );
}

/// Frames and writes the server has done so far.
async fn frames_and_writes(server: &Server) -> (u64, u64, serde_json::Value) {
    let s = server.stats().await;
    (
        s["frames_written"].as_u64().unwrap(),
        s["writes"].as_u64().unwrap(),
        s,
    )
}

#[tokio::test]
async fn auto_flush_holds_nothing_while_the_shard_has_cpu_to_spare() {
    // The default config: `flush_delay: auto`.
    let server = Server::start_with(ServerOptions::shards(1)).await;
    let url = server.url("/ws/chat?room=calm");
    let mut publisher = connect(&url).await;
    let mut subscriber = connect(&url).await;
    let (f0, w0, _) = frames_and_writes(&server).await;
    for i in 0..20 {
        publisher
            .send(Message::Text(format!("m{i}")))
            .await
            .expect("send");
        // Wait for both copies before the next message, so nothing can coalesce
        // unless the server held it.
        for ws in [&mut subscriber, &mut publisher] {
            within(Duration::from_secs(10), "delivery", async {
                assert_eq!(recv_text(ws).await, format!("m{i}"));
            })
            .await;
        }
    }
    let (f1, w1, stats) = frames_and_writes(&server).await;
    assert_eq!(stats["flush_holds"], 0, "{stats}");
    assert_eq!(stats["flush_hold_us_max"], 0, "{stats}");
    assert_eq!(
        (f1 - f0, w1 - w0),
        (40, 40),
        "an idle shard writes each delivery at once"
    );
}

#[tokio::test]
async fn a_fixed_flush_delay_never_holds_a_direct_reply() {
    let server =
        Server::start_with(ServerOptions::shards(1).set("runtime.flush_delay", "200ms")).await;
    let mut ws = connect(&server.url("/ws/echo")).await;
    let (f0, w0, _) = frames_and_writes(&server).await;
    for i in 0..5 {
        ws.send(Message::Text(format!("e{i}"))).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    within(Duration::from_secs(10), "echoes", async {
        for i in 0..5 {
            assert_eq!(recv_text(&mut ws).await, format!("e{i}"));
        }
    })
    .await;
    let (f1, w1, _) = frames_and_writes(&server).await;
    // Held for 200 ms, five echoes 20 ms apart would share one or two writes.
    assert_eq!((f1 - f0, w1 - w0), (5, 5), "each echo is written at once");
}

#[tokio::test]
async fn stats_report_the_io_uring_task_run_in_use() {
    for mode in ["interrupt", "cooperative", "deferred"] {
        let server =
            Server::start_with(ServerOptions::shards(2).set("runtime.io_uring_task_run", mode))
                .await;
        // A real exchange through the ring in this mode.
        let mut ws = connect(&server.url("/ws/echo")).await;
        ws.send(Message::Text("hi".into())).await.expect("send");
        within(Duration::from_secs(10), "echo", async {
            assert_eq!(recv_text(&mut ws).await, "hi");
        })
        .await;
        let stats = server.stats().await;
        // The CI kernel (6.x) grants every mode; an older one would say "interrupt".
        assert_eq!(stats["io_uring_task_run"], mode, "{stats}");
    }
}
