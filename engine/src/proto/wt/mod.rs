//! WebTransport over HTTP/3, sans-IO: the session layer that sits directly on a
//! quiche QUIC connection ([`session`]), HTTP/3 frames ([`frame`]), capsules
//! ([`capsule`]), QUIC varints ([`varint`]) and corecast's message records on
//! WebTransport streams and datagrams ([`record`]).

pub mod capsule;
pub mod frame;
pub mod record;
pub mod session;
pub mod varint;

#[cfg(test)]
mod pair_tests;
