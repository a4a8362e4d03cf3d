//! WebTransport over HTTP/3 (docs/PROTOCOL.md, "WebTransport over HTTP/3"), with
//! the `wtransport` crate (quinn) as an independent client:
//!
//! - the certificate hash (served at `/webtransport/cert-hash` and printed at
//!   start) names the certificate the QUIC handshake presents;
//! - `/wt/echo`: bidirectional streams (with FIN), unidirectional streams (back on
//!   a server-opened one), datagrams, and a stream reset code mirrored back;
//! - `/wt/chat` (rooms): records on a bidirectional stream reach another
//!   connection's session in order on its one server-opened unidirectional
//!   stream; datagram delivery for rooms named in `datagram=` (an oversized one
//!   is dropped and counted); bad records reset only their stream; a session
//!   that stops reading is closed with 1008;
//! - WebSocket and WebTransport members of one room hear each other;
//! - refusals (unknown path, disallowed `origin`) and an absent `origin`;
//! - a client closing its connection with a code leaves the server healthy and
//!   the session leaves its rooms; so does an idle connection after
//!   `webtransport.idle_timeout`; a server shutdown closes sessions with 1001.
//!
//! wtransport 0.7 puts one session on each QUIC connection and reports every
//! non-2xx answer to the CONNECT as `SessionRejected` (without the status), so
//! these tests check refusals as "refused where the spec says so, accepted
//! where it says so". Every await is bounded.

use std::time::Duration;

use corecast_tests::client::{self, Ws};
use corecast_tests::wt::{self, CertHash, Delivery, Inbox, Session, Via, KIND_BINARY, KIND_TEXT};
use corecast_tests::{api, within, Server, ServerOptions, STEP_TIMEOUT};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wtransport::error::{ConnectingError, ConnectionError, StreamReadError, StreamWriteError};
use wtransport::{RecvStream, SendStream, VarInt};

/// How often a warm-up message is repeated while waiting for a member to be
/// reachable, and how many times at most.
const WARM_UP_EVERY: Duration = Duration::from_millis(300);
const WARM_UP_TRIES: usize = 30;

/// Starts a server with `options` and fetches its certificate hash.
async fn start(options: ServerOptions) -> (Server, CertHash) {
    let server = Server::start_with(options).await;
    let hash = wt::cert_hash(server.addr()).await;
    (server, hash)
}

/// Opens a session on `path` of `server`.
async fn session(server: &Server, hash: &CertHash, path: &str) -> Session {
    wt::connect(hash, &wt::url(server.addr(), path)).await
}

/// Opens a bidirectional stream on `session`.
async fn open_bi(session: &Session) -> (SendStream, RecvStream) {
    within(STEP_TIMEOUT, "open a bidirectional stream", async {
        session
            .open_bi()
            .await
            .expect("open_bi")
            .await
            .expect("bidirectional stream opened")
    })
    .await
}

/// Opens a unidirectional stream on `session`.
async fn open_uni(session: &Session) -> SendStream {
    within(STEP_TIMEOUT, "open a unidirectional stream", async {
        session
            .open_uni()
            .await
            .expect("open_uni")
            .await
            .expect("unidirectional stream opened")
    })
    .await
}

/// Writes `data` and FIN on `send`.
async fn write_and_finish(send: &mut SendStream, data: &[u8]) {
    within(STEP_TIMEOUT, "write a stream and finish it", async {
        send.write_all(data).await.expect("write_all");
        send.finish()
            .await
            .expect("finish (peer acknowledged the FIN)");
    })
    .await
}

/// Writes `data` on `send` (no FIN).
async fn write(send: &mut SendStream, data: &[u8]) {
    within(STEP_TIMEOUT, "write a stream", send.write_all(data))
        .await
        .expect("write_all");
}

/// A deterministic byte pattern of `len` bytes, different per `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + usize::from(seed) * 7) % 251) as u8)
        .collect()
}

