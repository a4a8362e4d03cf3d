//! `loadgen wt`: like `fanout`, but the S subscribers are WebTransport sessions
//! (HTTP/3 over QUIC, the `wtransport` crate) on the rooms endpoint, so
//! WebTransport fan-out can be compared with WebSocket fan-out on the same server.
//!
//! - Each subscriber is its own QUIC connection and UDP socket (bound per the
//!   `--per-source` plan) to `https://HOST:PORT/wt/chat?room=R`, trusting the
//!   certificate whose SHA-256 `GET /webtransport/cert-hash` serves.
//! - `--delivery reliable`: the server opens one unidirectional stream per session
//!   and writes `varint(L) kind varint(room length) room payload` records on it
//!   ([`RecordReader`] parses them incrementally). `--delivery datagram` adds
//!   `&datagram=R`: every message is one datagram `kind varint(room length) room
//!   payload` (wtransport strips the quarter stream id); datagrams are unreliable
//!   and latest-wins on the server, so their loss is measured, not an error.
//! - Publishers are exactly the `fanout` WebSocket publishers on `--ws-path`
//!   (room members too, acked by their own message coming back), so the measured
//!   path is WebSocket publish -> WebTransport fan-out.
//!
//! Accounting is `fanout`'s ([`SubHandler`]). The result adds `server_wt`: the
//! server's WebTransport counters over the measured window (`wt_packets_out`,
//! `wt_packets_per_send`, ...). At the end every session is closed (QUIC
//! CONNECTION_CLOSE) so the server does not keep sending to a dead process.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::{ConnectingError, ConnectionError};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint};

use crate::loadgen::args::{Wt, WtDelivery};
use crate::loadgen::fanout::{self, Go, SubHandler};
use crate::loadgen::net::{self, ConnError, End, OnMessage, SourcePlan, Target};
use crate::loadgen::payload::TEXT_HEAD;
use crate::loadgen::server_stats;
use crate::loadgen::stats::{self, COUNTERS, WINDOW};
use crate::loadgen::ws::{HandshakeError, ProtocolError, OP_BINARY, OP_TEXT};

/// Longest room name accepted in a record.
const MAX_ROOM: usize = 1024;
/// Longest record prefix (length, kind, room length, room, payload head) kept across reads.
const MAX_PREFIX: usize = 8 + 1 + 8 + MAX_ROOM + TEXT_HEAD;

/// Configuration shared by every task.
#[derive(Debug)]
struct Shared {
    /// Targets, plan, sizes, schedule and the publishers' WebSocket resource.
    fan: Arc<fanout::Shared>,
    /// `https://HOST:PORT/wt/chat?room=...` per target.
    urls: Vec<String>,
    /// Certificate hash per target.
    hashes: Vec<[u8; 32]>,
    /// Stream or datagram delivery.
    delivery: WtDelivery,
    /// Becomes true when the run is over: sessions close.
    stop: watch::Receiver<bool>,
}

