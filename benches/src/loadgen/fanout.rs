//! `loadgen fanout`: P publishers send into one room, S subscribers receive
//! every message; measures delivery latency, throughput, loss and reordering.
//!
//! Counting is by send timestamp: a message belongs to the measured window iff
//! it was stamped inside `[warmup_end, warmup_end + duration)`. Expected
//! deliveries = window messages published x subscribers alive at window start;
//! whatever has not arrived by the end of the drain period is lost.
//!
//! Several processes can share one run (`--start-at`, the same warmup and
//! duration): publishing starts at that wall-clock time everywhere, and a
//! `--listen-only` process (no publishers) infers what was published in the
//! window from the sequence numbers its subscribers received.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::loadgen::args::Fanout;
use crate::loadgen::net::{self, Ctl, OnMessage, SourcePlan, Target};
use crate::loadgen::pacer::Pacer;
use crate::loadgen::payload::{self, FrameTemplate, Head};
use crate::loadgen::server_stats::{self, ServerCounters};
use crate::loadgen::stats::{self, ThreadStats, COUNTERS, PHASE, WINDOW};
use crate::loadgen::ws::FrameReader;

/// Publishers that are up (WebSocket handshake done, or HTTP API probe answered).
pub static PUBS_UP: AtomicU64 = AtomicU64::new(0);
/// Publishers whose writer loop has finished (all their messages acknowledged or given up).
pub static PUBS_DONE: AtomicU64 = AtomicU64::new(0);

/// Publishing schedule handed to every publisher at once.
#[derive(Debug, Clone, Copy)]
pub struct Go {
    /// Schedule origin (message 0 of publisher 0).
    pub t0: Instant,
    /// Stop publishing at this instant (end of the measured window).
    pub stop: Instant,
}

/// Configuration shared by every connection task (also used by `sse`).
#[derive(Debug)]
pub struct Shared {
    /// Servers (connection `i` goes to `targets[i % len]`).
    pub targets: Vec<Target>,
    /// Source-address plan.
    pub plan: SourcePlan,
    /// WebSocket resource (path and query) of publishers and fanout subscribers.
    pub resource: String,
    /// Connect and handshake timeout.
    pub timeout: Duration,
    /// Payload bytes.
    pub size: usize,
    /// Text payloads (hex head) instead of binary.
    pub text: bool,
    /// Number of publishers.
    pub publishers: usize,
    /// Total messages per second (0 = windowed max).
    pub rate: f64,
    /// Max unacknowledged messages per publisher.
    pub window: u64,
    /// The schedule, once the ramp is done.
    pub go: watch::Receiver<Option<Go>>,
}

impl Shared {
    /// Target and source address of connection `i`.
    pub fn endpoint(&self, i: usize) -> (&Target, Option<std::net::IpAddr>) {
        let t = &self.targets[i % self.targets.len()];
        (t, self.plan.source_for(i, &t.addr))
    }
}

