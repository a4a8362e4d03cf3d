//! Accepting connections and the HTTP request that opens each one: route it, answer
//! plain HTTP (stats, errors) or complete the WebSocket handshake and hand the
//! connection to its endpoint's handler.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncWriteExt, FutureExt};
use glommio::net::TcpListener;

use super::conn::{Conn, ConnLog, ConnParts, Handler, Transport};
use super::driver::{READ, WRITE};
use super::limits::{Admission, ConnLimits, Handshaking};
use super::read::{read_into, settle};
use super::shard::Shard;
use super::socket::Socket;
use crate::net::endpoint::{EndpointHandler, EndpointTransport};
use crate::net::handle::connection::Connection;
use crate::net::handle::ws_task::WsConn;
use crate::proto::http::{self, Request};
use crate::proto::sse::{parse_stream_cursor, StreamCursor};
use crate::proto::ws::deflate::Inflater;
use crate::proto::ws::{close, handshake, Decoder, Limits};
use crate::stats::ShardStats;
use crate::vocab::connect::Connecting;
use crate::vocab::registry::TransportKind;

/// Accept until the shard starts draining (`tls`: the TLS listener's settings, for
/// `tls.listen`). Each connection gets its own task at once: nothing here awaits a
/// client, so a slow one (slowloris) never delays the next accept.
pub(crate) async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<Arc<super::tls::TlsShared>>,
) {
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shard.draining.wait().await;
                None
            })
            .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                ShardStats::add(&shard.stats.accepted, 1);
                let _ = stream.set_nodelay(true);
                let socket = match &tls {
                    None => Some(Socket::Plain(stream)),
                    Some(tls) => super::tls::wrap(&shard, tls, stream),
                };
                if let Some(socket) = socket {
                    glommio::spawn_local(serve(shard.clone(), socket)).detach();
                }
            }
            Some(Err(e)) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(shard = shard.id, tls = tls.is_some(), error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How long a refused connection's request is read (and discarded) after the
/// refusal is written, so closing does not reset the connection before the client
/// has read the response.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Serve one accepted connection (plain, or TLS on `tls.listen`):
/// connection caps, TLS handshake, request head and routing, the last three within
/// the handshake deadline.
pub(crate) async fn serve(shard: Rc<Shard>, stream: Socket) {
    let admission = match admit_connection(&shard, &stream) {
        Ok(a) => a,
        Err(limit) => {
            // Over a cap before any TLS handshake: a TLS client could not read an
            // HTTP answer yet, so it is only closed (and counted).
            if !stream.is_tls() {
                let body = format!("connection limit reached: {limit}");
                let resp =
                    http::response(503, "Service Unavailable", &[("Retry-After", "1")], &body);
                refuse(stream, resp).await;
            }
            return;
        }
    };
    let stream = std::cell::RefCell::new(stream);
    let mut pending = BytesMut::new();
    let timeout = shard.shared.config.limits.handshake_timeout.0;
    let head = async {
        super::tls::handshake(&shard, &stream)
            .await
            .map_err(|()| None)?;
        read_head(&shard, &stream, &mut pending).await
    }
    .or(async {
        glommio::timer::sleep(timeout).await;
        ShardStats::add(&shard.stats.handshake_timeouts, 1);
        Err(None)
    })
    .await;
    let req = match head {
        Ok(req) => req,
        Err(Some(response)) => {
            ShardStats::add(&shard.stats.bad_requests, 1);
            drop(admission);
            refuse(stream.into_inner(), response).await;
            return;
        }
        Err(None) => return,
    };
    let stream = stream.into_inner();
    route(shard, stream, req, pending, admission).await;
}

/// Count a new connection against the shard's and its address's caps; `Err`:
/// over one of them, named (counted; the caller answers 503).
fn admit_connection(shard: &Shard, stream: &Socket) -> Result<Admission, &'static str> {
    use std::sync::atomic::Ordering::Relaxed;
    let limits = &shard.shared.config.limits;
    let live = shard.stats.connections.load(Relaxed) + shard.stats.handshaking.load(Relaxed);
    if live >= limits.max_connections_per_shard as u64 {
        ShardStats::add(&shard.stats.shard_limit_rejected, 1);
        return Err("limits.max_connections_per_shard");
    }
    let ip = match &shard.shared.ip_table {
        None => None,
        Some(table) => {
            let ip = stream
                .peer_addr()
                .map_err(|_| "limits.max_connections_per_ip (no peer address)")?
                .ip();
            match table.try_acquire(ip) {
                Some(slot) => Some(slot),
                None => {
                    ShardStats::add(&shard.stats.ip_limit_rejected, 1);
                    return Err("limits.max_connections_per_ip");
                }
            }
        }
    };
    Ok(Admission {
        handshaking: Handshaking::new(&shard.stats),
        ip,
    })
}

