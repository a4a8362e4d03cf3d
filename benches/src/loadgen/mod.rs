//! The loadgen load generator: a small, allocation-light WebSocket and
//! Server-Sent Events client for benchmarking corecast (WebSocket, SSE and
//! WebTransport fan-out, echo round trips, idle connection holding).
//!
//! Everything here is client-side and independent of the server crates: the
//! handshake, frame encoding (masked) and frame parsing (streaming, unmasked)
//! live in [`ws`]; the event-stream request and streaming event parser in
//! [`event_stream`]; WebTransport sessions use the `wtransport` crate, with the
//! rooms endpoint's record parser in [`wt`].

pub mod args;
pub mod echo;
pub mod event_stream;
pub mod fanout;
pub mod idle;
pub mod net;
pub mod pacer;
pub mod payload;
pub mod server_stats;
pub mod sse;
pub mod stats;
pub mod ws;
pub mod wt;
