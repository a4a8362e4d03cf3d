//! Server-Sent Events transport: status codes and headers, the exact bytes of
//! events (multi-line, CRLF, binary), keep-alive comments, many rooms per stream,
//! messages from the publish API and from WebSocket clients on 2 shards, the
//! stream's end being noticed, and the `sse_ticker` example's handler ending when
//! its client goes away. Clients: a raw TCP event-stream client written from the
//! WHATWG spec (`corecast_tests::sse`), `tokio-tungstenite`, raw HTTP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use corecast_tests::api::{publish, room_info};
use corecast_tests::client::{self, connect, send};
use corecast_tests::raw::http_request;
use corecast_tests::sse::{
    is_cursor, parse_room_cursors, split_cursor, sse_path, stream_request, SseClient, SseEvent,
};
use corecast_tests::{eventually, free_port, server_binary, within, Server, ServerOptions};
use tokio_tungstenite::tungstenite::Message;

/// Two shards and the publish API on; keep-alive comments out of the way.
fn opts() -> ServerOptions {
    ServerOptions::shards(2)
        .api_key()
        .set("sse.keep_alive_interval", "1h")
}

async fn start() -> Server {
    Server::start_with(opts()).await
}

/// The room's member count for SSE, summed over shards.
async fn sse_members(addr: SocketAddr, room: &str) -> u64 {
    room_info(addr, room).await["members"]["sse"]
        .as_u64()
        .expect("members.sse")
}

/// Waits until `room` has `n` SSE members, so that publishes after it reach them.
async fn wait_sse_members(addr: SocketAddr, room: &str, n: u64) {
    eventually(
        Duration::from_secs(10),
        "SSE members joined",
        || async move { sse_members(addr, room).await == n },
    )
    .await;
}

#[tokio::test]
async fn stream_response_head_and_retry_field_come_first() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let mut c = SseClient::connect(server.addr(), "/sse?room=lobby").await;
    let r = &c.response;
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("content-length"), None, "a stream has no length");
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "the body is not chunked"
    );
    assert_eq!(c.read_raw_at_least(13).await, b"retry: 2000\n\n");
    // Nothing else on an idle stream (default keep-alive is 15 s), and it stays open.
    c.read_for(Duration::from_millis(500)).await;
    assert_eq!(c.raw, b"retry: 2000\n\n");
    assert!(!c.is_eof(), "an idle stream stays open");
    assert_eq!(c.retry(), Some(2000));
}

#[tokio::test]
async fn retry_field_follows_sse_retry_ms_and_zero_omits_it() {
    let server = Server::start_with(
        ServerOptions::shards(2)
            .api_key()
            .set("sse.retry_ms", "750"),
    )
    .await;
    let mut c = SseClient::connect(server.addr(), "/sse?room=r").await;
    assert_eq!(c.read_raw_at_least(12).await, b"retry: 750\n\n");

    let server =
        Server::start_with(ServerOptions::shards(2).api_key().set("sse.retry_ms", "0")).await;
    let mut c = SseClient::connect(server.addr(), "/sse?room=r").await;
    wait_sse_members(server.addr(), "r", 1).await;
    let p = publish(server.addr(), "r", "first").await;
    let ev = c.next_event().await;
    assert_eq!(ev.data, "first");
    assert_eq!(
        String::from_utf8_lossy(&c.raw),
        format!("id: {}\ndata: first\n\n", p.id),
        "retry_ms: 0 sends no retry field"
    );
}

#[tokio::test]
async fn accept_header_must_allow_event_streams() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let addr = server.addr();
    for accept in [
        None,
        Some("text/event-stream"),
        Some("*/*"),
        Some("text/*"),
        Some("TEXT/EVENT-STREAM"),
        Some("application/json, text/event-stream;q=0.9"),
        Some("text/html;q=0.5, */*;q=0.1"),
    ] {
        let mut req = format!("GET /sse?room=a HTTP/1.1\r\nHost: {addr}\r\n");
        if let Some(a) = accept {
            req.push_str(&format!("Accept: {a}\r\n"));
        }
        req.push_str("\r\n");
        match SseClient::open(addr, &req).await {
            Ok(c) => assert_eq!(
                c.response.header("content-type"),
                Some("text/event-stream; charset=utf-8")
            ),
            Err(resp) => panic!("Accept {accept:?}: {} {}", resp.status, resp.body_text()),
        }
    }
    for accept in [
        "application/json",
        "text/html",
        "image/*",
        "text/plain, application/xml",
    ] {
        let req = format!("GET /sse?room=a HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n");
        let resp = SseClient::open(addr, &req)
            .await
            .expect_err("unacceptable Accept must not open a stream");
        assert_eq!(resp.status, 406, "Accept {accept}: {}", resp.body_text());
        assert!(
            resp.body_text().contains("text/event-stream"),
            "406 names what the endpoint produces: {:?}",
            resp.body_text()
        );
    }
}

