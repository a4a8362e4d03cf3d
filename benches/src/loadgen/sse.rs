//! `loadgen sse`: like `fanout`, but the S subscribers are Server-Sent Events
//! streams (`GET /sse?room=NAME`, `Accept: text/event-stream`, over raw TCP),
//! so SSE fan-out can be compared with WebSocket fan-out on the same server.
//!
//! Publishers (`--publish`):
//! - `ws`: exactly the `fanout` publishers, sending TEXT frames (the hex text
//!   head, so the payload is valid UTF-8 without newlines and travels as one
//!   `data:` line). They are room members too, and their own message coming
//!   back over WebSocket is the ack for the `--rate 0` window. The server's
//!   chunk counters then include the WebSocket frames sent to the publishers.
//! - `http`: `POST /api/rooms/NAME/publish` with `X-API-Key`, one TCP connection
//!   per message (the server answers `Connection: close`); the 200 response is
//!   the ack. The send timestamp is taken before `connect`, so latency includes
//!   the connection setup; its cost is reported separately (`http_publish`).
//!   Concurrent POSTs may be sequenced in any order, so with `--window` > 1
//!   `reordered` and `gaps` reflect publisher concurrency, not the server.
//!
//! Accounting (window by send timestamp, expected = published x subscribers
//! at window start, loss, gaps, reordering, HDR latency) is `fanout`'s. Each
//! subscriber also checks the server's event ids (`<epoch hex>:<seq>`): every
//! room message must arrive with the next seq (`sse.id_gaps` counts skipped ones).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::loadgen::args::{PublishVia, Sse};
use crate::loadgen::event_stream::{self, EventParser, Item};
use crate::loadgen::fanout::{self, Go, SubHandler, PUBS_DONE, PUBS_UP};
use crate::loadgen::net::{self, ConnError, End, SourcePlan, Target};
use crate::loadgen::pacer::Pacer;
use crate::loadgen::payload::{self, Head};
use crate::loadgen::server_stats;
use crate::loadgen::stats::{self, ThreadStats, COUNTERS, WINDOW};
use crate::loadgen::ws::{HandshakeError, OP_TEXT};

macro_rules! statics {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $($(#[$doc])* static $name: AtomicU64 = AtomicU64::new(0);)*
    };
}

statics! {
    /// Events dispatched to subscribers (all types, whole run).
    EVENTS,
    /// Comment lines (keep-alives).
    COMMENTS,
    /// `retry:` fields.
    RETRIES,
    /// The last `retry:` value seen, ms.
    RETRY_MS,
    /// `event: gap` events (the server signalling a resume gap).
    GAP_EVENTS,
    /// Events of another non-`message` type.
    OTHER_EVENTS,
    /// Server seqs skipped between consecutive events of one subscriber.
    ID_GAPS,
    /// Events whose server seq did not advance.
    ID_BACKWARDS,
    /// Epoch changes between consecutive events of one subscriber.
    ID_EPOCH_CHANGES,
    /// Message events without a parsable `epoch:seq` id.
    ID_MISSING,
    /// POSTs started.
    POSTS_STARTED,
    /// POSTs answered 200.
    POSTS_OK,
    /// POSTs finished without a 200.
    POSTS_FAILED,
    /// POST failures: connect error.
    POST_ERR_CONNECT,
    /// POST failures: connect or response timeout.
    POST_ERR_TIMEOUT,
    /// POST failures: I/O or malformed response.
    POST_ERR_IO,
    /// POST failures: HTTP 401/403.
    POST_ERR_AUTH,
    /// POST failures: HTTP 503 (owner shard overloaded or timed out).
    POST_ERR_503,
    /// POST failures: any other status.
    POST_ERR_STATUS,
}

static WARNED: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];

fn warn_once(slot: usize, msg: impl FnOnce() -> String) {
    if !WARNED[slot].swap(true, Relaxed) {
        stats::log_line(format_args!("loadgen sse: {}", msg()));
    }
}

/// HTTP publishing: pre-built request heads (one per target, for `Host`) and body.
#[derive(Debug)]
struct HttpPub {
    /// `POST ... Content-Length ...\r\n\r\n` per target.
    heads: Vec<Vec<u8>>,
    /// `GET /api/rooms/ROOM` per target (the publisher's startup probe).
    probes: Vec<Vec<u8>>,
    /// The body template (`'x'` padding; the head is written per message).
    body: Vec<u8>,
}