/// Runs the fan-out benchmark and returns the result line (and whether anything connected).
pub async fn run(cfg: Fanout) -> Result<(Value, bool), String> {
    let targets = net::resolve_targets(&cfg.common.targets)?;
    let plan = SourcePlan {
        per_source: cfg.common.per_source,
        sources: cfg.common.sources.clone(),
    };
    let path = cfg.common.path.clone().unwrap_or_else(|| "/ws/chat".into());
    let resource = net::resource(&path, Some(&cfg.room));
    let (go_tx, go_rx) = watch::channel(None);
    let n_subs = cfg.subscribers;
    let n_pubs = cfg.publishers;
    let total = n_subs + n_pubs;
    eprintln!(
        "loadgen fanout: {} subscribers + {} publishers{} -> ws://{}{} ({}), size {} B, rate {}, warmup {:?}, duration {:?}",
        n_subs,
        n_pubs,
        if cfg.listen_only { " (listen-only)" } else { "" },
        targets[0].host,
        resource,
        plan.describe(total, &targets[0].addr),
        cfg.size,
        if cfg.rate > 0.0 { format!("{}/s", cfg.rate) } else { format!("max (window {})", cfg.window) },
        cfg.warmup,
        cfg.duration,
    );
    let sh = Arc::new(Shared {
        targets: targets.clone(),
        plan,
        resource,
        timeout: cfg.common.timeout,
        size: cfg.size,
        text: cfg.text,
        publishers: n_pubs,
        rate: cfg.rate,
        window: cfg.window,
        go: go_rx,
    });
    let slow = open_slow(&sh, total, cfg.slow).await;
    spawn_progress("fanout", total, String::new);
    let ph = run_phases("fanout", &cfg, &targets, go_tx, {
        let sh = sh.clone();
        move |i| {
            let sh = sh.clone();
            if i < n_subs {
                tokio::spawn(subscriber(i, sh));
            } else {
                tokio::spawn(publisher((i - n_subs) as u32, i, sh));
            }
        }
    })
    .await;
    let m = stats::merged();
    let mut result = report("fanout", &cfg, &ph, &m);
    if let Some(t) = cfg.start_at {
        result["start_at"] = json!(t);
        result["start_late_s"] = json!(stats::round2(ph.start_late_s));
    }
    if cfg.listen_only {
        result["listen_only"] = json!(true);
        result["published_from"] = json!("received sequence numbers");
        result["window_publishers"] = json!(m.window_seq.iter().flatten().count());
    }
    result["server"] = server_stats::delta_json(ph.before, ph.after, cfg.duration.as_secs_f64());
    result["slow"] = json!({ "requested": cfg.slow, "connected": slow.len() });
    drop(slow);
    Ok((result, ph.subs_up + ph.pubs_up > 0))
}

/// Opens `n` room members that handshake and then never read, with a 4 KiB
/// receive buffer (slow consumers); the caller holds them for the run.
async fn open_slow(sh: &Shared, first: usize, n: usize) -> Vec<net::WsConn> {
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        let (target, source) = sh.endpoint(first + j);
        let conn = net::open_ws_with(
            first + j,
            target,
            source,
            &sh.resource,
            sh.timeout,
            Some(4096),
        )
        .await;
        out.extend(conn);
    }
    // They are not part of the measured connections (the ramp counts attempts).
    COUNTERS.attempts_done.fetch_sub(n as u64, Relaxed);
    COUNTERS.connected.fetch_sub(out.len() as u64, Relaxed);
    COUNTERS.live.fetch_sub(out.len() as u64, Relaxed);
    if n > 0 {
        eprintln!(
            "loadgen fanout: {}/{n} slow members connected (never read)",
            out.len()
        );
    }
    out
}

/// Spawns the once-a-second progress line shared by `fanout` and `sse`;
/// `extra()` is appended to it.
pub fn spawn_progress(
    label: &'static str,
    total: usize,
    extra: impl Fn() -> String + Send + 'static,
) {
    let mut last_deliv = 0u64;
    let mut last_pub = 0u64;
    stats::spawn_progress(move |t, dt| {
        let d = COUNTERS.deliveries_total.load(Relaxed);
        let p = COUNTERS.published_total.load(Relaxed);
        let (p99, n) = stats::take_interval();
        let line = format!(
            "[{label} {t:>5.1}s {:<7}] conns {}/{} live, {} failed | pub {:.0}/s | deliv {:.0}/s | p99 1s {} | p99 window {} | closed {}{}",
            stats::phase_name(PHASE.load(Relaxed)),
            COUNTERS.live.load(Relaxed),
            total,
            COUNTERS.failed.load(Relaxed),
            (p - last_pub) as f64 / dt,
            (d - last_deliv) as f64 / dt,
            if n > 0 { stats::fmt_us(p99) } else { "-".into() },
            stats::window_p99().map_or_else(|| "-".into(), stats::fmt_us),
            COUNTERS.closed_by_server.load(Relaxed),
            extra(),
        );
        last_deliv = d;
        last_pub = p;
        line
    });
}

