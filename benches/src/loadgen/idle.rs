//! `loadgen idle`: open N connections (spread over source addresses), hold
//! them idle for `--hold` seconds (answering pings), then report. With
//! `--sse` the connections are Server-Sent Events streams: the response head
//! is checked, then the socket is held and whatever arrives is discarded.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::loadgen::args::Idle;
use crate::loadgen::net::{self, Ctl, OnMessage, SourcePlan, Target};
use crate::loadgen::server_stats;
use crate::loadgen::stats::{self, ThreadStats, COUNTERS, PHASE};
use crate::loadgen::ws::FrameReader;

#[derive(Debug)]
struct Shared {
    targets: Vec<Target>,
    plan: SourcePlan,
    resource: String,
    timeout: Duration,
    sse: bool,
}

/// Runs the idle test and returns the result line (and whether anything connected).
pub async fn run(cfg: Idle, nofile: (u64, u64)) -> Result<(Value, bool), String> {
    let targets = net::resolve_targets(&cfg.common.targets)?;
    let plan = SourcePlan {
        per_source: cfg.common.per_source,
        sources: cfg.common.sources.clone(),
    };
    let default_path = if cfg.sse { "/sse" } else { "/ws/chat" };
    let path = cfg
        .common
        .path
        .clone()
        .unwrap_or_else(|| default_path.into());
    let resource = net::resource(
        &path,
        (!path.contains("room=")).then_some(cfg.room.as_str()),
    );
    let n = cfg.connections;
    eprintln!(
        "loadgen idle: {n} connections -> {}://{}{} ({}), hold {:?}, RLIMIT_NOFILE {}",
        if cfg.sse { "http" } else { "ws" },
        targets[0].host,
        resource,
        plan.describe(n, &targets[0].addr),
        cfg.hold,
        nofile.0
    );
    if nofile.0 > 0 && (n as u64) + 16 > nofile.0 {
        eprintln!(
            "loadgen idle: warning: {n} connections need more descriptors than RLIMIT_NOFILE={} allows; expect EMFILE failures",
            nofile.0
        );
    }
    let sh = Arc::new(Shared {
        targets: targets.clone(),
        plan,
        resource,
        timeout: cfg.common.timeout,
        sse: cfg.sse,
    });
    stats::spawn_progress(move |t, _| {
        format!(
            "[idle {t:>5.1}s {:<7}] conns {}/{} live, {} failed (emfile {}), closed by server {}",
            stats::phase_name(PHASE.load(Relaxed)),
            COUNTERS.live.load(Relaxed),
            n,
            COUNTERS.failed.load(Relaxed),
            COUNTERS.err_emfile.load(Relaxed),
            COUNTERS.closed_by_server.load(Relaxed),
        )
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
    let connected = COUNTERS.connected.load(Relaxed);
    stats::log_line(format_args!(
        "loadgen idle: ramp done in {ramp_s:.2}s: {connected}/{n} connected; holding {:?}",
        cfg.hold
    ));
    PHASE.store(stats::PHASE_HOLD, Relaxed);
    if connected > 0 {
        tokio::time::sleep(cfg.hold).await;
    }
    let server = server_stats::fetch(&targets).await;
    let result = json!({
        "mode": "idle",
        "protocol": if cfg.sse { "sse" } else { "ws" },
        "connections": n,
        "connected": connected,
        "failed": COUNTERS.failed.load(Relaxed),
        "open_at_end": COUNTERS.live.load(Relaxed),
        "errors": COUNTERS.errors_json(),
        "server_closed": COUNTERS.closes_json(),
        "ramp_s": stats::round2(ramp_s),
        "hold_s": cfg.hold.as_secs_f64(),
        "nofile_limit": nofile.0,
        "server_connections": server.map(|s| s.connections),
    });
    Ok((result, connected > 0))
}

/// Idle connections expect no data; anything received is counted as foreign.
#[derive(Debug)]
struct CountForeign;

impl OnMessage for CountForeign {
    fn on_message(&mut self, st: &mut ThreadStats, _: u64, _: u8, _: u64, _: &[u8]) {
        st.foreign += 1;
    }
}

async fn connection(i: usize, sh: Arc<Shared>) {
    let target = &sh.targets[i % sh.targets.len()];
    let source = sh.plan.source_for(i, &target.addr);
    if sh.sse {
        return sse_connection(target, source, &sh).await;
    }
    let Some(mut conn) = net::open_ws(i, target, source, &sh.resource, sh.timeout).await else {
        return;
    };
    let mut reader = FrameReader::new();
    let mut ctl = Ctl::new(conn.rng.mask(), true);
    let mut on_msg = CountForeign;
    if let Err(e) = net::feed(
        &mut reader,
        &mut ctl,
        &conn.leftover,
        stats::now_ns(),
        &mut on_msg,
    ) {
        net::End::Protocol(e).record();
        return;
    }
    conn.leftover = Vec::new();
    let end = loop {
        if let Err(end) = net::read_step(&conn.stream, &mut reader, &mut ctl, &mut on_msg).await {
            break end;
        }
    };
    end.record();
}

/// One idle event stream: the response head, then hold the socket until the
/// server ends it, discarding comments, `retry:` lines and any events.
async fn sse_connection(target: &Target, source: Option<IpAddr>, sh: &Shared) {
    let Some(conn) = net::open_sse_hold(target, source, &sh.resource, sh.timeout).await else {
        return;
    };
    drop(conn.leftover);
    let end = loop {
        match net::read_chunk(&conn.stream, |_| ()).await {
            Ok(Some(())) => {}
            Ok(None) => break net::End::Eof,
            Err(e) => break net::End::Io(e),
        }
    };
    end.record();
}
