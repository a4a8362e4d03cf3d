//! The HTTP publish API, served on the same listeners as the streams:
//!
//! - `POST /api/rooms/{room}/publish` — body is the message (UTF-8 becomes a text
//!   message, anything else binary); answers the position the room's owner gave it.
//! - `GET /api/rooms/{room}` — members by transport (summed over shards) and the
//!   room's current position.
//!
//! Both need the configured key as `Authorization: Bearer KEY` or `X-API-Key: KEY`.

use std::rc::Rc;
#[cfg(feature = "cluster")]
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;

use futures_lite::{AsyncWriteExt, FutureExt};

use super::fanout::cursor;
use super::read::read_into;
use super::shard::Shard;
use super::socket::Socket;
use crate::proto::http::{self, Request};
use crate::vocab::message::Message;
use corecast_shards::ConnId;

/// How long a publish waits for the owner shard's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest room name accepted, bytes.
const MAX_ROOM_NAME: usize = 256;

/// How long a client has to send a publish body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(shard: Rc<Shard>, stream: Socket, req: Request, pending: BytesMut) {
    let stream = RefCell::new(stream);
    let resp = respond(&shard, &stream, &req, pending).await;
    let _ = stream.into_inner().write_all(&resp).await;
}

async fn respond(
    shard: &Rc<Shard>,
    stream: &RefCell<Socket>,
    req: &Request,
    pending: BytesMut,
) -> Vec<u8> {
    let Some(key) = shard.shared.api_key.as_deref() else {
        return http::response(
            404,
            "Not Found",
            &[],
            "the publish API is disabled (set api.key)",
        );
    };
    if !authorized(req, key) {
        return http::response(
            401,
            "Unauthorized",
            &[("WWW-Authenticate", "Bearer")],
            "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
        );
    }
    if let Some(rest) = req.path.strip_prefix("/api/connections/") {
        return connections(shard, stream, req, pending, rest).await;
    }
    let Some(rest) = req.path.strip_prefix("/api/rooms/") else {
        return http::response(404, "Not Found", &[], &format!("no API route {}", req.path));
    };
    let (raw_room, action) = match rest.split_once('/') {
        Some((room, action)) => (room, Some(action)),
        None => (rest, None),
    };
    let room = http::percent_decode(raw_room);
    if room.is_empty() || room.len() > MAX_ROOM_NAME {
        return http::response(400, "Bad Request", &[], "room name must be 1 to 256 bytes");
    }
    match (req.method.as_str(), action) {
        ("POST", Some("publish")) => publish(shard, stream, req, pending, &room).await,
        ("GET", None) => room_info(shard, &room).await,
        ("GET", Some("connections")) => room_connections(shard, req, &room).await,
        ("GET", Some("presence")) => room_presence(shard, &room).await,
        (_, Some("publish")) => http::response(
            405,
            "Method Not Allowed",
            &[("Allow", "POST")],
            "publish with POST",
        ),
        (_, None | Some("connections" | "presence")) => {
            http::response(405, "Method Not Allowed", &[("Allow", "GET")], "use GET")
        }
        (_, Some(other)) => {
            http::response(404, "Not Found", &[], &format!("no API action {other:?}"))
        }
    }
}

fn json_response(status: u16, value: &serde_json::Value) -> Vec<u8> {
    let phrase = match status {
        200 => "OK",
        202 => "Accepted",
        _ => "Not Found",
    };
    let mut body = value.to_string();
    body.push('\n');
    http::response_with_type(status, phrase, &[], "application/json", body.as_bytes())
}

fn lookup_failed(e: crate::vocab::registry::LookupError) -> Vec<u8> {
    http::response(
        503,
        "Service Unavailable",
        &[("Retry-After", "1")],
        &e.to_string(),
    )
}