/// What the shared fan-out schedule observed.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Seconds the ramp took.
    pub ramp_s: f64,
    /// Subscribers connected at the end of the ramp.
    pub subs_up: u64,
    /// Publishers up at the end of the ramp.
    pub pubs_up: u64,
    /// Subscribers alive when the window opened (deliveries expected per message).
    pub subs_at_w0: u64,
    /// Seconds spent draining after the window.
    pub drain_s: f64,
    /// `--start-at`: seconds the ramp overran the shared start (0 = on time).
    pub start_late_s: f64,
    /// Server `/stats` at the window start.
    pub before: Option<ServerCounters>,
    /// Server `/stats` at the window end.
    pub after: Option<ServerCounters>,
}

/// The run shared by `fanout` and `sse`: opens `subscribers + publishers`
/// connections with `spawn(i)` (subscribers first), hands out the schedule
/// (at `--start-at` when given), waits out warmup and window (snapshotting
/// `/stats` at both ends), then drains until every publisher is done and the
/// window's deliveries are in (listen-only: until the deliveries cover the
/// received sequence span and nothing arrived for [`LISTEN_QUIET`]).
pub async fn run_phases(
    label: &str,
    cfg: &Fanout,
    targets: &[Target],
    go_tx: watch::Sender<Option<Go>>,
    spawn: impl FnMut(usize),
) -> Phases {
    let (n_subs, n_pubs) = (cfg.subscribers, cfg.publishers);
    let ramp_start = Instant::now();
    net::ramp(n_subs + n_pubs, cfg.common.connect_rate, spawn).await;
    let ramp_s = ramp_start.elapsed().as_secs_f64();
    let subs_up = COUNTERS.live_subs.load(Relaxed);
    let pubs_up = PUBS_UP.load(Relaxed);
    stats::log_line(format_args!(
        "loadgen {label}: ramp done in {ramp_s:.2}s: {subs_up}/{n_subs} subscribers, {pubs_up}/{n_pubs} publishers connected"
    ));

    // Nothing connected: report at once instead of waiting out the run.
    let (warmup, duration, drain) = if subs_up + pubs_up == 0 {
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    } else {
        (cfg.warmup, cfg.duration, cfg.drain)
    };
    // Schedule: publishing starts now (or at the shared start), the window after the warmup.
    let soon = Instant::now() + Duration::from_millis(5);
    let (t0, start_late_s) = match cfg.start_at {
        Some(t) => {
            let at = Instant::from_std(stats::instant_at_unix(t));
            if at < soon {
                stats::log_line(format_args!(
                    "loadgen {label}: WARNING: ramp overran --start-at by {:.2}s",
                    (soon - at).as_secs_f64()
                ));
            }
            (at.max(soon), (soon - at.min(soon)).as_secs_f64())
        }
        None => (soon, 0.0),
    };
    let w0 = t0 + warmup;
    let w1 = w0 + duration;
    WINDOW.set(
        stats::instant_ns(w0.into_std()),
        stats::instant_ns(w1.into_std()),
    );
    PHASE.store(stats::PHASE_WARMUP, Relaxed);
    let _ = go_tx.send(Some(Go { t0, stop: w1 }));

    tokio::time::sleep_until(w0).await;
    PHASE.store(stats::PHASE_MEASURE, Relaxed);
    let subs_at_w0 = COUNTERS.live_subs.load(Relaxed);
    let before = tokio::spawn({
        let t = targets.to_vec();
        async move { server_stats::fetch(&t).await }
    });
    tokio::time::sleep_until(w1).await;
    let after = tokio::spawn({
        let t = targets.to_vec();
        async move { server_stats::fetch(&t).await }
    });
    PHASE.store(stats::PHASE_DRAIN, Relaxed);

    // Drain: wait for the writers to finish and the window's deliveries to arrive.
    let deadline = w1 + drain;
    let mut last = (0, Instant::now());
    loop {
        let now = Instant::now();
        if cfg.listen_only {
            // The publishers are elsewhere: done once every subscriber has the
            // whole received span and the room has been quiet for a while.
            let (delivered, published) = stats::window_counts_listen();
            if delivered != last.0 {
                last = (delivered, now);
            }
            if delivered >= published * subs_at_w0 && now - last.1 >= LISTEN_QUIET {
                break;
            }
        } else {
            let writers_done = PUBS_DONE.load(Relaxed) >= PUBS_UP.load(Relaxed);
            let (delivered, published) = stats::window_counts();
            if writers_done && delivered >= published * subs_at_w0 {
                break;
            }
        }
        if now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_s = (Instant::now() - w1).as_secs_f64();
    Phases {
        ramp_s,
        subs_up,
        pubs_up,
        subs_at_w0,
        drain_s,
        start_late_s,
        before: before.await.ok().flatten(),
        after: after.await.ok().flatten(),
    }
}

/// Listen-only drain: how long the room must be quiet (after the window, with
/// every received sequence number delivered everywhere) before the run ends.
pub const LISTEN_QUIET: Duration = Duration::from_millis(500);

/// Highest publisher id a listen-only subscriber accepts (ids are 0-based
/// connection numbers of the publishing process).
const LISTEN_MAX_PUBLISHERS: usize = 1 << 16;

/// The result fields shared by `fanout` and `sse` (everything but `server`).
pub fn report(mode: &str, cfg: &Fanout, ph: &Phases, m: &ThreadStats) -> Value {
    let dur = cfg.duration.as_secs_f64();
    let published_window = if cfg.listen_only {
        m.window_seq_span()
    } else {
        m.published_window
    };
    let expected = published_window * ph.subs_at_w0;
    let lost = expected.saturating_sub(m.deliveries_window);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "mode": mode,
        "subscribers": cfg.subscribers,
        "publishers": cfg.publishers,
        "size": cfg.size,
        "text": cfg.text,
        "rate": cfg.rate,
        "duration_s": dur,
        "warmup_s": cfg.warmup.as_secs_f64(),
        "connected": {
            "subscribers": ph.subs_up,
            "publishers": ph.pubs_up,
            "failed": COUNTERS.failed.load(Relaxed),
            "errors": COUNTERS.errors_json(),
            "ramp_s": stats::round2(ph.ramp_s),
        },
        "subscribers_at_window_start": ph.subs_at_w0,
        "published": published_window,
        "published_per_sec": round(published_window as f64 / dur),
        "expected": expected,
        "deliveries": m.deliveries_window,
        "deliveries_per_sec": round(m.deliveries_window as f64 / dur),
        "lost": lost,
        "loss_ratio": if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
        "gaps": m.gap_lost,
        "reordered": m.reordered,
        "foreign": m.foreign,
        "drain_s": stats::round2(ph.drain_s),
        "latency_us": stats::latency_json(&m.lat),
        "send_lag_us": if cfg.rate > 0.0 { stats::latency_json(&m.lag) } else { Value::Null },
        "server_closed": COUNTERS.closes_json(),
    })
}

