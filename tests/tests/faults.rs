//! Fault tolerance: a shard that falls behind loses nothing and blocks no one; a
//! client that dies mid-frame frees everything it held; shutdown under load delivers
//! every message sequenced before it to every member, then closes 1001.

use std::collections::HashSet;
use std::time::Duration;

use corecast_tests::client::{self, collect_all, recv_text, send_text};
use corecast_tests::raw::{Frame, WsConn};
use corecast_tests::{eventually, within, Server, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Panics unless every shard holds at least one connection (the tests need room
/// members on both sides of the mesh).
async fn assert_members_on_every_shard(server: &Server) {
    let per_shard = server.stats().await["connections_per_shard"].clone();
    assert!(
        per_shard
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)),
        "members on every shard: {per_shard}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_inbox_is_full_still_gets_every_message_in_order() {
    // An inbox of one message: almost every cross-shard hop finds it full, so the
    // messages wait in the senders' outboxes instead of being dropped.
    let server = Server::start_with(
        ServerOptions::shards(2)
            .set("runtime.mesh_capacity", "1")
            .set("websocket.outbound_queue_bytes", "16777216"),
    )
    .await;
    let url = server.url("/ws/chat?room=lagging");
    let subscribers = client::connect_many(&url, 16).await;
    let mut publisher = client::connect(&url).await;
    assert_members_on_every_shard(&server).await;
    const N: usize = 3000;
    let sent: Vec<String> = (0..N).map(|i| format!("m{i:05}")).collect();
    for m in &sent {
        publisher.feed(Message::Text(m.clone())).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut everyone = subscribers;
    everyone.push(publisher);
    for (i, (_, got)) in collect_all(everyone, N).await.into_iter().enumerate() {
        assert!(got == sent, "client {i}: messages lost or reordered");
    }
    let stats = server.stats().await;
    assert!(
        stats["mesh_deferred"].as_u64().unwrap() > 0,
        "the 1-message inboxes never filled, so the outbox was not exercised: {stats}"
    );
    assert_eq!(stats["mesh_overflows"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_frame_frees_its_connection_and_rooms() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let url = server.url("/ws/chat?room=crash");
    let mut survivor = client::connect(&url).await;
    for abortive in [false, true] {
        let mut victim = WsConn::connect(server.addr(), "/ws/chat?room=crash").await;
        eventually(Duration::from_secs(5), "two members", || async {
            server.stats().await["connections"] == 2
        })
        .await;
        // A frame header announcing 64 KiB, then only part of its payload.
        let frame = Frame::text(vec![b'x'; 64 * 1024]).encode(Some([1, 2, 3, 4]));
        victim.send_bytes(&frame[..1000]).await.unwrap();
        if abortive {
            victim.reset(); // RST instead of FIN
        } else {
            drop(victim);
        }
        eventually(
            Duration::from_secs(5),
            "the dead client's connection is freed",
            || async { server.stats().await["connections"] == 1 },
        )
        .await;
        // The room still works for whoever is left.
        send_text(&mut survivor, format!("after-{abortive}")).await;
        assert_eq!(recv_text(&mut survivor).await, format!("after-{abortive}"));
    }
    // Nothing stays queued for the dead clients (the gauge is read from other
    // shards' counters, so give the last write's bookkeeping a moment).
    eventually(Duration::from_secs(5), "no bytes left queued", || async {
        server.stats().await["outbound_queued_bytes"].as_u64() == Some(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_delivers_everything_sequenced_to_every_member_then_1001() {
    let mut server = Server::start_with(
        ServerOptions::shards(2)
            .set("shutdown.drain_timeout_ms", "8000")
            .set("websocket.outbound_queue_bytes", "16777216"),
    )
    .await;
    let url = server.url("/ws/chat?room=busy");
    let members = client::connect_many(&url, 40).await;
    assert_members_on_every_shard(&server).await;
    // 4 of them publish as fast as they can until the connection closes; all 40
    // record what they receive until their close frame.
    let tasks = members.into_iter().enumerate().map(|(i, ws)| {
        tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let publisher = (i < 4).then(|| {
                tokio::spawn(async move {
                    for k in 0.. {
                        if sink.send(Message::Text(format!("p{i}-{k}"))).await.is_err() {
                            break;
                        }
                        if k % 32 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            });
            let mut got = Vec::new();
            let code = loop {
                match within(Duration::from_secs(20), "member reads", stream.next()).await {
                    Some(Ok(Message::Text(t))) => got.push(t),
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("member {i}: {e}"),
                    None => break None,
                }
            };
            if let Some(p) = publisher {
                p.abort();
            }
            (got, code)
        })
    });
    let tasks: Vec<_> = tasks.collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal(libc::SIGTERM);
    let results: Vec<(Vec<String>, Option<u16>)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("member task"))
        .collect();

    // The room has one order: the longest stream any member got is it.
    let longest = results
        .iter()
        .map(|(g, _)| g)
        .max_by_key(|g| g.len())
        .unwrap();
    assert!(
        longest.len() > 100,
        "too little load: {} messages",
        longest.len()
    );
    let unique: HashSet<&String> = longest.iter().collect();
    assert_eq!(
        unique.len(),
        longest.len(),
        "duplicates in the room's stream"
    );
    for (i, (got, code)) in results.iter().enumerate() {
        assert_eq!(*code, Some(1001), "member {i} was not told 1001");
        assert!(
            got == longest,
            "member {i} got {} of the {} messages sequenced before the shutdown \
             (first difference at {:?})",
            got.len(),
            longest.len(),
            got.iter().zip(longest.iter()).position(|(a, b)| a != b)
        );
    }
}