#[tokio::test]
async fn other_methods_get_405_and_unknown_paths_404() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let addr = server.addr();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let resp = http_request(
            addr,
            &format!(
                "{method} /sse?room=a HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(resp.status, 405, "{method}: {}", resp.body_text());
        assert_eq!(resp.header("allow"), Some("GET"), "{method}");
    }
    for path in [
        "/sse2?room=a",
        "/ssex",
        "/SSE?room=a",
        "/events",
        "/sse/extra",
    ] {
        let resp = http_request(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.body_text());
    }
    // The server still serves streams afterwards.
    SseClient::connect(addr, "/sse?room=a").await;
}

/// Every publish body and the exact bytes the stream must carry for it, given
/// the id `I`.
fn exact_cases() -> Vec<(Vec<u8>, String)> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    vec![
        (b"hello".to_vec(), "id: I\ndata: hello\n\n".into()),
        (
            b"line one\nline two\nline three".to_vec(),
            "id: I\ndata: line one\ndata: line two\ndata: line three\n\n".into(),
        ),
        (
            b"crlf\r\nlone cr\rlf\nend".to_vec(),
            "id: I\ndata: crlf\ndata: lone cr\ndata: lf\ndata: end\n\n".into(),
        ),
        (
            b"trailing\n".to_vec(),
            "id: I\ndata: trailing\ndata:\n\n".into(),
        ),
        (b"\n\n".to_vec(), "id: I\ndata:\ndata:\ndata:\n\n".into()),
        (b"".to_vec(), "id: I\ndata:\n\n".into()),
        (
            b"  two spaces".to_vec(),
            "id: I\ndata:   two spaces\n\n".into(),
        ),
        (
            b"data: not a field\n: not a comment\nid: 99".to_vec(),
            "id: I\ndata: data: not a field\ndata: : not a comment\ndata: id: 99\n\n".into(),
        ),
        (
            "ünïcødé 😀".as_bytes().to_vec(),
            "id: I\ndata: ünïcødé 😀\n\n".into(),
        ),
        (
            vec![0, 1, 2, 0xff, 0xfe, 0x80],
            format!(
                "event: binary\nid: I\ndata: {}\n\n",
                b64(&[0, 1, 2, 0xff, 0xfe, 0x80])
            ),
        ),
        (
            vec![0xc3, 0x28],
            format!("event: binary\nid: I\ndata: {}\n\n", b64(&[0xc3, 0x28])),
        ),
    ]
}

