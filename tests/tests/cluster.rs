//! Cluster mode (`cluster:` with a Redis broker): three corecast nodes A, B and C
//! on one real `redis-server` (tests/src/redis.rs), driven by independent clients
//! (tokio-tungstenite, the SSE client, raw HTTP) against the contract in
//! README.md / docs/PROTOCOL.md: same ids on every node, resume on another node,
//! Redis stopped and restarted mid-stream, subscriber connections killed
//! (catch-up from the stream), presence and member counts across nodes with a
//! SIGKILLed node reaped, `send_to` a connection on another node, and config
//! errors. Every wait is bounded; nothing here measures speed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corecast_tests::api::{publish, publish_raw, request_bytes};
use corecast_tests::client::{self, Ws};
use corecast_tests::raw::HttpResponse;
use corecast_tests::redis::RedisServer;
use corecast_tests::sse::{percent_encode, SseClient};
use corecast_tests::{
    eventually, run_corecast, within, Server, ServerOptions, TempDir, TEST_API_KEY,
};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Liveness settings small enough that a dead node is reaped within seconds.
const HEARTBEAT: &str = "200ms";
const NODE_TIMEOUT: &str = "1s";
/// How long after a SIGKILL the dead node's members must be gone: node_timeout +
/// heartbeat + a generous margin for a loaded machine.
const REAP_WITHIN: Duration = Duration::from_secs(5);
/// Bound on one "everything arrives" wait.
const DELIVERY: Duration = Duration::from_secs(20);
/// How long "nothing more arrives" is watched.
const QUIET: Duration = Duration::from_millis(400);
/// Payload prefix of the synchronisation probes (see [`sync`]).
const PROBE: &str = "probe-";

// ----- Cluster set-up. -----

fn cluster_yaml(redis_url: &str, node_id: &str) -> String {
    format!(
        "\ncluster:\n  broker: redis\n  url: {redis_url}\n  node_id: {node_id}\n  \
         key_prefix: cctest\n  heartbeat: {HEARTBEAT}\n  node_timeout: {NODE_TIMEOUT}\n  \
         reconnect_min: 50ms\n  reconnect_max: 500ms\n  command_timeout: 1s\n"
    )
}

/// Options of one node: `shards` shards, the publish API on, SSE keep-alives out
/// of the way, `cluster:` pointing at `redis`.
fn node_opts(redis: &RedisServer, node_id: &str, shards: usize) -> ServerOptions {
    ServerOptions::shards(shards)
        .api_key()
        .set("sse.keep_alive_interval", "1h")
        .append(&cluster_yaml(&redis.url(), node_id))
}

/// Presence for rooms `p-*` (metadata key `name`).
fn with_presence(opts: ServerOptions) -> ServerOptions {
    opts.replace(
        "presence:\n  rooms: []",
        "presence:\n  rooms:\n    - pattern: \"p-*\"\n      meta: [name]",
    )
}

struct Cluster {
    a: Server,
    b: Server,
    c: Server,
    // Dropped last: the nodes go first.
    redis: RedisServer,
}

/// Redis plus nodes a (2 shards), b (1 shard), c (2 shards), all connected.
async fn start_cluster(edit: impl Fn(ServerOptions) -> ServerOptions) -> Cluster {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis start");
    let (a, b, c) = tokio::join!(
        Server::start_with(edit(node_opts(&redis, "a", 2))),
        Server::start_with(edit(node_opts(&redis, "b", 1))),
        Server::start_with(edit(node_opts(&redis, "c", 2))),
    );
    for s in [&a, &b, &c] {
        wait_connected(s).await;
    }
    Cluster { a, b, c, redis }
}

fn truthy(v: &serde_json::Value) -> bool {
    v.as_bool() == Some(true) || v.as_u64() == Some(1)
}

/// Waits until the node's `/stats` shows `"cluster": {"connected": 1|true}`.
async fn wait_connected(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = s.stats().await;
        let cluster = &stats["cluster"];
        assert!(
            cluster.is_object(),
            "/stats has no \"cluster\" object in cluster mode: {stats}"
        );
        if truthy(&cluster["connected"]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node never connected to redis: {cluster}\n{}",
            s.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cluster_stat(s: &Server, key: &str) -> u64 {
    let stats = s.stats().await;
    stats["cluster"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats cluster.{key} is not a number: {}", stats["cluster"]))
}

// ----- HTTP helpers. -----

/// The value of `name{node="<node>"}` in the node's `/metrics`; panics when the
/// sample is missing.
async fn metric(s: &Server, name: &str, node: &str) -> f64 {
    let addr = s.addr();
    let resp = corecast_tests::raw::http_request(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    let text = resp.body_text();
    let label = format!("node=\"{node}\"");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}{{{label}}} sample in /metrics:\n{text}"))
}

async fn api_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {TEST_API_KEY}\r\n\r\n");
    let resp = request_bytes(addr, &head, b"").await;
    let v = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    (resp.status, v)
}

async fn api_post(addr: SocketAddr, path: &str, body: &[u8]) -> HttpResponse {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TEST_API_KEY}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    request_bytes(addr, &head, body).await
}

// ----- Members: WebSocket (`envelope=1`) or SSE, read the same way. -----

enum Conn {
    Ws(Ws),
    Sse(SseClient),
}

/// A room message as a member saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    id: String,
    data: String,
}

