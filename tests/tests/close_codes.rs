//! Close codes: each protocol violation closes the connection with the code
//! RFC 6455 assigns to it, and valid close frames are echoed.

use corecast_tests::raw::{Frame, WsConn, OP_CLOSE, OP_PING};
use corecast_tests::{Server, ServerOptions};

/// A connection to the echo endpoint of `server`.
async fn echo(server: &Server) -> WsConn {
    WsConn::connect(server.addr(), "/ws/echo").await
}

/// Sends `frames` (masked; errors ignored, the server may already be closing)
/// and asserts the server closes with `code`.
async fn expect_code_after(server: &Server, frames: &[Frame], code: u16) {
    let mut conn = echo(server).await;
    for f in frames {
        let _ = conn.send(f).await;
    }
    conn.expect_close_code(code).await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    let server = Server::start().await;
    let mut conn = echo(&server).await;
    let _ = conn.send_unmasked(&Frame::text("no mask")).await;
    conn.expect_close_code(1002).await;
}

#[tokio::test]
async fn reserved_bits_without_extension_close_1002() {
    let server = Server::start().await;
    for rsv in [0b100, 0b010, 0b001, 0b111] {
        expect_code_after(&server, &[Frame::text("rsv").rsv(rsv)], 1002).await;
    }
    // Also on a control frame.
    expect_code_after(&server, &[Frame::ping("rsv").rsv(0b010)], 1002).await;
}

#[tokio::test]
async fn reserved_opcodes_close_1002() {
    let server = Server::start().await;
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut conn = echo(&server).await;
        let _ = conn.send(&Frame::new(opcode, b"x".to_vec())).await;
        let closed = conn.expect_close().await;
        assert_eq!(closed.code, Some(1002), "opcode {opcode:#x}: {closed:?}");
    }
}

#[tokio::test]
async fn fragmented_control_frame_closes_1002() {
    let server = Server::start().await;
    expect_code_after(&server, &[Frame::ping("frag").fin(false)], 1002).await;
    expect_code_after(&server, &[Frame::close(1000, b"").fin(false)], 1002).await;
}

#[tokio::test]
async fn control_frame_over_125_bytes_closes_1002() {
    let server = Server::start().await;
    expect_code_after(&server, &[Frame::ping(vec![b'p'; 126])], 1002).await;
    let mut long_close = 1000u16.to_be_bytes().to_vec();
    long_close.extend(vec![b'r'; 124]);
    expect_code_after(&server, &[Frame::new(OP_CLOSE, long_close)], 1002).await;
}

#[tokio::test]
async fn continuation_without_start_closes_1002() {
    let server = Server::start().await;
    expect_code_after(&server, &[Frame::cont("orphan")], 1002).await;
    expect_code_after(&server, &[Frame::cont("orphan").fin(false)], 1002).await;
}