/// Configuration shared by every task.
#[derive(Debug)]
struct Shared {
    /// Targets, plan, sizes, schedule and the ws publishers' resource.
    fan: Arc<fanout::Shared>,
    /// `path?room=NAME` of the event streams.
    sse_resource: String,
    /// Set with `--publish http`.
    http: Option<HttpPub>,
}

/// `GET /api/rooms/ROOM` for `host`.
fn room_request(host: &str, room_path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {room_path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nAccept: application/json\r\n\
         Connection: close\r\nUser-Agent: corecast-loadgen\r\n\r\n"
    )
    .into_bytes()
}

/// Runs the SSE fan-out benchmark and returns the result line (and whether anything connected).
pub async fn run(cfg: Sse) -> Result<(Value, bool), String> {
    let fc = &cfg.fanout;
    let targets = net::resolve_targets(&fc.common.targets)?;
    let plan = SourcePlan {
        per_source: fc.common.per_source,
        sources: fc.common.sources.clone(),
    };
    let sse_path = fc.common.path.clone().unwrap_or_else(|| "/sse".into());
    let sse_resource = net::resource(&sse_path, Some(&fc.room));
    let ws_resource = net::resource(&cfg.ws_path, Some(&fc.room));
    let key = cfg
        .api_key
        .clone()
        .or_else(|| std::env::var("CORECAST_API_KEY").ok())
        .filter(|k| !k.is_empty() && !k.bytes().any(|b| b.is_ascii_control()));
    let room_path = format!("/api/rooms/{}", net::url_encode(&fc.room));
    let http = match cfg.publish {
        PublishVia::Ws => None,
        PublishVia::Http => {
            let Some(key) = key.as_deref() else {
                return Err(
                    "--publish http needs an API key: --api-key KEY or CORECAST_API_KEY".into(),
                );
            };
            Some(HttpPub {
                heads: targets
                    .iter()
                    .map(|t| {
                        format!(
                            "POST {room_path}/publish HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
                             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
                             Connection: close\r\nUser-Agent: corecast-loadgen\r\n\r\n",
                            t.host, fc.size
                        )
                        .into_bytes()
                    })
                    .collect(),
                probes: targets
                    .iter()
                    .map(|t| room_request(&t.host, &room_path, key))
                    .collect(),
                body: vec![b'x'; fc.size],
            })
        }
    };
    let (go_tx, go_rx) = watch::channel(None);
    let (n_subs, n_pubs) = (fc.subscribers, fc.publishers);
    let total = n_subs + n_pubs;
    eprintln!(
        "loadgen sse: {} SSE subscribers -> http://{}{} ({}), {} {} publishers{}, size {} B, rate {}, warmup {:?}, duration {:?}",
        n_subs,
        targets[0].host,
        sse_resource,
        plan.describe(total, &targets[0].addr),
        n_pubs,
        cfg.publish.name(),
        match cfg.publish {
            PublishVia::Ws => format!(" -> ws://{}{}", targets[0].host, ws_resource),
            PublishVia::Http => format!(" -> POST {room_path}/publish (one connection each)"),
        },
        fc.size,
        if fc.rate > 0.0 { format!("{}/s", fc.rate) } else { format!("max (window {})", fc.window) },
        fc.warmup,
        fc.duration,
    );
    let fan = Arc::new(fanout::Shared {
        targets: targets.clone(),
        plan,
        resource: ws_resource.clone(),
        timeout: fc.common.timeout,
        size: fc.size,
        text: true,
        publishers: n_pubs,
        rate: fc.rate,
        window: fc.window,
        go: go_rx,
    });
    let sh = Arc::new(Shared {
        fan,
        sse_resource: sse_resource.clone(),
        http,
    });
    let publish = cfg.publish;
    fanout::spawn_progress("sse", total, move || {
        let mut extra = String::new();
        if publish == PublishVia::Http {
            let ok = POSTS_OK.load(Relaxed);
            let failed = POSTS_FAILED.load(Relaxed);
            let started = POSTS_STARTED.load(Relaxed);
            extra = format!(
                " | posts {ok} ok, {failed} failed, {} in flight",
                started.saturating_sub(ok + failed)
            );
        }
        let id_gaps = ID_GAPS.load(Relaxed);
        if id_gaps > 0 {
            extra.push_str(&format!(" | id gaps {id_gaps}"));
        }
        extra
    });
    let ph = fanout::run_phases("sse", fc, &targets, go_tx, {
        let sh = sh.clone();
        move |i| {
            let sh = sh.clone();
            if i < n_subs {
                tokio::spawn(subscriber(i, sh));
            } else {
                let id = (i - n_subs) as u32;
                match publish {
                    PublishVia::Ws => {
                        tokio::spawn(fanout::publisher(id, i, sh.fan.clone()));
                    }
                    PublishVia::Http => {
                        tokio::spawn(http_publisher(id, i, sh));
                    }
                }
            }
        }
    })
    .await;
    let members = match &key {
        Some(k) => room_members(&targets, &room_path, k, fc.common.timeout).await,
        None => Value::Null,
    };
    let m = stats::merged();
    let dur = fc.duration.as_secs_f64();
    let mut result = fanout::report("sse", fc, &ph, &m);
    result["publish"] = json!(publish.name());
    result["ws_path"] = match publish {
        PublishVia::Ws => json!(ws_resource),
        PublishVia::Http => Value::Null,
    };
    result["sse"] = json!({
        "path": sse_resource,
        "events": EVENTS.load(Relaxed),
        "comments": COMMENTS.load(Relaxed),
        "retry_fields": RETRIES.load(Relaxed),
        "retry_ms": RETRY_MS.load(Relaxed),
        "gap_events": GAP_EVENTS.load(Relaxed),
        "other_events": OTHER_EVENTS.load(Relaxed),
        "id_gaps": ID_GAPS.load(Relaxed),
        "id_backwards": ID_BACKWARDS.load(Relaxed),
        "id_epoch_changes": ID_EPOCH_CHANGES.load(Relaxed),
        "id_missing": ID_MISSING.load(Relaxed),
    });
    result["http_publish"] = match publish {
        PublishVia::Ws => Value::Null,
        PublishVia::Http => json!({
            "requests": POSTS_STARTED.load(Relaxed),
            "ok": POSTS_OK.load(Relaxed),
            "failed": POSTS_FAILED.load(Relaxed),
            "errors": {
                "connect": POST_ERR_CONNECT.load(Relaxed),
                "timeout": POST_ERR_TIMEOUT.load(Relaxed),
                "io": POST_ERR_IO.load(Relaxed),
                "status_401_403": POST_ERR_AUTH.load(Relaxed),
                "status_503": POST_ERR_503.load(Relaxed),
                "status_other": POST_ERR_STATUS.load(Relaxed),
            },
            "connect_us": stats::latency_json(&m.post_connect),
            "ack_us": stats::latency_json(&m.post_ack),
        }),
    };
    result["room_members_at_end"] = members;
    result["server"] = server_stats::delta_json_as(ph.before, ph.after, dur, "chunks");
    Ok((result, ph.subs_up + ph.pubs_up > 0))
}

