//! WebTransport client helpers for the end-to-end tests, with the `wtransport`
//! crate (quinn) as an independent client.
//!
//! - [`cert_hash`] reads the server's certificate hash from
//!   `GET /webtransport/cert-hash` ([`cert_hashes`]: its `hashes` list, which
//!   names the next certificate too during a renewal); [`connect`] /
//!   [`try_connect`] open a session that trusts exactly that hash
//!   ([`try_connect_trusting`]: any of several) (one QUIC connection per session: wtransport
//!   0.7 has no way to put two sessions on one connection).
//! - The rooms endpoint's record formats (docs/PROTOCOL.md, "Rooms endpoint"):
//!   [`client_record`] builds `varint(L) kind payload`; [`Inbox`] collects what the
//!   server delivers, on its server-opened unidirectional stream
//!   (`varint(L) kind varint(room length) room payload`) and in datagrams
//!   (`kind varint(room length) room payload`; wtransport strips the quarter
//!   stream id).
//! - [`wt_code`] maps a WebTransport application error code to the HTTP/3 code
//!   on the wire (wtransport passes reset codes through unmapped).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::endpoint::ConnectOptions;
use wtransport::error::ConnectingError;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, VarInt};

use crate::{within, STEP_TIMEOUT};

/// Record kind byte of a UTF-8 text message.
pub const KIND_TEXT: u8 = 0x00;
/// Record kind byte of a binary message.
pub const KIND_BINARY: u8 = 0x01;

/// The server's certificate hash as served by `GET /webtransport/cert-hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertHash {
    /// The 32 bytes of the SHA-256 digest.
    pub bytes: [u8; 32],
    /// The `sha256` field as served (lower-case hex).
    pub hex: String,
}

/// `GET /webtransport/cert-hash` from the TCP listener at `addr`, as JSON.
async fn cert_hash_json(addr: SocketAddr) -> serde_json::Value {
    let resp = crate::raw::http_request(
        addr,
        &format!(
            "GET /webtransport/cert-hash HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "GET /webtransport/cert-hash: {resp:?}");
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "GET /webtransport/cert-hash body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&resp.body)
        )
    });
    json
}

/// Fetches `GET /webtransport/cert-hash` from the TCP listener at `addr` and
/// checks that its `sha256` (hex) and `base64` fields name the same 32 bytes.
pub async fn cert_hash(addr: SocketAddr) -> CertHash {
    let json = cert_hash_json(addr).await;
    let hex = json["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `sha256` in {json}"))
        .to_string();
    let bytes =
        decode_hex32(&hex).unwrap_or_else(|| panic!("`sha256` is not 64 hex digits: {json}"));
    let b64 = json["base64"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `base64` in {json}"));
    let from_b64 = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("`base64` does not decode ({e}): {json}"));
    assert_eq!(
        from_b64.as_slice(),
        bytes.as_slice(),
        "`sha256` and `base64` disagree: {json}"
    );
    CertHash { bytes, hex }
}

/// Fetches `GET /webtransport/cert-hash` and returns its `hashes` list (every
/// certificate a client should trust: the current one first, then the next one
/// while a renewal is pending). Checks that each entry's `sha256` and `base64`
/// agree and that the first entry is the top-level `sha256`.
pub async fn cert_hashes(addr: SocketAddr) -> Vec<CertHash> {
    let json = cert_hash_json(addr).await;
    let list = json["hashes"]
        .as_array()
        .unwrap_or_else(|| panic!("no array `hashes` in {json}"));
    assert!(
        (1..=2).contains(&list.len()),
        "`hashes` holds the current and at most one next hash: {json}"
    );
    let hashes: Vec<CertHash> = list
        .iter()
        .map(|entry| {
            let hex = entry["sha256"]
                .as_str()
                .unwrap_or_else(|| panic!("no string `sha256` in {entry} of {json}"));
            let bytes = decode_hex32(hex)
                .unwrap_or_else(|| panic!("`sha256` is not 64 hex digits: {json}"));
            let b64 = entry["base64"]
                .as_str()
                .unwrap_or_else(|| panic!("no string `base64` in {entry} of {json}"));
            let from_b64 = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("`base64` does not decode ({e}): {json}"));
            assert_eq!(from_b64.as_slice(), bytes.as_slice(), "{json}");
            CertHash {
                bytes,
                hex: hex.to_string(),
            }
        })
        .collect();
    assert_eq!(
        json["sha256"].as_str(),
        Some(hashes[0].hex.as_str()),
        "the top-level `sha256` is the first of `hashes`: {json}"
    );
    hashes
}

/// Decodes exactly 64 hex digits (either case) into 32 bytes.
pub fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `https://ADDR{path}`: the WebTransport URL on the same address and port
/// number as the TCP listener `addr` (the default `webtransport.listen`).
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}