/// Subscriber-side message accounting (one per subscriber connection; also
/// fed by `sse` subscribers).
#[derive(Debug)]
pub struct SubHandler {
    /// Next expected sequence number per publisher.
    expected: Vec<u64>,
    /// Listen-only: publishers are in another process; any id below
    /// [`LISTEN_MAX_PUBLISHERS`] is accepted and window sequence spans are noted.
    listen_only: bool,
    /// Payload size every loadgen message must have.
    size: u64,
    /// Deliveries since the last flush to the global counter.
    delivered: u64,
    /// Gaps since the last flush to the global counter.
    gaps: u64,
}

impl OnMessage for SubHandler {
    fn on_message(&mut self, st: &mut ThreadStats, now: u64, opcode: u8, len: u64, head: &[u8]) {
        let h = match payload::decode_head(opcode, head) {
            Some(h) if len == self.size && (h.id as usize) < self.expected.len() => h,
            Some(h)
                if self.listen_only
                    && len == self.size
                    && (h.id as usize) < LISTEN_MAX_PUBLISHERS =>
            {
                self.expected.resize(h.id as usize + 1, 0);
                h
            }
            _ => {
                st.foreign += 1;
                return;
            }
        };
        self.delivered += 1;
        let lat = now.saturating_sub(h.ts);
        stats::record_ns(&mut st.interval, lat);
        let (w0, w1) = WINDOW.get();
        let in_window = h.ts >= w0 && h.ts < w1;
        let e = &mut self.expected[h.id as usize];
        if h.seq > *e {
            let gap = h.seq - *e;
            self.gaps += gap;
            if in_window {
                st.gap_lost += gap;
            }
            *e = h.seq + 1;
        } else if h.seq < *e {
            if in_window {
                st.reordered += 1;
            }
        } else {
            *e += 1;
        }
        if in_window {
            st.deliveries_window += 1;
            stats::record_ns(&mut st.lat, lat);
            if self.listen_only {
                st.note_window_seq(h.id as usize, h.seq);
            }
        }
    }
}