/// Per-subscriber event accounting: the `fanout` payload accounting plus
/// checks of the server's event ids; local counts are flushed once per read.
#[derive(Debug)]
struct SseSub {
    inner: SubHandler,
    /// Epoch text of the previous message event's id (`epoch_len == 0`: none yet).
    epoch: [u8; 16],
    epoch_len: usize,
    /// Seq of the previous message event's id.
    seq: u64,
    events: u64,
    comments: u64,
    retries: u64,
    gap_events: u64,
    other_events: u64,
    id_gaps: u64,
    id_backwards: u64,
    id_epoch_changes: u64,
    id_missing: u64,
}

impl SseSub {
    fn new(publishers: usize, size: usize) -> Self {
        SseSub {
            inner: SubHandler::new(publishers, size),
            epoch: [0; 16],
            epoch_len: 0,
            seq: 0,
            events: 0,
            comments: 0,
            retries: 0,
            gap_events: 0,
            other_events: 0,
            id_gaps: 0,
            id_backwards: 0,
            id_epoch_changes: 0,
            id_missing: 0,
        }
    }

    fn on_item(&mut self, st: &mut ThreadStats, now: u64, item: Item<'_>) {
        let ev = match item {
            Item::Event(ev) => ev,
            Item::Comment => {
                self.comments += 1;
                return;
            }
            Item::Retry(ms) => {
                RETRY_MS.store(ms, Relaxed);
                self.retries += 1;
                return;
            }
        };
        self.events += 1;
        if ev.ty_truncated || !(ev.ty.is_empty() || ev.ty == b"message") {
            if ev.ty == b"gap" {
                self.gap_events += 1;
            } else {
                self.other_events += 1;
                st.foreign += 1;
            }
            return;
        }
        let own_id = ev.id_in_event && !ev.id_truncated;
        match event_stream::split_cursor(ev.id).filter(|_| own_id) {
            None => self.id_missing += 1,
            // Same epoch as before (compared as text; checked when it was new).
            Some((epoch, seq)) if self.epoch_len > 0 && epoch == &self.epoch[..self.epoch_len] => {
                if seq <= self.seq {
                    self.id_backwards += 1;
                } else {
                    self.id_gaps += seq - self.seq - 1;
                }
                self.seq = seq;
            }
            Some((epoch, seq)) if event_stream::parse_epoch(epoch).is_some() => {
                if self.epoch_len > 0 {
                    self.id_epoch_changes += 1;
                }
                self.epoch[..epoch.len()].copy_from_slice(epoch);
                self.epoch_len = epoch.len();
                self.seq = seq;
            }
            Some(_) => self.id_missing += 1,
        }
        fanout_on_message(&mut self.inner, st, now, ev.data_len, ev.head);
    }