/// Answer `response` and close: stop sending, then read and discard what the
/// client sent for at most [`REFUSAL_LINGER`] (so the close does not reset the
/// connection under a response the client has not read yet).
async fn refuse(mut stream: Socket, response: Vec<u8>) {
    use futures_lite::AsyncReadExt;
    let written = stream
        .write_all(&response)
        .or(async {
            glommio::timer::sleep(REFUSAL_LINGER).await;
            Err(std::io::ErrorKind::TimedOut.into())
        })
        .await;
    if written.is_err() {
        return;
    }
    let half_closed = match &stream {
        Socket::Plain(s) => s.shutdown(std::net::Shutdown::Write).await.is_ok(),
        // TLS: close_notify ends the stream; nothing to linger for.
        Socket::Tls(_) => {
            let _ = stream
                .close()
                .or(async {
                    glommio::timer::sleep(REFUSAL_LINGER).await;
                    Ok(())
                })
                .await;
            false
        }
    };
    if !half_closed {
        return;
    }
    let mut sink = [0u8; 1024];
    let drain = async {
        for _ in 0..64 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    drain
        .or(async {
            glommio::timer::sleep(REFUSAL_LINGER).await;
        })
        .await;
}

/// Read until a complete request head is buffered. `Err(Some(resp))`: answer and
/// close; `Err(None)`: the client went away.
async fn read_head(
    shard: &Shard,
    stream: &std::cell::RefCell<Socket>,
    pending: &mut BytesMut,
) -> Result<Request, Option<Vec<u8>>> {
    let limits = http::HeadLimits {
        max_head_bytes: shard.shared.config.limits.max_request_head_bytes,
        max_headers: shard.shared.config.limits.max_headers,
    };
    loop {
        match http::parse_request_with(pending, limits) {
            Ok(Some((req, n))) => {
                let _ = pending.split_to(n);
                settle(pending);
                return Ok(req);
            }
            Ok(None) => {}
            Err(e) => return Err(Some(e.response())),
        }
        let read = read_into(stream, &shard.arena, 4096, pending).await;
        match read {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

async fn route(
    shard: Rc<Shard>,
    mut stream: Socket,
    req: Request,
    pending: BytesMut,
    admission: Admission,
) {
    if shard.shared.main_metrics_path() == Some(req.path.as_str()) {
        let resp = crate::metrics::http_response(
            &req.method,
            &shard.shared.stats,
            &shard.shared.routers,
            shard.shared.cluster.as_ref().map(|l| l.families()).as_ref(),
        );
        let _ = stream.write_all(&resp).await;
        return;
    }
    if req.path == "/stats" {
        let resp = if req.method == "GET" {
            http::response_with_type(
                200,
                "OK",
                &[],
                "application/json",
                shard.shared.stats_json().as_bytes(),
            )
        } else {
            http::response(405, "Method Not Allowed", &[("Allow", "GET")], "use GET")
        };
        let _ = stream.write_all(&resp).await;
        return;
    }
    if req.path == "/webtransport/cert-hash" {
        let resp = match &shard.shared.wt {
            Some(wt) => http::response_with_type(
                200,
                "OK",
                &[("Access-Control-Allow-Origin", "*")],
                "application/json",
                format!(
                    "{{\"sha256\":\"{}\",\"base64\":\"{}\"}}",
                    crate::cert::hex(&wt.cert_sha256),
                    crate::cert::base64(&wt.cert_sha256)
                )
                .as_bytes(),
            ),
            None => http::response(404, "Not Found", &[], "WebTransport is not enabled"),
        };
        let _ = stream.write_all(&resp).await;
        return;
    }
    if req.path.starts_with("/api/") {
        super::api::serve(shard, stream, req, pending).await;
        return;
    }
    if let Some((_, handler)) = shard
        .shared
        .http_routes
        .iter()
        .find(|(p, _)| *p == req.path)
    {
        let resp = if req.method == "GET" || req.method == "HEAD" {
            let handler = handler.clone();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&req))) {
                Ok(r) => r.encode(),
                Err(_) => {
                    ShardStats::add(&shard.stats.handler_panics, 1);
                    http::response(500, "Internal Server Error", &[], "handler failed")
                }
            }
        } else {
            http::response(405, "Method Not Allowed", &[("Allow", "GET")], "use GET")
        };
        let _ = stream.write_all(&resp).await;
        return;
    }
    let Some((endpoint_index, endpoint)) = shard.shared.endpoint(&req.path) else {
        let body = format!("no endpoint at {}", req.path);
        let _ = stream
            .write_all(&http::response(404, "Not Found", &[], &body))
            .await;
        return;
    };
    let origins = match endpoint.transport {
        EndpointTransport::WebSocket => &shard.shared.config.websocket.allowed_origins,
        EndpointTransport::Sse => &shard.shared.config.sse.allowed_origins,
    };
    let origin = req
        .header("origin")
        .map(|o| String::from_utf8_lossy(o).into_owned());
    if !crate::config::origin_allowed(origins, origin.as_deref()) {
        ShardStats::add(&shard.stats.origin_rejected, 1);
        let body = format!(
            "origin {:?} is not allowed",
            origin.as_deref().unwrap_or_default()
        );
        let _ = stream
            .write_all(&http::response(403, "Forbidden", &[], &body))
            .await;
        return;
    }
    // CORS for event streams: reflect an allowed origin (credentials only for an
    // origin listed exactly, never for "*").
    let cors = match (endpoint.transport, origin.as_deref()) {
        (EndpointTransport::Sse, Some(o)) if !origins.is_empty() => {
            Some((o, origins.iter().any(|a| a == o)))
        }
        _ => None,
    };
    // A CORS preflight (with an allow-list to answer from); other OPTIONS get 405.
    if cors.is_some()
        && req.method == "OPTIONS"
        && req.header("access-control-request-method").is_some()
    {
        let _ = stream.write_all(&sse_cors_preflight(cors)).await;
        return;
    }
    if shard.draining.fired() {
        let _ = stream
            .write_all(&http::response(
                503,
                "Service Unavailable",
                &[("Retry-After", "1")],
                "server is shutting down",
            ))
            .await;
        return;
    }
    let query = req.query_pairs();
    let cursor = match requested_cursor(&req, &query, endpoint.transport) {
        Ok(c) => c,
        Err(why) => {
            let _ = stream
                .write_all(&http::response(400, "Bad Request", &[], &why))
                .await;
            return;
        }
    };
    let ws = &shard.shared.config.websocket;
    let admitted;
    let (decoder, compressed, transport) = match endpoint.transport {
        EndpointTransport::Sse => {
            if let Err(resp) = sse_preflight(&req) {
                let _ = stream.write_all(&resp).await;
                return;
            }
            match admit(&shard, endpoint, &req, &stream, TransportKind::Sse) {
                Ok(a) => admitted = a,
                Err(resp) => {
                    let _ = stream.write_all(&resp).await;
                    return;
                }
            }
            let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n");
            for (k, v) in cors_headers(cors) {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut rooms: Vec<&str> = query
                .iter()
                .filter(|(k, _)| k == "room")
                .map(|(_, v)| v.as_str())
                .collect();
            rooms.sort_unstable();
            rooms.dedup();
            let transport = if rooms.len() > 1 {
                Transport::SseMultiRoom
            } else {
                Transport::Sse
            };
            (Decoder::new(Limits::default(), None), false, transport)
        }
        EndpointTransport::WebSocket => {
            let accepted = match handshake::accept(&req, &endpoint.protocols, &shard.shared.deflate)
            {
                Ok(a) => a,
                Err(rejection) => {
                    let _ = stream.write_all(&rejection.response()).await;
                    return;
                }
            };
            // `$connect` and middleware decide before the 101 is written.
            match admit(&shard, endpoint, &req, &stream, TransportKind::WebSocket) {
                Ok(a) => admitted = a,
                Err(resp) => {
                    let _ = stream.write_all(&resp).await;
                    return;
                }
            }
            if stream
                .write_all(&handshake::response(&accepted))
                .await
                .is_err()
            {
                return;
            }
            let limits = Limits {
                max_frame_size: ws.max_frame_size,
                max_message_size: ws.max_message_size,
                max_fragments: ws.max_fragments,
            };
            let envelope = query
                .iter()
                .any(|(k, v)| k == "envelope" && matches!(v.as_str(), "1" | "true" | "json"));
            (
                Decoder::new(limits, accepted.deflate.map(Inflater::new)),
                // Shared broadcast frames are compressed once per shard with a 15-bit
                // window; a client that limited the server's window gets uncompressed
                // frames instead (RFC 7692 lets any message go uncompressed).
                accepted
                    .deflate
                    .is_some_and(|d| d.server_max_window_bits >= 15),
                if envelope {
                    Transport::WebSocketEnvelope
                } else {
                    Transport::WebSocket
                },
            )
        }
    };
    // Connection events cost nothing unless enabled: no peer lookup, no allocation.
    let log = tracing::enabled!(target: crate::logging::CONN_TARGET, tracing::Level::DEBUG)
        .then(|| Box::new(ConnLog::new(stream.peer_addr().ok())));
    let parts = ConnParts {
        log,
        stream,
        decoder,
        pending,
        queue_cap: ws.outbound_queue_bytes,
        compressed,
        endpoint: endpoint_index as u16,
        query: req.query.into_boxed_str(),
        handler: match &endpoint.handler {
            EndpointHandler::Callbacks(cb) => Handler::Callbacks(cb.clone()),
            EndpointHandler::Async(_) => Handler::Task(Box::default()),
        },
        transport,
        now: shard.clock.get(),
        limits: ConnLimits::new(
            admission.ip,
            ws.rate_limit.as_ref().filter(|_| {
                matches!(
                    transport,
                    Transport::WebSocket | Transport::WebSocketEnvelope
                )
            }),
            crate::stats::clock_ns(),
        ),
    };
    let conn = {
        let mut conns = shard.conns.borrow_mut();
        let id = conns.insert_with(|id| Rc::new(Conn::new(id, parts)));
        conns.get(id).cloned().expect("just inserted")
    };
    ShardStats::add(&shard.stats.connections, 1);
    // Counted as a connection now: no longer as a handshake.
    drop(admission.handshaking);
    if let Some(l) = conn.log.as_deref() {
        tracing::debug!(
            target: crate::logging::CONN_TARGET,
            conn_id = %conn.id,
            shard = shard.id,
            transport = conn.transport_name(),
            path = req.path.as_str(),
            query = %crate::logging::redact_query(&conn.query),
            remote = %l.remote,
            "connection opened"
        );
    }
    if let Some(a) = admitted {
        conn.meta.extend(a.meta);
        if let Some(at) = a.expires_at {
            super::expiry::arm_expiry(&shard, conn.id, at);
        }
    }
    ShardStats::add(
        if conn.is_sse() {
            &shard.stats.sse_connections
        } else {
            &shard.stats.ws_connections
        },
        1,
    );
    if let Some(c) = cursor {
        if let (Transport::SseMultiRoom, StreamCursor::PerRoom(list)) = (transport, &c) {
            // The stream's ids name every room it resumes from the first event on.
            for (room, cur) in list {
                conn.set_cursor(
                    room,
                    corecast_shards::Position {
                        epoch: cur.epoch,
                        seq: cur.seq,
                    },
                );
            }
        }
        conn.resume
            .borrow_mut()
            .get_or_insert_with(Box::default)
            .requested = Some(c);
    }
    if conn.is_sse() && shard.shared.config.sse.retry_ms > 0 {
        let _ = conn.enqueue(
            crate::proto::sse::retry(shard.shared.config.sse.retry_ms),
            &shard.stats,
        );
        shard.schedule(&conn, WRITE);
    }
    match &endpoint.handler {
        EndpointHandler::Callbacks(cb) => {
            let handle = Connection::new(shard.clone(), conn.clone());
            let opened =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb.on_open(&handle)));
            if opened.is_err() {
                ShardStats::add(&shard.stats.handler_panics, 1);
                shard.fail(&conn, close::INTERNAL_ERROR, "handler failed");
                return;
            }
            // Bytes that came with the request head are decoded on the first turn.
            shard.schedule(&conn, READ);
        }
        EndpointHandler::Async(handler) => {
            use tracing::Instrument as _;
            shard.schedule(&conn, READ);
            let ws_conn = WsConn::new(Connection::new(shard.clone(), conn.clone()));
            // Events the handler emits carry the connection's fields.
            let span = tracing::debug_span!(
                target: crate::logging::CONN_TARGET,
                "connection",
                conn_id = %conn.id,
                shard = shard.id,
                transport = conn.transport_name(),
                path = req.path.as_str(),
                remote = conn.log.as_deref().map_or("-", |l| l.remote.as_str()),
            );
            let outcome = std::panic::AssertUnwindSafe(handler(ws_conn).instrument(span))
                .catch_unwind()
                .await;
            if outcome.is_err() {
                ShardStats::add(&shard.stats.handler_panics, 1);
                shard.fail(&conn, close::INTERNAL_ERROR, "handler failed");
            } else {
                shard.close(&conn, close::NORMAL, "");
            }
        }
    }
}

