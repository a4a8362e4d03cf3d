//! The echo endpoint: every message comes back unchanged, whatever its size or
//! framing; pings are answered; the closing handshake is echoed.

use corecast_tests::client::{self, recv, recv_any, send, send_text};
use corecast_tests::raw::{Frame, WsConn, OP_BINARY, OP_PONG, OP_TEXT};
use corecast_tests::{Server, ServerOptions};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echo_returns_text_message() {
    let server = Server::start().await;
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    for text in ["hello", "héllo wörld ✓ 😀", "x"] {
        send_text(&mut ws, text).await;
        assert_eq!(recv(&mut ws).await, Message::Text(text.into()));
    }
}

#[tokio::test]
async fn echo_returns_binary_message() {
    let server = Server::start().await;
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    send(&mut ws, Message::Binary(data.clone())).await;
    assert_eq!(recv(&mut ws).await, Message::Binary(data));
}

#[tokio::test]
async fn echo_returns_empty_text_and_binary_messages() {
    let server = Server::start().await;
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    send(&mut ws, Message::Text(String::new())).await;
    assert_eq!(recv(&mut ws).await, Message::Text(String::new()));
    send(&mut ws, Message::Binary(Vec::new())).await;
    assert_eq!(recv(&mut ws).await, Message::Binary(Vec::new()));
}

#[tokio::test]
async fn echo_returns_one_mebibyte_message() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    // Exactly websocket.max_message_size (= max_frame_size) in the default config.
    let data: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    send(&mut ws, Message::Binary(data.clone())).await;
    match recv(&mut ws).await {
        Message::Binary(got) => {
            assert_eq!(got.len(), data.len());
            assert!(got == data, "1 MiB echo differs");
        }
        other => panic!("expected binary, got {other:?}"),
    }
    let text = "abcdefghij".repeat(104_857);
    send_text(&mut ws, text.clone()).await;
    assert_eq!(recv(&mut ws).await, Message::Text(text));
}

#[tokio::test]
async fn echo_keeps_order_of_pipelined_messages() {
    let server = Server::start().await;
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    for i in 0..1000 {
        ws.feed(Message::Text(format!("msg-{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(recv(&mut ws).await, Message::Text(format!("msg-{i}")));
    }
}

#[tokio::test]
async fn ping_gets_pong_with_same_payload() {
    let server = Server::start().await;
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    for payload in [Vec::new(), b"ping-payload".to_vec(), vec![0xAB; 125]] {
        send(&mut ws, Message::Ping(payload.clone())).await;
        assert_eq!(recv_any(&mut ws).await, Message::Pong(payload));
    }
    // Raw: a ping between the fragments of a message is answered at once.
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    conn.send(&Frame::text("frag-").fin(false)).await.unwrap();
    conn.send(&Frame::ping("mid")).await.unwrap();
    let pong = conn.recv().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"mid"[..])
    );
    conn.send(&Frame::cont("ment")).await.unwrap();
    let (op, _, payload) = conn.recv_message().await;
    assert_eq!((op, payload.as_slice()), (OP_TEXT, &b"frag-ment"[..]));
}

#[tokio::test]
async fn fragmented_text_message_is_echoed_whole() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    conn.send(&Frame::text("Hel").fin(false)).await.unwrap();
    conn.send(&Frame::cont("lo, ").fin(false)).await.unwrap();
    conn.send(&Frame::cont("").fin(false)).await.unwrap();
    conn.send(&Frame::cont("world")).await.unwrap();
    let (op, rsv, payload) = conn.recv_message().await;
    assert_eq!(op, OP_TEXT);
    assert_eq!(rsv, 0);
    assert_eq!(String::from_utf8(payload).unwrap(), "Hello, world");
}

#[tokio::test]
async fn fragmented_binary_message_is_echoed_whole() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<&[u8]> = data.chunks(65_536).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut f = if i == 0 {
            Frame::binary(chunk.to_vec())
        } else {
            Frame::cont(chunk.to_vec())
        };
        f = f.fin(i + 1 == chunks.len());
        conn.send(&f).await.unwrap();
    }
    let (op, _, payload) = conn.recv_message().await;
    assert_eq!(op, OP_BINARY);
    assert!(payload == data, "reassembled payload differs");
}

#[tokio::test]
async fn utf8_code_point_split_across_fragments_is_valid() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    let text = "κόσμε €"; // the euro sign is E2 82 AC
    let bytes = text.as_bytes();
    let cut = bytes.len() - 2; // inside the euro sign
    conn.send(&Frame::text(bytes[..cut].to_vec()).fin(false))
        .await
        .unwrap();
    conn.send(&Frame::cont(bytes[cut..].to_vec()))
        .await
        .unwrap();
    let (op, _, payload) = conn.recv_message().await;
    assert_eq!(op, OP_TEXT);
    assert_eq!(payload, bytes);
}

#[tokio::test]
async fn frame_split_across_tcp_writes_is_reassembled() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    let wire = Frame::text("trickled one byte at a time").encode(Some([1, 2, 3, 4]));
    for b in &wire {
        conn.send_bytes(std::slice::from_ref(b)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let (op, _, payload) = conn.recv_message().await;
    assert_eq!(
        (op, payload.as_slice()),
        (OP_TEXT, &b"trickled one byte at a time"[..])
    );
}

#[tokio::test]
async fn many_frames_in_one_tcp_write_are_all_echoed() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    let mut wire = Vec::new();
    for i in 0..200 {
        wire.extend(Frame::text(format!("batch-{i}")).encode(Some([9, 8, 7, 6])));
    }
    conn.send_bytes(&wire).await.unwrap();
    for i in 0..200 {
        let (_, _, payload) = conn.recv_message().await;
        assert_eq!(payload, format!("batch-{i}").as_bytes());
    }
}

#[tokio::test]
async fn close_handshake_echoes_code_1000() {
    let server = Server::start().await;
    // Raw: the server answers our close with the same code and closes TCP.
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    conn.send(&Frame::close(1000, b"bye now")).await.unwrap();
    conn.expect_close_code(1000).await;

    // tokio-tungstenite sees a clean close with code 1000.
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    send_text(&mut ws, "last").await;
    assert_eq!(recv(&mut ws).await, Message::Text("last".into()));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    match recv_any(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected close 1000, got {other:?}"),
    }
}

#[tokio::test]
async fn close_without_code_is_answered() {
    let server = Server::start().await;
    let mut conn = WsConn::connect(server.addr(), "/ws/echo").await;
    conn.send(&Frame::new(corecast_tests::raw::OP_CLOSE, Vec::new()))
        .await
        .unwrap();
    // An empty close is answered with an empty close or 1000 (RFC 6455 7.4.1
    // treats a missing code as 1005, which must not be sent).
    let closed = conn.expect_close().await;
    assert!(
        closed.code.is_none() || closed.code == Some(1000),
        "empty close answered with {closed:?}"
    );
}
