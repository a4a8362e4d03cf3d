//! The session layer against a real quiche client, packets passed in memory: no
//! sockets, no executor — the sans-IO contract in action.

use super::capsule;
use super::frame::{self, FrameEvent, FrameReader};
use super::session::{
    WtConn, WtEvent, H3_STREAM_CREATION_ERROR, SIGNAL_WT_BIDI, STREAM_WT_UNI,
    WT_BUFFERED_STREAM_REJECTED,
};
use super::varint;

/// The opening bytes of a client bidirectional WebTransport stream of `session`.
fn bidi_preamble(session: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint::encode(SIGNAL_WT_BIDI, &mut out);
    varint::encode(session, &mut out);
    out
}

struct Pair {
    client: quiche::Connection,
    server: quiche::Connection,
    wt: WtConn,
    events: Vec<WtEvent>,
}

fn configs() -> (quiche::Config, quiche::Config) {
    let made = crate::cert::generate(
        &["localhost".to_string()],
        std::time::Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "corecast-pair-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let (cert, key) = crate::cert::write_pair(&dir, &made).unwrap();
    let mut server = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    server
        .load_cert_chain_from_pem_file(cert.to_str().unwrap())
        .unwrap();
    server
        .load_priv_key_from_pem_file(key.to_str().unwrap())
        .unwrap();
    let mut client = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    client.verify_peer(false);
    for c in [&mut server, &mut client] {
        c.set_application_protos(&[b"h3"]).unwrap();
        c.set_initial_max_data(1 << 20);
        c.set_initial_max_stream_data_bidi_local(1 << 16);
        c.set_initial_max_stream_data_bidi_remote(1 << 16);
        c.set_initial_max_stream_data_uni(1 << 16);
        c.set_initial_max_streams_bidi(16);
        c.set_initial_max_streams_uni(16);
        c.enable_dgram(true, 64, 64);
    }
    (client, server)
}

impl Pair {
    fn new() -> Self {
        let (mut cc, mut sc) = configs();
        let (ca, sa) = (
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:4433".parse().unwrap(),
        );
        let client = quiche::connect(
            Some("localhost"),
            &quiche::ConnectionId::from_ref(&[1; 16]),
            ca,
            sa,
            &mut cc,
        )
        .unwrap();
        let server = quiche::accept(
            &quiche::ConnectionId::from_ref(&[2; 16]),
            None,
            sa,
            ca,
            &mut sc,
        )
        .unwrap();
        let mut p = Pair {
            client,
            server,
            wt: WtConn::new(4),
            events: Vec::new(),
        };
        p.pump();
        assert!(p.client.is_established() && p.server.is_established());
        // The client's control stream: SETTINGS with WebTransport.
        let mut ctl = Vec::new();
        varint::encode(0, &mut ctl);
        ctl.extend(frame::server_settings(4));
        p.client.stream_send(2, &ctl, false).unwrap();
        p.pump();
        p
    }

    /// Move packets both ways until both sides are quiet; collect server events.
    fn pump(&mut self) {
        let mut buf = [0u8; 1500];
        for _ in 0..200 {
            let mut moved = false;
            while let Ok((n, info)) = self.client.send(&mut buf) {
                let ri = quiche::RecvInfo {
                    from: info.from,
                    to: info.to,
                };
                let _ = self.server.recv(&mut buf[..n], ri);
                moved = true;
            }
            self.wt.poll(&mut self.server);
            while let Some(ev) = self.wt.next_event() {
                self.events.push(ev);
            }
            while let Ok((n, info)) = self.server.send(&mut buf) {
                let ri = quiche::RecvInfo {
                    from: info.from,
                    to: info.to,
                };
                let _ = self.client.recv(&mut buf[..n], ri);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn take_events(&mut self) -> Vec<WtEvent> {
        std::mem::take(&mut self.events)
    }

    /// Send a CONNECT on client stream `id`; returns the server's request event.
    fn connect(&mut self, id: u64, path: &str) -> WtEvent {
        let head = frame::encode_headers(&[
            (":method", "CONNECT"),
            (":protocol", "webtransport"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
            ("sec-webtransport-http3-draft02", "1"),
        ]);
        self.client.stream_send(id, &head, false).unwrap();
        self.pump();
        let mut evs = self.take_events();
        assert_eq!(evs.len(), 1, "{evs:?}");
        evs.remove(0)
    }

    /// A session on client stream `id`, accepted by the server.
    fn open_session(&mut self, id: u64) {
        self.connect(id, "/wt/echo");
        self.wt.accept(&mut self.server, id);
    }

    /// The `:status` the client got on stream `id`.
    fn status(&mut self, id: u64) -> String {
        let mut buf = [0u8; 4096];
        let (n, _) = self.client.stream_recv(id, &mut buf).unwrap();
        let mut frames = Vec::new();
        FrameReader::default().feed(&buf[..n], &mut frames).unwrap();
        let Some(FrameEvent::Frame { payload, .. }) = frames.first() else {
            panic!("no HEADERS: {frames:?}");
        };
        let fields = frame::decode_fields(payload).unwrap();
        fields
            .iter()
            .find(|(n, _)| n == ":status")
            .unwrap()
            .1
            .clone()
    }
}

#[test]
fn settings_arrive_and_a_session_opens_with_streams_and_datagrams() {
    let mut p = Pair::new();
    assert!(p
        .wt
        .peer_settings()
        .unwrap()
        .contains(&(frame::SETTING_ENABLE_WEBTRANSPORT, 1)));
    let ev = p.connect(0, "/wt/chat?room=a");
    let WtEvent::Request {
        stream_id: 0,
        request,
    } = ev
    else {
        panic!("{ev:?}");
    };
    assert!(request.is_webtransport() && request.draft02);
    assert_eq!(request.path.as_deref(), Some("/wt/chat?room=a"));
    p.wt.accept(&mut p.server, 0);
    p.pump();
    assert_eq!(p.status(0), "200");

    // A client bidirectional WebTransport stream: the preamble is consumed, the
    // data is left for the application.
    let mut bidi = bidi_preamble(0);
    bidi.extend_from_slice(b"hello");
    p.client.stream_send(4, &bidi, false).unwrap();
    // A datagram for the session (quarter stream id 0).
    p.client.dgram_send(&[0, b'd']).unwrap();
    p.pump();
    let evs = p.take_events();
    assert!(
        evs.contains(&WtEvent::Stream {
            session: 0,
            stream_id: 4,
            bidi: true
        }),
        "{evs:?}"
    );
    assert!(
        evs.contains(&WtEvent::Datagram {
            session: 0,
            payload: vec![b'd']
        }),
        "{evs:?}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(p.server.stream_recv(4, &mut buf).unwrap(), (5, false));
    assert_eq!(&buf[..5], b"hello");

    // A server-opened unidirectional stream starts with its preamble.
    let uni = p.wt.open_stream(&mut p.server, 0, false).unwrap();
    p.server.stream_send(uni, b"x", true).unwrap();
    p.pump();
    let (n, fin) = p.client.stream_recv(uni, &mut buf).unwrap();
    let mut want = Vec::new();
    varint::encode(STREAM_WT_UNI, &mut want);
    varint::encode(0, &mut want);
    want.push(b'x');
    assert_eq!((&buf[..n], fin), (want.as_slice(), true));
}

#[test]
fn a_close_capsule_ends_the_session_and_resets_its_streams() {
    let mut p = Pair::new();
    p.open_session(0);
    let bidi = bidi_preamble(0);
    p.client.stream_send(4, &bidi, false).unwrap();
    p.pump();
    p.take_events();
    let mut data = Vec::new();
    frame::encode_frame(frame::DATA, &capsule::encode_close(4242, "bye"), &mut data);
    p.client.stream_send(0, &data, false).unwrap();
    p.pump();
    let evs = p.take_events();
    assert!(
        evs.contains(&WtEvent::SessionClosed {
            session: 0,
            code: 4242,
            reason: "bye".into(),
            streams: vec![4],
        }),
        "{evs:?}"
    );
    assert_eq!(p.wt.session_count(), 0);
    // Our side of the CONNECT stream ends; the session's stream is reset.
    assert_eq!(p.status(0), "200");
    assert!(
        p.client.stream_finished(0),
        "the CONNECT stream was not finished"
    );
    let mut buf = [0u8; 64];
    assert!(matches!(
        p.client.stream_recv(4, &mut buf),
        Err(quiche::Error::StreamReset(_))
    ));
}

#[test]
fn hostile_streams_are_refused_without_harm() {
    let mut p = Pair::new();
    // A unidirectional stream of an unknown type.
    let mut junk = Vec::new();
    varint::encode(0x21, &mut junk);
    junk.extend_from_slice(&[0xff; 100]);
    p.client.stream_send(6, &junk, false).unwrap();
    // A WebTransport stream naming a session that does not exist.
    p.client.stream_send(4, &bidi_preamble(400), false).unwrap();
    // A request stream that starts with DATA.
    let mut data = Vec::new();
    frame::encode_frame(frame::DATA, b"zz", &mut data);
    p.client.stream_send(8, &data, false).unwrap();
    p.pump();
    assert!(p.take_events().is_empty());
    assert!(!p.server.is_closed() && !p.client.is_closed());
    let mut buf = [0u8; 8];
    assert!(matches!(
        p.client.stream_recv(4, &mut buf),
        Err(quiche::Error::StreamReset(c)) if c == WT_BUFFERED_STREAM_REJECTED
    ));
    assert_eq!(
        p.client.stream_send(6, b"more", false),
        Err(quiche::Error::StreamStopped(H3_STREAM_CREATION_ERROR))
    );
    // The connection still serves sessions.
    let ev = p.connect(12, "/wt/echo");
    assert!(matches!(ev, WtEvent::Request { stream_id: 12, .. }));
    p.wt.reject(&mut p.server, 12, 404, "no");
    p.pump();
    assert_eq!(p.status(12), "404");
}

#[test]
fn a_newer_datagram_of_a_room_replaces_the_queued_one() {
    let mut p = Pair::new();
    p.open_session(0);
    p.pump();
    let a1 = super::record::ServerRecord::new("a", super::record::TEXT, b"1");
    let b1 = super::record::ServerRecord::new("b", super::record::TEXT, b"1");
    let a2 = super::record::ServerRecord::new("a", super::record::TEXT, b"2");
    let replaced: Vec<usize> = [&a1, &b1, &a2]
        .iter()
        .map(|r| {
            p.wt.send_datagram(&mut p.server, 0, r.body(), Some(r.room_prefix_len))
                .unwrap()
        })
        .collect();
    assert_eq!(replaced, vec![0, 0, 1]);
    p.pump();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = p.client.dgram_recv(&mut buf) {
        // Quarter stream id 0, then the record body.
        assert_eq!(buf[0], 0);
        got.push(buf[1..n].to_vec());
    }
    assert_eq!(got, vec![b1.body().to_vec(), a2.body().to_vec()]);
}

#[test]
fn a_stream_that_is_only_a_preamble_and_fin_reads_as_finished() {
    // The session layer consumes the preamble, and with it the FIN: the
    // application's read must learn the end from `stream_finished`.
    let mut p = Pair::new();
    p.open_session(0);
    let bidi = bidi_preamble(0);
    p.client.stream_send(4, &bidi, true).unwrap();
    p.pump();
    let evs = p.take_events();
    assert!(
        evs.contains(&WtEvent::Stream {
            session: 0,
            stream_id: 4,
            bidi: true
        }),
        "{evs:?}"
    );
    let mut buf = [0u8; 8];
    assert!(p.server.stream_recv(4, &mut buf).is_err());
    assert!(p.server.stream_finished(4));
}
