//! Cursors and resume: SSE `Last-Event-ID` (and `?lastEventId=`), WebSocket
//! `?since=` with `?envelope=1`, multi-room stream ids, the replay-then-live race
//! under continuous publishing with clients reconnecting many times, gap signals
//! (expired / unknown_cursor / epoch_changed after a restart), per-room history
//! overrides, and 400s for malformed cursors. Always 2 shards, so replays and
//! live messages cross shards.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corecast_tests::api::{publish, room_info, Published};
use corecast_tests::client::{self, connect, Ws};
use corecast_tests::raw::http_request;
use corecast_tests::sse::{
    parse_room_cursors, percent_encode, split_cursor, sse_path, SseClient, SseEvent,
};
use corecast_tests::{eventually, Server, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn opts() -> ServerOptions {
    ServerOptions::shards(2)
        .api_key()
        .set("sse.keep_alive_interval", "1h")
}

async fn start() -> Server {
    Server::start_with(opts()).await
}

async fn wait_members(addr: SocketAddr, room: &str, kind: &str, n: u64) {
    eventually(Duration::from_secs(10), "members", || async move {
        room_info(addr, room).await["members"][kind] == n
    })
    .await;
}

/// A WebSocket envelope `{"room","id","data"}` or a gap signal, parsed.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    json(&client::recv_text(ws).await)
}

/// Asserts nothing arrives on `ws` for `quiet`.
async fn ws_quiet(ws: &mut Ws, quiet: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(quiet, ws.next()).await {
        panic!("expected nothing more, got {m:?}");
    }
}

/// The exact gap JSON the server must send.
fn gap_json(
    room: &str,
    reason: &str,
    requested: &str,
    first: &str,
    current: &str,
) -> serde_json::Value {
    serde_json::json!({"type": "gap", "room": room, "reason": reason, "requested": requested,
                       "first_available": first, "current": current})
}

fn assert_gap_event(ev: &SseEvent, want: serde_json::Value) {
    assert_eq!(ev.ty, "gap", "expected a gap event, got {ev:?}");
    assert_eq!(
        ev.id, None,
        "a gap event carries no id (it must not move the cursor)"
    );
    assert_eq!(json(&ev.data), want);
}

// ----- Exact replay. -----