/// Run the endpoint's `$connect` (middleware, then the router's hook), if it has
/// one: what to attach to the connection, or the refusal to answer with.
fn admit(
    shard: &Shard,
    endpoint: &crate::net::endpoint::Endpoint,
    req: &Request,
    stream: &Socket,
    transport: TransportKind,
) -> Result<Option<crate::vocab::connect::Admitted>, Vec<u8>> {
    let Some(router) = &endpoint.admission else {
        return Ok(None);
    };
    let connecting = Connecting::new(req, stream.peer_addr().ok(), transport);
    router.admit(connecting).map(Some).map_err(|r| {
        ShardStats::add(&shard.stats.connect_rejected, 1);
        if matches!(r.status, 401 | 403) {
            ShardStats::add(&shard.stats.auth_failures, 1);
        }
        let mut headers = Vec::new();
        if r.status == 401 {
            headers.push(("WWW-Authenticate", "Bearer"));
        }
        http::response(r.status, r.phrase(), &headers, &r.reason)
    })
}

/// The resume cursor a request carries: SSE `Last-Event-ID` (header, or
/// `?lastEventId=` for clients that cannot set headers), WebSocket `?since=`.
fn requested_cursor(
    req: &Request,
    query: &[(String, String)],
    transport: EndpointTransport,
) -> Result<Option<StreamCursor>, String> {
    let (name, raw) = match transport {
        EndpointTransport::Sse => match req.header("last-event-id") {
            Some(v) => (
                "Last-Event-ID",
                Some(String::from_utf8_lossy(v).into_owned()),
            ),
            None => (
                "lastEventId",
                query
                    .iter()
                    .find(|(k, _)| k == "lastEventId")
                    .map(|(_, v)| v.clone()),
            ),
        },
        EndpointTransport::WebSocket => (
            "since",
            query
                .iter()
                .find(|(k, _)| k == "since")
                .map(|(_, v)| v.clone()),
        ),
    };
    match raw {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => parse_stream_cursor(v.trim())
            .map(Some)
            .map_err(|e| format!("invalid {name} {v:?}: {e}")),
    }
}

