//! The glue between sockets and the sans-IO codecs: per-shard state and the
//! cross-shard protocol ([`shard`]), a connection's outbound side ([`peer`]), the read
//! path with its per-shard arena ([`read`]) and the accept/handshake path ([`accept`]).

pub(crate) mod accept;
pub(crate) mod notify;
pub(crate) mod peer;
pub(crate) mod read;
pub(crate) mod shard;