/// Sends datagram `payload` on `session` until the same bytes come back (at most
/// 10 tries, 500 ms apart: datagrams are unreliable), ignoring other datagrams.
async fn datagram_round_trip(session: &Session, payload: &[u8]) {
    for _ in 0..10 {
        session.send_datagram(payload).expect("send_datagram");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(got) = tokio::time::timeout_at(deadline, session.receive_datagram()).await {
            let got = got.expect("receive_datagram");
            if got.payload().as_ref() == payload {
                return;
            }
        }
    }
    panic!(
        "datagram of {} bytes never came back in 10 tries",
        payload.len()
    );
}

/// Publishes warm-up text records on `send` (one every [`WARM_UP_EVERY`]) until
/// `inbox` receives a delivery from `room`: the member is then reachable and
/// everything published after that arrives in room order. Returns how many
/// warm-ups were sent. Later deliveries whose text starts with `warm-up` are
/// leftovers to skip.
async fn warm_up_stream(send: &mut SendStream, inbox: &mut Inbox, room: &str) -> usize {
    for k in 0..WARM_UP_TRIES {
        write(
            send,
            &wt::client_record(KIND_TEXT, format!("warm-up {k}").as_bytes()),
        )
        .await;
        let deadline = tokio::time::Instant::now() + WARM_UP_EVERY;
        while let Some(d) = inbox
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if d.room == room && d.kind == KIND_TEXT && d.text().starts_with("warm-up") {
                return k + 1;
            }
        }
    }
    panic!("no warm-up record reached the other member of {room} in {WARM_UP_TRIES} tries");
}

/// The next delivery that is not a warm-up leftover.
async fn next_real(inbox: &mut Inbox, what: &str) -> Delivery {
    loop {
        let d = inbox.next(what).await;
        let warm_up = d.kind == KIND_TEXT
            && std::str::from_utf8(&d.payload).is_ok_and(|t| t.starts_with("warm-up"));
        if !warm_up {
            return d;
        }
    }
}