/// A member and what it received since it was synchronised.
struct Sub {
    name: String,
    conn: Conn,
    synced: bool,
    /// Room messages from the first probe seen on (probes included).
    got: Vec<Got>,
    /// Anything that is not a room message (gap signals, error frames, ...).
    other: Vec<String>,
}

impl Sub {
    async fn ws(name: &str, server: &Server, room: &str, extra: &str) -> Sub {
        let url = server.url(&format!(
            "/ws/chat?room={}&envelope=1{extra}",
            percent_encode(room)
        ));
        Sub::new(name, Conn::Ws(client::connect(&url).await))
    }

    async fn sse(name: &str, server: &Server, room: &str) -> Sub {
        let path = format!("/sse?room={}", percent_encode(room));
        Sub::new(
            name,
            Conn::Sse(SseClient::connect(server.addr(), &path).await),
        )
    }

    fn new(name: &str, conn: Conn) -> Sub {
        Sub {
            name: name.to_string(),
            conn,
            synced: false,
            got: Vec::new(),
            other: Vec::new(),
        }
    }

    /// Reads one item within `t`; false when nothing came.
    async fn pump(&mut self, t: Duration) -> bool {
        let item = match &mut self.conn {
            Conn::Ws(ws) => loop {
                match tokio::time::timeout(t, ws.next()).await {
                    Err(_) => return false,
                    Ok(None) => panic!("{}: connection ended", self.name),
                    Ok(Some(Err(e))) => panic!("{}: websocket error {e}", self.name),
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let v: serde_json::Value = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", self.name));
                        match (v["id"].as_str(), v["data"].as_str()) {
                            (Some(id), Some(data)) if v.get("type").is_none() => {
                                break Ok(Got {
                                    id: id.to_string(),
                                    data: data.to_string(),
                                })
                            }
                            _ => break Err(text),
                        }
                    }
                    Ok(Some(Ok(Message::Close(c)))) => {
                        panic!("{}: closed {c:?}; other: {:?}", self.name, self.other)
                    }
                    Ok(Some(Ok(Message::Binary(b)))) => break Err(format!("binary {b:?}")),
                    Ok(Some(Ok(_))) => continue,
                }
            },
            Conn::Sse(c) => match c.next_event_within(t).await {
                None => {
                    assert!(!c.is_eof(), "{}: SSE stream ended", self.name);
                    return false;
                }
                Some(ev) if ev.ty == "message" && ev.id.is_some() => Ok(Got {
                    id: ev.id.clone().expect("id"),
                    data: ev.data.clone(),
                }),
                Some(ev) => Err(format!("{ev:?}")),
            },
        };
        match item {
            Ok(got) => {
                if !self.synced && got.data.starts_with(PROBE) {
                    self.synced = true;
                }
                if self.synced {
                    self.got.push(got);
                }
            }
            Err(other) => self.other.push(other),
        }
        true
    }

    /// The received messages that are not probes.
    fn real(&self) -> Vec<Got> {
        self.got
            .iter()
            .filter(|g| !g.data.starts_with(PROBE))
            .cloned()
            .collect()
    }

    /// Reads until `n` non-probe messages arrived (bounded by [`DELIVERY`]).
    async fn recv_real(&mut self, n: usize) {
        let deadline = Instant::now() + DELIVERY;
        while self.real().len() < n {
            assert!(
                Instant::now() < deadline,
                "{}: {} of {n} messages within {DELIVERY:?}; got {:?}; other {:?}",
                self.name,
                self.real().len(),
                self.real(),
                self.other
            );
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// Reads until every payload in `want` (payload -> acknowledged id) arrived
    /// (bounded by [`DELIVERY`]).
    async fn recv_payloads(&mut self, want: &HashMap<String, String>) {
        let deadline = Instant::now() + DELIVERY;
        loop {
            let have: HashSet<&str> = self.got.iter().map(|g| g.data.as_str()).collect();
            let mut missing: Vec<(&String, &String)> = want
                .iter()
                .filter(|(data, _)| !have.contains(data.as_str()))
                .map(|(data, id)| (id, data))
                .collect();
            if missing.is_empty() {
                return;
            }
            missing.sort();
            assert!(
                Instant::now() < deadline,
                "{}: {} acknowledged messages (id, payload) never arrived within {DELIVERY:?}: \
                 {:?}; received {} ({:?} .. {:?}); other {:?}",
                self.name,
                missing.len(),
                missing.iter().take(10).collect::<Vec<_>>(),
                self.got.len(),
                self.got.first(),
                self.got.last(),
                self.other
            );
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// Keeps reading for `d` (anything arriving is recorded).
    async fn drain(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if !self.pump(left).await {
                break;
            }
        }
    }
}

/// Publishes probes to `room` through `at`'s API until every member has received
/// one: from then on each is subscribed everywhere (a member that joined before a
/// node's Redis subscription was in place would otherwise miss early messages,
/// which the contract allows). Probes are skipped by [`Sub::real`].
async fn sync(at: SocketAddr, room: &str, subs: &mut [&mut Sub]) {
    let deadline = Instant::now() + DELIVERY;
    let mut k = 0;
    while subs.iter().any(|s| !s.synced) {
        assert!(
            Instant::now() < deadline,
            "members never saw a probe of {room}: {:?}",
            subs.iter()
                .filter(|s| !s.synced)
                .map(|s| (&s.name, &s.other))
                .collect::<Vec<_>>()
        );
        let resp = publish_raw(at, room, format!("{PROBE}{k}").as_bytes()).await;
        assert!(
            resp.status == 200 || resp.status == 503,
            "probe publish: {} {}",
            resp.status_line,
            resp.body_text()
        );
        k += 1;
        for s in subs.iter_mut() {
            while s.pump(Duration::from_millis(30)).await {}
        }
    }
}

/// `<epoch hex>:<seq>` split.
fn split_id(id: &str) -> (String, u64) {
    let (e, s) = id
        .split_once(':')
        .unwrap_or_else(|| panic!("id {id:?} is not <epoch>:<seq>"));
    (
        e.to_string(),
        s.parse()
            .unwrap_or_else(|_| panic!("id {id:?}: seq not a number")),
    )
}

/// Within each epoch the member's seqs are consecutive (no gap, no duplicate, no
/// reordering); returns the epochs in the order seen.
fn assert_consecutive_per_epoch(sub: &Sub) -> Vec<String> {
    let mut epochs: Vec<String> = Vec::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for g in &sub.got {
        let (e, s) = split_id(&g.id);
        if epochs.last() != Some(&e) {
            assert!(
                !epochs.contains(&e),
                "{}: epoch {e} came back after another one: {:?}",
                sub.name,
                sub.got
            );
            epochs.push(e.clone());
        } else {
            let prev = last[&e];
            assert_eq!(
                s,
                prev + 1,
                "{}: after {e}:{prev} came {e}:{s} (a gap or a duplicate); around: {:?}",
                sub.name,
                window(&sub.got, &g.id)
            );
        }
        last.insert(e, s);
    }
    epochs
}

fn window<'a>(got: &'a [Got], id: &str) -> &'a [Got] {
    let i = got.iter().position(|g| g.id == id).unwrap_or(0);
    &got[i.saturating_sub(3)..(i + 3).min(got.len())]
}

