//! Rooms: every message a member sends reaches every member of its rooms
//! (itself included), across shards, in one order per room.

use std::time::Duration;

use corecast_tests::client::{self, collect_all, recv, recv_text, send_text};
use corecast_tests::raw::{Frame, WsConn, OP_BINARY};
use corecast_tests::{within, Server, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_across_two_shards_receives_every_message() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let url = server.url("/ws/chat?room=lobby");
    let mut clients = client::connect_many(&url, 40).await;
    // 4 of the members publish 10 messages each, one after another per publisher.
    let mut expected = Vec::new();
    for (p, ws) in clients.iter_mut().take(4).enumerate() {
        for s in 0..10 {
            let m = format!("p{p}-s{s}");
            send_text(ws, m.clone()).await;
            expected.push(m);
        }
    }
    let results = collect_all(clients, expected.len()).await;
    expected.sort();
    for (i, (_, mut got)) in results.into_iter().enumerate() {
        got.sort();
        assert_eq!(got, expected, "member {i} got a different set of messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_yield_one_total_order_per_room() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let url = server.url("/ws/chat?room=ordered");
    let publishers = client::connect_many(&url, 4).await;
    let listeners = client::connect_many(&url, 20).await;
    const PER_PUBLISHER: usize = 100;
    const TOTAL: usize = 4 * PER_PUBLISHER;

    // Publishers send concurrently (and receive the room's messages too).
    let pub_tasks = publishers.into_iter().enumerate().map(|(p, ws)| {
        tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let reader = tokio::spawn(async move {
                let mut got = Vec::with_capacity(TOTAL);
                while got.len() < TOTAL {
                    let m = within(
                        Duration::from_secs(20),
                        &format!("publisher {p}: message {} of {TOTAL}", got.len()),
                        stream.next(),
                    )
                    .await
                    .expect("stream ended")
                    .expect("ws error");
                    if let Message::Text(t) = m {
                        got.push(t);
                    }
                }
                got
            });
            for s in 0..PER_PUBLISHER {
                sink.feed(Message::Text(format!("p{p}-{s:04}")))
                    .await
                    .unwrap();
                if s % 10 == 9 {
                    sink.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            sink.flush().await.unwrap();
            let got = reader.await.expect("reader");
            drop(sink);
            got
        })
    });
    let listener_results = collect_all(listeners, TOTAL);
    let (pub_results, listener_results) =
        tokio::join!(futures_util::future::join_all(pub_tasks), listener_results);

    let mut sequences: Vec<Vec<String>> = pub_results
        .into_iter()
        .map(|r| r.expect("publisher"))
        .collect();
    sequences.extend(listener_results.into_iter().map(|(_, got)| got));

    let reference = sequences[0].clone();
    // Each publisher's messages appear in its send order.
    for p in 0..4 {
        let mine: Vec<&String> = reference
            .iter()
            .filter(|m| m.starts_with(&format!("p{p}-")))
            .collect();
        let want: Vec<String> = (0..PER_PUBLISHER).map(|s| format!("p{p}-{s:04}")).collect();
        assert_eq!(
            mine.into_iter().cloned().collect::<Vec<_>>(),
            want,
            "publisher {p}'s messages out of send order (or missing)"
        );
    }
    // Every member saw exactly the same total order.
    for (i, seq) in sequences.iter().enumerate() {
        if let Some(pos) = seq.iter().zip(&reference).position(|(a, b)| a != b) {
            panic!(
                "member {i} diverges from member 0 at position {pos}: {:?} vs {:?}",
                &seq[pos..(pos + 5).min(seq.len())],
                &reference[pos..(pos + 5).min(reference.len())]
            );
        }
        assert_eq!(seq.len(), reference.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_several_rooms_receives_from_each_and_rooms_stay_isolated() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let mut both = client::connect(&server.url("/ws/chat?room=a&room=b")).await;
    let mut only_a = client::connect(&server.url("/ws/chat?room=a")).await;
    let mut only_b = client::connect(&server.url("/ws/chat?room=b")).await;
    let mut other = client::connect(&server.url("/ws/chat?room=c")).await;

    send_text(&mut only_a, "to-a").await;
    assert_eq!(recv_text(&mut only_a).await, "to-a");
    assert_eq!(recv_text(&mut both).await, "to-a");

    send_text(&mut only_b, "to-b").await;
    // only_b's first message must be its own: "to-a" was not routed to room b.
    assert_eq!(recv_text(&mut only_b).await, "to-b");
    assert_eq!(recv_text(&mut both).await, "to-b");

    send_text(&mut both, "from-both").await;
    assert_eq!(recv_text(&mut only_a).await, "from-both");
    assert_eq!(recv_text(&mut only_b).await, "from-both");
    // The sender is a member of both rooms: it gets its own message at least once.
    assert_eq!(recv_text(&mut both).await, "from-both");

    send_text(&mut other, "to-c").await;
    assert_eq!(
        recv_text(&mut other).await,
        "to-c",
        "room c received messages of rooms a/b"
    );
    // Nothing else is pending for room c.
    let extra = tokio::time::timeout(Duration::from_millis(300), recv(&mut other)).await;
    assert!(
        extra.is_err(),
        "room c got an unexpected message: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_fragmented_messages_are_broadcast_whole() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let mut listeners = client::connect_many(&server.url("/ws/chat?room=bin"), 6).await;
    let mut sender = WsConn::connect(server.addr(), "/ws/chat?room=bin").await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    sender
        .send(&Frame::binary(data[..1000].to_vec()).fin(false))
        .await
        .unwrap();
    sender
        .send(&Frame::cont(data[1000..].to_vec()))
        .await
        .unwrap();
    let (op, _, own) = sender.recv_message().await;
    assert_eq!(op, OP_BINARY);
    assert!(own == data, "sender's copy differs");
    for (i, ws) in listeners.iter_mut().enumerate() {
        match recv(ws).await {
            Message::Binary(got) => assert!(got == data, "listener {i}'s copy differs"),
            other => panic!("listener {i}: expected binary, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_member_does_not_break_the_room() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let url = server.url("/ws/chat?room=churn");
    let mut members = client::connect_many(&url, 10).await;
    // Half leave: some cleanly, some by dropping TCP.
    for (i, mut ws) in members.drain(..5).enumerate() {
        if i % 2 == 0 {
            let _ = ws.close(None).await;
        }
        drop(ws);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    send_text(&mut members[0], "still-here").await;
    for ws in members.iter_mut() {
        assert_eq!(recv_text(ws).await, "still-here");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_1008_without_stalling_the_room() {
    let server = Server::start_with(
        ServerOptions::shards(1).set("websocket.outbound_queue_bytes", "262144"),
    )
    .await;
    let url = server.url("/ws/chat?room=slow");
    // The slow member never reads until the end.
    let mut slow = WsConn::connect_opts(server.addr(), "/ws/chat?room=slow", &[], Some(4096)).await;
    let mut publisher = client::connect(&url).await;
    let chunk = vec![0x5Au8; 64 * 1024];
    // 48 MiB in total: far more than socket buffers plus a 256 KiB queue. The
    // publisher reads its own copy of each message before sending the next,
    // so its own queue never holds more than one message.
    for i in 0..768 {
        publisher
            .send(Message::Binary(chunk.clone()))
            .await
            .unwrap_or_else(|e| panic!("publisher send {i}: {e}"));
        match within(
            Duration::from_secs(20),
            "publisher's own copy",
            recv(&mut publisher),
        )
        .await
        {
            Message::Binary(b) => assert_eq!(b.len(), chunk.len()),
            other => panic!("publisher got {other:?}"),
        }
    }
    // Now drain the slow member: some data, then close 1008.
    let closed = within(
        Duration::from_secs(30),
        "slow consumer close",
        slow.expect_close(),
    )
    .await;
    assert_eq!(
        closed.code,
        Some(1008),
        "slow consumer closed with {closed:?}"
    );
}
