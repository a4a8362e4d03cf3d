//! `GET /stats` from the server (plain HTTP/1.1, `Connection: close`), summed
//! over all targets. Any failure means "no server stats" (`None`).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::loadgen::net::Target;
use crate::loadgen::ws::find_head_end;

/// The counters loadgen uses from `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Open connections.
    pub connections: u64,
    /// WebSocket frames written.
    pub frames_written: u64,
    /// `send`/`write` calls (writev counts once).
    pub writes: u64,
    /// Bytes written to sockets (0 if the server does not report it).
    pub bytes_written: u64,
    /// Connections accepted since start (0 if not reported).
    pub accepted: u64,
    /// Connections closed as slow consumers (0 if not reported).
    pub slow_consumers: u64,
}

fn field(v: &Value, name: &str) -> Option<u64> {
    let f = v.get(name)?;
    f.as_u64().or_else(|| f.as_f64().map(|x| x.max(0.0) as u64))
}

fn dechunk(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

async fn fetch_one(target: &Target) -> Option<ServerCounters> {
    let work = async {
        let mut s = TcpStream::connect(target.addr).await.ok()?;
        let req = format!(
            "GET /stats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n\r\n",
            target.host
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > (1 << 20) {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            // Stop early once a Content-Length body is complete.
            if let Some(end) = find_head_end(&buf) {
                if let Some(len) = content_length(&buf[..end]) {
                    if buf.len() >= end + len {
                        break;
                    }
                }
            }
        }
        let end = find_head_end(&buf)?;
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let status_ok = head.split(' ').nth(1) == Some("200");
        if !status_ok {
            return None;
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&buf[end..])?
        } else {
            let b = &buf[end..];
            match content_length(&buf[..end]) {
                Some(len) => b.get(..len)?.to_vec(),
                None => b.to_vec(),
            }
        };
        let v: Value = serde_json::from_slice(&body).ok()?;
        Some(ServerCounters {
            connections: field(&v, "connections").unwrap_or(0),
            frames_written: field(&v, "frames_written")?,
            writes: field(&v, "writes")?,
            bytes_written: field(&v, "bytes_written").unwrap_or(0),
            accepted: field(&v, "accepted").unwrap_or(0),
            slow_consumers: field(&v, "slow_consumers").unwrap_or(0),
        })
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()?
}

/// The `Content-Length` of a response head, if present and valid.
pub fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// Sum of `/stats` over all distinct targets, or `None` if any target has no usable stats.
pub async fn fetch(targets: &[Target]) -> Option<ServerCounters> {
    let mut sum = ServerCounters::default();
    for (i, t) in targets.iter().enumerate() {
        // The same server listed twice (e.g. by IP and by name) is counted once.
        if targets[..i].iter().any(|o| o.addr == t.addr) {
            continue;
        }
        let c = fetch_one(t).await?;
        sum.connections += c.connections;
        sum.frames_written += c.frames_written;
        sum.writes += c.writes;
        sum.bytes_written += c.bytes_written;
        sum.accepted += c.accepted;
        sum.slow_consumers += c.slow_consumers;
    }
    Some(sum)
}

/// The `server` block of a result: deltas between two snapshots (or null);
/// `connections` is the server's count at the first snapshot (window start).
pub fn delta_json(
    before: Option<ServerCounters>,
    after: Option<ServerCounters>,
    secs: f64,
) -> Value {
    delta_json_as(before, after, secs, "frames")
}

/// [`delta_json`] with the server's `frames_written` reported as `{unit}_written`,
/// `{unit}_per_write` and `{unit}_per_sec` (e.g. `chunks` for SSE, where the
/// server's "frames" are event-stream chunks).
pub fn delta_json_as(
    before: Option<ServerCounters>,
    after: Option<ServerCounters>,
    secs: f64,
    unit: &str,
) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let frames = a.frames_written.saturating_sub(b.frames_written);
    let writes = a.writes.saturating_sub(b.writes);
    let bytes = a.bytes_written.saturating_sub(b.bytes_written);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let mut v = json!({
        "writes": writes,
        "bytes_written": bytes,
        "bytes_per_write": if writes > 0 { Some(round2(bytes as f64 / writes as f64)) } else { None },
        "accepted": a.accepted.saturating_sub(b.accepted),
        "slow_consumers": a.slow_consumers.saturating_sub(b.slow_consumers),
        "connections": b.connections,
    });
    v[format!("{unit}_written")] = json!(frames);
    v[format!("{unit}_per_write")] = json!(if writes > 0 {
        Some(round2(frames as f64 / writes as f64))
    } else {
        None
    });
    v[format!("{unit}_per_sec")] = json!(if secs > 0.0 {
        (frames as f64 / secs).round()
    } else {
        0.0
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcdef"[..])
        );
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Some(12)
        );
    }

    #[test]
    fn delta_names_the_unit() {
        let b = ServerCounters {
            frames_written: 10,
            writes: 5,
            bytes_written: 100,
            ..ServerCounters::default()
        };
        let a = ServerCounters {
            frames_written: 30,
            writes: 10,
            bytes_written: 600,
            ..b
        };
        let v = delta_json_as(Some(b), Some(a), 2.0, "chunks");
        assert_eq!(v["chunks_written"], 20);
        assert_eq!(v["chunks_per_write"], 4.0);
        assert_eq!(v["chunks_per_sec"], 10.0);
        assert_eq!(v["bytes_per_write"], 100.0);
        assert!(v.get("frames_written").is_none());
        assert_eq!(delta_json(Some(b), Some(a), 2.0)["frames_per_write"], 4.0);
        assert!(delta_json(None, Some(a), 2.0).is_null());
    }
}
