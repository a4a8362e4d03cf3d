//! An embedder's engine from `Config::bare()`: only what it registers is served,
//! over a real socket.

use corecast::ClientHandle;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use corecast::config::Shards;
use corecast::{Config, Engine};

/// The status line the server answers `GET path` (a WebSocket upgrade) with.
fn status_of(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    head.lines().next().unwrap_or_default().to_string()
}

/// `Config::bare()` on a free loopback port, one small shard, a short drain.
fn small_bare_config() -> Config {
    let mut config = Config::bare();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.shards = Shards::Count(1);
    config.runtime.io_memory = 128 * 1024;
    config.shutdown.drain_timeout_ms = 200;
    config
}

#[test]
fn a_bare_config_serves_only_the_registered_endpoint() {
    let mut engine = Engine::new(small_bare_config());
    engine.websocket("/mine", |mut conn| async move {
        while let Some(msg) = conn.recv().await {
            let _ = conn.send(msg);
        }
    });
    let running = engine.start().expect("start");
    let addr = running.local_addr();
    assert!(running.webtransport_addr().is_none(), "WebTransport is off");
    assert_eq!(status_of(addr, "/mine"), "HTTP/1.1 101 Switching Protocols");
    for builtin in ["/ws/chat", "/ws/echo", "/sse"] {
        assert!(
            status_of(addr, builtin).starts_with("HTTP/1.1 404"),
            "{builtin} is served"
        );
    }
    // Awaited from another thread (as a tokio task would): resolves after shutdown.
    let handle = running.handle();
    let waiter = std::thread::spawn(move || futures_lite::future::block_on(handle.stopped()));
    running.handle().shutdown();
    waiter.join().expect("stopped() resolved");
    running.stop().expect("stop");
}

#[test]
fn handlers_spawn_and_sleep_through_corecast_rt() {
    let mut engine = Engine::new(small_bare_config());
    engine.websocket("/later", |mut conn| async move {
        while let Some(msg) = conn.recv().await {
            // A task on the shard that answers after a timer: no glommio import.
            let c = conn.clone();
            corecast::rt::spawn(async move {
                corecast::rt::sleep(Duration::from_millis(5)).await;
                let _ = c.send(msg);
            })
            .detach();
        }
    });
    let running = engine.start().expect("start");
    let addr = running.local_addr();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /later HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("head");
        head.push(byte[0]);
    }
    // A masked text frame "hi" (mask 0): FIN+text, MASK|2, key, payload.
    s.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']).unwrap();
    let mut frame = [0u8; 4];
    s.read_exact(&mut frame).expect("echo after the timer");
    assert_eq!(frame, [0x81, 2, b'h', b'i']);
    running.stop().expect("stop");
}
