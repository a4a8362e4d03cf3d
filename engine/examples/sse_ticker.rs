//! Server-Sent Events ticker, the seed's `HandleSSE` example: every stream gets a
//! `tick` event each interval until the client goes away, then the loop ends.
//! Streams also join `?room=` rooms, so room messages (from WebSocket clients or the
//! HTTP publish API) arrive in between.
//!
//! `cargo run -p corecast --example sse_ticker -- 127.0.0.1:9003`, then
//! `curl -N http://127.0.0.1:9003/events?room=news`.

use corecast::ClientHandle;
use std::time::Duration;

use bytes::Bytes;
use corecast::{Config, Engine, Event};
use futures_lite::FutureExt;

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".into())
        .parse()
        .expect("listen address like 127.0.0.1:9003");
    let mut config = Config {
        listen,
        ..Config::default()
    };
    config.sse.endpoints.clear();
    let tick_ms: u64 = std::env::var("TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut engine = Engine::new(config);
    engine.sse("/events", move |stream| async move {
        for room in stream.query_all("room") {
            stream.join_room_resuming(&room);
        }
        let mut n = 0u64;
        loop {
            let tick = async {
                glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
                true
            };
            let gone = async {
                stream.closed().await;
                false
            };
            if !tick.or(gone).await {
                break;
            }
            n += 1;
            let event = Event {
                ty: Some("tick".into()),
                data: Bytes::from(n.to_string()),
                ..Event::default()
            };
            if stream.send_event(&event).is_err() {
                break;
            }
        }
        // Printed so tests can see the handler's future finished when the client left.
        println!("ticker ended after {n} ticks");
    });
    let running = engine.start().expect("start");
    println!(
        "sse_ticker listening on http://{}/events",
        running.local_addr()
    );
    running.wait().expect("shards");
}
