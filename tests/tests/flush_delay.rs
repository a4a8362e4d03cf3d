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