#[tokio::test]
async fn api_published_messages_have_exact_event_bytes() {
    let server = start().await;
    let addr = server.addr();
    // Several streams so that both shards' encoders are exercised.
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(SseClient::connect(addr, "/sse?room=exact").await);
    }
    wait_sse_members(addr, "exact", 4).await;
    let mut expected = String::from("retry: 2000\n\n");
    for (body, wire) in exact_cases() {
        let p = publish(addr, "exact", &body).await;
        expected.push_str(&wire.replace("id: I", &format!("id: {}", p.id)));
    }
    let n = exact_cases().len();
    for c in &mut streams {
        let events = c.next_events(n).await;
        assert_eq!(
            String::from_utf8_lossy(&c.raw),
            expected,
            "stream bytes differ"
        );
        // And what a WHATWG client makes of them.
        for (ev, (body, _)) in events.iter().zip(exact_cases()) {
            match std::str::from_utf8(&body) {
                Ok(text) => {
                    assert_eq!(ev.ty, "message");
                    assert_eq!(ev.data, text.replace("\r\n", "\n").replace('\r', "\n"));
                }
                Err(_) => {
                    assert_eq!(ev.ty, "binary");
                    assert_eq!(
                        base64::engine::general_purpose::STANDARD
                            .decode(&ev.data)
                            .expect("base64"),
                        body
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn websocket_published_messages_reach_sse_with_exact_bytes() {
    let server = start().await;
    let addr = server.addr();
    let mut sse = SseClient::connect(addr, "/sse?room=mixed").await;
    let mut ws = connect(&server.url("/ws/chat?room=mixed")).await;
    let mut watcher = connect(&server.url("/ws/chat?room=mixed&envelope=1")).await;
    wait_sse_members(addr, "mixed", 1).await;
    eventually(Duration::from_secs(10), "ws members", || async {
        room_info(addr, "mixed").await["members"]["websocket"] == 2
    })
    .await;
    let sent = [
        Message::Text("from ws\nsecond line".into()),
        Message::Binary(vec![9, 8, 7, 0]),
        Message::Text("crlf\r\nend".into()),
    ];
    for m in &sent {
        send(&mut ws, m.clone()).await;
    }
    // The envelope watcher tells us the ids the room gave them.
    let mut ids = Vec::new();
    for _ in 0..sent.len() {
        let env: serde_json::Value =
            serde_json::from_str(&client::recv_text(&mut watcher).await).expect("envelope");
        ids.push(env["id"].as_str().expect("id").to_string());
    }
    sse.next_events(sent.len()).await;
    let expected = format!(
        "retry: 2000\n\nid: {}\ndata: from ws\ndata: second line\n\nevent: binary\nid: {}\ndata: CQgHAA==\n\nid: {}\ndata: crlf\ndata: end\n\n",
        ids[0], ids[1], ids[2]
    );
    assert_eq!(String::from_utf8_lossy(&sse.raw), expected);
}

#[tokio::test]
async fn keep_alive_comments_arrive_every_interval_on_every_stream() {
    let server = Server::start_with(
        ServerOptions::shards(2)
            .api_key()
            .set("sse.keep_alive_interval", "200ms"),
    )
    .await;
    let addr = server.addr();
    let mut streams = Vec::new();
    for i in 0..6 {
        streams.push(SseClient::connect(addr, &format!("/sse?room=ka{}", i % 2)).await);
    }
    let window = Duration::from_millis(2400);
    // Read all streams concurrently over the same window.
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.read_for(window).await;
                c
            })
        })
        .collect();
    // A message in the middle must not be torn by a comment.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let p = publish(addr, "ka0", "between\ncomments").await;
    for h in handles {
        let c = h.await.expect("reader");
        let text = String::from_utf8_lossy(&c.raw).into_owned();
        let comments = text.matches(": keep-alive\n\n").count();
        // 2.4 s / 200 ms = 12 expected; generous bounds against a loaded machine.
        assert!(
            (4..=40).contains(&comments),
            "{comments} keep-alive comments in {window:?}: {text:?}"
        );
        // The stream is made of whole blocks only.
        let rest = text
            .strip_prefix("retry: 2000\n\n")
            .expect("retry first")
            .replace(": keep-alive\n\n", "");
        let want_msg = format!("id: {}\ndata: between\ndata: comments\n\n", p.id);
        assert!(
            rest.is_empty() || rest == want_msg,
            "unexpected bytes besides comments: {rest:?}"
        );
        assert!(c.comments.iter().all(|x| x == " keep-alive"));
    }
}

/// Room names that need percent-encoding in ids.
fn twenty_rooms() -> Vec<String> {
    let mut rooms: Vec<String> = (0..15).map(|i| format!("room-{i}")).collect();
    rooms.extend(
        ["a=b", "c;d", "sp ace", "é😀", "100%"]
            .iter()
            .map(|s| s.to_string()),
    );
    rooms
}

#[tokio::test]
async fn twenty_rooms_on_one_stream_keep_per_room_order_and_composite_ids() {
    let server = start().await;
    let addr = server.addr();
    let rooms = twenty_rooms();
    let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let path = sse_path(&refs);
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(SseClient::connect(addr, &path).await);
    }
    for r in &rooms {
        wait_sse_members(addr, r, 3).await;
    }
    const PER_ROOM: usize = 8;
    // Four publishers, each owning five rooms, publishing concurrently.
    let mut tasks = Vec::new();
    for chunk in rooms.chunks(5) {
        let chunk: Vec<String> = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut ids: HashMap<(String, usize), String> = HashMap::new();
            for i in 0..PER_ROOM {
                for r in &chunk {
                    let p = publish(addr, r, format!("{r}#{i}")).await;
                    assert_eq!(&p.room, r, "room decoded");
                    ids.insert((r.clone(), i), p.id);
                }
            }
            ids
        }));
    }
    let mut ids: HashMap<(String, usize), String> = HashMap::new();
    for t in tasks {
        ids.extend(t.await.expect("publisher"));
    }
    let total = rooms.len() * PER_ROOM;
    for c in &mut streams {
        let events = c.next_events(total).await;
        let mut next: HashMap<String, usize> = HashMap::new();
        let mut last_seen: HashMap<String, String> = HashMap::new();
        for ev in &events {
            let (room, i) = ev.data.rsplit_once('#').expect("room#i");
            let i: usize = i.parse().expect("index");
            let want = next.entry(room.to_string()).or_insert(0);
            assert_eq!(i, *want, "room {room}: out of order in {:?}", ev.data);
            *want += 1;
            let id = ev.id.as_deref().expect("every room message has an id");
            let cursors = parse_room_cursors(id);
            let names: Vec<&String> = cursors.iter().map(|(r, _)| r).collect();
            let mut dedup = names.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), names.len(), "room listed twice in {id}");
            let mine = cursors
                .iter()
                .find(|(r, _)| r == room)
                .unwrap_or_else(|| panic!("id {id} lacks the event's room {room}"));
            assert_eq!(
                mine.1,
                ids[&(room.to_string(), i)],
                "the event's room cursor is the position it was published at"
            );
            last_seen.insert(room.to_string(), mine.1.clone());
            // Every room delivered so far keeps its latest cursor in the id.
            for (r, cur) in &last_seen {
                let entry = cursors.iter().find(|(x, _)| x == r);
                assert_eq!(
                    entry.map(|(_, c)| c),
                    Some(cur),
                    "id {id} lost or changed room {r}'s cursor"
                );
            }
        }
        assert!(next.values().all(|n| *n == PER_ROOM));
        let last = parse_room_cursors(c.last_event_id());
        assert_eq!(last.len(), rooms.len(), "final id names all 20 rooms");
        // Names are percent-encoded on the wire.
        assert!(
            c.last_event_id().contains("a%3Db=") && c.last_event_id().contains("c%3Bd="),
            "reserved characters in room names are escaped: {}",
            c.last_event_id()
        );
        for (_, cur) in &last {
            assert!(is_cursor(cur));
            assert_eq!(split_cursor(cur).1, PER_ROOM as u64);
        }
    }
}