/// Runs the WebTransport fan-out benchmark and returns the result line (and
/// whether anything connected).
pub async fn run(cfg: Wt) -> Result<(Value, bool), String> {
    let fc = &cfg.fanout;
    let targets = net::resolve_targets(&fc.common.targets)?;
    let plan = SourcePlan {
        per_source: fc.common.per_source,
        sources: fc.common.sources.clone(),
    };
    let wt_path = fc.common.path.clone().unwrap_or_else(|| "/wt/chat".into());
    let mut wt_resource = net::resource(&wt_path, Some(&fc.room));
    if cfg.delivery == WtDelivery::Datagram {
        wt_resource = format!("{wt_resource}&datagram={}", net::url_encode(&fc.room));
    }
    let ws_resource = net::resource(&cfg.ws_path, Some(&fc.room));
    let mut hashes = Vec::with_capacity(targets.len());
    for t in &targets {
        let v = get_json(t, "/webtransport/cert-hash", fc.common.timeout)
            .await
            .ok_or_else(|| {
                format!(
                    "GET /webtransport/cert-hash on {} failed (is WebTransport enabled?)",
                    t.host
                )
            })?;
        let hash = v["sha256"].as_str().and_then(decode_hex32).ok_or_else(|| {
            format!(
                "GET /webtransport/cert-hash on {}: no 64-hex-digit sha256 in {v}",
                t.host
            )
        })?;
        hashes.push(hash);
    }
    let (go_tx, go_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (n_subs, n_pubs) = (fc.subscribers, fc.publishers);
    let total = n_subs + n_pubs;
    eprintln!(
        "loadgen wt: {} WebTransport subscribers ({}) -> https://{}{} ({}), {} ws publishers -> ws://{}{}, size {} B, rate {}, warmup {:?}, duration {:?}",
        n_subs,
        cfg.delivery.name(),
        targets[0].host,
        wt_resource,
        plan.describe(total, &targets[0].addr),
        n_pubs,
        targets[0].host,
        ws_resource,
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
        text: fc.text,
        publishers: n_pubs,
        rate: fc.rate,
        window: fc.window,
        go: go_rx.clone(),
    });
    let sh = Arc::new(Shared {
        fan,
        urls: targets
            .iter()
            .map(|t| format!("https://{}{}", t.host, wt_resource))
            .collect(),
        hashes,
        delivery: cfg.delivery,
        stop: stop_rx,
    });
    fanout::spawn_progress("wt", total, String::new);
    let wt_stats = tokio::spawn(window_snapshots(targets.clone(), go_rx));
    let ph = fanout::run_phases("wt", fc, &targets, go_tx, {
        let sh = sh.clone();
        move |i| {
            let sh = sh.clone();
            if i < n_subs {
                tokio::spawn(subscriber(i, sh));
            } else {
                tokio::spawn(fanout::publisher((i - n_subs) as u32, i, sh.fan.clone()));
            }
        }
    })
    .await;
    let m = stats::merged();
    let dur = fc.duration.as_secs_f64();
    let mut result = fanout::report("wt", fc, &ph, &m);
    result["delivery"] = json!(cfg.delivery.name());
    result["wt_path"] = json!(wt_resource);
    result["ws_path"] = json!(ws_resource);
    result["server"] = server_stats::delta_json(ph.before, ph.after, dur);
    let (before, after) = wt_stats.await.unwrap_or_default();
    result["server_wt"] = wt_delta_json(before, after, dur, m.deliveries_window);
    // Close every session (CONNECTION_CLOSE) and give the packets a moment to leave.
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok((result, ph.subs_up + ph.pubs_up > 0))
}

/// 64 hex digits (either case) to 32 bytes.
fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `GET path` on a fresh TCP connection (`Connection: close`); the body as JSON
/// if the answer is a 200 with a JSON body, all within `timeout`.
async fn get_json(target: &Target, path: &str, timeout: Duration) -> Option<Value> {
    let work = async {
        let stream = net::connect_tcp(target, None, timeout).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             Connection: close\r\nUser-Agent: corecast-loadgen\r\n\r\n",
            target.host
        );
        net::write_all(&stream, req.as_bytes()).await.ok()?;
        let (mut buf, end) = net::read_head(&stream).await.ok()?;
        if std::str::from_utf8(&buf[..end]).ok()?.split(' ').nth(1) != Some("200") {
            return None;
        }
        let want = server_stats::content_length(&buf[..end]);
        while want.is_none_or(|n| buf.len() - end < n) && buf.len() < (1 << 20) {
            if net::read_chunk(&stream, |d| buf.extend_from_slice(d))
                .await
                .ok()?
                .is_none()
            {
                break;
            }
        }
        let body = &buf[end..];
        serde_json::from_slice(&body[..want.unwrap_or(body.len()).min(body.len())]).ok()
    };
    tokio::time::timeout(timeout, work).await.ok()?
}

/// The server's WebTransport counters, summed over distinct targets.
#[derive(Debug, Clone, Copy, Default)]
struct WtCounters {
    sessions: u64,
    connections: u64,
    packets_out: u64,
    /// `sendmmsg` calls, derived from `wt_packets_out / wt_packets_per_send`
    /// (the server reports the ratio with 2 decimals, not the count).
    send_calls: f64,
    datagrams_dropped: u64,
    rejected: u64,
    retries: u64,
}