/// No id and no payload twice.
fn assert_no_duplicates(sub: &Sub) {
    let mut ids = HashSet::new();
    let mut data = HashSet::new();
    for g in &sub.got {
        assert!(ids.insert(&g.id), "{}: id {} twice", sub.name, g.id);
        assert!(
            data.insert(&g.data),
            "{}: payload {:?} twice",
            sub.name,
            g.data
        );
    }
}

// ----- A publisher loop on the HTTP API. -----

#[derive(Debug, Clone)]
struct Attempt {
    body: String,
    status: u16,
    /// The id a 200 answered.
    id: Option<String>,
    resp: HttpResponse,
}

struct Publisher {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Publishes `tag-0`, `tag-1`, ... to `room` through `at`, one at a time,
    /// until stopped, recording every answer.
    fn spawn(at: SocketAddr, room: &str, tag: &str) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (room, tag) = (room.to_string(), tag.to_string());
        let task = tokio::spawn({
            let (stop, log) = (stop.clone(), log.clone());
            async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("{tag}-{i}");
                    i += 1;
                    let resp = publish_raw(at, &room, body.as_bytes()).await;
                    let id = (resp.status == 200).then(|| {
                        let v: serde_json::Value =
                            serde_json::from_slice(&resp.body).expect("publish JSON");
                        v["id"].as_str().expect("id").to_string()
                    });
                    let ok = resp.status == 200;
                    log.lock().expect("log").push(Attempt {
                        body,
                        status: resp.status,
                        id,
                        resp,
                    });
                    let pause = if ok { 5 } else { 20 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        });
        Publisher { stop, log, task }
    }

    fn count(&self, status: u16) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|a| a.status == status)
            .count()
    }

    /// Waits until `n` more answers with `status` than `from` were recorded.
    async fn wait_for(&self, status: u16, from: usize, n: usize, what: &str) {
        let log = self.log.clone();
        eventually(DELIVERY, what, || {
            let log = log.clone();
            async move {
                log.lock()
                    .expect("log")
                    .iter()
                    .filter(|a| a.status == status)
                    .count()
                    >= from + n
            }
        })
        .await;
    }

    async fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        within(Duration::from_secs(15), "publisher stops", self.task)
            .await
            .expect("publisher task");
        Arc::try_unwrap(self.log)
            .expect("sole owner")
            .into_inner()
            .expect("log")
    }
}

/// Every acknowledged message reached `sub` once, with the acknowledged id, in
/// acknowledgement order; nothing arrived that was never sent.
fn assert_got_acked(sub: &Sub, attempts: &[Attempt]) {
    let acked: Vec<(&str, &str)> = attempts
        .iter()
        .filter_map(|a| a.id.as_deref().map(|id| (a.body.as_str(), id)))
        .collect();
    let by_body: HashMap<&str, &str> = sub
        .got
        .iter()
        .map(|g| (g.data.as_str(), g.id.as_str()))
        .collect();
    for (body, id) in &acked {
        let got = by_body.get(body);
        assert_eq!(
            got,
            Some(id),
            "{}: message {body:?} was acknowledged with id {id} but arrived as {got:?}",
            sub.name
        );
    }
    let order: Vec<&str> = sub
        .got
        .iter()
        .filter(|g| acked.iter().any(|(b, _)| *b == g.data))
        .map(|g| g.data.as_str())
        .collect();
    let want: Vec<&str> = acked.iter().map(|(b, _)| *b).collect();
    assert_eq!(
        order, want,
        "{}: acknowledged messages out of order",
        sub.name
    );
    let attempted: HashSet<&str> = attempts.iter().map(|a| a.body.as_str()).collect();
    for g in &sub.got {
        assert!(
            g.data.starts_with(PROBE) || attempted.contains(g.data.as_str()),
            "{}: received {g:?}, which nobody published",
            sub.name
        );
    }
}