/// A WebTransport session (and its QUIC connection), with the client endpoint
/// that owns its UDP socket. Derefs to [`Connection`].
pub struct Session {
    connection: Connection,
    _endpoint: Endpoint<Client>,
}

impl Deref for Session {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A clonable handle to the session.
    pub fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// Closes the QUIC connection with application `code` and `reason` and waits
    /// (bounded by [`STEP_TIMEOUT`]) until the endpoint is idle, so that the
    /// CONNECTION_CLOSE has been sent before the socket goes away.
    pub async fn close_and_wait(self, code: u32, reason: &[u8]) {
        self.connection.close(VarInt::from_u32(code), reason);
        within(
            STEP_TIMEOUT,
            "the client endpoint to send its close",
            self._endpoint.wait_idle(),
        )
        .await;
    }
}

/// Opens a session to `url` that accepts only the certificate with SHA-256
/// `hash`, adding `headers` (e.g. `("origin", "https://a.example")`) to the
/// CONNECT request. The QUIC socket is bound to 127.0.0.1. Panics if nothing is
/// decided within [`STEP_TIMEOUT`]; a refusal is an `Err`.
pub async fn try_connect(
    hash: &CertHash,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Session, ConnectingError> {
    try_connect_trusting(std::slice::from_ref(hash), url, headers).await
}

/// [`try_connect`] accepting a certificate whose SHA-256 is any of `hashes`
/// (what a page passing several `serverCertificateHashes` gets).
pub async fn try_connect_trusting(
    hashes: &[CertHash],
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Session, ConnectingError> {
    let config = ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().expect("bind address"))
        .with_server_certificate_hashes(hashes.iter().map(|h| Sha256Digest::new(h.bytes)))
        .build();
    let endpoint = Endpoint::client(config).expect("wtransport client endpoint");
    let mut options = ConnectOptions::builder(url);
    for (name, value) in headers {
        options = options.add_header(*name, *value);
    }
    let connection = within(
        STEP_TIMEOUT,
        &format!("WebTransport session to {url}"),
        endpoint.connect(options.build()),
    )
    .await?;
    Ok(Session {
        connection,
        _endpoint: endpoint,
    })
}

/// Opens a session to `url` (see [`try_connect`]); panics if it is refused.
pub async fn connect(hash: &CertHash, url: &str) -> Session {
    try_connect(hash, url, &[])
        .await
        .unwrap_or_else(|e| panic!("WebTransport session to {url}: {e} ({e:?})"))
}

/// The HTTP/3 error code that carries WebTransport application error code `e`
/// on the wire: `0x52e4a40fa8db + e + e / 0x1e`.
pub fn wt_code(e: u32) -> VarInt {
    let e = u64::from(e);
    VarInt::try_from_u64(0x52e4_a40f_a8db + e + e / 0x1e).expect("fits a varint")
}

/// Appends the QUIC variable-length encoding of `v` to `out`.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes()),
        _ => {
            assert!(v < 1 << 62, "varint out of range: {v}");
            out.extend_from_slice(&(0xc000_0000_0000_0000 | v).to_be_bytes());
        }
    }
}

/// Decodes a QUIC varint at the start of `buf`: `(value, bytes used)`, or `None`
/// if `buf` is too short.
pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// A client -> server record: `varint(1 + payload length) kind payload`.
pub fn client_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 9);
    put_varint(&mut out, 1 + payload.len() as u64);
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// Several text records, concatenated.
pub fn text_records<S: AsRef<str>>(texts: &[S]) -> Vec<u8> {
    texts
        .iter()
        .flat_map(|t| client_record(KIND_TEXT, t.as_ref().as_bytes()))
        .collect()
}

/// A client -> server datagram payload (after the quarter stream id, which
/// wtransport adds): `kind payload`.
pub fn client_datagram(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// How a delivery arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// On the session's server-opened unidirectional stream.
    Stream,
    /// In a datagram.
    Datagram,
}

/// One message the server delivered to a rooms session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stream or datagram.
    pub via: Via,
    /// [`KIND_TEXT`] or [`KIND_BINARY`] (anything else is reported as is).
    pub kind: u8,
    /// The room it was published to.
    pub room: String,
    /// The message.
    pub payload: Vec<u8>,
}

impl Delivery {
    /// The payload as UTF-8 (panics if it is not).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload)
            .unwrap_or_else(|_| panic!("payload is not UTF-8: {self:?}"))
    }
}

