//! Chat server: clients join rooms from the URL and everything they say goes to
//! everyone in those rooms, on every shard. A ticker thread also broadcasts the
//! time to room `general` through the engine handle.
//!
//! `cargo run -p corecast --example chat -- 127.0.0.1:9002`, then connect to
//! `ws://127.0.0.1:9002/ws/chat?room=general&name=ada`.

use corecast::ClientHandle;
use std::time::Duration;

use corecast::{Config, Engine, Message};

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into())
        .parse()
        .expect("listen address like 127.0.0.1:9002");
    let mut config = Config {
        listen,
        ..Config::default()
    };
    config.websocket.endpoints.clear();
    let mut engine = Engine::new(config);
    engine.websocket("/ws/chat", |mut conn| async move {
        let name = conn
            .query_get("name")
            .unwrap_or_else(|| "anonymous".to_string());
        let _ = conn.set_meta("name", &name);
        let rooms = conn.query_all("room");
        for room in &rooms {
            conn.join(room);
            let _ = conn.broadcast(room, Message::text(format!("* {name} joined {room}")));
        }
        while let Some(msg) = conn.recv().await {
            let Some(text) = msg.as_text() else { continue };
            let line = format!("{name}: {text}");
            for room in &rooms {
                let _ = conn.broadcast(room, Message::text(line.clone()));
            }
        }
        for room in &rooms {
            conn.leave(room);
            let _ = conn.broadcast(room, Message::text(format!("* {name} left {room}")));
        }
    });
    let running = engine.start().expect("start");
    println!(
        "chat listening on ws://{}/ws/chat?room=general",
        running.local_addr()
    );
    let handle = running.handle();
    let tick_ms: u64 = std::env::var("CHAT_TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(tick_ms));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = handle.broadcast("general", Message::text(format!("* tick {now}")));
    });
    running.wait().expect("shards");
}