// ----- (a) WebSocket publisher on A, members on A, B and C. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_publisher_on_a_reaches_members_on_every_node_in_one_order() {
    let cl = start_cluster(|o| o).await;
    let room = "chat-a";
    let mut publisher = Sub::ws("publisher@a", &cl.a, room, "").await;
    let mut subs = vec![
        Sub::ws("member@a", &cl.a, room, "").await,
        Sub::ws("member1@b", &cl.b, room, "").await,
        Sub::ws("member2@b", &cl.b, room, "").await,
        Sub::ws("member@c", &cl.c, room, "").await,
    ];
    {
        let mut all: Vec<&mut Sub> = subs.iter_mut().collect();
        all.push(&mut publisher);
        sync(cl.a.addr(), room, &mut all).await;
    }
    const N: usize = 60;
    let sent: Vec<String> = (0..N).map(|i| format!("ws message {i}")).collect();
    let Conn::Ws(ws) = &mut publisher.conn else {
        unreachable!()
    };
    for m in &sent {
        client::send_text(ws, m.clone()).await;
    }
    subs.push(publisher);
    let mut reference: Option<Vec<Got>> = None;
    for s in subs.iter_mut() {
        s.recv_real(N).await;
        s.drain(QUIET).await;
        let real = s.real();
        let data: Vec<&str> = real.iter().map(|g| g.data.as_str()).collect();
        assert_eq!(
            data, sent,
            "{}: every message exactly once, in order",
            s.name
        );
        assert_no_duplicates(s);
        assert_consecutive_per_epoch(s);
        assert!(s.other.is_empty(), "{}: unexpected {:?}", s.name, s.other);
        match &reference {
            None => reference = Some(real),
            Some(r) => assert_eq!(&real, r, "{}: ids differ from the first member's", s.name),
        }
    }
    // Each message crossed from Redis into A once: A's publisher and member got
    // it exactly once above; the counters agree that nothing was duplicated on
    // the way in.
    for (name, node) in [("a", &cl.a), ("b", &cl.b), ("c", &cl.c)] {
        assert!(
            cluster_stat(node, "messages_in").await >= N as u64,
            "node {name}: messages_in below {N}"
        );
        assert_eq!(metric(node, "corecast_cluster_connected", name).await, 1.0);
        assert!(metric(node, "corecast_cluster_messages_received_total", name).await >= N as f64);
        assert_eq!(
            metric(node, "corecast_cluster_subscribed_rooms", name).await,
            1.0,
            "node {name} follows the one room it has members in"
        );
    }
}

// ----- (b) HTTP publish on A; WebSocket on B, SSE on C. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_on_a_reaches_ws_on_b_and_sse_on_c_with_the_acknowledged_ids() {
    let cl = start_cluster(|o| o).await;
    let room = "news b";
    let mut subs = [
        Sub::ws("ws@b", &cl.b, room, "").await,
        Sub::sse("sse@c", &cl.c, room).await,
    ];
    {
        let mut all: Vec<&mut Sub> = subs.iter_mut().collect();
        sync(cl.a.addr(), room, &mut all).await;
    }
    const N: usize = 40;
    let mut acked = Vec::new();
    for i in 0..N {
        let p = publish(cl.a.addr(), room, format!("api {i}\nline two")).await;
        assert_eq!(p.room, room);
        acked.push(Got {
            id: p.id,
            data: format!("api {i}\nline two"),
        });
    }
    for w in acked.windows(2) {
        let ((e0, s0), (e1, s1)) = (split_id(&w[0].id), split_id(&w[1].id));
        assert!(
            e0 == e1 && s1 == s0 + 1,
            "sequential publishes got ids {} then {}",
            w[0].id,
            w[1].id
        );
    }
    for s in subs.iter_mut() {
        s.recv_real(N).await;
        s.drain(QUIET).await;
        assert_eq!(
            s.real(),
            acked,
            "{}: the acknowledged messages and ids",
            s.name
        );
        assert!(s.other.is_empty(), "{}: unexpected {:?}", s.name, s.other);
    }
}