impl SubHandler {
    /// Accounting for `publishers` publishers sending `size`-byte payloads;
    /// 0 publishers = listen-only (publishers in other processes, ids learnt
    /// as their messages arrive).
    pub fn new(publishers: usize, size: usize) -> Self {
        SubHandler {
            expected: vec![0u64; publishers],
            listen_only: publishers == 0,
            size: size as u64,
            delivered: 0,
            gaps: 0,
        }
    }

    /// Moves the local delivery and gap counts to the global counters (once per read).
    pub fn flush(&mut self) {
        if self.delivered > 0 {
            COUNTERS
                .deliveries_total
                .fetch_add(std::mem::take(&mut self.delivered), Relaxed);
        }
        if self.gaps > 0 {
            COUNTERS
                .gaps_total
                .fetch_add(std::mem::take(&mut self.gaps), Relaxed);
        }
    }
}

async fn subscriber(i: usize, sh: Arc<Shared>) {
    let (target, source) = sh.endpoint(i);
    let Some(mut conn) = net::open_ws(i, target, source, &sh.resource, sh.timeout).await else {
        return;
    };
    COUNTERS.live_subs.fetch_add(1, Relaxed);
    let mut reader = FrameReader::new();
    let mut ctl = Ctl::new(conn.rng.mask(), true);
    let mut handler = SubHandler::new(sh.publishers, sh.size);
    let early = net::feed(
        &mut reader,
        &mut ctl,
        &conn.leftover,
        stats::now_ns(),
        &mut handler,
    );
    conn.leftover = Vec::new();
    let end = match early {
        Err(e) => net::End::Protocol(e),
        Ok(()) => loop {
            let r = net::read_step(&conn.stream, &mut reader, &mut ctl, &mut handler).await;
            handler.flush();
            if let Err(end) = r {
                break end;
            }
        },
    };
    handler.flush();
    end.record();
    COUNTERS.live_subs.fetch_sub(1, Relaxed);
}

/// State shared by a publisher's reader and writer tasks.
#[derive(Debug, Default)]
struct PubState {
    /// 1 + highest own sequence number echoed back by the server.
    acked: AtomicU64,
    /// Signalled when `acked` advances or the connection ends.
    notify: Notify,
    /// The connection has ended.
    closed: AtomicBool,
}

/// Tracks the publisher's own messages coming back (its in-flight window).
#[derive(Debug)]
struct AckHandler {
    id: u32,
    acked: u64,
}