/// `GET /api/connections/{id}` and `POST /api/connections/{id}/send`.
async fn connections(
    shard: &Rc<Shard>,
    stream: &RefCell<Socket>,
    req: &Request,
    pending: BytesMut,
    rest: &str,
) -> Vec<u8> {
    let (raw_id, action) = match rest.split_once('/') {
        Some((id, action)) => (id, Some(action)),
        None => (rest, None),
    };
    // `NODE:SHARD.SLOT.GENERATION` names a connection of another cluster node.
    let (node, raw_id) = match raw_id.split_once(':') {
        Some((node, id)) => (Some(node), id),
        None => (None, raw_id),
    };
    let remote = node.filter(|n| shard.node_id() != Some(*n));
    if let Some(node) = node {
        if !shard.clustered() || !crate::config::valid_node_id(node) {
            return http::response(
                400,
                "Bad Request",
                &[],
                &format!("invalid connection id {rest:?}: NODE:SHARD.SLOT.GENERATION ids need cluster mode and a valid node id"),
            );
        }
    }
    let Ok(id) = raw_id.parse::<ConnId>() else {
        return http::response(
            400,
            "Bad Request",
            &[],
            &format!("invalid connection id {raw_id:?}: ids look like SHARD.SLOT.GENERATION, e.g. 0.12.3"),
        );
    };
    #[cfg(feature = "cluster")]
    if let Some(node) = remote {
        return remote_connection(shard, stream, req, pending, node, id, action).await;
    }
    #[cfg(not(feature = "cluster"))]
    let _ = remote; // alone, an id with a node was refused above
    match (req.method.as_str(), action) {
        ("GET", None) => match shard.lookup_conn(id).await {
            Ok(Some(info)) => json_response(200, &info.to_json()),
            Ok(None) => http::response(404, "Not Found", &[], &format!("no live connection {id}")),
            Err(e) => lookup_failed(e),
        },
        ("POST", Some("send")) => {
            let body = match read_message_body(shard, stream, req, pending).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match shard.send_to_acked(id, body).await {
                Ok(true) => json_response(
                    202,
                    &serde_json::json!({"id": id.to_string(), "queued": true}),
                ),
                Ok(false) => {
                    http::response(404, "Not Found", &[], &format!("no live connection {id}"))
                }
                Err(e) => lookup_failed(e),
            }
        }
        (_, None) => http::response(405, "Method Not Allowed", &[("Allow", "GET")], "use GET"),
        (_, Some("send")) => http::response(
            405,
            "Method Not Allowed",
            &[("Allow", "POST")],
            "send with POST",
        ),
        (_, Some(other)) => {
            http::response(404, "Not Found", &[], &format!("no API action {other:?}"))
        }
    }
}

/// A connection of another node: only `POST .../send` (through the broker).
#[cfg(feature = "cluster")]
async fn remote_connection(
    shard: &Rc<Shard>,
    stream: &RefCell<Socket>,
    req: &Request,
    pending: BytesMut,
    node: &str,
    id: ConnId,
    action: Option<&str>,
) -> Vec<u8> {
    match (req.method.as_str(), action) {
        ("POST", Some("send")) => {
            let msg = match read_message_body(shard, stream, req, pending).await {
                Ok(m) => m,
                Err(resp) => return resp,
            };
            let query = crate::cluster::Query::SendTo {
                node: node.to_string(),
                conn: id,
                msg,
            };
            match shard.cluster_query(query).await {
                crate::cluster::Answer::Sent(true) => json_response(
                    202,
                    &serde_json::json!({"id": format!("{node}:{id}"), "queued": true}),
                ),
                crate::cluster::Answer::Sent(false) => http::response(
                    404,
                    "Not Found",
                    &[],
                    &format!("no live cluster node {node:?}"),
                ),
                _ => broker_unavailable(),
            }
        }
        ("GET", None) => http::response(
            404,
            "Not Found",
            &[],
            "connections of other nodes are looked up on their node",
        ),
        _ => http::response(
            405,
            "Method Not Allowed",
            &[("Allow", "POST")],
            "send with POST .../send",
        ),
    }
}

#[cfg(feature = "cluster")]
fn broker_unavailable() -> Vec<u8> {
    let e = crate::net::shard::BroadcastError::Unavailable;
    error_503(e.code(), &e.to_string())
}

/// 503 with `Retry-After: 1` and `{"error":CODE,"message":..}`.
fn error_503(code: &str, message: &str) -> Vec<u8> {
    let mut body = serde_json::json!({"error": code, "message": message}).to_string();
    body.push('\n');
    http::response_with_type(
        503,
        "Service Unavailable",
        &[("Retry-After", "1")],
        "application/json",
        body.as_bytes(),
    )
}