// ----- (c) A client moves from B to C and resumes. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_from_b_to_c_resumes_exactly_where_it_left() {
    let cl = start_cluster(|o| o).await;
    let room = "move";
    let mut on_b = Sub::ws("client@b", &cl.b, room, "").await;
    sync(cl.a.addr(), room, &mut [&mut on_b]).await;
    for i in 0..10 {
        publish(cl.a.addr(), room, format!("before {i}")).await;
    }
    on_b.recv_real(10).await;
    let last = on_b.got.last().expect("a message").id.clone();
    drop(on_b);
    // Missed while moving; C has no member of the room yet, so its replay has to
    // come from Redis.
    let mut missed = Vec::new();
    for i in 0..15 {
        let p = publish(cl.a.addr(), room, format!("missed {i}")).await;
        missed.push(Got {
            id: p.id,
            data: format!("missed {i}"),
        });
    }
    let mut on_c = Sub::ws(
        "client@c",
        &cl.c,
        room,
        &format!("&since={}", percent_encode(&last)),
    )
    .await;
    on_c.synced = true; // everything it gets counts
    on_c.recv_real(15).await;
    on_c.drain(QUIET).await;
    assert_eq!(
        on_c.real(),
        missed,
        "exactly the missed messages, in order; other: {:?}",
        on_c.other
    );
    // Then live, once.
    let live = publish(cl.a.addr(), room, "live after move").await;
    on_c.recv_real(16).await;
    on_c.drain(QUIET).await;
    assert_eq!(
        on_c.real().last(),
        Some(&Got {
            id: live.id,
            data: "live after move".into()
        })
    );
    assert_eq!(on_c.real().len(), 16, "no duplicates: {:?}", on_c.real());
    assert!(on_c.other.is_empty(), "unexpected {:?}", on_c.other);

    // The same for SSE: Last-Event-ID from C, resumed on B.
    let path = format!("/sse?room={room}");
    let mut missed = Vec::new();
    for i in 0..5 {
        let p = publish(cl.a.addr(), room, format!("sse missed {i}")).await;
        missed.push(p.id);
    }
    let from = on_c.real().last().expect("last").id.clone();
    drop(on_c);
    let mut sse = SseClient::resume(cl.b.addr(), &path, &from).await;
    let mut evs = Vec::new();
    while evs.len() < 5 {
        match sse.next_event_within(Duration::from_secs(10)).await {
            Some(e) => evs.push(e),
            None => panic!(
                "SSE resume on B with Last-Event-ID {from}: {} of the 5 missed events \
                 within 10 s: {evs:?}; B's room info {}; B's cluster stats {}",
                evs.len(),
                api_get(cl.b.addr(), &format!("/api/rooms/{room}")).await.1,
                cl.b.stats().await["cluster"]
            ),
        }
    }
    let ids: Vec<String> = evs
        .iter()
        .map(|e| e.id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, missed, "SSE resume on B after C: {evs:?}");
    sse.expect_no_event(QUIET).await;
}

// ----- (d) Redis stopped and restarted mid-stream. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_stream_loses_and_duplicates_nothing_acknowledged() {
    let mut cl = start_cluster(|o| o).await;
    let room = "outage";
    let mut subs = [
        Sub::ws("ws@b", &cl.b, room, "").await,
        Sub::ws("ws@c", &cl.c, room, "").await,
        Sub::sse("sse@c", &cl.c, room).await,
    ];
    {
        let mut all: Vec<&mut Sub> = subs.iter_mut().collect();
        sync(cl.a.addr(), room, &mut all).await;
    }
    // A WebSocket member on A that will publish during the outage.
    let mut ws_pub = client::connect(&cl.a.url(&format!("/ws/chat?room={room}"))).await;
    let publisher = Publisher::spawn(cl.a.addr(), room, "d");
    publisher
        .wait_for(200, 0, 30, "30 publishes before the outage")
        .await;

    let redis = &mut cl.redis;
    tokio::task::block_in_place(|| redis.stop());
    let ok_before_restart = publisher.count(200);
    publisher
        .wait_for(503, 0, 5, "publishes refused with 503 while redis is down")
        .await;
    for node in [&cl.a, &cl.b, &cl.c] {
        eventually(
            Duration::from_secs(10),
            "connected=0 while redis is down",
            || async move { !truthy(&node.stats().await["cluster"]["connected"]) },
        )
        .await;
    }
    let failures = cluster_stat(&cl.a, "publish_failures").await;
    assert!(failures >= 1, "publish_failures counts the refusals");
    assert_eq!(metric(&cl.a, "corecast_cluster_connected", "a").await, 0.0);
    assert!(metric(&cl.a, "corecast_cluster_publish_failures_total", "a").await >= 1.0);
    // A WebSocket publish now gets an error frame naming the room (and is never
    // delivered: the checks below reject any payload nobody got a 200 for).
    client::send_text(&mut ws_pub, "ws during outage").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let text = tokio::time::timeout(left, client::recv_text(&mut ws_pub))
            .await
            .expect("an error frame for the WebSocket publish during the outage");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(error["error"], "broker_unavailable", "{error}");
    assert_eq!(error["room"], room, "{error}");
    assert!(error["message"].is_string(), "{error}");
    drop(ws_pub);

    let redis = &mut cl.redis;
    tokio::task::block_in_place(|| redis.restart());
    for node in [&cl.a, &cl.b, &cl.c] {
        wait_connected(node).await;
    }
    let ok_now = publisher.count(200);
    publisher
        .wait_for(200, ok_now, 40, "publishing works again after the restart")
        .await;
    let attempts = publisher.finish().await;

    // The refusals: 503, Retry-After: 1, the documented body.
    let refused: Vec<&Attempt> = attempts.iter().filter(|a| a.status != 200).collect();
    assert!(!refused.is_empty());
    for a in &refused {
        assert_eq!(
            a.status,
            503,
            "{}: {}",
            a.resp.status_line,
            a.resp.body_text()
        );
        assert_eq!(a.resp.header("retry-after"), Some("1"), "{:?}", a.resp);
        let v: serde_json::Value = serde_json::from_slice(&a.resp.body)
            .unwrap_or_else(|e| panic!("503 body not JSON ({e}): {}", a.resp.body_text()));
        assert_eq!(
            v,
            serde_json::json!({"error": "broker_unavailable",
                "message": "cluster broker (redis) unreachable; message not published"})
        );
    }
    let epochs_acked: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.id.as_deref().map(|id| split_id(id).0))
        .collect();
    assert_ne!(
        epochs_acked.first(),
        epochs_acked.last(),
        "redis lost its data: the room has a new epoch after the restart"
    );
    assert!(ok_before_restart >= 30);

    let want: HashMap<String, String> = attempts
        .iter()
        .filter_map(|a| a.id.clone().map(|id| (a.body.clone(), id)))
        .collect();
    for s in subs.iter_mut() {
        s.recv_payloads(&want).await;
        s.drain(QUIET).await;
        assert_no_duplicates(s);
        assert_got_acked(s, &attempts);
        let epochs = assert_consecutive_per_epoch(s);
        assert!(epochs.len() >= 2, "{}: saw epochs {epochs:?}", s.name);
        let refused_but_delivered: Vec<&str> = s
            .got
            .iter()
            .filter(|g| refused.iter().any(|a| a.body == g.data))
            .map(|g| g.data.as_str())
            .collect();
        assert!(
            refused_but_delivered.is_empty(),
            "{}: answered 503 \"message not published\" but delivered: {refused_but_delivered:?}",
            s.name
        );
    }
}