/// CORS response headers for an event stream: the allowed origin reflected, and
/// credentials allowed when it is listed exactly.
fn cors_headers(cors: Option<(&str, bool)>) -> Vec<(&'static str, &str)> {
    let Some((origin, exact)) = cors else {
        return Vec::new();
    };
    let mut h = vec![("Access-Control-Allow-Origin", origin), ("Vary", "Origin")];
    if exact {
        h.push(("Access-Control-Allow-Credentials", "true"));
    }
    h
}

/// The answer to a CORS preflight (`OPTIONS`) of an event stream whose origin
/// passed the allow-list.
fn sse_cors_preflight(cors: Option<(&str, bool)>) -> Vec<u8> {
    let mut headers = cors_headers(cors);
    headers.extend([
        ("Access-Control-Allow-Methods", "GET"),
        (
            "Access-Control-Allow-Headers",
            "Last-Event-ID, Authorization, Cache-Control, Accept",
        ),
        ("Access-Control-Max-Age", "600"),
        ("Allow", "GET, OPTIONS"),
    ]);
    http::response(204, "No Content", &headers, "")
}

/// SSE requests must be GET and accept `text/event-stream`.
fn sse_preflight(req: &Request) -> Result<(), Vec<u8>> {
    if req.method != "GET" {
        return Err(http::response(
            405,
            "Method Not Allowed",
            &[("Allow", "GET")],
            "event streams are opened with GET",
        ));
    }
    let acceptable = match req.header("accept") {
        None => true,
        Some(v) => v.split(|b| *b == b',').any(|item| {
            let media = item
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            [&b"text/event-stream"[..], b"text/*", b"*/*"]
                .iter()
                .any(|m| media.eq_ignore_ascii_case(m))
        }),
    };
    if !acceptable {
        return Err(http::response(
            406,
            "Not Acceptable",
            &[],
            "this endpoint produces text/event-stream: send Accept: text/event-stream",
        ));
    }
    Ok(())
}
