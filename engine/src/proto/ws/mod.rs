//! WebSocket (RFC 6455) with permessage-deflate (RFC 7692), sans-IO.
//!
//! - [`handshake`]: validate an upgrade request and build the 101 response;
//! - [`frame`]: the server-side decoder (unmasks in place, reassembles fragments,
//!   validates UTF-8, enforces limits) and the encoder for outgoing frames;
//! - [`session`]: the connection's life after the upgrade (what frames mean,
//!   ping answers, the close handshake, failing fast): bytes and events out;
//! - [`close`]: close codes and which ones a peer may send;
//! - [`deflate`]: extension negotiation, per-message inflate with a size cap, deflate;
//! - [`utf8`]: incremental UTF-8 validation across fragments.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod session;
pub mod utf8;

pub use close::CloseCode;
pub use frame::{Decoder, Incoming, Limits, OpCode, ProtocolError};