#[tokio::test]
async fn sse_resume_replays_exactly_the_missed_messages_then_live() {
    let server = start().await;
    let addr = server.addr();
    // Six rooms: with 2 shards both owners serve replays, to streams on both shards.
    for (n, room) in ["r0", "r1", "r2", "r3", "r4", "r5"].iter().enumerate() {
        let path = format!("/sse?room={room}");
        let mut c = SseClient::connect(addr, &path).await;
        wait_members(addr, room, "sse", 1).await;
        let mut published: Vec<Published> = Vec::new();
        for i in 0..4 {
            published.push(publish(addr, room, format!("{room} before {i}")).await);
        }
        let got = c.next_events(4).await;
        assert_eq!(got[3].id.as_deref(), Some(published[3].id.as_str()));
        let last = c.last_event_id().to_string();
        assert_eq!(last, published[3].id);
        drop(c);
        wait_members(addr, room, "sse", 0).await;
        for i in 0..6 {
            published.push(publish(addr, room, format!("{room} missed {i}\nline 2")).await);
        }
        // Header on even rooms, ?lastEventId= on odd ones.
        let mut c = if n % 2 == 0 {
            SseClient::resume(addr, &path, &last).await
        } else {
            SseClient::connect(addr, &format!("{path}&lastEventId={last}")).await
        };
        let replay = c.next_events(6).await;
        for (ev, p) in replay.iter().zip(&published[4..]) {
            assert_eq!(ev.ty, "message");
            assert_eq!(ev.id.as_deref(), Some(p.id.as_str()), "{room}");
        }
        let data: Vec<&str> = replay.iter().map(|e| e.data.as_str()).collect();
        let want: Vec<String> = (0..6)
            .map(|i| format!("{room} missed {i}\nline 2"))
            .collect();
        assert_eq!(data, want, "{room}: exactly the missed messages, in order");
        c.expect_no_event(Duration::from_millis(300)).await;
        let live = publish(addr, room, "live").await;
        let ev = c.next_event().await;
        assert_eq!(
            (ev.data.as_str(), ev.id.as_deref()),
            ("live", Some(live.id.as_str()))
        );
        assert_eq!(live.seq, 11);
        c.expect_no_event(Duration::from_millis(200)).await;
        drop(c);
        // Resuming from an older cursor replays everything after it.
        let mut c = SseClient::resume(addr, &path, &published[1].id).await;
        let again = c.next_events(9).await;
        let seqs: Vec<u64> = again
            .iter()
            .map(|e| split_cursor(e.id.as_deref().expect("id")).1)
            .collect();
        assert_eq!(seqs, (3..=11).collect::<Vec<_>>(), "{room}");
        // And from the current position: nothing, no gap.
        drop(c);
        let mut c = SseClient::resume(addr, &path, &live.id).await;
        c.expect_no_event(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn websocket_since_replays_exactly_with_envelopes_then_live() {
    let server = start().await;
    let addr = server.addr();
    for room in ["w0", "w1", "w2", "w3"] {
        let url = server.url(&format!("/ws/chat?room={room}&envelope=1"));
        let mut ws = connect(&url).await;
        wait_members(addr, room, "websocket", 1).await;
        for i in 0..3 {
            publish(addr, room, format!("b{i}")).await;
        }
        // A member's own messages come back as envelopes too.
        client::send_text(&mut ws, "from member").await;
        client::send(&mut ws, Message::Binary(vec![1, 2, 3])).await;
        let mut envs = Vec::new();
        for _ in 0..5 {
            envs.push(recv_json(&mut ws).await);
        }
        assert_eq!(envs[3]["data"], "from member");
        assert_eq!(envs[4]["encoding"], "base64");
        assert_eq!(envs[4]["data"], "AQID");
        for (i, e) in envs.iter().enumerate() {
            assert_eq!(e["room"], room);
            assert_eq!(split_cursor(e["id"].as_str().expect("id")).1, i as u64 + 1);
        }
        let last = envs[4]["id"].as_str().expect("id").to_string();
        drop(ws);
        wait_members(addr, room, "websocket", 0).await;
        let mut missed = Vec::new();
        for i in 0..7 {
            missed.push(publish(addr, room, format!("m{i}")).await);
        }
        let mut ws = connect(&format!("{url}&since={last}")).await;
        for (i, p) in missed.iter().enumerate() {
            let e = recv_json(&mut ws).await;
            assert_eq!(
                e,
                serde_json::json!({"room": room, "id": p.id, "data": format!("m{i}")}),
                "{room}"
            );
        }
        ws_quiet(&mut ws, Duration::from_millis(300)).await;
        let live = publish(addr, room, "live").await;
        assert_eq!(
            recv_json(&mut ws).await,
            serde_json::json!({"room": room, "id": live.id, "data": "live"})
        );
        // Without envelopes the replay is the plain messages.
        let mut plain =
            connect(&server.url(&format!("/ws/chat?room={room}&since={}", missed[4].id))).await;
        for want in ["m5", "m6", "live"] {
            assert_eq!(client::recv_text(&mut plain).await, want);
        }
        ws_quiet(&mut plain, Duration::from_millis(200)).await;
    }
}

// ----- Multi-room streams. -----

#[tokio::test]
async fn twenty_room_stream_resumes_every_room_from_one_last_event_id() {
    let server = start().await;
    let addr = server.addr();
    let rooms: Vec<String> = (0..18)
        .map(|i| format!("m{i}"))
        .chain(["x=y".to_string(), "sp ace;é".to_string()])
        .collect();
    let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let path = sse_path(&refs);
    let mut c = SseClient::connect(addr, &path).await;
    for r in &rooms {
        wait_members(addr, r, "sse", 1).await;
    }
    for i in 0..2 {
        for r in &rooms {
            publish(addr, r, format!("{r}#{i}")).await;
        }
    }
    c.next_events(40).await;
    let id = c.last_event_id().to_string();
    assert_eq!(parse_room_cursors(&id).len(), 20, "{id}");
    drop(c);
    // Missed: three messages in every other room.
    let mut expected: HashMap<String, Vec<Published>> = HashMap::new();
    for i in 2..5 {
        for r in rooms.iter().step_by(2) {
            let p = publish(addr, r, format!("{r}#{i}")).await;
            expected.entry(r.clone()).or_default().push(p);
        }
    }
    let mut c = SseClient::resume(addr, &path, &id).await;
    let replay = c.next_events(30).await;
    let mut per_room: HashMap<String, Vec<String>> = HashMap::new();
    for ev in &replay {
        let (room, _) = ev.data.rsplit_once('#').expect("room#i");
        per_room
            .entry(room.to_string())
            .or_default()
            .push(ev.data.clone());
        let id = ev.id.as_deref().expect("id");
        assert!(
            id.contains('='),
            "replayed event {:?} of a 20-room stream carries the single-room id {id:?}",
            ev.data
        );
        let cursors = parse_room_cursors(id);
        let mine = cursors
            .iter()
            .find(|(r, _)| r == room)
            .expect("own room in id");
        let idx = per_room[room].len() - 1;
        assert_eq!(mine.1, expected[room][idx].id);
    }
    for r in rooms.iter().step_by(2) {
        let want: Vec<String> = (2..5).map(|i| format!("{r}#{i}")).collect();
        assert_eq!(per_room.get(r), Some(&want), "room {r}");
    }
    assert_eq!(
        per_room.len(),
        10,
        "rooms without missed messages replay nothing"
    );
    c.expect_no_event(Duration::from_millis(300)).await;
    // Live again in every room.
    for r in &rooms {
        publish(addr, r, format!("{r}#live")).await;
    }
    let live = c.next_events(20).await;
    let mut live_rooms: Vec<&str> = live
        .iter()
        .map(|e| e.data.rsplit_once('#').expect("#").0)
        .collect();
    live_rooms.sort_unstable();
    let mut all = refs.clone();
    all.sort_unstable();
    assert_eq!(live_rooms, all);
    assert_eq!(parse_room_cursors(c.last_event_id()).len(), 20);
}

/// After a resume, a multi-room stream's ids must still carry the cursor of every
/// room, including rooms that had nothing new: otherwise the next resume silently
/// drops those rooms' missed messages.
#[tokio::test]
async fn multi_room_ids_keep_quiet_rooms_across_resumes() {
    let server = start().await;
    let addr = server.addr();
    let path = "/sse?room=qa&room=qb";
    let mut c = SseClient::connect(addr, path).await;
    wait_members(addr, "qa", "sse", 1).await;
    wait_members(addr, "qb", "sse", 1).await;
    let a1 = publish(addr, "qa", "a1").await;
    publish(addr, "qb", "b1").await;
    c.next_events(2).await;
    let id1 = c.last_event_id().to_string();
    assert_eq!(parse_room_cursors(&id1).len(), 2, "{id1}");
    drop(c);
    // qb (the second room of the stream) moves on while the client is away; qa
    // does not.
    let b2 = publish(addr, "qb", "b2").await;
    let mut c = SseClient::resume(addr, path, &id1).await;
    let ev = c.next_event().await;
    assert_eq!(ev.data, "b2");
    let cursors = parse_room_cursors(ev.id.as_deref().expect("id"));
    assert!(
        cursors.contains(&("qb".to_string(), b2.id.clone()))
            && cursors.contains(&("qa".to_string(), a1.id.clone())),
        "after resuming from {id1:?} the next id {:?} must still name qa at {}",
        ev.id,
        a1.id
    );
    let id2 = c.last_event_id().to_string();
    drop(c);
    // Now qa moves on while the client is away: the stored id must resume it.
    publish(addr, "qa", "a2").await;
    let mut c = SseClient::resume(addr, path, &id2).await;
    let ev = c.next_event_within(Duration::from_secs(2)).await;
    assert_eq!(
        ev.as_ref().map(|e| e.data.as_str()),
        Some("a2"),
        "qa's message published while away was not replayed after resuming from {id2:?}"
    );
}

/// A multi-room stream's first id must name every room of the stream: the client
/// was a member of all of them, and a resume from that id must not silently skip
/// what a room got while the client was away.
#[tokio::test]
async fn multi_room_first_id_covers_rooms_that_have_not_spoken_yet() {
    let server = start().await;
    let addr = server.addr();
    let path = "/sse?room=fa&room=fb";
    let mut c = SseClient::connect(addr, path).await;
    wait_members(addr, "fa", "sse", 1).await;
    wait_members(addr, "fb", "sse", 1).await;
    publish(addr, "fa", "a1").await;
    c.next_event().await;
    let id = c.last_event_id().to_string();
    drop(c);
    publish(addr, "fb", "b-while-away").await;
    let mut c = SseClient::resume(addr, path, &id).await;
    let ev = c.next_event_within(Duration::from_secs(2)).await;
    assert_eq!(
        ev.as_ref().map(|e| e.data.as_str()),
        Some("b-while-away"),
        "fb's message, published while the client (a member of fb) was away, was lost \
         on resume from {id:?} (no replay, no gap signal)"
    );
}

/// Every event of a multi-room stream carries the per-room cursor list, replayed
/// events included (whichever shard owns the room and serves the replay).
#[tokio::test]
async fn multi_room_replayed_events_carry_composite_ids() {
    let server = start().await;
    let addr = server.addr();
    let rooms = ["ca", "cb", "cc", "cd"];
    let path = sse_path(&rooms);
    let mut c = SseClient::connect(addr, &path).await;
    for r in rooms {
        wait_members(addr, r, "sse", 1).await;
    }
    for r in rooms {
        publish(addr, r, format!("{r}:0")).await;
    }
    c.next_events(4).await;
    let mut last = c.last_event_id().to_string();
    drop(c);
    // Each round: every room gets a message while the client is away, then it
    // resumes (landing on either shard, so the first room's owner is sometimes
    // local and sometimes remote).
    for round in 1..=8 {
        for r in rooms {
            publish(addr, r, format!("{r}:{round}")).await;
        }
        let mut c = SseClient::resume(addr, &path, &last).await;
        let events = c.next_events(4).await;
        for ev in &events {
            let id = ev.id.as_deref().expect("id");
            assert!(
                id.contains('='),
                "round {round}: replayed event {:?} has a single-room id {id:?} on a \
                 {}-room stream (resumed from {last:?})",
                ev.data,
                rooms.len()
            );
        }
        let mut datas: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        datas.sort_unstable();
        let want: Vec<String> = rooms.iter().map(|r| format!("{r}:{round}")).collect();
        assert_eq!(datas, want, "round {round}");
        last = c.last_event_id().to_string();
        assert_eq!(parse_room_cursors(&last).len(), 4, "round {round}: {last}");
    }
}

/// A room named twice in the query is one membership: a resume replays the missed
/// messages once.
#[tokio::test]
async fn repeated_room_parameter_replays_once() {
    let server = start().await;
    let addr = server.addr();
    let first = publish(addr, "twice", "m1").await;
    for i in 2..=4 {
        publish(addr, "twice", format!("m{i}")).await;
    }
    let mut c = SseClient::resume(addr, "/sse?room=twice&room=twice", &first.id).await;
    let d: Vec<String> = c.next_events(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(d, ["m2", "m3", "m4"]);
    c.expect_no_event(Duration::from_millis(400)).await;
    let mut ws = connect(&server.url(&format!(
        "/ws/chat?room=twice&room=twice&since={}",
        first.id
    )))
    .await;
    for want in ["m2", "m3", "m4"] {
        assert_eq!(client::recv_text(&mut ws).await, want);
    }
    ws_quiet(&mut ws, Duration::from_millis(400)).await;
}

// ----- The replay-then-live race. -----

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What one reconnecting client collected: per room, (seq, data) in arrival order.
#[derive(Debug, Default)]
struct Collected {
    per_room: HashMap<String, Vec<(u64, String)>>,
    connects: usize,
}

/// Connects, reads for a random short while, disconnects, reconnects with its
/// Last-Event-ID, until it has `finals[room]` in every room (set once the
/// publisher is done).
async fn sse_race_client(
    addr: SocketAddr,
    rooms: Vec<String>,
    start_id: String,
    finals: Arc<Vec<AtomicU64>>,
    seed: u64,
) -> Collected {
    let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let path = sse_path(&refs);
    let multi = rooms.len() > 1;
    let mut rng = Rng(seed);
    let mut out = Collected::default();
    let mut last = start_id;
    let started = Instant::now();
    loop {
        let mut c = SseClient::resume(addr, &path, &last).await;
        out.connects += 1;
        let budget = rng.below(40) + 1;
        let until = tokio::time::Instant::now() + Duration::from_millis(rng.below(60) + 5);
        let mut n = 0;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let Some(ev) = c.next_event_within(left).await else {
                break;
            };
            assert_ne!(ev.ty, "gap", "no gap expected in the race: {}", ev.data);
            let id = ev.id.clone().expect("room message without id");
            let (room, seq) = if multi {
                let room = ev.data.split('|').next().expect("room|n").to_string();
                assert!(
                    id.contains('='),
                    "multi-room stream: event {:?} carries the single-room id {id:?}",
                    ev.data
                );
                let cursors = parse_room_cursors(&id);
                let cur = &cursors
                    .iter()
                    .find(|(r, _)| *r == room)
                    .unwrap_or_else(|| panic!("id {id} lacks room {room}"))
                    .1;
                (room, split_cursor(cur).1)
            } else {
                (rooms[0].clone(), split_cursor(&id).1)
            };
            out.per_room.entry(room).or_default().push((seq, ev.data));
            last = c.last_event_id().to_string();
            n += 1;
            if n >= budget {
                break;
            }
        }
        drop(c);
        let done = rooms.iter().enumerate().all(|(i, r)| {
            let fin = finals[i].load(Ordering::SeqCst);
            fin != 0
                && out
                    .per_room
                    .get(r)
                    .and_then(|v| v.last())
                    .is_some_and(|(s, _)| *s >= fin)
        });
        if done {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "race client did not catch up within 90 s (last id {last:?}, connects {})",
            out.connects
        );
        if rng.below(3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
        }
    }
}

/// Checks a client's collected sequence against what was published:
/// exactly seqs `from..=to` of each room, in order, with the published data.
fn check_collected(
    who: &str,
    got: &Collected,
    published: &HashMap<String, HashMap<u64, String>>,
    from: u64,
    finals: &HashMap<String, u64>,
) {
    for (room, fin) in finals {
        let seqs: Vec<u64> = got
            .per_room
            .get(room)
            .map(|v| v.iter().map(|(s, _)| *s).collect())
            .unwrap_or_default();
        let want: Vec<u64> = (from..=*fin).collect();
        if seqs != want {
            let dups: Vec<u64> = seqs
                .windows(2)
                .filter(|w| w[1] <= w[0])
                .map(|w| w[1])
                .collect();
            let gaps: Vec<(u64, u64)> = seqs
                .windows(2)
                .filter(|w| w[1] > w[0] + 1)
                .map(|w| (w[0], w[1]))
                .collect();
            panic!(
                "{who}, room {room}: {} messages, wanted {from}..={fin}; first={:?} last={:?}; \
                 duplicates/out-of-order at {dups:?}; gaps {gaps:?} (connects: {})",
                seqs.len(),
                seqs.first(),
                seqs.last(),
                got.connects
            );
        }
        for (seq, data) in &got.per_room[room] {
            assert_eq!(
                Some(data),
                published[room].get(seq),
                "{who}: seq {seq} content"
            );
        }
    }
}

async fn sse_race(rooms: &[&str], total: usize, clients: u64) {
    let server = start().await;
    let addr = server.addr();
    // One warm-up message per room gives the epochs; clients resume from seq 1.
    let mut start_cursors = Vec::new();
    let mut published: HashMap<String, HashMap<u64, String>> = HashMap::new();
    for r in rooms {
        let data = format!("{r}|warm-up");
        let p = publish(addr, r, &data).await;
        published
            .entry(r.to_string())
            .or_default()
            .insert(p.seq, data);
        start_cursors.push((r.to_string(), p.id));
    }
    let start_id = if rooms.len() == 1 {
        start_cursors[0].1.clone()
    } else {
        start_cursors
            .iter()
            .map(|(r, c)| format!("{}={c}", percent_encode(r)))
            .collect::<Vec<_>>()
            .join(";")
    };
    let finals: Arc<Vec<AtomicU64>> = Arc::new(rooms.iter().map(|_| AtomicU64::new(0)).collect());
    let room_names: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let mut tasks = Vec::new();
    for k in 0..clients {
        tasks.push(tokio::spawn(sse_race_client(
            addr,
            room_names.clone(),
            start_id.clone(),
            finals.clone(),
            0x9e37_79b9_7f4a_7c15 ^ (k + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        )));
    }
    // The publisher: continuous, round-robin over the rooms.
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for i in 0..total {
        let r = rooms[i % rooms.len()];
        let data = format!("{r}|msg {i}");
        let p = publish(addr, r, &data).await;
        published
            .entry(r.to_string())
            .or_default()
            .insert(p.seq, data);
        last_seq.insert(r.to_string(), p.seq);
    }
    for (i, r) in rooms.iter().enumerate() {
        finals[i].store(last_seq[*r], Ordering::SeqCst);
    }
    for (k, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap_or_else(|e| panic!("race client {k}: {e}"));
        assert!(
            got.connects >= 10,
            "client {k} reconnected only {} times",
            got.connects
        );
        check_collected(&format!("SSE client {k}"), &got, &published, 2, &last_seq);
    }
}

#[tokio::test]
async fn sse_clients_reconnecting_during_continuous_publishing_see_no_gap_and_no_duplicate() {
    sse_race(&["race"], 1500, 4).await;
}

#[tokio::test]
async fn multi_room_sse_clients_reconnecting_during_publishing_see_no_gap_and_no_duplicate() {
    sse_race(&["ra", "rb", "rc"], 1500, 3).await;
}

#[tokio::test]
async fn websocket_clients_reconnecting_with_since_during_ws_publishing_see_no_gap() {
    let server = start().await;
    let room = "wsrace";
    let url = server.url(&format!("/ws/chat?room={room}&envelope=1"));
    // The publisher is a member too: its own envelopes tell which seq each
    // message got (and it must see them all, in order).
    let publisher = connect(&url).await;
    let (mut sink, mut stream) = publisher.split();
    sink.send(Message::Text("warm-up".into()))
        .await
        .expect("send");
    let first = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => json(&t),
        other => panic!("no warm-up envelope: {other:?}"),
    };
    let start_id = first["id"].as_str().expect("id").to_string();
    let (epoch, one) = split_cursor(&start_id);
    assert_eq!(one, 1);
    const TOTAL: u64 = 1200;
    let final_seq = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for k in 0..4u64 {
        let url = url.clone();
        let start_id = start_id.clone();
        let final_seq = final_seq.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(0xdead_beef ^ (k + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut got: Vec<(u64, String)> = Vec::new();
            let mut last = start_id;
            let mut connects = 0usize;
            let started = Instant::now();
            loop {
                let mut ws = connect(&format!("{url}&since={last}")).await;
                connects += 1;
                let budget = rng.below(40) + 1;
                let until = tokio::time::Instant::now() + Duration::from_millis(rng.below(60) + 5);
                let mut n = 0;
                while let Ok(Some(m)) = tokio::time::timeout_at(until, ws.next()).await {
                    let Message::Text(t) = m.expect("ws error") else {
                        continue;
                    };
                    let v = json(&t);
                    assert_ne!(v["type"], "gap", "no gap expected in the race: {v}");
                    let id = v["id"].as_str().expect("id").to_string();
                    got.push((
                        split_cursor(&id).1,
                        v["data"].as_str().expect("data").to_string(),
                    ));
                    last = id;
                    n += 1;
                    if n >= budget {
                        break;
                    }
                }
                drop(ws);
                let fin = final_seq.load(Ordering::SeqCst);
                if fin != 0 && got.last().is_some_and(|(s, _)| *s >= fin) {
                    return (got, connects);
                }
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "ws client {k} stuck"
                );
            }
        }));
    }
    // Publish continuously (about one message per millisecond) while reading the
    // publisher's own envelopes.
    let reader = tokio::spawn(async move {
        let mut seen: Vec<(u64, String)> = Vec::new();
        while seen.len() < TOTAL as usize {
            match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v = json(&t);
                    let id = v["id"].as_str().expect("id");
                    assert_eq!(split_cursor(id).0, epoch);
                    seen.push((
                        split_cursor(id).1,
                        v["data"].as_str().expect("data").to_string(),
                    ));
                }
                other => panic!("publisher stream: {other:?} after {} envelopes", seen.len()),
            }
        }
        seen
    });
    for i in 0..TOTAL {
        sink.send(Message::Text(format!("w{i}")))
            .await
            .expect("send");
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let seen = reader.await.expect("publisher reader");
    let want: Vec<(u64, String)> = (0..TOTAL).map(|i| (i + 2, format!("w{i}"))).collect();
    assert_eq!(seen, want, "the publisher sees its messages in order");
    final_seq.store(TOTAL + 1, Ordering::SeqCst);
    for (k, c) in clients.into_iter().enumerate() {
        let (got, connects) = c.await.unwrap_or_else(|e| panic!("ws client {k}: {e}"));
        assert!(connects >= 10, "client {k}: {connects} connects");
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        if seqs != (2..=TOTAL + 1).collect::<Vec<_>>() {
            let bad: Vec<(u64, u64)> = seqs
                .windows(2)
                .filter(|w| w[1] != w[0] + 1)
                .map(|w| (w[0], w[1]))
                .collect();
            panic!(
                "ws client {k}: {} messages, discontinuities {bad:?}",
                seqs.len()
            );
        }
        assert_eq!(got, want, "ws client {k}: content");
    }
    drop(sink);
}