    fn flush(&mut self) {
        self.inner.flush();
        for (local, global) in [
            (&mut self.events, &EVENTS),
            (&mut self.comments, &COMMENTS),
            (&mut self.retries, &RETRIES),
            (&mut self.gap_events, &GAP_EVENTS),
            (&mut self.other_events, &OTHER_EVENTS),
            (&mut self.id_gaps, &ID_GAPS),
            (&mut self.id_backwards, &ID_BACKWARDS),
            (&mut self.id_epoch_changes, &ID_EPOCH_CHANGES),
            (&mut self.id_missing, &ID_MISSING),
        ] {
            if *local > 0 {
                global.fetch_add(std::mem::take(local), Relaxed);
            }
        }
    }
}

/// A message event's data, accounted exactly like a WebSocket text message.
#[inline]
fn fanout_on_message(h: &mut SubHandler, st: &mut ThreadStats, now: u64, len: u64, head: &[u8]) {
    net::OnMessage::on_message(h, st, now, OP_TEXT, len, head);
}

async fn subscriber(i: usize, sh: Arc<Shared>) {
    let (target, source) = sh.fan.endpoint(i);
    let Some(mut conn) = net::open_sse(target, source, &sh.sse_resource, sh.fan.timeout).await
    else {
        return;
    };
    COUNTERS.live_subs.fetch_add(1, Relaxed);
    let mut parser = EventParser::new();
    let mut sub = SseSub::new(sh.fan.publishers, sh.fan.size);
    let now = stats::now_ns();
    stats::with_local(|st| parser.feed(&conn.leftover, |it| sub.on_item(st, now, it)));
    sub.flush();
    conn.leftover = Vec::new();
    let end = loop {
        let r = net::read_chunk(&conn.stream, |data| {
            let now = stats::now_ns();
            stats::with_local(|st| parser.feed(data, |it| sub.on_item(st, now, it)));
        })
        .await;
        sub.flush();
        match r {
            Ok(Some(())) => {}
            Ok(None) => break End::Eof,
            Err(e) => break End::Io(e),
        }
    };
    end.record();
    COUNTERS.live_subs.fetch_sub(1, Relaxed);
}

/// A complete HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Writes `req` on `stream` and reads the response (body by `Content-Length`, or to EOF).
async fn exchange_on(stream: &TcpStream, req: &[u8]) -> Result<Response, HandshakeError> {
    net::write_all(stream, req)
        .await
        .map_err(HandshakeError::Io)?;
    let (mut buf, end) = net::read_head(stream).await?;
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(HandshakeError::Bad("no HTTP status line"))?;
    let want = server_stats::content_length(&buf[..end]);
    loop {
        let have = buf.len() - end;
        if want.is_some_and(|n| have >= n) || have > (1 << 20) {
            break;
        }
        match net::read_chunk(stream, |d| buf.extend_from_slice(d)).await {
            Ok(Some(())) => {}
            Ok(None) if want.is_none() => break,
            Ok(None) => return Err(HandshakeError::Bad("response body cut short")),
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    let mut body = buf.split_off(end);
    if let Some(n) = want {
        body.truncate(n);
    }
    Ok(Response { status, body })
}

/// One request on a fresh connection: returns the response, the still-open
/// stream and the instant (ns since the epoch) the TCP connection was up.
async fn exchange(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
    req: &[u8],
) -> Result<(Response, TcpStream, u64), ConnError> {
    let stream = net::connect_tcp(target, source, timeout).await?;
    let connected = stats::now_ns();
    match tokio::time::timeout(timeout, exchange_on(&stream, req)).await {
        Ok(Ok(r)) => Ok((r, stream, connected)),
        Ok(Err(e)) => Err(ConnError::Handshake(e)),
        Err(_) => Err(ConnError::Timeout("HTTP response")),
    }
}

/// Waits (briefly) for the server's FIN so that the server, which closes
/// first, keeps the TIME_WAIT state rather than our ephemeral port.
async fn await_eof(stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(Some(())) = net::read_chunk(&stream, |_| ()).await {}
    })
    .await;
}