/// `GET /stats` of every distinct target; `None` if any lacks the WebTransport counters.
async fn wt_counters(targets: &[Target]) -> Option<WtCounters> {
    let mut sum = WtCounters::default();
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.addr == t.addr) {
            continue;
        }
        let v = get_json(t, "/stats", Duration::from_secs(2)).await?;
        let f = |name: &str| v[name].as_u64();
        let packets = f("wt_packets_out")?;
        let per_send = v["wt_packets_per_send"].as_f64()?;
        sum.sessions += f("wt_sessions")?;
        sum.connections += f("wt_connections")?;
        sum.packets_out += packets;
        if per_send > 0.0 {
            sum.send_calls += packets as f64 / per_send;
        }
        sum.datagrams_dropped += f("wt_datagrams_dropped")?;
        sum.rejected += f("wt_rejected")?;
        sum.retries += f("wt_retries")?;
    }
    Some(sum)
}

/// Snapshots the WebTransport counters at the window's start and end (the
/// same instants at which `run_phases` reads the TCP counters).
async fn window_snapshots(
    targets: Vec<Target>,
    mut go: watch::Receiver<Option<Go>>,
) -> (Option<WtCounters>, Option<WtCounters>) {
    if go.wait_for(Option::is_some).await.is_err() {
        return (None, None);
    }
    // The window is set before the schedule is handed out.
    let (w0, w1) = WINDOW.get();
    let at = |ns: u64| tokio::time::Instant::from_std(stats::epoch() + Duration::from_nanos(ns));
    tokio::time::sleep_until(at(w0)).await;
    let before = wt_counters(&targets).await;
    tokio::time::sleep_until(at(w1)).await;
    (before, wt_counters(&targets).await)
}

/// The `server_wt` block: WebTransport counter deltas over the window (or null).
fn wt_delta_json(
    before: Option<WtCounters>,
    after: Option<WtCounters>,
    secs: f64,
    deliveries: u64,
) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let packets = a.packets_out.saturating_sub(b.packets_out);
    let calls = (a.send_calls - b.send_calls).max(0.0);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "wt_sessions": b.sessions,
        "wt_connections": b.connections,
        "wt_packets_out": packets,
        "wt_packets_out_per_sec": if secs > 0.0 { (packets as f64 / secs).round() } else { 0.0 },
        "wt_packets_per_send": if calls >= 1.0 { Some(round2(packets as f64 / calls)) } else { None },
        "deliveries_per_packet": if packets > 0 { Some(round2(deliveries as f64 / packets as f64)) } else { None },
        "wt_datagrams_dropped": a.datagrams_dropped.saturating_sub(b.datagrams_dropped),
        "wt_rejected": a.rejected.saturating_sub(b.rejected),
        "wt_retries": a.retries.saturating_sub(b.retries),
    })
}

/// A QUIC varint at the start of `b`: `(value, bytes used)`, `None` if `b` is too short.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    Some((
        bytes[1..]
            .iter()
            .fold(u64::from(first & 0x3f), |v, &x| (v << 8) | u64::from(x)),
        len,
    ))
}

/// A delivered message: WebSocket-style opcode, payload length and its first bytes.
type Msg<'a> = (u8, u64, &'a [u8]);

/// Parses `kind varint(room length) room payload...` whose full length is
/// `body_len`, of which `b` holds the start: `Ok(None)` until `b` also holds
/// the payload's head (its first [`TEXT_HEAD`] bytes at most).
fn parse_body(b: &[u8], body_len: u64) -> Result<Option<Msg<'_>>, ProtocolError> {
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let opcode = match kind {
        0x00 => OP_TEXT,
        0x01 => OP_BINARY,
        _ => return Err(ProtocolError("unknown WebTransport record kind")),
    };
    let Some((room_len, n)) = varint(&b[1..]) else {
        return Ok(None);
    };
    if room_len > MAX_ROOM as u64 {
        return Err(ProtocolError("room name longer than 1024 bytes"));
    }
    let hdr = 1 + n + room_len as usize;
    let len = body_len
        .checked_sub(hdr as u64)
        .ok_or(ProtocolError("WebTransport record shorter than its header"))?;
    let want = hdr + len.min(TEXT_HEAD as u64) as usize;
    Ok(b.get(hdr..want).map(|head| (opcode, len, head)))
}

/// Parses `varint(L) body` at the start of `b`: the message and the record's
/// total length, or `Ok(None)` if `b` is too short to tell.
fn parse_record(b: &[u8]) -> Result<Option<(Msg<'_>, u64)>, ProtocolError> {
    let Some((l, n)) = varint(b) else {
        return Ok(None);
    };
    Ok(parse_body(&b[n..], l)?.map(|m| (m, n as u64 + l)))
}