#[tokio::test]
async fn new_data_frame_during_fragmented_message_closes_1002() {
    let server = Server::start().await;
    expect_code_after(
        &server,
        &[Frame::text("first").fin(false), Frame::text("second")],
        1002,
    )
    .await;
    expect_code_after(
        &server,
        &[Frame::text("first").fin(false), Frame::binary("second")],
        1002,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_1007() {
    let server = Server::start().await;
    for bad in [
        &b"\xff"[..],
        b"abc\xc0\xafdef",   // overlong '/'
        b"\xed\xa0\x80",     // UTF-16 surrogate
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    ] {
        expect_code_after(&server, &[Frame::text(bad.to_vec())], 1007).await;
    }
}

#[tokio::test]
async fn invalid_utf8_across_fragments_closes_1007() {
    let server = Server::start().await;
    // Each fragment is fine on its own boundary-wise, the joined text is not.
    expect_code_after(
        &server,
        &[
            Frame::text(b"valid \xe2\x82".to_vec()).fin(false),
            Frame::cont(b"\x28 not a continuation byte".to_vec()),
        ],
        1007,
    )
    .await;
    // A message ending inside a code point.
    expect_code_after(
        &server,
        &[
            Frame::text(b"ends mid code point ".to_vec()).fin(false),
            Frame::cont(b"\xe2\x82".to_vec()),
        ],
        1007,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_close_reason_closes_1007() {
    let server = Server::start().await;
    expect_code_after(&server, &[Frame::close(1000, b"bad \xff reason")], 1007).await;
}

#[tokio::test]
async fn frame_over_max_frame_size_closes_1009() {
    let server = Server::start_with(
        ServerOptions::shards(1)
            .set("websocket.max_frame_size", "1024")
            .set("websocket.max_message_size", "4096"),
    )
    .await;
    expect_code_after(&server, &[Frame::binary(vec![7u8; 1025])], 1009).await;
    // The limit applies to the length in the header: the server need not wait
    // for a payload it will refuse anyway.
    let mut conn = echo(&server).await;
    let header_only = Frame::binary(Vec::new()).encode_with_len(Some([1, 2, 3, 4]), 1 << 20);
    conn.send_bytes(&header_only).await.unwrap();
    conn.expect_close_code(1009).await;
    // At the limit is fine.
    let mut conn = echo(&server).await;
    conn.send(&Frame::binary(vec![7u8; 1024])).await.unwrap();
    assert_eq!(conn.recv_message().await.2.len(), 1024);
}

#[tokio::test]
async fn message_over_max_message_size_closes_1009() {
    let server = Server::start_with(
        ServerOptions::shards(1)
            .set("websocket.max_frame_size", "1024")
            .set("websocket.max_message_size", "4096"),
    )
    .await;
    let mut frames = vec![Frame::binary(vec![1u8; 1000]).fin(false)];
    for _ in 0..3 {
        frames.push(Frame::cont(vec![1u8; 1000]).fin(false));
    }
    frames.push(Frame::cont(vec![1u8; 1000])); // 5000 > 4096
    expect_code_after(&server, &frames, 1009).await;
    // 4 x 1024 = exactly the limit is fine.
    let mut conn = echo(&server).await;
    conn.send(&Frame::text(vec![b'a'; 1024]).fin(false))
        .await
        .unwrap();
    for i in 0..3 {
        conn.send(&Frame::cont(vec![b'a'; 1024]).fin(i == 2))
            .await
            .unwrap();
    }
    assert_eq!(conn.recv_message().await.2.len(), 4096);
}

#[tokio::test]
async fn close_with_one_byte_payload_closes_1002() {
    let server = Server::start().await;
    expect_code_after(&server, &[Frame::new(OP_CLOSE, vec![0x03])], 1002).await;
}

#[tokio::test]
async fn close_with_invalid_code_closes_1002() {
    let server = Server::start().await;
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut conn = echo(&server).await;
        let _ = conn.send(&Frame::close(code, b"")).await;
        let closed = conn.expect_close().await;
        assert_eq!(closed.code, Some(1002), "close code {code}: {closed:?}");
    }
}

#[tokio::test]
async fn close_with_valid_code_is_echoed() {
    let server = Server::start().await;
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut conn = echo(&server).await;
        conn.send(&Frame::close(code, b"reason \xe2\x9c\x93"))
            .await
            .unwrap();
        let closed = conn.expect_close().await;
        assert_eq!(closed.code, Some(code), "close code {code}: {closed:?}");
    }
}

#[tokio::test]
async fn frames_after_close_are_ignored() {
    let server = Server::start().await;
    let mut conn = echo(&server).await;
    conn.send(&Frame::close(1000, b"")).await.unwrap();
    let _ = conn.send(&Frame::text("after close")).await;
    let _ = conn.send(&Frame::new(OP_PING, b"after".to_vec())).await;
    // Only the close echo comes back, then TCP closes (expect_close skips any
    // data frame, so look at the next frame directly).
    let f = conn.recv().await;
    assert_eq!(f.opcode, OP_CLOSE, "server answered after close: {f:?}");
    assert_eq!(f.close_code(), Some(1000));
}

#[tokio::test]
async fn two_shard_server_applies_the_same_rules() {
    let server = Server::start_with(ServerOptions::shards(2)).await;
    // Enough connections that both shards get some.
    for _ in 0..8 {
        let mut conn = echo(&server).await;
        let _ = conn.send_unmasked(&Frame::text("x")).await;
        conn.expect_close_code(1002).await;
        expect_code_after(&server, &[Frame::text(b"\xff".to_vec())], 1007).await;
    }
}
