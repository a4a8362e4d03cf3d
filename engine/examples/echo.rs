//! Echo server: every message comes back to its sender.
//!
//! `cargo run -p corecast --example echo -- 127.0.0.1:9001`, then connect to
//! `ws://127.0.0.1:9001/echo`.

use corecast::ClientHandle;
use corecast::{Config, Engine};

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("listen address like 127.0.0.1:9001");
    let mut config = Config {
        listen,
        ..Config::default()
    };
    config.websocket.endpoints.clear();
    let mut engine = Engine::new(config);
    engine.websocket("/echo", |mut conn| async move {
        while let Some(msg) = conn.recv().await {
            if conn.send(msg).is_err() {
                break;
            }
        }
    });
    let running = engine.start().expect("start");
    println!("echo listening on ws://{}/echo", running.local_addr());
    running.wait().expect("shards");
}