/// Opens SSE streams on `path` until both shards hold at least one (bounded).
async fn streams_on_both_shards(server: &Server, path: &str, at_least: usize) -> Vec<SseClient> {
    let mut streams = Vec::new();
    for _ in 0..64 {
        streams.push(SseClient::connect(server.addr(), path).await);
        if streams.len() >= at_least {
            let stats = server.stats().await;
            let per: Vec<u64> = stats["connections_per_shard"]
                .as_array()
                .expect("connections_per_shard")
                .iter()
                .map(|v| v.as_u64().unwrap_or(0))
                .collect();
            if per.len() == 2 && per.iter().all(|n| *n > 0) {
                return streams;
            }
        }
    }
    panic!("64 connections all landed on one shard");
}

#[tokio::test]
async fn api_and_websocket_messages_reach_sse_members_on_both_shards_in_one_order() {
    let server = start().await;
    let addr = server.addr();
    let mut streams = streams_on_both_shards(&server, "/sse?room=both", 4).await;
    let n_sse = streams.len() as u64;
    let mut ws_pubs = Vec::new();
    for _ in 0..2 {
        ws_pubs.push(connect(&server.url("/ws/chat?room=both")).await);
    }
    wait_sse_members(addr, "both", n_sse).await;
    eventually(Duration::from_secs(10), "ws members", || async {
        room_info(addr, "both").await["members"]["websocket"] == 2
    })
    .await;
    const EACH: usize = 40;
    let api = tokio::spawn(async move {
        for i in 0..EACH {
            publish(addr, "both", format!("api-{i}")).await;
        }
    });
    let mut ws_tasks = Vec::new();
    for (k, mut ws) in ws_pubs.into_iter().enumerate() {
        ws_tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                send(&mut ws, Message::Text(format!("ws{k}-{i}"))).await;
            }
            // Keep the publisher a member until everything is delivered.
            ws
        }));
    }
    api.await.expect("api publisher");
    let mut keep = Vec::new();
    for t in ws_tasks {
        keep.push(t.await.expect("ws publisher"));
    }
    let total = 3 * EACH;
    let mut reference: Option<Vec<String>> = None;
    for c in &mut streams {
        let events = c.next_events(total).await;
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| split_cursor(e.id.as_deref().expect("id")).1)
            .collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "consecutive ids"
        );
        let data: Vec<String> = events.into_iter().map(|e| e.data).collect();
        for prefix in ["api-", "ws0-", "ws1-"] {
            let mine: Vec<&String> = data.iter().filter(|d| d.starts_with(prefix)).collect();
            let want: Vec<String> = (0..EACH).map(|i| format!("{prefix}{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>(), "{prefix} order");
        }
        match &reference {
            None => reference = Some(data),
            Some(r) => assert_eq!(&data, r, "every member sees one order"),
        }
    }
    // The WebSocket publishers got the same order.
    for mut ws in keep {
        let mut got = Vec::new();
        for _ in 0..total {
            got.push(client::recv_text(&mut ws).await);
        }
        assert_eq!(Some(&got), reference.as_ref());
    }
}