// ----- Gaps. -----

#[tokio::test]
async fn stale_cursor_gets_an_expired_gap_then_what_history_holds_then_live() {
    let server = Server::start_with(opts().set("history.max_messages", "5")).await;
    let addr = server.addr();
    let mut c = SseClient::connect(addr, "/sse?room=stale").await;
    wait_members(addr, "stale", "sse", 1).await;
    let mut p = Vec::new();
    for i in 1..=3 {
        p.push(publish(addr, "stale", format!("s{i}")).await);
    }
    c.next_events(3).await;
    let last = c.last_event_id().to_string();
    drop(c);
    for i in 4..=13 {
        p.push(publish(addr, "stale", format!("s{i}")).await);
    }
    let e = &p[0].epoch;
    // SSE.
    let mut c = SseClient::resume(addr, "/sse?room=stale", &last).await;
    let gap = c.next_event().await;
    assert_gap_event(
        &gap,
        gap_json(
            "stale",
            "expired",
            &format!("{e}:3"),
            &format!("{e}:9"),
            &format!("{e}:13"),
        ),
    );
    assert_eq!(
        gap.last_event_id, "",
        "the gap event leaves Last-Event-ID unset"
    );
    let rest = c.next_events(5).await;
    let data: Vec<&str> = rest.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["s9", "s10", "s11", "s12", "s13"]);
    assert_eq!(rest[4].id.as_deref(), Some(p[12].id.as_str()));
    c.expect_no_event(Duration::from_millis(200)).await;
    // WebSocket, same cursor.
    let mut ws =
        connect(&server.url(&format!("/ws/chat?room=stale&envelope=1&since={last}"))).await;
    assert_eq!(
        recv_json(&mut ws).await,
        gap_json(
            "stale",
            "expired",
            &format!("{e}:3"),
            &format!("{e}:9"),
            &format!("{e}:13")
        )
    );
    for i in 9..=13 {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["data"], format!("s{i}"));
        assert_eq!(v["id"], p[i - 1].id);
    }
    // A plain (non-envelope) WebSocket gets the same gap frame, then plain messages.
    let mut plain = connect(&server.url(&format!("/ws/chat?room=stale&since={e}:1"))).await;
    assert_eq!(
        recv_json(&mut plain).await,
        gap_json(
            "stale",
            "expired",
            &format!("{e}:1"),
            &format!("{e}:9"),
            &format!("{e}:13")
        )
    );
    assert_eq!(client::recv_text(&mut plain).await, "s9");
    // The cursor just before the oldest kept message is still exact.
    let mut exact = SseClient::resume(addr, "/sse?room=stale", &format!("{e}:8")).await;
    let first = exact.next_event().await;
    assert_eq!((first.ty.as_str(), first.data.as_str()), ("message", "s9"));
    // Then live for everyone.
    let live = publish(addr, "stale", "live").await;
    for ev in [
        c.next_event().await,
        exact.next_events(5).await.pop().expect("event"),
    ] {
        assert_eq!(
            (ev.data.as_str(), ev.id.as_deref()),
            ("live", Some(live.id.as_str()))
        );
    }
    let v = recv_json(&mut ws).await;
    assert_eq!(v["data"], "live");
}

