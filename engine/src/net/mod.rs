//! The glue between sockets and the sans-IO codecs: per-shard state and the
//! cross-shard protocol ([`shard`]), connections ([`conn`]) driven without a task each
//! by the shard's [`driver`] ([`session`] holds what it does per connection), the read
//! path with its per-shard arena ([`read`]) the accept/handshake path ([`accept`]) and its limits ([`limits`]).

pub(crate) mod accept;
pub(crate) mod api;
pub(crate) mod boot;
#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod conn_io;
pub(crate) mod driver;
pub(crate) mod endpoint;
pub(crate) mod expiry;
pub(crate) mod fanout;
pub(crate) mod handle;
#[cfg(test)]
pub(crate) mod harness;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod notify;
pub(crate) mod outbox;
pub(crate) mod pending;
pub(crate) mod presence;
#[cfg(feature = "webtransport")]
pub(crate) mod quic;
pub(crate) mod read;
pub(crate) mod registry;
pub(crate) mod sequencer;
pub(crate) mod shard;
pub(crate) mod socket;
pub(crate) mod stall;
pub(crate) mod tcp_conn;
#[cfg(feature = "tls")]
pub(crate) mod tls;
#[cfg(feature = "webtransport")]
pub(crate) mod udp;
pub(crate) mod upgrade;
#[cfg(feature = "webtransport")]
pub(crate) mod wt_cert;