/// Incremental parser of the records on a session's reliable stream. Only a
/// record's prefix (up to its payload head) is ever copied; the rest of its
/// payload is skipped in place.
#[derive(Debug, Default)]
pub struct RecordReader {
    /// Start of a record split across reads (at most [`MAX_PREFIX`] bytes).
    partial: Vec<u8>,
    /// Payload bytes of the current record still to skip.
    skip: u64,
}

impl RecordReader {
    /// Feeds stream bytes; `on(opcode, payload_len, payload_head)` per record.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on: impl FnMut(u8, u64, &[u8]),
    ) -> Result<(), ProtocolError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64) as usize;
                self.skip -= n as u64;
                data = &data[n..];
            }
            if data.is_empty() {
                return Ok(());
            }
            // Bytes of `data` the record consumes (`data` starts `before` bytes into it).
            let (before, total) = if self.partial.is_empty() {
                match parse_record(data)? {
                    Some(((op, len, head), total)) => {
                        on(op, len, head);
                        (0, total)
                    }
                    None => {
                        self.partial.extend_from_slice(data);
                        return Ok(());
                    }
                }
            } else {
                let before = self.partial.len();
                let take = (MAX_PREFIX - before).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                match parse_record(&self.partial)? {
                    Some(((op, len, head), total)) => {
                        on(op, len, head);
                        self.partial.clear();
                        (before as u64, total)
                    }
                    None if take < data.len() => {
                        return Err(ProtocolError("WebTransport record header too long"))
                    }
                    None => return Ok(()),
                }
            };
            let used = total - before;
            if used <= data.len() as u64 {
                data = &data[used as usize..];
            } else {
                self.skip = used - data.len() as u64;
                data = &[];
            }
        }
    }
}

/// Opens a client endpoint (own UDP socket, bound to `source` if given) and a
/// session to `url` trusting only `hash`, within `timeout`.
async fn open(
    target: &Target,
    source: Option<IpAddr>,
    url: &str,
    hash: [u8; 32],
    timeout: Duration,
) -> Option<(Endpoint<Client>, Connection)> {
    let result = async {
        let ip = source.unwrap_or(match target.addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let config = ClientConfig::builder()
            .with_bind_address(SocketAddr::new(ip, 0))
            .with_server_certificate_hashes([Sha256Digest::new(hash)])
            .build();
        let endpoint = Endpoint::client(config).map_err(ConnError::Io)?;
        match tokio::time::timeout(timeout, endpoint.connect(url)).await {
            Ok(Ok(conn)) => Ok((endpoint, conn)),
            Ok(Err(ConnectingError::ConnectionError(ConnectionError::TimedOut))) | Err(_) => {
                Err(ConnError::Timeout("WebTransport session setup"))
            }
            Ok(Err(e)) => Err(ConnError::Handshake(HandshakeError::Io(io::Error::other(
                format!("WebTransport: {e}"),
            )))),
        }
    }
    .await;
    net::finish_attempt(result, target)
}

/// How a session ended, from the error its connection reports.
fn end_of(e: ConnectionError) -> End {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            End::Close(u16::try_from(c.code().into_inner()).ok())
        }
        ConnectionError::LocalH3Error(_) | ConnectionError::QuicProto(_) => {
            End::Protocol(ProtocolError("HTTP/3 or QUIC protocol error"))
        }
        ConnectionError::TimedOut => {
            End::Io(io::Error::new(io::ErrorKind::TimedOut, "QUIC idle timeout"))
        }
        _ => End::Eof,
    }
}

