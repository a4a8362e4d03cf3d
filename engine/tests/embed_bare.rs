//! An embedder's engine from `Config::bare()`: only what it registers is served,
//! over a real socket.

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

#[test]
fn a_bare_config_serves_only_the_registered_endpoint() {
    let mut config = Config::bare();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.shards = Shards::Count(1);
    config.runtime.io_memory = 128 * 1024;
    let mut engine = Engine::new(config);
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
    running.stop().expect("stop");
}