#[tokio::test]
async fn history_overrides_by_room_pattern() {
    let server = Server::start_with(opts().set(
        "history.rooms",
        "[{pattern: \"short-*\", max_messages: 2}, {pattern: \"aged-*\", max_age: 300ms}]",
    ))
    .await;
    let addr = server.addr();
    let mut ps: HashMap<&str, Vec<Published>> = HashMap::new();
    // Keep a member in the aged room so its record is not swept while empty.
    let _keeper = connect(&server.url("/ws/chat?room=aged-x")).await;
    wait_members(addr, "aged-x", "websocket", 1).await;
    for room in ["short-x", "long", "aged-x"] {
        for i in 1..=6 {
            ps.entry(room)
                .or_default()
                .push(publish(addr, room, format!("{room}{i}")).await);
        }
    }
    let e_short = &ps["short-x"][0].epoch;
    // short-*: two kept.
    let mut c = SseClient::resume(addr, "/sse?room=short-x", &ps["short-x"][0].id).await;
    assert_gap_event(
        &c.next_event().await,
        gap_json(
            "short-x",
            "expired",
            &format!("{e_short}:1"),
            &format!("{e_short}:5"),
            &format!("{e_short}:6"),
        ),
    );
    let d: Vec<String> = c.next_events(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(d, ["short-x5", "short-x6"]);
    // Other rooms: the global 1000.
    let mut c = SseClient::resume(addr, "/sse?room=long", &ps["long"][0].id).await;
    let d: Vec<String> = c.next_events(5).await.into_iter().map(|e| e.data).collect();
    assert_eq!(
        d,
        ["long2", "long3", "long4", "long5", "long6"],
        "no gap in `long`"
    );
    // aged-*: nothing older than 300 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let e_aged = &ps["aged-x"][0].epoch;
    let mut c = SseClient::resume(addr, "/sse?room=aged-x", &ps["aged-x"][1].id).await;
    assert_gap_event(
        &c.next_event().await,
        gap_json(
            "aged-x",
            "expired",
            &format!("{e_aged}:2"),
            &format!("{e_aged}:7"),
            &format!("{e_aged}:6"),
        ),
    );
    c.expect_no_event(Duration::from_millis(200)).await;
    let live = publish(addr, "aged-x", "fresh").await;
    let ev = c.next_event().await;
    assert_eq!(
        (ev.data.as_str(), ev.id.as_deref()),
        ("fresh", Some(live.id.as_str()))
    );
}

#[tokio::test]
async fn cursor_ahead_of_the_room_is_an_unknown_cursor_gap() {
    let server = start().await;
    let addr = server.addr();
    let mut p = Vec::new();
    for i in 1..=3 {
        p.push(publish(addr, "ahead", format!("a{i}")).await);
    }
    let e = &p[0].epoch;
    let future = format!("{e}:99");
    let want = gap_json(
        "ahead",
        "unknown_cursor",
        &future,
        &format!("{e}:1"),
        &format!("{e}:3"),
    );
    let mut c = SseClient::resume(addr, "/sse?room=ahead", &future).await;
    assert_gap_event(&c.next_event().await, want.clone());
    let d: Vec<String> = c.next_events(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(d, ["a1", "a2", "a3"], "then whatever history holds");
    let mut ws =
        connect(&server.url(&format!("/ws/chat?room=ahead&envelope=1&since={future}"))).await;
    assert_eq!(recv_json(&mut ws).await, want);
    for i in 1..=3 {
        assert_eq!(recv_json(&mut ws).await["data"], format!("a{i}"));
    }
    let live = publish(addr, "ahead", "live").await;
    assert_eq!(c.next_event().await.id.as_deref(), Some(live.id.as_str()));
    assert_eq!(recv_json(&mut ws).await["id"], live.id);
}

#[tokio::test]
async fn restart_gives_new_epochs_and_old_cursors_an_epoch_changed_gap() {
    let server = start().await;
    let addr = server.addr();
    let mut old = HashMap::new();
    for room in ["ep", "ep2"] {
        for i in 1..=3 {
            old.insert(room, publish(addr, room, format!("{room}-{i}")).await);
        }
    }
    let old_ep = old["ep"].clone();
    let multi_id = format!("ep={};ep2={}", old["ep"].id, old["ep2"].id);
    let server = server.restart().await;
    assert_eq!(server.addr(), addr, "restarted on the same address");
    // Nothing published yet after the restart.
    let mut c = SseClient::resume(addr, "/sse?room=ep", &old_ep.id).await;
    let gap = c.next_event().await;
    assert_eq!(gap.ty, "gap");
    let g = json(&gap.data);
    assert_eq!(g["reason"], "epoch_changed");
    assert_eq!(g["room"], "ep");
    assert_eq!(g["requested"], old_ep.id);
    let (new_epoch, first) = split_cursor(g["first_available"].as_str().expect("first"));
    assert_ne!(new_epoch, old_ep.epoch, "a restart changes the epoch");
    assert_eq!(first, 1);
    assert_eq!(g["current"], format!("{new_epoch}:0"));
    c.expect_no_event(Duration::from_millis(200)).await;
    let live = publish(addr, "ep", "after restart").await;
    assert_eq!(live.epoch, new_epoch);
    assert_eq!(live.seq, 1);
    let ev = c.next_event().await;
    assert_eq!(
        (ev.data.as_str(), ev.id.as_deref()),
        ("after restart", Some(live.id.as_str()))
    );
    // WebSocket since with the old cursor.
    let mut ws =
        connect(&server.url(&format!("/ws/chat?room=ep&envelope=1&since={}", old_ep.id))).await;
    let g = recv_json(&mut ws).await;
    assert_eq!(g["type"], "gap");
    assert_eq!(g["reason"], "epoch_changed");
    assert_eq!(g["current"], live.id);
    assert_eq!(
        recv_json(&mut ws).await["id"],
        live.id,
        "then history of the new epoch"
    );
    // A multi-room id from before the restart: one gap per room.
    let mut c = SseClient::resume(addr, "/sse?room=ep&room=ep2", &multi_id).await;
    let mut gaps: Vec<String> = Vec::new();
    for _ in 0..2 {
        let ev = c.next_event().await;
        if ev.ty == "gap" {
            let g = json(&ev.data);
            assert_eq!(g["reason"], "epoch_changed");
            gaps.push(g["room"].as_str().expect("room").to_string());
        } else {
            assert_eq!(ev.data, "after restart", "ep's new history");
        }
    }
    let ev = c.next_event_within(Duration::from_millis(500)).await;
    if let Some(ev) = ev {
        if ev.ty == "gap" {
            gaps.push(json(&ev.data)["room"].as_str().expect("room").to_string());
        }
    }
    gaps.sort();
    assert_eq!(gaps, ["ep", "ep2"]);
}

#[tokio::test]
async fn malformed_cursors_are_rejected_with_400_naming_the_field() {
    let server = start().await;
    let addr = server.addr();
    for bad in ["garbage", "1:x", "zz:1", ":1", "a=1:2;", "a=1;b=2:3"] {
        let req = format!(
            "GET /sse?room=a HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nLast-Event-ID: {bad}\r\n\r\n"
        );
        let resp = SseClient::open(addr, &req).await.expect_err("400");
        assert_eq!(resp.status, 400, "Last-Event-ID {bad:?}");
        assert!(
            resp.body_text().contains("invalid Last-Event-ID"),
            "{bad:?}: {}",
            resp.body_text()
        );
        let req = format!(
            "GET /sse?room=a&lastEventId={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
            percent_encode(bad)
        );
        let resp = SseClient::open(addr, &req).await.expect_err("400");
        assert_eq!(resp.status, 400, "lastEventId {bad:?}");
        assert!(
            resp.body_text().contains("invalid lastEventId"),
            "{bad:?}: {}",
            resp.body_text()
        );
        let resp = http_request(
            addr,
            &corecast_tests::raw::upgrade_request(
                addr,
                &format!("/ws/chat?room=a&since={}", percent_encode(bad)),
                &corecast_tests::raw::new_key(),
                &[],
            ),
        )
        .await;
        assert_eq!(resp.status, 400, "since {bad:?}");
        assert!(
            resp.body_text().contains("invalid since"),
            "{bad:?}: {}",
            resp.body_text()
        );
    }
    // An empty Last-Event-ID is no cursor (a browser's first reconnect before any id).
    let req = format!(
        "GET /sse?room=a HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nLast-Event-ID: \r\n\r\n"
    );
    assert!(SseClient::open(addr, &req).await.is_ok());
}