impl OnMessage for AckHandler {
    fn on_message(&mut self, _st: &mut ThreadStats, _now: u64, opcode: u8, _len: u64, head: &[u8]) {
        if let Some(h) = payload::decode_head(opcode, head) {
            if h.id == self.id && h.seq + 1 > self.acked {
                self.acked = h.seq + 1;
            }
        }
    }
}

async fn publisher_reader(
    id: u32,
    stream: Arc<TcpStream>,
    mut reader: FrameReader,
    mut ctl: Ctl,
    state: Arc<PubState>,
) {
    let mut handler = AckHandler { id, acked: 0 };
    let end = loop {
        let before = handler.acked;
        if let Err(end) = net::read_step(&stream, &mut reader, &mut ctl, &mut handler).await {
            break end;
        }
        if handler.acked != before {
            state.acked.store(handler.acked, Relaxed);
            state.notify.notify_one();
        }
    };
    end.record();
    state.closed.store(true, Relaxed);
    state.notify.notify_one();
}

/// WebSocket publisher `id` (connection index `i`): a room member that sends
/// per the schedule and takes its own messages coming back as acks.
pub async fn publisher(id: u32, i: usize, sh: Arc<Shared>) {
    let (target, source) = sh.endpoint(i);
    let Some(mut conn) = net::open_ws(i, target, source, &sh.resource, sh.timeout).await else {
        return;
    };
    PUBS_UP.fetch_add(1, Relaxed);
    let mask = conn.rng.mask();
    let stream = Arc::new(conn.stream);
    let state = Arc::new(PubState::default());
    let mut reader = FrameReader::new();
    // The writer task owns all writes, so the reader must not answer pings itself.
    let mut ctl = Ctl::new(mask, false);
    let mut ignore = AckHandler { id, acked: 0 };
    if net::feed(
        &mut reader,
        &mut ctl,
        &conn.leftover,
        stats::now_ns(),
        &mut ignore,
    )
    .is_err()
    {
        net::End::Protocol(crate::loadgen::ws::ProtocolError(
            "bad frame after handshake",
        ))
        .record();
        PUBS_DONE.fetch_add(1, Relaxed);
        return;
    }
    conn.leftover = Vec::new();
    tokio::spawn(publisher_reader(
        id,
        stream.clone(),
        reader,
        ctl,
        state.clone(),
    ));

    let mut go_rx = sh.go.clone();
    let go = match go_rx.wait_for(Option::is_some).await {
        Ok(g) => *g,
        Err(_) => None,
    };
    if let Some(go) = go {
        write_loop(id, &stream, &sh, go, mask, &state).await;
    }
    PUBS_DONE.fetch_add(1, Relaxed);
}

/// Global flow-control guard for windowed (rate 0) publishing: true when the
/// subscribers are on average more than `per_sub` messages behind what has
/// been published (publishers then pause for a millisecond).
pub fn subscribers_behind(per_sub: u64) -> bool {
    let subs = COUNTERS.live_subs.load(Relaxed);
    if subs == 0 {
        return false;
    }
    let want = COUNTERS.published_total.load(Relaxed) * subs;
    let done = COUNTERS.deliveries_total.load(Relaxed) + COUNTERS.gaps_total.load(Relaxed);
    want > done + per_sub * subs
}