/// Waits until the server ends `recv`/`send` of a bidirectional stream with an
/// error code (RESET_STREAM on its side, or STOP_SENDING on ours) and returns
/// that code and which signal carried it; panics on a FIN, data, or timeout.
async fn stream_error_code(send: &mut SendStream, recv: &mut RecvStream) -> (VarInt, &'static str) {
    within(STEP_TIMEOUT, "the server to reset the stream", async {
        let mut buf = [0u8; 256];
        tokio::select! {
            r = recv.read(&mut buf) => match r {
                Err(StreamReadError::Reset(code)) => (code, "RESET_STREAM"),
                other => panic!("expected the server to reset the stream, read gave {other:?} ({:?})",
                    other.as_ref().ok().copied().flatten().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())),
            },
            w = send.stopped() => match w {
                StreamWriteError::Stopped(code) => (code, "STOP_SENDING"),
                other => panic!("expected STOP_SENDING from the server, got {other:?}"),
            },
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_hash_is_served_and_printed_and_names_the_handshake_certificate() {
    let (server, hash) = start(ServerOptions::default()).await;
    let port = server.addr().port();
    // `corecast webtransport on https://HOST:PORT (udp; cert sha256 HEX)`, printed
    // after the `listening on` line.
    let line = within(STEP_TIMEOUT, "the `corecast webtransport on` line", async {
        loop {
            if let Some(line) = server
                .output()
                .lines()
                .find(|l| l.contains("webtransport on https://"))
            {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        line.contains(&format!("https://127.0.0.1:{port} ")),
        "WebTransport is not on the TCP listener's address and port {port}: {line:?}"
    );
    let printed_hex = line
        .split("cert sha256 ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no `cert sha256 HEX` in {line:?}"));
    assert_eq!(
        printed_hex.to_ascii_lowercase(),
        hash.hex.to_ascii_lowercase(),
        "printed and served hashes differ"
    );

    // The hash is the handshake certificate's: a session trusting only it opens,
    // one trusting a different hash does not.
    let echo = session(&server, &hash, "/wt/echo").await;
    drop(echo);
    let mut wrong = hash.clone();
    wrong.bytes[0] ^= 0xff;
    let refused = wt::try_connect(&wrong, &wt::url(server.addr(), "/wt/echo"), &[]).await;
    assert!(
        refused.is_err(),
        "a client pinning a different certificate hash connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_session_echoes_bidirectional_streams_with_fin() {
    let (server, hash) = start(ServerOptions::default()).await;
    let echo = session(&server, &hash, "/wt/echo").await;
    // Three streams at once, each written in full, finished, and read to its end.
    let sizes = [1usize, 5_000, 96 * 1024];
    let streams = sizes.iter().enumerate().map(|(i, &len)| {
        let echo = &echo;
        async move {
            let data = pattern(len, i as u8);
            let (mut send, mut recv) = open_bi(echo).await;
            let (_, echoed) = futures_util::future::join(
                write_and_finish(&mut send, &data),
                wt::read_to_end(&mut recv),
            )
            .await;
            let echoed = echoed.unwrap_or_else(|e| panic!("stream {i}: read error {e}"));
            assert_eq!(echoed.len(), data.len(), "stream {i}: echoed length");
            assert!(echoed == data, "stream {i}: echoed bytes differ");
        }
    });
    futures_util::future::join_all(streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_session_echoes_datagrams() {
    let (server, hash) = start(ServerOptions::default()).await;
    let echo = session(&server, &hash, "/wt/echo").await;
    let max = echo
        .max_datagram_size()
        .expect("the server did not enable datagrams (max_datagram_frame_size)");
    assert!(
        max >= 1000,
        "datagram size limit {max} is implausibly small"
    );
    for (i, len) in [1usize, 17, 1000].into_iter().enumerate() {
        datagram_round_trip(&echo, &pattern(len, i as u8)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_session_returns_a_unidirectional_stream_on_a_server_opened_one() {
    let (server, hash) = start(ServerOptions::default()).await;
    let echo = session(&server, &hash, "/wt/echo").await;
    let data = pattern(12_345, 3);
    let mut send = open_uni(&echo).await;
    let (_, reply) = futures_util::future::join(write_and_finish(&mut send, &data), async {
        let mut recv = within(
            STEP_TIMEOUT,
            "the server-opened unidirectional reply stream",
            echo.accept_uni(),
        )
        .await
        .expect("accept_uni");
        wt::read_to_end(&mut recv)
            .await
            .expect("read the reply stream")
    })
    .await;
    assert_eq!(reply.len(), data.len(), "echoed length");
    assert!(reply == data, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_session_mirrors_a_stream_reset_code() {
    let (server, hash) = start(ServerOptions::default()).await;
    let echo = session(&server, &hash, "/wt/echo").await;
    let (mut send, mut recv) = open_bi(&echo).await;
    // Make sure the server has the stream (and its session) before the reset.
    write(&mut send, b"ping").await;
    let mut got = [0u8; 4];
    within(STEP_TIMEOUT, "echo of ping", recv.read_exact(&mut got))
        .await
        .expect("read the echo");
    assert_eq!(&got, b"ping");
    // WebTransport code 7, sent as its HTTP/3 code (wtransport does not map).
    send.reset(wt::wt_code(7)).expect("reset");
    let mut buf = [0u8; 64];
    let r = within(
        STEP_TIMEOUT,
        "the reply side to be reset",
        recv.read(&mut buf),
    )
    .await;
    assert_eq!(
        r,
        Err(StreamReadError::Reset(wt::wt_code(7))),
        "expected the reply side reset with WebTransport code 7 (HTTP/3 code {})",
        wt::wt_code(7)
    );
    // The session is fine afterwards.
    datagram_round_trip(&echo, b"after reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_deliver_a_hundred_stream_records_in_order_to_another_connection() {
    let (server, hash) = start(ServerOptions::shards(2)).await;
    let a = session(&server, &hash, "/wt/chat?room=r").await;
    let b = session(&server, &hash, "/wt/chat?room=r").await;
    let mut inbox_a = Inbox::spawn(&a);
    let mut inbox_b = Inbox::spawn(&b);
    let (mut send, mut recv) = open_bi(&a).await;
    let warm_ups = warm_up_stream(&mut send, &mut inbox_b, "r").await;
    eprintln!("B reachable after {warm_ups} warm-up record(s)");

    let texts: Vec<String> = (0..100).map(|i| format!("message {i:03}")).collect();
    write_and_finish(&mut send, &wt::text_records(&texts)).await;
    // The server answers nothing on a bidirectional stream and finishes its side.
    let answer = wt::read_to_end(&mut recv)
        .await
        .expect("the server's side of the publishing stream");
    assert!(
        answer.is_empty(),
        "the server wrote {answer:02x?} on a publishing stream"
    );

    for (who, inbox) in [("B", &mut inbox_b), ("A (itself)", &mut inbox_a)] {
        for (i, text) in texts.iter().enumerate() {
            let d = next_real(inbox, &format!("{who}: record {i}")).await;
            assert_eq!(
                (d.via, d.kind, d.room.as_str(), d.payload.as_slice()),
                (Via::Stream, KIND_TEXT, "r", text.as_bytes()),
                "{who}: record {i} of 100"
            );
        }
        assert_eq!(
            inbox.streams_opened(),
            1,
            "{who}: one server-opened stream per session"
        );
    }
    assert!(
        inbox_b
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "B got more than was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_named_in_datagram_are_delivered_as_datagrams() {
    let (server, hash) = start(ServerOptions::shards(2)).await;
    let a = session(&server, &hash, "/wt/chat?room=r&room=s").await;
    // B gets room r by datagram and room s reliably.
    let b = session(&server, &hash, "/wt/chat?room=r&room=s&datagram=r").await;
    let mut inbox_b = Inbox::spawn(&b);
    let (mut send, _recv) = open_bi(&a).await;
    // Warm up through room s (reliable): A's records go to both rooms.
    warm_up_stream(&mut send, &mut inbox_b, "s").await;

    /// Collects B's two copies of `text` (room s on the stream, room r in a
    /// datagram), failing on a copy by the wrong way.
    async fn both_copies(inbox: &mut Inbox, kind: u8, payload: &[u8]) -> (bool, bool) {
        let (mut stream, mut datagram) = (false, false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !(stream && datagram) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(d) = inbox.next_within(left).await else {
                break;
            };
            if d.kind == KIND_TEXT
                && std::str::from_utf8(&d.payload).is_ok_and(|t| t.starts_with("warm-up"))
            {
                continue;
            }
            match (d.via, d.room.as_str()) {
                (Via::Stream, "s") | (Via::Datagram, "r") => {}
                _ => panic!("room {} arrived by {:?}: {d:?}", d.room, d.via),
            }
            if d.payload != payload {
                continue; // a duplicate of an earlier datagram-published message
            }
            assert_eq!(d.kind, kind, "kind of {d:?}");
            match d.via {
                Via::Stream => stream = true,
                Via::Datagram => datagram = true,
            }
        }
        (stream, datagram)
    }

    // Published on a stream: one at a time, so no datagram is replaced by a newer one.
    for i in 0..5 {
        let text = format!("by stream {i}");
        write(&mut send, &wt::client_record(KIND_TEXT, text.as_bytes())).await;
        let (stream, datagram) = both_copies(&mut inbox_b, KIND_TEXT, text.as_bytes()).await;
        assert!(stream, "{text:?}: no reliable copy in room s");
        assert!(datagram, "{text:?}: no datagram copy in room r");
    }
    // Published by datagram (text and binary); resent while nothing arrives.
    for (kind, payload) in [
        (KIND_TEXT, b"by datagram".to_vec()),
        (KIND_BINARY, vec![0x00, 0xff, 0x80, 0x41]),
    ] {
        let mut got = (false, false);
        for _ in 0..10 {
            a.send_datagram(wt::client_datagram(kind, &payload))
                .expect("send_datagram");
            got = both_copies(&mut inbox_b, kind, &payload).await;
            if got.0 {
                break;
            }
        }
        assert!(
            got.0,
            "datagram-published {payload:02x?} never reached room s"
        );
        assert!(
            got.1,
            "datagram-published {payload:02x?}: no datagram copy in room r"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_datagram_larger_than_the_limit_is_dropped_and_counted() {
    let (server, hash) = start(ServerOptions::shards(2)).await;
    let mut ws = client::connect(&server.url("/ws/chat?room=big")).await;
    let member = session(&server, &hash, "/wt/chat?room=big&datagram=big").await;
    let limit = member.max_datagram_size().expect("datagrams enabled");
    let mut inbox = Inbox::spawn(&member);
    let mut reached = false;
    for k in 0..WARM_UP_TRIES {
        client::send_text(&mut ws, format!("warm-up {k}")).await;
        if inbox.next_within(WARM_UP_EVERY).await.is_some() {
            reached = true;
            break;
        }
    }
    assert!(reached, "no warm-up datagram reached the member");
    let dropped = |stats: &serde_json::Value| {
        stats["wt_datagrams_dropped"]
            .as_u64()
            .unwrap_or_else(|| panic!("no wt_datagrams_dropped in /stats: {stats}"))
    };
    let before = dropped(&server.stats().await);

    let big = "x".repeat(limit + 100);
    client::send_text(&mut ws, big.clone()).await;
    // A small message after it still arrives (resent: datagrams are unreliable).
    let mut small_arrived = false;
    for k in 0..10 {
        client::send_text(&mut ws, format!("small {k}")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Some(d) = inbox
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            assert!(
                d.payload.len() < limit,
                "a {}-byte message arrived although the datagram limit is {limit}: {:?}",
                d.payload.len(),
                d.via
            );
            small_arrived |= d.text().starts_with("small");
        }
        if small_arrived {
            break;
        }
    }
    assert!(small_arrived, "no datagram after the oversized message");
    // Counters are summed over shards on request; allow a moment to settle.
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let after = dropped(&server.stats().await);
        if after > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wt_datagrams_dropped stayed at {after} (before: {before}) after a {}-byte \
             message to a datagram member with a {limit}-byte limit",
            big.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_slow_consumer_session_is_closed_with_1008() {
    let (server, hash) = start(
        ServerOptions::shards(2)
            .set("websocket.outbound_queue_bytes", "262144")
            .set("websocket.max_message_size", "65536"),
    )
    .await;
    // The publisher gets its own copies as (oversized, dropped) datagrams, so it
    // never becomes a slow consumer itself.
    let publisher = session(&server, &hash, "/wt/chat?room=slow&datagram=slow").await;
    let slow = session(&server, &hash, "/wt/chat?room=slow").await;
    let mut inbox = Inbox::spawn(&slow);
    let (mut send, _recv) = open_bi(&publisher).await;
    warm_up_stream(&mut send, &mut inbox, "slow").await;
    // Stop reading: drop the inbox (its tasks stop; the stream stays open and
    // unread), then publish far more than flow control and the queue hold.
    drop(inbox);
    let record = wt::client_record(KIND_BINARY, &[0x5a; 16 * 1024]);
    let flood = async {
        for _ in 0..400 {
            if send.write_all(&record).await.is_err() {
                break;
            }
        }
    };
    let closed = async {
        loop {
            match slow.accept_uni().await {
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    };
    let (_, err) = within(
        Duration::from_secs(30),
        "the slow session to be closed",
        futures_util::future::join(flood, closed),
    )
    .await;
    match &err {
        ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.code(),
            VarInt::from_u32(1008),
            "slow consumer close: {err}"
        ),
        other => panic!("expected CLOSE_WEBTRANSPORT_SESSION 1008, got {other:?} ({other})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_bad_record_resets_only_its_stream() {
    let (server, hash) =
        start(ServerOptions::shards(2).set("websocket.max_message_size", "1024")).await;
    let a = session(&server, &hash, "/wt/chat?room=bad").await;
    let b = session(&server, &hash, "/wt/chat?room=bad").await;
    let mut inbox_b = Inbox::spawn(&b);
    {
        let (mut send, _recv) = open_bi(&a).await;
        warm_up_stream(&mut send, &mut inbox_b, "bad").await;
    }
    let mut too_large = Vec::new();
    wt::put_varint(&mut too_large, 1 + 1025);
    too_large.push(KIND_BINARY);
    too_large.extend_from_slice(&[0x55; 1025]);
    let cases: [(&str, Vec<u8>, u32); 3] = [
        ("a record of length 0 (no kind byte)", vec![0x00], 1),
        ("a record over max_message_size + 1", too_large, 2),
        (
            "a text record that is not UTF-8",
            wt::client_record(KIND_TEXT, &[b'o', b'k', 0xff, 0xfe]),
            3,
        ),
    ];
    for (i, (what, bad, code)) in cases.into_iter().enumerate() {
        let (mut send, mut recv) = open_bi(&a).await;
        // A good record, then the bad one, in one write: each record before the
        // bad one is still published.
        let before = format!("before bad {i}");
        let mut bytes = wt::client_record(KIND_TEXT, before.as_bytes());
        bytes.extend_from_slice(&bad);
        // The server may stop reading before everything is written.
        let _ = tokio::time::timeout(STEP_TIMEOUT, send.write_all(&bytes)).await;
        let (got, how) = stream_error_code(&mut send, &mut recv).await;
        eprintln!("{what}: the server ended the stream with {how} {got}");
        assert_eq!(
            got,
            wt::wt_code(code),
            "{what}: expected WebTransport code {code} (HTTP/3 {}), got {got} by {how}",
            wt::wt_code(code)
        );
        // The session stays: a good record on a new stream is published.
        let alive = format!("still alive {i}");
        let (mut send, _recv) = open_bi(&a).await;
        write_and_finish(&mut send, &wt::client_record(KIND_TEXT, alive.as_bytes())).await;
        let d = next_real(&mut inbox_b, &format!("before {what}")).await;
        assert_eq!(d.text(), before, "the good record before {what}: {d:?}");
        let d = next_real(&mut inbox_b, &format!("after {what}")).await;
        assert_eq!(d.text(), alive, "after {what}: {d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_webtransport_members_of_a_room_hear_each_other() {
    let (server, hash) = start(ServerOptions::shards(2)).await;
    let mut ws = client::connect(&server.url("/ws/chat?room=x")).await;
    let wt_member = session(&server, &hash, "/wt/chat?room=x").await;
    let mut inbox = Inbox::spawn(&wt_member);
    let (mut send, _recv) = open_bi(&wt_member).await;

    /// The next WebSocket data message that is not a warm-up or one of `own`.
    async fn next_ws(ws: &mut Ws, own: &[Message]) -> Message {
        loop {
            let m = within(STEP_TIMEOUT, "a WebSocket message", ws.next())
                .await
                .expect("websocket ended")
                .expect("websocket error");
            match &m {
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Text(t) if t.starts_with("warm-up") => continue,
                Message::Close(c) => panic!("websocket closed: {c:?}"),
                m if own.contains(m) => continue,
                _ => return m,
            }
        }
    }

    // Warm up WebTransport -> WebSocket.
    let mut reached = false;
    for k in 0..WARM_UP_TRIES {
        write(
            &mut send,
            &wt::client_record(KIND_TEXT, format!("warm-up {k}").as_bytes()),
        )
        .await;
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(WARM_UP_EVERY, ws.next()).await
        {
            if t.starts_with("warm-up") {
                reached = true;
                break;
            }
        }
    }
    assert!(
        reached,
        "no WebTransport warm-up reached the WebSocket member"
    );
    // Warm up WebSocket -> WebTransport.
    let mut reached = false;
    for k in 0..WARM_UP_TRIES {
        client::send_text(&mut ws, format!("warm-up ws {k}")).await;
        if let Some(d) = inbox.next_within(WARM_UP_EVERY).await {
            if d.text().starts_with("warm-up ws") {
                reached = true;
                break;
            }
        }
    }
    assert!(
        reached,
        "no WebSocket warm-up reached the WebTransport member"
    );

    // WebSocket -> WebTransport: text as a 0x00 record, binary as 0x01.
    let ws_text = Message::Text("from websocket ✓".into());
    let ws_binary = Message::Binary(vec![0x00, 0x01, 0xfe, 0xff]);
    client::send(&mut ws, ws_text.clone()).await;
    client::send(&mut ws, ws_binary.clone()).await;
    let d = next_real(&mut inbox, "WebSocket text").await;
    assert_eq!(
        (d.via, d.kind, d.room.as_str(), d.payload.as_slice()),
        (Via::Stream, KIND_TEXT, "x", "from websocket ✓".as_bytes())
    );
    let d = next_real(&mut inbox, "WebSocket binary").await;
    assert_eq!(
        (d.via, d.kind, d.room.as_str(), d.payload.as_slice()),
        (Via::Stream, KIND_BINARY, "x", &[0x00, 0x01, 0xfe, 0xff][..])
    );

    // WebTransport (stream records, then a datagram) -> WebSocket.
    let own = [ws_text, ws_binary];
    let mut records = wt::client_record(KIND_TEXT, "from webtransport ✓".as_bytes());
    records.extend(wt::client_record(KIND_BINARY, &[0xca, 0xfe, 0x00]));
    write(&mut send, &records).await;
    assert_eq!(
        next_ws(&mut ws, &own).await,
        Message::Text("from webtransport ✓".into())
    );
    assert_eq!(
        next_ws(&mut ws, &own).await,
        Message::Binary(vec![0xca, 0xfe, 0x00])
    );
    let mut got = None;
    for _ in 0..10 {
        wt_member
            .send_datagram(wt::client_datagram(KIND_TEXT, b"datagram to websocket"))
            .expect("send_datagram");
        if let Ok(m) =
            tokio::time::timeout(Duration::from_millis(500), next_ws(&mut ws, &own)).await
        {
            got = Some(m);
            break;
        }
    }
    assert_eq!(
        got,
        Some(Message::Text("datagram to websocket".into())),
        "a datagram-published text message on the WebSocket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_refused_and_a_known_one_still_opens() {
    let (server, hash) = start(ServerOptions::default()).await;
    for path in ["/wt/nope", "/ws/chat?room=a", "/"] {
        let r = wt::try_connect(&hash, &wt::url(server.addr(), path), &[]).await;
        assert!(
            matches!(r, Err(ConnectingError::SessionRejected)),
            "{path}: expected the CONNECT to be refused (404), got {:?}",
            r.map(|_| "a session")
        );
    }
    let echo = session(&server, &hash, "/wt/echo").await;
    datagram_round_trip(&echo, b"still serving").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_origin_is_refused_allowed_and_absent_origins_open() {
    let (server, hash) = start(
        ServerOptions::default().set("webtransport.allowed_origins", "[\"https://good.example\"]"),
    )
    .await;
    let url = wt::url(server.addr(), "/wt/echo");
    let refused = wt::try_connect(&hash, &url, &[("origin", "https://evil.example")]).await;
    assert!(
        matches!(refused, Err(ConnectingError::SessionRejected)),
        "origin https://evil.example: expected 403, got {:?}",
        refused.map(|_| "a session")
    );
    let allowed = wt::try_connect(&hash, &url, &[("origin", "https://good.example")])
        .await
        .unwrap_or_else(|e| panic!("allowed origin refused: {e}"));
    datagram_round_trip(&allowed, b"allowed origin").await;
    // The spec refuses only an origin that is present and not listed; native
    // clients send none.
    let absent = wt::try_connect(&hash, &url, &[])
        .await
        .unwrap_or_else(|e| panic!("a CONNECT without origin refused: {e}"));
    datagram_round_trip(&absent, b"no origin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_opens_when_allowed_origins_is_empty() {
    let (server, hash) = start(ServerOptions::default()).await;
    let s = wt::try_connect(
        &hash,
        &wt::url(server.addr(), "/wt/echo"),
        &[("origin", "https://anything.example")],
    )
    .await
    .unwrap_or_else(|e| panic!("origin refused with an empty allowed_origins: {e}"));
    datagram_round_trip(&s, b"any origin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_with_a_code_leaves_the_server_healthy() {
    let (server, hash) = start(ServerOptions::shards(2).api_key()).await;
    let mut ws = client::connect(&server.url("/ws/chat?room=c")).await;
    let first = session(&server, &hash, "/wt/chat?room=c").await;
    let mut inbox = Inbox::spawn(&first);

    /// Sends WebSocket text until `inbox` gets it; returns the delivery.
    async fn ws_to_wt(ws: &mut Ws, inbox: &mut Inbox, text: &str) -> Delivery {
        for k in 0..WARM_UP_TRIES {
            client::send_text(ws, format!("{text} {k}")).await;
            if let Some(d) = inbox.next_within(WARM_UP_EVERY).await {
                return d;
            }
        }
        panic!("{text}: nothing reached the WebTransport member");
    }
    let d = ws_to_wt(&mut ws, &mut inbox, "before close").await;
    assert!(d.text().starts_with("before close"), "{d:?}");
    let members_open = api::room_info(server.addr(), "c").await["members"].clone();
    assert_eq!(
        (&members_open["websocket"], &members_open["webtransport"]),
        (&1.into(), &1.into()),
        "room c members with the session open: {members_open}"
    );

    // QUIC CONNECTION_CLOSE with application code 42 (wtransport 0.7 cannot close
    // just the session).
    drop(inbox);
    first.close_and_wait(42, b"client is done").await;

    // The server keeps serving: new sessions on both endpoints work.
    let second = session(&server, &hash, "/wt/chat?room=c").await;
    let mut inbox = Inbox::spawn(&second);
    let d = ws_to_wt(&mut ws, &mut inbox, "after close").await;
    assert!(d.text().starts_with("after close"), "{d:?}");
    let echo = session(&server, &hash, "/wt/echo").await;
    datagram_round_trip(&echo, b"after a client close").await;

    // The closed session stopped being a member: the room has the WebSocket
    // member and the second session only, as it had with the first one open.
    let addr = server.addr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members = api::room_info(addr, "c").await["members"].clone();
        if members["webtransport"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "10 s after a client closed its connection (code 42) and another session \
             joined, room c has members {members} (with only the first session: \
             {members_open}); /stats: {}",
            server.stats().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_and_its_session_leaves_the_room() {
    let (server, hash) = start(
        ServerOptions::shards(2)
            .api_key()
            .set("webtransport.idle_timeout", "1s"),
    )
    .await;
    let idle = session(&server, &hash, "/wt/chat?room=idle").await;
    let members = api::room_info(server.addr(), "idle").await["members"].clone();
    assert_eq!(
        members["webtransport"], 1,
        "the session is a member: {members}"
    );
    // Nothing is sent either way (wtransport sends no keep-alives): after the
    // negotiated idle timeout of 1 s both ends drop the connection silently.
    let err = within(
        Duration::from_secs(5),
        "the client to see the idle timeout",
        idle.closed(),
    )
    .await;
    assert_eq!(err, ConnectionError::TimedOut, "client side: {err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let members = api::room_info(server.addr(), "idle").await["members"].clone();
        if members["webtransport"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "5 s after the 1 s idle timeout the session is still a member of room idle: \
             {members}; /stats: {}",
            server.stats().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_with_1001() {
    let (mut server, hash) =
        start(ServerOptions::shards(2).set("shutdown.drain_timeout_ms", "2000")).await;
    let chat = session(&server, &hash, "/wt/chat?room=z").await;
    let echo = session(&server, &hash, "/wt/echo").await;
    datagram_round_trip(&echo, b"alive").await;
    server.signal(libc::SIGTERM);
    for (name, s) in [("chat", &chat), ("echo", &echo)] {
        let err = within(
            Duration::from_secs(6),
            &format!("{name}: the session to be closed"),
            s.accept_uni(),
        )
        .await
        .map(|_| "a new stream")
        .expect_err("the session stays open");
        match &err {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    (close.code(), close.reason()),
                    (VarInt::from_u32(1001), &b"server shutting down"[..]),
                    "{name}: CLOSE_WEBTRANSPORT_SESSION {err}"
                );
            }
            other => panic!(
                "{name}: expected CLOSE_WEBTRANSPORT_SESSION 1001 \"server shutting down\", got {other:?} ({other})"
            ),
        }
        // A QUIC CONNECTION_CLOSE with application code 1001 would look the same
        // above; after a CLOSE_WEBTRANSPORT_SESSION capsule it is wtransport that
        // closes the QUIC connection (locally).
        let quic = within(STEP_TIMEOUT, "the QUIC connection to close", s.closed()).await;
        assert_eq!(
            quic,
            ConnectionError::LocallyClosed,
            "{name}: the session was ended by a QUIC close ({quic}), not by a \
             CLOSE_WEBTRANSPORT_SESSION capsule on the CONNECT stream"
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(6))
        .await
        .expect("server exits after the drain");
    assert!(status.success(), "server exited with {status}");
}