/// Parses `kind varint(room length) room payload` (the body of a server record
/// after its length, and a datagram after the quarter stream id).
pub fn parse_delivery_body(via: Via, body: &[u8]) -> Result<Delivery, String> {
    let (&kind, rest) = body
        .split_first()
        .ok_or_else(|| "empty delivery (no kind byte)".to_string())?;
    let (room_len, used) =
        get_varint(rest).ok_or_else(|| format!("no room length after the kind: {body:02x?}"))?;
    let rest = &rest[used..];
    let room_len = usize::try_from(room_len).map_err(|_| "room length overflows".to_string())?;
    if rest.len() < room_len {
        return Err(format!(
            "room length {room_len} runs past the delivery: {body:02x?}"
        ));
    }
    let room = String::from_utf8(rest[..room_len].to_vec())
        .map_err(|_| format!("room name is not UTF-8: {body:02x?}"))?;
    Ok(Delivery {
        via,
        kind,
        room,
        payload: rest[room_len..].to_vec(),
    })
}

/// Everything the server delivers to one rooms session: a background task
/// accepts the server-opened unidirectional streams and parses their records,
/// another receives datagrams. A protocol violation (bad record) fails the next
/// [`Inbox::next`]. The tasks stop when the inbox is dropped.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Result<Delivery, String>>,
    streams: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Inbox {
    /// Starts collecting deliveries of `connection`'s session.
    pub fn spawn(connection: &Connection) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let streams = Arc::new(AtomicUsize::new(0));
        let uni = {
            let connection = connection.clone();
            let tx = tx.clone();
            let streams = Arc::clone(&streams);
            tokio::spawn(async move {
                let mut readers = Vec::new();
                while let Ok(stream) = connection.accept_uni().await {
                    let n = streams.fetch_add(1, Ordering::SeqCst) + 1;
                    readers.push(tokio::spawn(read_records(stream, n, tx.clone())));
                }
                // Keep the readers running until the inbox is dropped (abort
                // of this task drops the handles without aborting them; they
                // end with the connection).
                for r in readers {
                    let _ = r.await;
                }
            })
        };
        let datagrams = {
            let connection = connection.clone();
            tokio::spawn(async move {
                while let Ok(d) = connection.receive_datagram().await {
                    let parsed = parse_delivery_body(Via::Datagram, &d.payload())
                        .map_err(|e| format!("bad server datagram: {e}"));
                    if tx.send(parsed).is_err() {
                        break;
                    }
                }
            })
        };
        Inbox {
            rx,
            streams,
            tasks: vec![uni, datagrams],
        }
    }

    /// The next delivery within [`STEP_TIMEOUT`]; panics with `what` on timeout
    /// or on a malformed delivery.
    pub async fn next(&mut self, what: &str) -> Delivery {
        match self.next_within(STEP_TIMEOUT).await {
            Some(d) => d,
            None => panic!("timed out after {STEP_TIMEOUT:?} waiting for a delivery: {what}"),
        }
    }

    /// The next delivery if one arrives within `timeout`; panics on a malformed
    /// delivery.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Delivery> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(Ok(d))) => Some(d),
            Ok(Some(Err(e))) => panic!("{e}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// How many server-opened unidirectional streams have been accepted.
    pub fn streams_opened(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads `varint(L) body` records from server-opened stream number `n` until it
/// ends, sending each parsed delivery (or the first error) to `tx`.
async fn read_records(
    mut stream: RecvStream,
    n: usize,
    tx: mpsc::UnboundedSender<Result<Delivery, String>>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Parse every complete record in the buffer.
        while let Some((len, used)) = get_varint(&buf) {
            let Ok(len) = usize::try_from(len) else {
                let _ = tx.send(Err(format!("stream {n}: record length {len} overflows")));
                return;
            };
            if buf.len() < used + len {
                break;
            }
            let parsed = parse_delivery_body(Via::Stream, &buf[used..used + len])
                .map_err(|e| format!("bad record on server stream {n}: {e}"));
            let failed = parsed.is_err();
            if tx.send(parsed).is_err() || failed {
                return;
            }
            buf.drain(..used + len);
        }
        match stream.read(&mut chunk).await {
            Ok(None) => {
                if !buf.is_empty() {
                    let _ = tx.send(Err(format!(
                        "server stream {n} ended inside a record: {:02x?}",
                        &buf[..buf.len().min(64)]
                    )));
                }
                return;
            }
            Ok(Some(k)) => buf.extend_from_slice(&chunk[..k]),
            // The session or connection went away: no more deliveries.
            Err(_) => return,
        }
    }
}

/// Reads `stream` to its end (FIN) within [`STEP_TIMEOUT`].
pub async fn read_to_end(
    stream: &mut RecvStream,
) -> Result<Vec<u8>, wtransport::error::StreamReadError> {
    within(STEP_TIMEOUT, "WebTransport stream to its end", async {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        while let Some(n) = stream.read(&mut chunk).await? {
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    })
    .await
}
