//! `tls_fanout`: room fan-out over `wss://` or `ws://`, to compare the TLS listener
//! with the plain one (docs/BENCHMARKS.md, "TLS").
//!
//! N subscribers and one publisher join one room; the publisher sends `--size`-byte
//! text messages in batches of `--window` and waits for its own batch to come back
//! (it is a member too), so the server runs at its maximum rate. Reports deliveries
//! per second, the server's CPU per delivery (`--pid`, from /proc) and the frames per
//! write the server counted (`--stats`, the plain listener's `/stats`). One JSON line
//! on stdout. Single-threaded tokio runtime: pin it with `taskset`.
//!
//! ```text
//! tls_fanout --addr 127.0.0.1:8443 --ca cert.pem --stats 127.0.0.1:8080 --pid PID \
//!     --subscribers 1000 --size 64 --warmup 2 --duration 8
//! ```
//! Without `--ca` the connections are plain `ws://`.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Pin<Box<dyn Io>>;

struct Args {
    addr: SocketAddr,
    ca: Option<String>,
    stats: Option<SocketAddr>,
    pid: Option<u32>,
    subscribers: usize,
    size: usize,
    window: usize,
    warmup: u64,
    duration: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8443".parse().expect("default"),
        ca: None,
        stats: None,
        pid: None,
        subscribers: 1000,
        size: 64,
        window: 64,
        warmup: 2,
        duration: 8,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: bad value {v:?}");
        match flag.as_str() {
            "--addr" => a.addr = v.parse().map_err(|_| format!("--addr: bad value {v:?}"))?,
            "--ca" => a.ca = Some(v.clone()),
            "--stats" => a.stats = Some(v.parse().map_err(|_| format!("--stats: bad {v:?}"))?),
            "--pid" => a.pid = Some(v.parse().map_err(bad)?),
            "--subscribers" => a.subscribers = v.parse().map_err(bad)?,
            "--size" => a.size = v.parse().map_err(bad)?,
            "--window" => a.window = v.parse().map_err(bad)?,
            "--warmup" => a.warmup = v.parse().map_err(bad)?,
            "--duration" => a.duration = v.parse().map_err(bad)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn tls_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))?
    {
        roots
            .add(c.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn open(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>, path: &str) -> Stream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut s: Stream = match tls {
        Some(c) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            Box::pin(
                tokio_rustls::TlsConnector::from(c)
                    .connect(name, tcp)
                    .await
                    .expect("TLS handshake"),
            )
        }
        None => Box::pin(tcp),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.expect("read upgrade");
        assert!(n == 1, "closed during upgrade");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Counts complete data frames in `buf[..]`, keeping a partial frame's bytes.
fn count_frames(buf: &mut Vec<u8>) -> u64 {
    let mut pos = 0;
    let mut n = 0;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            break;
        }
        let (len, hdr) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            126 | 127 => break,
            l => (l as usize, 2),
        };
        if rest.len() < hdr + len {
            break;
        }
        if matches!(rest[0] & 0x0f, 1 | 2) {
            n += 1;
        }
        pos += hdr + len;
    }
    buf.drain(..pos);
    n
}

fn text_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0x81];
    match size {
        0..=125 => f.push(0x80 | size as u8),
        126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]); // zero mask key: payload as is
    f.extend(std::iter::repeat_n(b'x', size));
    f
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn server_stats(addr: SocketAddr) -> Option<(u64, u64)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some((v["frames_written"].as_u64()?, v["writes"].as_u64()?))
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tls_fanout: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let tls = args
        .ca
        .as_deref()
        .map(|ca| tls_config(ca).expect("CA file"));
    let path = "/ws/chat?room=tlsbench";
    let delivered = Arc::new(AtomicU64::new(0));
    for i in 0..args.subscribers {
        let mut s = open(args.addr, tls.clone(), path).await;
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        delivered.fetch_add(count_frames(&mut buf), Relaxed);
                    }
                }
            }
        });
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let mut publisher = open(args.addr, tls.clone(), path).await;
    let batch: Vec<u8> = text_frame(args.size).repeat(args.window);
    let run = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            publisher.write_all(&batch).await.expect("publish");
            let mut back = 0;
            while back < args.window as u64 {
                let n = publisher.read(&mut chunk).await.expect("read");
                assert!(n > 0, "publisher closed");
                buf.extend_from_slice(&chunk[..n]);
                back += count_frames(&mut buf);
            }
        }
    };
    let measure = async {
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        let d0 = delivered.load(Relaxed);
        let c0 = args.pid.and_then(cpu_ticks);
        let s0 = args.stats.and_then(server_stats);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
        let secs = t0.elapsed().as_secs_f64();
        let d = delivered.load(Relaxed) - d0;
        let c1 = args.pid.and_then(cpu_ticks);
        let s1 = args.stats.and_then(server_stats);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = match (c0, c1) {
            (Some(a), Some(b)) => Some((b - a) as f64 / hz / secs),
            _ => None,
        };
        let fpw = match (s0, s1) {
            (Some((f0, w0)), Some((f1, w1))) if w1 > w0 => {
                Some((f1 - f0) as f64 / (w1 - w0) as f64)
            }
            _ => None,
        };
        let rate = d as f64 / secs;
        println!(
            "{}",
            serde_json::json!({
                "transport": if tls.is_some() { "wss" } else { "ws" },
                "subscribers": args.subscribers,
                "size": args.size,
                "deliveries_per_s": rate.round(),
                "server_cpu": cpu.map(|c| (c * 1000.0).round() / 1000.0),
                "server_ns_per_delivery": cpu.map(|c| (c * 1e9 / rate).round()),
                "frames_per_write": fpw.map(|f| (f * 100.0).round() / 100.0),
            })
        );
    };
    tokio::select! {
        _ = run => {}
        _ = measure => {}
    }
}