fn printable(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string()
}

/// `room_members_at_end`: `GET /api/rooms/ROOM` members summed over targets (null on failure).
async fn room_members(targets: &[Target], room_path: &str, key: &str, timeout: Duration) -> Value {
    let (mut websocket, mut sse) = (0u64, 0u64);
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.addr == t.addr) {
            continue;
        }
        let req = room_request(&t.host, room_path, key);
        let Ok((resp, _, _)) = exchange(t, None, timeout, &req).await else {
            return Value::Null;
        };
        if resp.status != 200 {
            return Value::Null;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&resp.body) else {
            return Value::Null;
        };
        websocket += v["members"]["websocket"].as_u64().unwrap_or(0);
        sse += v["members"]["sse"].as_u64().unwrap_or(0);
    }
    json!({"websocket": websocket, "sse": sse})
}

/// In-flight POSTs of one publisher.
#[derive(Debug, Default)]
struct PostState {
    /// POSTs finished (answered or failed).
    done: AtomicU64,
    /// Signalled when a POST finishes.
    notify: Notify,
}

/// HTTP publisher `id` (connection index `i`): probes the API once (counted as
/// its connection attempt), then POSTs per the schedule, one connection each.
async fn http_publisher(id: u32, i: usize, sh: Arc<Shared>) {
    let Some(http) = sh.http.as_ref() else {
        return;
    };
    let ti = i % sh.fan.targets.len();
    let (target, source) = sh.fan.endpoint(i);
    let probe = exchange(target, source, sh.fan.timeout, &http.probes[ti]).await;
    COUNTERS.attempts_done.fetch_add(1, Relaxed);
    match probe {
        Ok((resp, _, _)) if resp.status == 200 => {}
        Ok((resp, _, _)) => {
            COUNTERS.failed.fetch_add(1, Relaxed);
            COUNTERS.err_rejected.fetch_add(1, Relaxed);
            warn_once(0, || {
                format!(
                    "publisher probe GET /api/rooms/... on {} answered HTTP {}: {}",
                    target.host,
                    resp.status,
                    printable(&resp.body)
                )
            });
            return;
        }
        Err(e) => {
            net::record_failure(&e, target);
            return;
        }
    }
    PUBS_UP.fetch_add(1, Relaxed);
    let mut go_rx = sh.fan.go.clone();
    let go = match go_rx.wait_for(Option::is_some).await {
        Ok(g) => *g,
        Err(_) => None,
    };
    if let Some(go) = go {
        let state = Arc::new(PostState::default());
        let k = post_loop(id, ti, source, &sh, go, &state).await;
        while state.done.load(Relaxed) < k {
            let _ = tokio::time::timeout(Duration::from_millis(50), state.notify.notified()).await;
        }
    }
    PUBS_DONE.fetch_add(1, Relaxed);
}