async fn write_loop(
    id: u32,
    stream: &TcpStream,
    sh: &Shared,
    go: Go,
    mask: [u8; 4],
    state: &PubState,
) {
    let template = FrameTemplate::new(sh.size, sh.text, mask);
    let max_batch = ((256 * 1024) / template.frame_len()).clamp(1, 256) as u64;
    let mut buf = Vec::with_capacity(max_batch as usize * template.frame_len());
    let n_pubs = sh.publishers as f64;
    // Fixed rate: message k of publisher `id` is due at t0 + (k + id/P) / rate_per_pub.
    let interval_ns = if sh.rate > 0.0 {
        1e9 * n_pubs / sh.rate
    } else {
        0.0
    };
    let phase_ns = interval_ns * f64::from(id) / n_pubs;
    let t0_ns = stats::instant_ns(go.t0.into_std()) as f64 + phase_ns;
    let guard_per_sub = sh.window * sh.publishers as u64;
    let mut pacer = Pacer::new();
    let mut k: u64 = 0;
    loop {
        if state.closed.load(Relaxed) {
            break;
        }
        let now = Instant::now();
        if now >= go.stop {
            break;
        }
        let now_ns = stats::instant_ns(now.into_std());
        let n = if sh.rate > 0.0 {
            let due = if (now_ns as f64) < t0_ns {
                0
            } else {
                ((now_ns as f64 - t0_ns) / interval_ns).floor() as u64 + 1
            };
            if due <= k {
                let next_ns = t0_ns + k as f64 * interval_ns;
                let wait = Duration::from_nanos((next_ns - now_ns as f64).max(0.0) as u64);
                pacer.sleep_until((now + wait).min(go.stop)).await;
                continue;
            }
            (due - k).min(max_batch)
        } else {
            let inflight = k.saturating_sub(state.acked.load(Relaxed));
            if inflight >= sh.window {
                let _ = tokio::time::timeout_at(go.stop, state.notify.notified()).await;
                continue;
            }
            if subscribers_behind(guard_per_sub) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            (sh.window - inflight).min(max_batch)
        };
        buf.clear();
        let ts = stats::now_ns();
        for j in 0..n {
            template.append(&mut buf, Head { id, seq: k + j, ts });
        }
        if net::write_all(stream, &buf).await.is_err() {
            break;
        }
        let (w0, w1) = WINDOW.get();
        COUNTERS.published_total.fetch_add(n, Relaxed);
        if ts >= w0 && ts < w1 {
            stats::with_local(|st| {
                st.published_window += n;
                if sh.rate > 0.0 {
                    for j in 0..n {
                        let sched = t0_ns + (k + j) as f64 * interval_ns;
                        stats::record_ns(&mut st.lag, (ts as f64 - sched).max(0.0) as u64);
                    }
                }
            });
        }
        k += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::ws::OP_BINARY;

    fn payload(id: u32, seq: u64, ts: u64) -> Vec<u8> {
        let mut b = vec![b'x'; 64];
        payload::encode_head(false, Head { id, seq, ts }, &mut b);
        b
    }

    #[test]
    fn listen_only_accepts_other_processes_publishers() {
        WINDOW.set(1_000, u64::MAX);
        stats::with_local(|st| {
            let before = (st.deliveries_window, st.gap_lost, st.foreign);
            // Own publishers only: id 4 is foreign.
            let mut own = SubHandler::new(2, 64);
            own.on_message(st, 5_000, OP_BINARY, 64, &payload(4, 0, 2_000));
            assert_eq!(st.foreign, before.2 + 1);
            assert!(st.window_seq.is_empty());

            let mut h = SubHandler::new(0, 64);
            for (id, seq) in [(4, 0), (4, 1), (4, 3), (1, 0)] {
                h.on_message(st, 5_000, OP_BINARY, 64, &payload(id, seq, 2_000));
            }
            // Before the window: delivered, not counted in it.
            h.on_message(st, 5_000, OP_BINARY, 64, &payload(1, 1, 500));
            // Wrong size: foreign.
            h.on_message(st, 5_000, OP_BINARY, 63, &payload(1, 2, 2_000));
            assert_eq!(st.deliveries_window, before.0 + 4);
            assert_eq!(st.gap_lost, before.1 + 1);
            assert_eq!(st.foreign, before.2 + 2);
            assert_eq!(st.window_seq_span(), 4 + 1);
            st.window_seq.clear();
        });
    }
}
