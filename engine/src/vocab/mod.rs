//! The shared vocabulary every layer above `proto` speaks: the room [`Message`](message::Message),
//! connection metadata ([`Meta`](meta::Meta)), and the registry and presence data types
//! ([`ConnInfo`](registry::ConnInfo), [`PresenceMember`](registry::PresenceMember)).
//! Plain data: no sockets, no shard state, no handlers.

pub mod connect;
pub mod message;
pub mod meta;
pub mod registry;