/// Largest `?limit=` for a room's connection list.
const MAX_LIST: usize = 10_000;

/// `GET /api/rooms/{room}/connections?limit=N` (default 1000).
async fn room_connections(shard: &Rc<Shard>, req: &Request, room: &str) -> Vec<u8> {
    let limit = match http::query_values(&req.query, "limit").first() {
        None => 1000,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST).contains(&n) => n,
            _ => {
                return http::response(
                    400,
                    "Bad Request",
                    &[],
                    &format!("limit must be 1 to {MAX_LIST}, got {v:?}"),
                )
            }
        },
    };
    match shard.lookup_room(room, limit).await {
        Ok((infos, truncated)) => {
            let list: Vec<serde_json::Value> = infos.iter().map(|i| i.to_json()).collect();
            json_response(
                200,
                &serde_json::json!({"room": room, "connections": list, "truncated": truncated}),
            )
        }
        Err(e) => lookup_failed(e),
    }
}

/// `GET /api/rooms/{room}/presence` in cluster mode: every node's members, from
/// Redis.
#[cfg(feature = "cluster")]
async fn cluster_presence(shard: &Rc<Shard>, room: &str) -> Vec<u8> {
    match shard
        .cluster_query(crate::cluster::Query::Presence(Arc::from(room)))
        .await
    {
        crate::cluster::Answer::Presence(list, truncated) => json_response(
            200,
            &serde_json::json!({"room": room, "count": list.len(), "members": list, "truncated": truncated}),
        ),
        _ => broker_unavailable(),
    }
}

/// `GET /api/rooms/{room}/presence`.
async fn room_presence(shard: &Rc<Shard>, room: &str) -> Vec<u8> {
    if shard.shared.config.presence.rule_for(room).is_none() {
        return http::response(
            404,
            "Not Found",
            &[],
            &format!("room {room:?} has no presence (no presence.rooms pattern matches it)"),
        );
    }
    #[cfg(feature = "cluster")]
    if shard.clustered() {
        return cluster_presence(shard, room).await;
    }
    match shard.presence_list(room).await {
        Ok(members) => {
            let list: Vec<serde_json::Value> = members.iter().map(|m| m.to_json()).collect();
            json_response(
                200,
                &serde_json::json!({"room": room, "count": list.len(), "members": list}),
            )
        }
        Err(e) => lookup_failed(e),
    }
}

