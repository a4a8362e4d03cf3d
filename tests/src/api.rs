//! A minimal HTTP/1.1 client for the publish API (`POST /api/rooms/{room}/publish`,
//! `GET /api/rooms/{room}`): one request per connection, byte bodies, the
//! response read to its `Content-Length`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{parse_head, HttpResponse};
use crate::sse::percent_encode;
use crate::{within, STEP_TIMEOUT, TEST_API_KEY};

/// Sends `head` (complete, with the final blank line) followed by `body` on a new
/// connection and reads the response (body to `Content-Length`, else to EOF).
pub async fn request_bytes(addr: SocketAddr, head: &str, body: &[u8]) -> HttpResponse {
    let mut stream = within(STEP_TIMEOUT, "connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    stream.write_all(&req).await.expect("write request");
    read_response(&mut stream).await
}

/// Reads one response from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> HttpResponse {
    within(STEP_TIMEOUT, "HTTP response", async {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "EOF before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut response = parse_head(&buf[..end]);
        let mut body = buf[end + 4..].to_vec();
        let len = response
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        loop {
            if len.is_some_and(|l| body.len() >= l) {
                break;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        if let Some(l) = len {
            body.truncate(l);
        }
        response.body = body;
        response
    })
    .await
}

/// `POST /api/rooms/{room}/publish` (room percent-encoded here) with
/// `Authorization: Bearer` [`TEST_API_KEY`].
pub async fn publish_raw(addr: SocketAddr, room: &str, body: &[u8]) -> HttpResponse {
    let head = format!(
        "POST /api/rooms/{}/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TEST_API_KEY}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        percent_encode(room),
        body.len()
    );
    request_bytes(addr, &head, body).await
}

/// What a successful publish answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// `room` as the server decoded it.
    pub room: String,
    /// `<epoch>:<seq>`.
    pub id: String,
    /// The room's epoch, hex.
    pub epoch: String,
    /// The message's sequence number.
    pub seq: u64,
}

/// Publishes `body` to `room`; panics unless 200 with the documented JSON.
pub async fn publish(addr: SocketAddr, room: &str, body: impl AsRef<[u8]>) -> Published {
    let resp = publish_raw(addr, room, body.as_ref()).await;
    assert_eq!(
        resp.status,
        200,
        "publish to {room:?}: {} {}",
        resp.status_line,
        resp.body_text()
    );
    parse_published(&resp)
}

/// Parses a 200 publish response body.
pub fn parse_published(resp: &HttpResponse) -> Published {
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("publish answer is not JSON ({e}): {}", resp.body_text()));
    let room = v["room"].as_str().expect("room").to_string();
    let id = v["id"].as_str().expect("id").to_string();
    let epoch = v["epoch"].as_str().expect("epoch").to_string();
    let seq = v["seq"].as_u64().expect("seq");
    assert_eq!(id, format!("{epoch}:{seq}"), "id is epoch:seq in {v}");
    Published {
        room,
        id,
        epoch,
        seq,
    }
}

/// `GET /api/rooms/{room}` with the test key; panics unless 200 JSON.
pub async fn room_info(addr: SocketAddr, room: &str) -> serde_json::Value {
    let head = format!(
        "GET /api/rooms/{} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {TEST_API_KEY}\r\n\r\n",
        percent_encode(room)
    );
    let resp = request_bytes(addr, &head, b"").await;
    assert_eq!(resp.status, 200, "room info: {}", resp.body_text());
    serde_json::from_slice(&resp.body).expect("room info JSON")
}
