//! permessage-deflate (RFC 7692): negotiated when offered and enabled, and
//! compressed messages round-trip; absent when disabled.
//!
//! tokio-tungstenite has no deflate support, so these use the raw client with
//! flate2 doing the (raw deflate, fresh context per message) compression.

use corecast_tests::client;
use corecast_tests::raw::{deflate_message, inflate_message, Frame, WsConn, OP_BINARY, OP_TEXT};
use corecast_tests::{Server, ServerOptions};
use tokio_tungstenite::tungstenite::Message;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";

/// Receives one message and returns `(opcode, payload)`, inflating it when the
/// server compressed it (RSV1 on the first frame).
async fn recv_inflated(conn: &mut WsConn) -> (u8, Vec<u8>) {
    let (op, rsv, payload) = conn.recv_message().await;
    assert_eq!(rsv & 0b011, 0, "server set RSV2/RSV3");
    if rsv & 0b100 != 0 {
        (op, inflate_message(&payload))
    } else {
        (op, payload)
    }
}

#[tokio::test]
async fn compression_is_negotiated_when_offered_and_enabled() {
    let server = Server::start().await;
    let conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let ext = conn
        .response
        .header("sec-websocket-extensions")
        .unwrap_or_else(|| panic!("no extension negotiated: {:?}", conn.response))
        .to_ascii_lowercase();
    let params: Vec<&str> = ext.split(';').map(str::trim).collect();
    assert_eq!(params[0], "permessage-deflate", "{ext}");
    assert!(
        params.contains(&"server_no_context_takeover"),
        "server_no_context_takeover missing: {ext}"
    );
}

#[tokio::test]
async fn compressed_messages_round_trip() {
    let server = Server::start().await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(200);
    for _ in 0..3 {
        let compressed = deflate_message(text.as_bytes());
        assert!(compressed.len() < text.len() / 4);
        conn.send(&Frame::text(compressed).rsv(0b100))
            .await
            .unwrap();
        let (op, got) = recv_inflated(&mut conn).await;
        assert_eq!(op, OP_TEXT);
        assert_eq!(String::from_utf8(got).unwrap(), text);
    }
    // Binary, empty, and an uncompressed message on the same connection.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    conn.send(&Frame::binary(deflate_message(&data)).rsv(0b100))
        .await
        .unwrap();
    assert_eq!(recv_inflated(&mut conn).await, (OP_BINARY, data));
    conn.send(&Frame::text(deflate_message(b"")).rsv(0b100))
        .await
        .unwrap();
    assert_eq!(recv_inflated(&mut conn).await, (OP_TEXT, Vec::new()));
    conn.send(&Frame::text("plain")).await.unwrap();
    assert_eq!(recv_inflated(&mut conn).await, (OP_TEXT, b"plain".to_vec()));
}

#[tokio::test]
async fn server_compresses_large_compressible_messages() {
    let server = Server::start().await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let text = "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb".repeat(1000);
    conn.send(&Frame::text(text.clone())).await.unwrap();
    let (op, rsv, payload) = conn.recv_message().await;
    assert_eq!(op, OP_TEXT);
    assert_eq!(rsv, 0b100, "32 KB of repetitive text was sent uncompressed");
    assert!(payload.len() < text.len() / 10);
    assert_eq!(inflate_message(&payload), text.as_bytes());
}

#[tokio::test]
async fn compressed_fragmented_message_round_trips() {
    let server = Server::start().await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let text = "fragmented and compressed ".repeat(500);
    let compressed = deflate_message(text.as_bytes());
    let third = compressed.len() / 3;
    // RSV1 only on the first frame of the message (RFC 7692 section 6.1).
    conn.send(
        &Frame::text(compressed[..third].to_vec())
            .rsv(0b100)
            .fin(false),
    )
    .await
    .unwrap();
    conn.send(&Frame::cont(compressed[third..2 * third].to_vec()).fin(false))
        .await
        .unwrap();
    conn.send(&Frame::cont(compressed[2 * third..].to_vec()))
        .await
        .unwrap();
    let (op, got) = recv_inflated(&mut conn).await;
    assert_eq!(op, OP_TEXT);
    assert_eq!(String::from_utf8(got).unwrap(), text);
}

#[tokio::test]
async fn compressed_message_over_limit_after_inflation_closes_1009() {
    let server =
        Server::start_with(ServerOptions::shards(1).set("websocket.max_message_size", "65536"))
            .await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    // ~1 KB on the wire, 1 MiB once inflated.
    let bomb = deflate_message(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 4096);
    let _ = conn.send(&Frame::binary(bomb).rsv(0b100)).await;
    conn.expect_close_code(1009).await;
}

#[tokio::test]
async fn invalid_utf8_inside_compressed_text_closes_1007() {
    let server = Server::start().await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let _ = conn
        .send(&Frame::text(deflate_message(b"compressed \xff\xfe text")).rsv(0b100))
        .await;
    conn.expect_close_code(1007).await;
}

#[tokio::test]
async fn rsv1_on_control_or_continuation_frame_closes_1002() {
    let server = Server::start().await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let _ = conn.send(&Frame::ping("p").rsv(0b100)).await;
    conn.expect_close_code(1002).await;

    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    let compressed = deflate_message(b"hello hello hello");
    let _ = conn
        .send(&Frame::text(compressed[..4].to_vec()).rsv(0b100).fin(false))
        .await;
    let _ = conn
        .send(&Frame::cont(compressed[4..].to_vec()).rsv(0b100))
        .await;
    conn.expect_close_code(1002).await;
}

#[tokio::test]
async fn compression_disabled_ignores_offer_and_rejects_rsv1() {
    let server =
        Server::start_with(ServerOptions::shards(1).set("websocket.enable_compression", "false"))
            .await;
    let mut conn = WsConn::connect_with(server.addr(), "/ws/echo", &[OFFER]).await;
    assert_eq!(
        conn.response.header("sec-websocket-extensions"),
        None,
        "compression negotiated although disabled: {:?}",
        conn.response
    );
    let text = "x".repeat(10_000);
    conn.send(&Frame::text(text.clone())).await.unwrap();
    let (op, rsv, payload) = conn.recv_message().await;
    assert_eq!((op, rsv), (OP_TEXT, 0));
    assert_eq!(payload, text.as_bytes());
    let _ = conn
        .send(&Frame::text(deflate_message(b"zzz")).rsv(0b100))
        .await;
    conn.expect_close_code(1002).await;

    // An ordinary client without compression works as usual.
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    client::send_text(&mut ws, "plain").await;
    assert_eq!(client::recv(&mut ws).await, Message::Text("plain".into()));
}

#[tokio::test]
async fn no_offer_means_no_compression() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    assert_eq!(conn.response.header("sec-websocket-extensions"), None);
    let text = "y".repeat(10_000);
    conn.send(&Frame::text(text.clone())).await.unwrap();
    let (op, rsv, payload) = conn.recv_message().await;
    assert_eq!(
        (op, rsv),
        (OP_TEXT, 0),
        "server compressed without negotiation"
    );
    assert_eq!(payload, text.as_bytes());
}