/// Compare keys without an early exit on the first differing byte.
fn authorized(req: &Request, key: &str) -> bool {
    let presented = req
        .header("authorization")
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .or_else(|| req.header("x-api-key"));
    let Some(p) = presented.map(<[u8]>::trim_ascii) else {
        return false;
    };
    let k = key.as_bytes();
    p.len() == k.len() && p.iter().zip(k).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn publish(
    shard: &Rc<Shard>,
    stream: &RefCell<Socket>,
    req: &Request,
    pending: BytesMut,
    room: &str,
) -> Vec<u8> {
    let msg = match read_message_body(shard, stream, req, pending).await {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    match shard.publish_acked(room, msg, ACK_TIMEOUT).await {
        Ok(pos) => {
            let json = format!(
                "{{\"room\":{},\"id\":\"{}\",\"epoch\":\"{:x}\",\"seq\":{}}}\n",
                serde_json::to_string(room).unwrap_or_default(),
                cursor(pos),
                pos.epoch,
                pos.seq
            );
            http::response_with_type(200, "OK", &[], "application/json", json.as_bytes())
        }
        Err(e) => error_503(e.code(), &e.to_string()),
    }
}

/// The request body as a message (UTF-8 text, else binary), or the error response:
/// Content-Length required (411), at most `websocket.max_message_size` (413).
async fn read_message_body(
    shard: &Shard,
    stream: &RefCell<Socket>,
    req: &Request,
    pending: BytesMut,
) -> Result<Message, Vec<u8>> {
    if req.header("transfer-encoding").is_some() {
        return Err(http::response(
            411,
            "Length Required",
            &[],
            "send the body with Content-Length",
        ));
    }
    let Some(len) = req
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Err(http::response(
            411,
            "Length Required",
            &[],
            "Content-Length is required",
        ));
    };
    let max = shard.shared.config.websocket.max_message_size;
    if len > max {
        return Err(http::response(
            413,
            "Content Too Large",
            &[],
            &format!("body of {len} bytes is over websocket.max_message_size ({max})"),
        ));
    }
    let Some(body) = read_body(shard, stream, pending, len).await else {
        return Err(http::response(
            400,
            "Bad Request",
            &[],
            "body ended before Content-Length bytes",
        ));
    };
    let msg = match std::str::from_utf8(&body) {
        Ok(_) => Message::Text(body),
        Err(_) => Message::Binary(body),
    };
    Ok(msg)
}

/// The first `len` body bytes: what came with the head, then reads until complete.
async fn read_body(
    shard: &Shard,
    stream: &RefCell<Socket>,
    mut buf: BytesMut,
    len: usize,
) -> Option<Bytes> {
    let filled = async {
        while buf.len() < len {
            match read_into(stream, &shard.arena, 16 * 1024, &mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
        true
    }
    .or(async {
        glommio::timer::sleep(BODY_TIMEOUT).await;
        false
    })
    .await;
    filled.then(|| buf.split_to(len).freeze())
}

#[cfg_attr(not(feature = "cluster"), allow(unused_mut))]
async fn room_info(shard: &Rc<Shard>, room: &str) -> Vec<u8> {
    let Some(counts) = shard.room_info(room, ACK_TIMEOUT).await else {
        return http::response(
            503,
            "Service Unavailable",
            &[("Retry-After", "1")],
            "shards did not answer in time",
        );
    };
    let position = match counts.position {
        Some(p) => format!(
            "\"epoch\":\"{:x}\",\"seq\":{},\"id\":\"{}\"",
            p.epoch,
            p.seq,
            cursor(p)
        ),
        None => "\"epoch\":null,\"seq\":0,\"id\":null".to_string(),
    };
    let mut counts = counts;
    let mut nodes = String::new();
    #[cfg(feature = "cluster")]
    if let Some(node) = shard.node_id() {
        match cluster_counts(shard, room, node, &mut counts).await {
            Ok(by_node) => nodes = format!(",\"nodes\":{by_node}"),
            Err(resp) => return resp,
        }
    }
    let json = format!(
        "{{\"room\":{},\"members\":{{\"websocket\":{},\"sse\":{},\"webtransport\":{},\"total\":{}}},{position}{nodes}}}\n",
        serde_json::to_string(room).unwrap_or_default(),
        counts.websocket,
        counts.sse,
        counts.webtransport,
        counts.websocket + counts.sse + counts.webtransport,
    );
    http::response_with_type(200, "OK", &[], "application/json", json.as_bytes())
}

/// Cluster mode: add the other nodes' members of `room` to `counts`; the per-node
/// breakdown as JSON, or the answer to give when Redis cannot be asked.
#[cfg(feature = "cluster")]
async fn cluster_counts(
    shard: &Rc<Shard>,
    room: &str,
    node: &str,
    counts: &mut super::pending::RoomCounts,
) -> Result<serde_json::Value, Vec<u8>> {
    let local = crate::cluster::MemberCounts {
        websocket: counts.websocket,
        sse: counts.sse,
        webtransport: counts.webtransport,
    };
    let others = match shard
        .cluster_query(crate::cluster::Query::Counts(Arc::from(room)))
        .await
    {
        crate::cluster::Answer::Counts(list) => list,
        _ => return Err(broker_unavailable()),
    };
    let mut by_node = serde_json::Map::new();
    for (name, c) in std::iter::once((node.to_string(), local)).chain(others) {
        if name != node {
            counts.websocket += c.websocket;
            counts.sse += c.sse;
            counts.webtransport += c.webtransport;
        }
        by_node.insert(
            name,
            serde_json::json!({"websocket": c.websocket, "sse": c.sse,
                "webtransport": c.webtransport, "total": c.total()}),
        );
    }
    Ok(serde_json::Value::Object(by_node))
}
