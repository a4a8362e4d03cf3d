//! The loadgen load generator: a small, allocation-light WebSocket client for
//! benchmarking corecast (fan-out, echo round trips, idle connection holding).
//!
//! Everything here is client-side and independent of the server crates: the
//! handshake, frame encoding (masked) and frame parsing (streaming, unmasked)
//! live in [`ws`].

pub mod args;
pub mod echo;
pub mod fanout;
pub mod idle;
pub mod net;
pub mod pacer;
pub mod payload;
pub mod server_stats;
pub mod stats;
pub mod ws;
