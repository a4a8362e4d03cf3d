//! The endpoint kinds `config.yaml` can name, written against the public handler API.

use super::conn::WsConn;

/// `kind: rooms`: join every `?room=`, broadcast every message to those rooms.
pub async fn rooms(mut conn: WsConn) {
    let rooms: Vec<String> = conn.query_all("room").map(str::to_string).collect();
    for room in &rooms {
        conn.join_room(room);
    }
    while let Some(msg) = conn.recv().await {
        // A refused broadcast (owner shard overloaded) is counted in /stats.
        let _ = conn.broadcast_to_my_rooms(&msg);
    }
}

/// `kind: echo`: send every message back.
pub async fn echo(mut conn: WsConn) {
    while let Some(msg) = conn.recv().await {
        if conn.send(msg).is_err() {
            break;
        }
    }
}
