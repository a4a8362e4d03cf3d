//! Sans-IO protocol codecs: no sockets, no clock, no executor. Callers feed bytes in
//! and take bytes (or events) out, which is what the unit tests and fuzz targets do.

pub mod http;
#[cfg(feature = "webtransport")]
pub mod quic_token;
pub mod sse;
pub mod ws;
#[cfg(feature = "webtransport")]
pub mod wt;
