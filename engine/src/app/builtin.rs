//! The endpoint kinds `config.yaml` can name, written against the public callback API.

use super::callbacks::WsCallbacks;
use super::client::ClientHandle;
use super::connection::Connection;
use super::message::Message;

/// `kind: rooms` (WebSocket) and the SSE endpoints: join every `?room=` (resuming
/// from the request's cursor), broadcast every message received to those rooms.
#[derive(Debug, Default)]
pub struct Rooms;

impl WsCallbacks for Rooms {
    fn on_open(&self, conn: &Connection) {
        for room in conn.query_all("room") {
            conn.join_room_resuming(&room);
        }
    }

    fn on_message(&self, conn: &Connection, msg: Message) {
        // A refused publish (owner shard overloaded, cluster broker unreachable) is
        // counted in /stats and answered with an error frame naming the room.
        for room in conn.rooms() {
            if let Err(e) = conn.broadcast(&room, msg.clone()) {
                let _ = conn.send(crate::net::shard::publish_error_frame(&room, e));
            }
        }
    }
}

/// `kind: echo`: send every message back.
#[derive(Debug, Default)]
pub struct Echo;

impl WsCallbacks for Echo {
    fn on_message(&self, conn: &Connection, msg: Message) {
        let _ = conn.send(msg);
    }
}