#[tokio::test]
async fn closed_streams_are_forgotten_and_client_bytes_ignored() {
    let server = start().await;
    let addr = server.addr();
    let mut streams = streams_on_both_shards(&server, "/sse?room=gone", 3).await;
    let n = streams.len() as u64;
    assert_eq!(server.stats().await["connections"], n);
    wait_sse_members(addr, "gone", n).await;

    // Whatever a client writes on its stream is ignored.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::AsyncWriteExt;
    raw.write_all(stream_request(addr, "/sse?room=gone", &[]).as_bytes())
        .await
        .expect("write");
    raw.write_all(b"garbage\r\n\r\nGET / HTTP/1.1\r\n\r\n\x00\xff")
        .await
        .expect("write garbage");
    wait_sse_members(addr, "gone", n + 1).await;
    let p = publish(addr, "gone", "still here").await;
    for c in &mut streams {
        let ev = c.next_event().await;
        assert_eq!(
            (ev.data.as_str(), ev.id.as_deref()),
            ("still here", Some(p.id.as_str()))
        );
    }
    drop(raw);
    streams.truncate(1);
    eventually(Duration::from_secs(5), "closed streams leave", || async {
        server.stats().await["connections"] == 1 && sse_members(addr, "gone").await == 1
    })
    .await;
    drop(streams);
    eventually(Duration::from_secs(5), "all streams gone", || async {
        server.stats().await["connections"] == 0 && sse_members(addr, "gone").await == 0
    })
    .await;
}