/// Starts POSTs per the schedule until the window ends; returns how many it started.
async fn post_loop(
    id: u32,
    ti: usize,
    source: Option<IpAddr>,
    sh: &Arc<Shared>,
    go: Go,
    state: &Arc<PostState>,
) -> u64 {
    let fan = &sh.fan;
    let n_pubs = fan.publishers as f64;
    // Fixed rate: message k of publisher `id` is due at t0 + (k + id/P) / rate_per_pub.
    let interval_ns = if fan.rate > 0.0 {
        1e9 * n_pubs / fan.rate
    } else {
        0.0
    };
    let phase_ns = interval_ns * f64::from(id) / n_pubs;
    let t0_ns = stats::instant_ns(go.t0.into_std()) as f64 + phase_ns;
    let guard_per_sub = fan.window * fan.publishers as u64;
    let mut pacer = Pacer::new();
    let mut k: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= go.stop {
            break;
        }
        let inflight = k.saturating_sub(state.done.load(Relaxed));
        if inflight >= fan.window {
            let _ = tokio::time::timeout_at(go.stop, state.notify.notified()).await;
            continue;
        }
        let room = fan.window - inflight;
        let n = if fan.rate > 0.0 {
            let now_ns = stats::instant_ns(now.into_std()) as f64;
            let due = if now_ns < t0_ns {
                0
            } else {
                ((now_ns - t0_ns) / interval_ns).floor() as u64 + 1
            };
            if due <= k {
                let next_ns = t0_ns + k as f64 * interval_ns;
                let wait = Duration::from_nanos((next_ns - now_ns).max(0.0) as u64);
                pacer.sleep_until((now + wait).min(go.stop)).await;
                continue;
            }
            (due - k).min(room)
        } else {
            if fanout::subscribers_behind(guard_per_sub) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            room
        };
        for j in 0..n {
            let sched = (fan.rate > 0.0).then(|| t0_ns + (k + j) as f64 * interval_ns);
            POSTS_STARTED.fetch_add(1, Relaxed);
            tokio::spawn(post(
                sh.clone(),
                ti,
                source,
                Head {
                    id,
                    seq: k + j,
                    ts: 0,
                },
                sched,
                state.clone(),
            ));
        }
        k += n;
        // Let the new POSTs connect before deciding on more.
        tokio::task::yield_now().await;
    }
    k
}

/// One POST on its own connection; `head.ts` is taken here, just before connecting.
async fn post(
    sh: Arc<Shared>,
    ti: usize,
    source: Option<IpAddr>,
    mut head: Head,
    sched: Option<f64>,
    state: Arc<PostState>,
) {
    let Some(http) = sh.http.as_ref() else {
        finish(&state);
        return;
    };
    let target = &sh.fan.targets[ti];
    let mut req = Vec::with_capacity(http.heads[ti].len() + http.body.len());
    req.extend_from_slice(&http.heads[ti]);
    let body_at = req.len();
    req.extend_from_slice(&http.body);
    head.ts = stats::now_ns();
    payload::encode_head(true, head, &mut req[body_at..]);
    let (w0, w1) = WINDOW.get();
    let in_window = head.ts >= w0 && head.ts < w1;
    if let (Some(sched), true) = (sched, in_window) {
        stats::with_local(|st| {
            stats::record_ns(&mut st.lag, (head.ts as f64 - sched).max(0.0) as u64)
        });
    }
    let r = exchange(target, source, sh.fan.timeout, &req).await;
    let done = stats::now_ns();
    let ok = matches!(&r, Ok((resp, _, _)) if resp.status == 200);
    if ok {
        COUNTERS.published_total.fetch_add(1, Relaxed);
        POSTS_OK.fetch_add(1, Relaxed);
    } else {
        POSTS_FAILED.fetch_add(1, Relaxed);
    }
    match r {
        Ok((_, stream, connected)) if ok => {
            if in_window {
                stats::with_local(|st| {
                    st.published_window += 1;
                    stats::record_ns(&mut st.post_connect, connected.saturating_sub(head.ts));
                    stats::record_ns(&mut st.post_ack, done.saturating_sub(head.ts));
                });
            }
            finish(&state);
            await_eof(stream).await;
        }
        Ok((resp, _, _)) => {
            finish(&state);
            let counter = match resp.status {
                401 | 403 => &POST_ERR_AUTH,
                503 => &POST_ERR_503,
                _ => &POST_ERR_STATUS,
            };
            counter.fetch_add(1, Relaxed);
            warn_once(1, || {
                format!(
                    "POST {}: HTTP {}: {}",
                    target.host,
                    resp.status,
                    printable(&resp.body)
                )
            });
        }
        Err(e) => {
            finish(&state);
            let (counter, what) = match &e {
                ConnError::Io(e) => (&POST_ERR_CONNECT, format!("connect failed: {e}")),
                ConnError::Timeout(what) => (&POST_ERR_TIMEOUT, format!("{what} timed out")),
                ConnError::Handshake(HandshakeError::Io(e))
                    if e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    (&POST_ERR_IO, "connection reset".to_string())
                }
                ConnError::Handshake(h) => (&POST_ERR_IO, h.to_string()),
            };
            counter.fetch_add(1, Relaxed);
            warn_once(2, || format!("POST to {}: {what}", target.host));
        }
    }
}

fn finish(state: &PostState) {
    state.done.fetch_add(1, Relaxed);
    state.notify.notify_one();
}