// ----- (e) Subscriber connections killed: catch-up from the stream. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connections_catch_up_from_the_stream_without_gaps() {
    let cl = start_cluster(|o| o).await;
    let room = "catchup";
    let mut subs = [
        Sub::ws("ws@b", &cl.b, room, "").await,
        Sub::sse("sse@b", &cl.b, room).await,
        Sub::ws("ws@c", &cl.c, room, "").await,
    ];
    {
        let mut all: Vec<&mut Sub> = subs.iter_mut().collect();
        sync(cl.a.addr(), room, &mut all).await;
    }
    let reconnects_before = (
        cluster_stat(&cl.b, "reconnects").await,
        cluster_stat(&cl.c, "reconnects").await,
    );
    let publisher = Publisher::spawn(cl.a.addr(), room, "e");
    publisher.wait_for(200, 0, 20, "20 publishes first").await;
    for round in 0..3 {
        let killed = cl
            .redis
            .command_async(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .await
            .int();
        if round == 0 {
            assert!(
                killed >= 3,
                "every node holds a subscriber connection; killed {killed}"
            );
        }
        let ok = publisher.count(200);
        publisher
            .wait_for(200, ok, 10, "publishing goes on after the kill")
            .await;
    }
    // Then only B's and C's: A stays connected and keeps publishing while they
    // are away, so they must fill the gap from the stream. A follows only its
    // direct channel (no member of the room), B and C the room's too: their
    // subscriber connections are the ones with two channels.
    for _ in 0..3 {
        for node in [&cl.a, &cl.b, &cl.c] {
            wait_connected(node).await;
        }
        let list = cl
            .redis
            .command_async(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .await
            .text()
            .expect("client list");
        let ids: Vec<String> = list
            .lines()
            .filter(|l| l.split(' ').any(|f| f == "sub=2"))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string)
            .collect();
        assert_eq!(ids.len(), 2, "B's and C's subscriber connections in {list}");
        for id in &ids {
            cl.redis
                .command_async(&["CLIENT", "KILL", "ID", id])
                .await
                .int();
        }
        let ok = publisher.count(200);
        publisher
            .wait_for(200, ok, 10, "publishing goes on while B and C reconnect")
            .await;
    }
    for node in [&cl.a, &cl.b, &cl.c] {
        wait_connected(node).await;
    }
    let ok = publisher.count(200);
    publisher.wait_for(200, ok, 20, "20 more publishes").await;
    let attempts = publisher.finish().await;
    for a in attempts.iter().filter(|a| a.status != 200) {
        assert_eq!(
            a.status, 503,
            "only broker_unavailable refusals: {:?}",
            a.resp
        );
    }
    let want: HashMap<String, String> = attempts
        .iter()
        .filter_map(|a| a.id.clone().map(|id| (a.body.clone(), id)))
        .collect();
    let mut ids: HashMap<String, String> = HashMap::new();
    for s in subs.iter_mut() {
        s.recv_payloads(&want).await;
        s.drain(QUIET).await;
        assert_no_duplicates(s);
        assert_got_acked(s, &attempts);
        let epochs = assert_consecutive_per_epoch(s);
        assert_eq!(
            epochs.len(),
            1,
            "{}: redis kept its data: one epoch",
            s.name
        );
        assert!(s.other.is_empty(), "{}: unexpected {:?}", s.name, s.other);
        for g in &s.got {
            let id = ids.entry(g.data.clone()).or_insert_with(|| g.id.clone());
            assert_eq!(
                id, &g.id,
                "{}: {:?} has another id elsewhere",
                s.name, g.data
            );
        }
    }
    for (name, node) in [("a", &cl.a), ("b", &cl.b), ("c", &cl.c)] {
        eprintln!(
            "node {name} after the kills: {}",
            node.stats().await["cluster"]
        );
    }
    eprintln!(
        "publisher: {} acknowledged, {} refused",
        want.len(),
        attempts.len() - want.len()
    );
    assert!(cluster_stat(&cl.b, "reconnects").await > reconnects_before.0);
    assert!(cluster_stat(&cl.c, "reconnects").await > reconnects_before.1);
    let filled = cluster_stat(&cl.b, "gap_filled").await + cluster_stat(&cl.c, "gap_filled").await;
    assert!(
        filled >= 1,
        "B and C missed messages while A published: some came from the stream"
    );
}