/// `true` if `raw` is nothing but complete, well-formed event-stream blocks
/// (UTF-8, no CR, no control bytes but LF, ending at a block boundary).
fn only_sse_blocks(raw: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        return Err(format!("control character {c:?} in the stream"));
    }
    if !text.is_empty() && !text.ends_with("\n\n") {
        return Err(format!(
            "stream ends inside a block: ...{:?}",
            &text[text.len().saturating_sub(80)..]
        ));
    }
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_event_streams_with_sse_bytes_only_and_promptly() {
    let mut server = Server::start_with(opts().set("shutdown.drain_timeout_ms", "4000")).await;
    let addr = server.addr();
    let mut streams = streams_on_both_shards(&server, "/sse?room=bye", 2).await;
    wait_sse_members(addr, "bye", streams.len() as u64).await;
    publish(addr, "bye", "last words").await;
    for c in &mut streams {
        assert_eq!(c.next_event().await.data, "last words");
    }
    let signalled = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    let mut problems = Vec::new();
    for (i, c) in streams.iter_mut().enumerate() {
        if !c.wait_eof(Duration::from_secs(10)).await {
            problems.push(format!("stream {i} not closed 10 s after SIGTERM"));
        }
        if let Err(why) = only_sse_blocks(&c.raw) {
            problems.push(format!(
                "stream {i}: {why}; stream bytes: {:?}",
                String::from_utf8_lossy(&c.raw)
            ));
        }
    }
    let closed_after = signalled.elapsed();
    let status = server.wait_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    match status {
        Some(s) if s.success() => {}
        other => problems.push(format!("exit status {other:?}")),
    }
    // SSE clients never answer a close handshake: nothing to wait for.
    if closed_after > Duration::from_secs(2) {
        problems.push(format!(
            "event streams took {closed_after:?} to close (drain_timeout_ms 4000)"
        ));
    }
    assert!(
        problems.is_empty(),
        "SIGTERM with {} open event streams (closed after {closed_after:?}, exit after \
         {exited_after:?}):\n{}",
        streams.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn slow_sse_consumer_is_cut_off_without_non_sse_bytes() {
    let server = Server::start_with(opts().set("websocket.outbound_queue_bytes", "262144")).await;
    let addr = server.addr();
    // The slow stream never reads until the end (and has a small receive buffer).
    let mut slow = SseClient::open_opts(
        addr,
        &stream_request(addr, "/sse?room=flood", &[]),
        Some(4096),
    )
    .await
    .expect("stream");
    wait_sse_members(addr, "flood", 1).await;
    let payload = "x".repeat(64 * 1024);
    let mut sent = 0;
    // Publish until the server gives up on the slow stream: at most 400 x 64 KiB,
    // far more than socket buffers plus the 256 KiB queue.
    for i in 0..400 {
        publish(addr, "flood", format!("{i} {payload}")).await;
        sent += 1;
        if i % 16 == 15 && server.stats().await["slow_consumers"].as_u64() == Some(1) {
            break;
        }
    }
    assert_eq!(
        server.stats().await["slow_consumers"],
        1,
        "the stream that does not read is a slow consumer after {sent} x 64 KiB"
    );
    assert!(
        slow.wait_eof(Duration::from_secs(20)).await,
        "slow stream closed"
    );
    if let Err(why) = only_sse_blocks(&slow.raw) {
        let tail = &slow.raw[slow.raw.len().saturating_sub(48)..];
        panic!(
            "slow consumer's stream ({} bytes): {why}; last bytes {:?}",
            slow.raw.len(),
            String::from_utf8_lossy(tail)
        );
    }
    // The room still works for others.
    let mut fresh = SseClient::connect(addr, "/sse?room=flood").await;
    wait_sse_members(addr, "flood", 1).await;
    let p = publish(addr, "flood", "after").await;
    let ev = fresh.next_event().await;
    assert_eq!(
        (ev.data.as_str(), ev.id.as_deref()),
        ("after", Some(p.id.as_str()))
    );
}

// ----- The sse_ticker example. -----

/// The `sse_ticker` example program (its own PID is killed on drop).
struct Ticker {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Ticker {
    fn start(tick_ms: u64) -> Ticker {
        let bin: PathBuf = server_binary()
            .parent()
            .expect("binary dir")
            .join("examples")
            .join("sse_ticker");
        assert!(
            bin.exists(),
            "{} is missing: cargo build --release -p corecast --examples",
            bin.display()
        );
        let port = free_port();
        let mut child = Command::new(&bin)
            .arg(format!("127.0.0.1:{port}"))
            .env("TICK_MS", tick_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sse_ticker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sse_ticker printed nothing");
        assert!(
            first.contains("listening on"),
            "unexpected first line {first:?}"
        );
        Ticker {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            lines: rx,
        }
    }

    async fn connections(&self) -> u64 {
        let resp = http_request(
            self.addr,
            &format!("GET /stats HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr),
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("stats JSON");
        v["connections"].as_u64().expect("connections")
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sse_ticker_handler_ends_when_its_client_goes_away() {
    let ticker = Ticker::start(100);
    let addr = ticker.addr;
    let mut c = SseClient::connect(addr, "/events?room=news").await;
    let ticks: Vec<SseEvent> = c.next_events(3).await;
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(t.ty, "tick");
        assert_eq!(t.data, (i + 1).to_string());
    }
    assert_eq!(ticker.connections().await, 1);
    // A second client, which stays: only the first one's handler must end.
    let mut other = SseClient::connect(addr, "/events").await;
    other.next_event().await;
    drop(c);
    let line = within(Duration::from_secs(10), "ticker ended line", async {
        loop {
            match ticker.lines.try_recv() {
                Ok(l) if l.starts_with("ticker ended after ") => return l,
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!("sse_ticker exited"),
            }
        }
    })
    .await;
    let n: u64 = line
        .trim_start_matches("ticker ended after ")
        .trim_end_matches(" ticks")
        .parse()
        .expect("tick count");
    assert!(n >= 3, "{line}");
    eventually(Duration::from_secs(5), "connections back to 1", || async {
        ticker.connections().await == 1
    })
    .await;
    // The remaining stream still ticks.
    let t = other.next_event().await;
    assert_eq!(t.ty, "tick");
    drop(other);
    within(Duration::from_secs(10), "second ticker ended line", async {
        loop {
            match ticker.lines.try_recv() {
                Ok(l) if l.starts_with("ticker ended after ") => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    eventually(Duration::from_secs(5), "connections back to 0", || async {
        ticker.connections().await == 0
    })
    .await;
}
