//! `loadgen echo`: each connection keeps `--pipeline` messages in flight
//! against an echo endpoint; measures round-trip latency and messages/s.
//! A reply counts iff its request was sent inside the measured window.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::loadgen::args::Echo;
use crate::loadgen::net::{self, Ctl, OnMessage, SourcePlan, Target};
use crate::loadgen::payload::{self, FrameTemplate, Head};
use crate::loadgen::server_stats;
use crate::loadgen::stats::{self, ThreadStats, COUNTERS, PHASE, WINDOW};
use crate::loadgen::ws::FrameReader;

/// Connections that completed the handshake.
static UP: AtomicU64 = AtomicU64::new(0);
/// Connections that finished their run.
static DONE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct Go {
    /// Stop sending new requests.
    stop: Instant,
    /// Give up waiting for replies.
    deadline: Instant,
}

#[derive(Debug)]
struct Shared {
    targets: Vec<Target>,
    plan: SourcePlan,
    resource: String,
    timeout: Duration,
    size: usize,
    text: bool,
    pipeline: usize,
    go: watch::Receiver<Option<Go>>,
}

/// Runs the echo benchmark and returns the result line (and whether anything connected).
pub async fn run(cfg: Echo) -> Result<(Value, bool), String> {
    let targets = net::resolve_targets(&cfg.common.targets)?;
    let plan = SourcePlan {
        per_source: cfg.common.per_source,
        sources: cfg.common.sources.clone(),
    };
    let resource = net::resource(cfg.common.path.as_deref().unwrap_or("/ws/echo"), None);
    let n = cfg.connections;
    eprintln!(
        "loadgen echo: {n} connections -> ws://{}{} ({}), size {} B, pipeline {}, warmup {:?}, duration {:?}",
        targets[0].host,
        resource,
        plan.describe(n, &targets[0].addr),
        cfg.size,
        cfg.pipeline,
        cfg.warmup,
        cfg.duration
    );
    let (go_tx, go_rx) = watch::channel(None);
    let sh = Arc::new(Shared {
        targets: targets.clone(),
        plan,
        resource,
        timeout: cfg.common.timeout,
        size: cfg.size,
        text: cfg.text,
        pipeline: cfg.pipeline,
        go: go_rx,
    });
    let mut last = 0u64;
    stats::spawn_progress(move |t, dt| {
        let r = COUNTERS.replies_total.load(Relaxed);
        let (p99, cnt) = stats::take_interval();
        let line = format!(
            "[echo {t:>5.1}s {:<7}] conns {}/{} live, {} failed | {:.0} msg/s | p99 1s {} | p99 window {} | closed {}",
            stats::phase_name(PHASE.load(Relaxed)),
            COUNTERS.live.load(Relaxed),
            n,
            COUNTERS.failed.load(Relaxed),
            (r - last) as f64 / dt,
            if cnt > 0 { stats::fmt_us(p99) } else { "-".into() },
            stats::window_p99().map_or_else(|| "-".into(), stats::fmt_us),
            COUNTERS.closed_by_server.load(Relaxed),
        );
        last = r;
        line
    });

    let ramp_start = Instant::now();
    {
        let sh = sh.clone();
        net::ramp(n, cfg.common.connect_rate, move |i| {
            tokio::spawn(connection(i, sh.clone()));
        })
        .await;
    }
    let ramp_s = ramp_start.elapsed().as_secs_f64();
    let up = UP.load(Relaxed);
    stats::log_line(format_args!(
        "loadgen echo: ramp done in {ramp_s:.2}s: {up}/{n} connected"
    ));

    // Nothing connected: report at once instead of waiting out the run.
    let (warmup, duration, drain) = if up == 0 {
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    } else {
        (cfg.warmup, cfg.duration, cfg.drain)
    };
    let t0 = Instant::now() + Duration::from_millis(5);
    let w0 = t0 + warmup;
    let w1 = w0 + duration;
    let deadline = w1 + drain;
    WINDOW.set(
        stats::instant_ns(w0.into_std()),
        stats::instant_ns(w1.into_std()),
    );
    PHASE.store(stats::PHASE_WARMUP, Relaxed);
    let _ = go_tx.send(Some(Go { stop: w1, deadline }));
    tokio::time::sleep_until(w0).await;
    PHASE.store(stats::PHASE_MEASURE, Relaxed);
    let before = tokio::spawn({
        let t = targets.clone();
        async move { server_stats::fetch(&t).await }
    });
    tokio::time::sleep_until(w1).await;
    let after = tokio::spawn({
        let t = targets.clone();
        async move { server_stats::fetch(&t).await }
    });
    PHASE.store(stats::PHASE_DRAIN, Relaxed);
    while DONE.load(Relaxed) < UP.load(Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = before.await.ok().flatten();
    let after = after.await.ok().flatten();

    let m = stats::merged();
    let dur = cfg.duration.as_secs_f64();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let result = json!({
        "mode": "echo",
        "connections": n,
        "size": cfg.size,
        "text": cfg.text,
        "pipeline": cfg.pipeline,
        "duration_s": dur,
        "warmup_s": cfg.warmup.as_secs_f64(),
        "connected": {
            "connections": up,
            "failed": COUNTERS.failed.load(Relaxed),
            "errors": COUNTERS.errors_json(),
            "ramp_s": stats::round2(ramp_s),
        },
        "sent": m.published_window,
        "received": m.deliveries_window,
        "msgs_per_sec": round(m.deliveries_window as f64 / dur),
        "lost": m.published_window.saturating_sub(m.deliveries_window),
        "reordered": m.reordered,
        "foreign": m.foreign,
        "latency_us": stats::latency_json(&m.lat),
        "server_closed": COUNTERS.closes_json(),
        "server": server_stats::delta_json(before, after, dur),
    });
    Ok((result, up > 0))
}

/// Reply accounting of one echo connection.
#[derive(Debug)]
struct EchoHandler {
    id: u32,
    size: u64,
    /// Replies since the last send.
    replies: u64,
    /// Lowest sequence number a reply may still carry (replies come back in order).
    expect_reply: u64,
}

impl OnMessage for EchoHandler {
    fn on_message(&mut self, st: &mut ThreadStats, now: u64, opcode: u8, len: u64, head: &[u8]) {
        let h = match payload::decode_head(opcode, head) {
            Some(h) if len == self.size && h.id == self.id => h,
            _ => {
                st.foreign += 1;
                return;
            }
        };
        self.replies += 1;
        let lat = now.saturating_sub(h.ts);
        stats::record_ns(&mut st.interval, lat);
        let (w0, w1) = WINDOW.get();
        let in_window = h.ts >= w0 && h.ts < w1;
        if h.seq < self.expect_reply {
            if in_window {
                st.reordered += 1;
            }
        } else {
            self.expect_reply = h.seq + 1;
        }
        if in_window {
            st.deliveries_window += 1;
            stats::record_ns(&mut st.lat, lat);
        }
    }
}

async fn connection(i: usize, sh: Arc<Shared>) {
    let target = &sh.targets[i % sh.targets.len()];
    let source = sh.plan.source_for(i, &target.addr);
    let Some(mut conn) = net::open_ws(i, target, source, &sh.resource, sh.timeout).await else {
        return;
    };
    UP.fetch_add(1, Relaxed);
    let mask = conn.rng.mask();
    let mut reader = FrameReader::new();
    let mut ctl = Ctl::new(mask, true);
    let id = i as u32;
    let mut next_seq = 0u64;
    let mut on_msg = EchoHandler {
        id,
        size: sh.size as u64,
        replies: 0,
        expect_reply: 0,
    };
    let early = net::feed(
        &mut reader,
        &mut ctl,
        &conn.leftover,
        stats::now_ns(),
        &mut on_msg,
    );
    conn.leftover = Vec::new();
    if let Err(e) = early {
        net::End::Protocol(e).record();
        DONE.fetch_add(1, Relaxed);
        return;
    }
    on_msg.replies = 0;

    let mut go_rx = sh.go.clone();
    let go = match go_rx.wait_for(Option::is_some).await {
        Ok(g) => *g,
        Err(_) => None,
    };
    let Some(go) = go else {
        DONE.fetch_add(1, Relaxed);
        return;
    };
    let template = FrameTemplate::new(sh.size, sh.text, mask);
    let mut buf = Vec::with_capacity(sh.pipeline.min(1024) * template.frame_len());
    let mut outstanding = 0u64;
    let mut to_send = sh.pipeline as u64;
    let stream = &conn.stream;
    let end = loop {
        if to_send > 0 && Instant::now() < go.stop {
            buf.clear();
            let ts = stats::now_ns();
            let seq0 = next_seq;
            for j in 0..to_send {
                template.append(
                    &mut buf,
                    Head {
                        id,
                        seq: seq0 + j,
                        ts,
                    },
                );
            }
            if let Err(e) = net::write_all(stream, &buf).await {
                break Some(net::End::Io(e));
            }
            next_seq = seq0 + to_send;
            outstanding += to_send;
            let (w0, w1) = WINDOW.get();
            if ts >= w0 && ts < w1 {
                stats::with_local(|st| st.published_window += to_send);
            }
        }
        if outstanding == 0 && Instant::now() >= go.stop {
            break None;
        }
        match tokio::time::timeout_at(
            go.deadline,
            net::read_step(stream, &mut reader, &mut ctl, &mut on_msg),
        )
        .await
        {
            Err(_) => break None,
            Ok(Err(end)) => break Some(end),
            Ok(Ok(())) => {}
        }
        let r = std::mem::take(&mut on_msg.replies);
        COUNTERS.replies_total.fetch_add(r, Relaxed);
        outstanding = outstanding.saturating_sub(r);
        to_send = r;
    };
    DONE.fetch_add(1, Relaxed);
    if let Some(end) = end {
        end.record();
    }
}