// ----- (f) Presence across nodes; a SIGKILLed node's members leave. -----

async fn presence_members(addr: SocketAddr, room: &str) -> Vec<serde_json::Value> {
    let (status, v) = api_get(addr, &format!("/api/rooms/{room}/presence")).await;
    assert_eq!(status, 200, "presence: {v}");
    v["members"].as_array().cloned().unwrap_or_default()
}

/// Reads presence events from `ws` until a `leave` for each of `ids` arrived,
/// before `deadline`.
async fn expect_leaves(ws: &mut Ws, who: &str, ids: &HashSet<String>, deadline: Instant) {
    let mut left = HashSet::new();
    let mut seen = Vec::new();
    while !ids.is_subset(&left) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(remaining, client::recv_text(ws))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{who}: no leave for {:?} within {REAP_WITHIN:?} of the SIGKILL; saw {seen:?}",
                    ids.difference(&left).collect::<Vec<_>>()
                )
            });
        let v: serde_json::Value = serde_json::from_str(&m).expect("presence JSON");
        if v["type"] == "presence" && v["event"] == "leave" {
            let id = v["member"]["id"].as_str().expect("member id").to_string();
            assert_eq!(v["member"]["node"], "c", "{who}: leave of {v}");
            assert!(
                left.insert(id),
                "{who}: a second leave for the same member: {v}"
            );
        }
        seen.push(v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_killed_node_leaves_within_the_heartbeat_window() {
    let mut cl = start_cluster(with_presence).await;
    let room = "p-1";
    let url = |s: &Server| s.url(&format!("/ws/chat?room={room}"));
    let mut on_a = client::connect(&url(&cl.a)).await;
    let mut on_b = client::connect(&url(&cl.b)).await;
    let _on_c = client::connect_many(&url(&cl.c), 2).await;
    let a_addr = cl.a.addr();
    eventually(
        Duration::from_secs(10),
        "4 members listed on A",
        || async move { presence_members(a_addr, room).await.len() == 4 },
    )
    .await;
    let members = presence_members(cl.a.addr(), room).await;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for m in &members {
        assert!(m["id"].is_string() && m["meta"].is_object(), "member {m}");
        *per_node
            .entry(m["node"].as_str().expect("node").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_node,
        HashMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 2)]),
        "{members:?}"
    );
    // B lists the same members.
    let on_b_list = presence_members(cl.b.addr(), room).await;
    assert_eq!(on_b_list.len(), 4, "{on_b_list:?}");
    let c_ids: HashSet<String> = members
        .iter()
        .filter(|m| m["node"] == "c")
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(c_ids.len(), 2);

    cl.c.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    assert!(cl.c.wait_exit(Duration::from_secs(5)).await.is_some());
    let deadline = killed_at + REAP_WITHIN;
    expect_leaves(&mut on_a, "member@a", &c_ids, deadline).await;
    expect_leaves(&mut on_b, "member@b", &c_ids, deadline).await;
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
    eventually(
        remaining,
        "C's members gone from the list on A",
        || async move {
            presence_members(a_addr, room)
                .await
                .iter()
                .all(|m| m["node"] != "c")
        },
    )
    .await;
    let after = presence_members(cl.a.addr(), room).await;
    assert_eq!(after.len(), 2, "A's and B's members stay: {after:?}");
    let info = api_get(cl.a.addr(), &format!("/api/rooms/{room}")).await.1;
    assert!(
        info["nodes"].get("c").is_none(),
        "dead node in counts: {info}"
    );
    assert_eq!(info["members"]["total"], 2, "{info}");
}