/// Reliable delivery: accepts the server-opened stream and parses its records.
async fn read_stream(conn: &Connection, handler: &mut SubHandler) -> End {
    let mut stream = match conn.accept_uni().await {
        Ok(s) => s,
        Err(e) => return end_of(e),
    };
    let mut reader = RecordReader::default();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        match stream.read(&mut buf).await {
            Ok(Some(n)) => {
                let now = stats::now_ns();
                let r = stats::with_local(|st| {
                    reader.feed(&buf[..n], |op, len, head| {
                        handler.on_message(st, now, op, len, head)
                    })
                });
                handler.flush();
                if let Err(e) = r {
                    return End::Protocol(e);
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    // The stream ended: the session's close (if any) tells why.
    match tokio::time::timeout(Duration::from_millis(250), conn.accept_uni()).await {
        Ok(Err(e)) => end_of(e),
        Ok(Ok(_)) => End::Protocol(ProtocolError("a second server-opened stream")),
        Err(_) => match end {
            None => End::Eof,
            Some(e) => End::Io(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("delivery stream: {e}"),
            )),
        },
    }
}

/// Datagram delivery: one message per datagram.
async fn read_datagrams(conn: &Connection, handler: &mut SubHandler) -> End {
    loop {
        let d = match conn.receive_datagram().await {
            Ok(d) => d,
            Err(e) => return end_of(e),
        };
        let now = stats::now_ns();
        let payload = d.payload();
        match parse_body(&payload, payload.len() as u64) {
            Ok(Some((op, len, head))) => {
                stats::with_local(|st| handler.on_message(st, now, op, len, head));
                handler.flush();
            }
            Ok(None) => return End::Protocol(ProtocolError("truncated datagram")),
            Err(e) => return End::Protocol(e),
        }
    }
}

/// Subscriber `i`: one session, read until it ends or the run is over.
async fn subscriber(i: usize, sh: Arc<Shared>) {
    let ti = i % sh.fan.targets.len();
    let (target, source) = sh.fan.endpoint(i);
    let Some((_endpoint, conn)) =
        open(target, source, &sh.urls[ti], sh.hashes[ti], sh.fan.timeout).await
    else {
        return;
    };
    COUNTERS.live_subs.fetch_add(1, Relaxed);
    let mut handler = SubHandler::new(sh.fan.publishers, sh.fan.size);
    let mut stop = sh.stop.clone();
    let end = tokio::select! {
        end = async {
            match sh.delivery {
                WtDelivery::Reliable => read_stream(&conn, &mut handler).await,
                WtDelivery::Datagram => read_datagrams(&conn, &mut handler).await,
            }
        } => Some(end),
        _ = stop.wait_for(|s| *s) => None,
    };
    handler.flush();
    match end {
        Some(end) => end.record(),
        None => {
            conn.close(0u32.into(), b"loadgen done");
            COUNTERS.live.fetch_sub(1, Relaxed);
        }
    }
    COUNTERS.live_subs.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, v: u64) {
        match v {
            0..=0x3f => out.push(v as u8),
            0x40..=0x3fff => out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes()),
            _ => out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes()),
        }
    }

    fn record(kind: u8, room: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        put_varint(&mut body, room.len() as u64);
        body.extend_from_slice(room);
        body.extend_from_slice(payload);
        let mut out = Vec::new();
        put_varint(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x25]), Some((37, 1)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(varint(&[0x7b]), None);
        assert_eq!(varint(&[]), None);
    }

    #[test]
    fn records_split_anywhere() {
        let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let msgs: Vec<(u8, &[u8], &[u8])> = vec![
            (
                1,
                b"bench",
                b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
            ),
            (0, b"r", b""),
            (1, b"", b"xy"),
            (0, b"room", &big),
            (1, b"bench", b"tail"),
        ];
        let mut stream = Vec::new();
        for (k, r, p) in &msgs {
            stream.extend_from_slice(&record(*k, r, p));
        }
        let expect: Vec<(u8, u64, Vec<u8>)> = msgs
            .iter()
            .map(|(k, _, p)| {
                let op = if *k == 0 { OP_TEXT } else { OP_BINARY };
                (op, p.len() as u64, p[..p.len().min(TEXT_HEAD)].to_vec())
            })
            .collect();
        for step in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut reader = RecordReader::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                reader
                    .feed(chunk, |op, len, head| got.push((op, len, head.to_vec())))
                    .expect("valid records");
            }
            assert_eq!(got, expect, "step {step}");
            assert!(reader.partial.is_empty() && reader.skip == 0);
        }
    }

    #[test]
    fn bad_records_and_datagrams() {
        let mut reader = RecordReader::default();
        assert!(reader.feed(&record(7, b"a", b"x"), |_, _, _| ()).is_err());
        // L smaller than kind + room.
        let mut reader = RecordReader::default();
        assert!(reader.feed(&[2, 1, 5, b'a'], |_, _, _| ()).is_err());
        let d = &record(1, b"bench", b"hello")[1..];
        assert_eq!(
            parse_body(d, d.len() as u64).ok().flatten(),
            Some((OP_BINARY, 5, &b"hello"[..]))
        );
        assert_eq!(parse_body(&d[..3], 3).ok().flatten(), None);
    }
}