// ----- (g) Member counts: cluster-wide totals and a per-node breakdown. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_info_counts_members_on_every_live_node() {
    let cl = start_cluster(|o| o).await;
    let room = "counts";
    let ws = |s: &Server| s.url(&format!("/ws/chat?room={room}"));
    let sse_path = format!("/sse?room={room}");
    let _a = client::connect_many(&ws(&cl.a), 2).await;
    let _b_ws = client::connect(&ws(&cl.b)).await;
    let _b_sse = SseClient::connect(cl.b.addr(), &sse_path).await;
    let c = client::connect_many(&ws(&cl.c), 3).await;
    let counts = |ws: u64, sse: u64| serde_json::json!({"websocket": ws, "sse": sse, "webtransport": 0, "total": ws + sse});
    let want_nodes = serde_json::json!({"a": counts(2, 0), "b": counts(1, 1), "c": counts(3, 0)});
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(last["nodes"] == want_nodes && last["members"] == counts(6, 1)) {
        assert!(
            Instant::now() < deadline,
            "room info on A never showed {want_nodes} / members {}: last {last}",
            counts(6, 1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = api_get(cl.a.addr(), &format!("/api/rooms/{room}")).await.1;
    }
    // The same view from C.
    let (a_addr, c_addr, want_nodes) = (cl.a.addr(), cl.c.addr(), &want_nodes);
    eventually(
        Duration::from_secs(10),
        "C shows the same totals",
        || async move {
            let v = api_get(c_addr, &format!("/api/rooms/{room}")).await.1;
            v["members"] == counts(6, 1) && &v["nodes"] == want_nodes
        },
    )
    .await;
    // C's members leave: C drops out of the breakdown (or shows 0), totals follow.
    drop(c);
    eventually(
        Duration::from_secs(10),
        "C's members gone from A's totals",
        || async move {
            let v = api_get(a_addr, &format!("/api/rooms/{room}")).await.1;
            let c_gone = v["nodes"].get("c").is_none() || v["nodes"]["c"] == counts(0, 0);
            v["members"] == counts(3, 1) && c_gone
        },
    )
    .await;
}

// ----- (h) send_to a connection on another node. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_reaches_a_connection_on_another_node() {
    let cl = start_cluster(|o| o).await;
    let room = "direct";
    let mut on_b = client::connect(&cl.b.url(&format!("/ws/chat?room={room}"))).await;
    let (status, v) = api_get(cl.b.addr(), &format!("/api/rooms/{room}/connections")).await;
    assert_eq!(status, 200, "{v}");
    let conns = v["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 1, "{v}");
    let id = conns[0]["id"].as_str().expect("id").to_string();

    let resp = api_post(
        cl.a.addr(),
        &format!("/api/connections/b:{id}/send"),
        b"hi from a",
    )
    .await;
    assert_eq!(
        resp.status,
        202,
        "{} {}",
        resp.status_line,
        resp.body_text()
    );
    let got = within(
        Duration::from_secs(10),
        "send_to from A",
        client::recv_text(&mut on_b),
    )
    .await;
    assert_eq!(got, "hi from a");
    // Binary too, from C.
    let resp = api_post(
        cl.c.addr(),
        &format!("/api/connections/b:{id}/send"),
        &[0xff, 0, 1],
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.body_text());
    match within(
        Duration::from_secs(10),
        "binary send_to",
        client::recv(&mut on_b),
    )
    .await
    {
        Message::Binary(b) => assert_eq!(b, vec![0xff, 0, 1]),
        other => panic!("expected binary, got {other:?}"),
    }
    // Nothing else arrives (each crossed Redis once).
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, on_b.next()).await {
        panic!("unexpected extra message {m:?}");
    }
    // A node nobody runs: 404.
    let resp = api_post(cl.a.addr(), &format!("/api/connections/zz:{id}/send"), b"x").await;
    assert_eq!(
        resp.status,
        404,
        "{} {}",
        resp.status_line,
        resp.body_text()
    );
    // A plain id on B is B's own connection.
    let resp = api_post(
        cl.b.addr(),
        &format!("/api/connections/{id}/send"),
        b"local",
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.body_text());
    assert_eq!(
        within(
            Duration::from_secs(10),
            "local send",
            client::recv_text(&mut on_b)
        )
        .await,
        "local"
    );
}

// ----- (i) Config errors name the key. -----

#[test]
fn check_config_rejects_bad_cluster_sections_naming_the_key() {
    let dir = TempDir::new("cluster-config");
    let base = ServerOptions::default().config_text("127.0.0.1:1".parse().expect("addr"));
    let ok = "\ncluster:\n  broker: redis\n  url: redis://127.0.0.1:6379/0\n  node_id: a\n";
    let cases: [(&str, String, &str); 5] = [
        ("valid", ok.to_string(), ""),
        (
            "bad node_id",
            ok.replace("node_id: a", "node_id: \"no spaces!\""),
            "cluster.node_id",
        ),
        (
            "node_timeout below 2 x heartbeat",
            format!("{ok}  heartbeat: 1s\n  node_timeout: 1500ms\n"),
            "cluster.node_timeout",
        ),
        (
            "not a redis url",
            ok.replace("redis://127.0.0.1:6379/0", "http://127.0.0.1:6379"),
            "cluster.url",
        ),
        (
            "unknown broker",
            ok.replace("broker: redis", "broker: kafka"),
            "broker",
        ),
    ];
    for (name, section, key) in cases {
        let path = dir.path().join(format!("{}.yaml", name.replace(' ', "_")));
        std::fs::write(&path, format!("{base}{section}")).expect("write config");
        let out = run_corecast(
            &["check-config", path.to_str().expect("utf-8 path")],
            Duration::from_secs(20),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if key.is_empty() {
            assert!(out.status.success(), "{name}: rejected: {text}");
        } else {
            assert!(!out.status.success(), "{name}: accepted: {text}");
            assert!(
                text.contains(key),
                "{name}: error does not name {key}: {text}"
            );
        }
    }
}
