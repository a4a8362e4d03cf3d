//! A WebSocket or SSE endpoint's side of the accept path: origin and CORS, drain,
//! the resume cursor, the SSE response head or the WebSocket handshake, `$connect`,
//! then the connection is built, put in the shard's slab and its handler run.

use std::rc::Rc;

use futures_lite::{AsyncWriteExt, FutureExt};

use super::accept::Opening;
use super::driver::{READ, WRITE};
use super::endpoint::{Endpoint, EndpointHandler, EndpointTransport};
use super::handle::connection::Connection;
use super::handle::ws_task::WsConn;
use super::limits::ConnLimits;
use super::shard::Shard;
use super::socket::Socket;
use super::tcp_conn::{Conn, ConnLog, ConnParts, Handler, Transport};
use crate::proto::http::{self, Request};
use crate::proto::sse::{parse_stream_cursor, StreamCursor};
use crate::proto::ws::deflate::Inflater;
use crate::proto::ws::{close, handshake, Decoder, Limits};
use crate::stats::ShardStats;
use crate::vocab::connect::{Admitted, Connecting};
use crate::vocab::registry::TransportKind;

/// What the upgrade settled for the new connection.
struct Upgraded {
    decoder: Decoder,
    /// Shared broadcast frames may be sent compressed.
    compressed: bool,
    transport: Transport,
    /// What `$connect` attached, if the endpoint has one.
    admitted: Option<Admitted>,
}

/// Serve a request for stream endpoint `index`: refuse it with an HTTP answer, or
/// upgrade it and run the endpoint's handler until the connection ends.
pub(crate) async fn serve_endpoint(
    shard: Rc<Shard>,
    mut opening: Opening,
    index: usize,
    endpoint: &Endpoint,
) {
    let origins = match endpoint.transport {
        EndpointTransport::WebSocket => &shard.shared.config.websocket.allowed_origins,
        EndpointTransport::Sse => &shard.shared.config.sse.allowed_origins,
    };
    let req = &opening.req;
    let origin = req
        .header("origin")
        .map(|o| String::from_utf8_lossy(o).into_owned());
    if !crate::config::origin_allowed(origins, origin.as_deref()) {
        ShardStats::add(&shard.stats.origin_rejected, 1);
        let body = format!(
            "origin {:?} is not allowed",
            origin.as_deref().unwrap_or_default()
        );
        return answer(opening.stream, http::response(403, "Forbidden", &[], &body)).await;
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
        return answer(opening.stream, sse_cors_preflight(cors)).await;
    }
    if shard.draining.fired() {
        let resp = http::response(
            503,
            "Service Unavailable",
            &[("Retry-After", "1")],
            "server is shutting down",
        );
        return answer(opening.stream, resp).await;
    }
    let query = req.query_pairs();
    let cursor = match requested_cursor(req, &query, endpoint.transport) {
        Ok(c) => c,
        Err(why) => {
            return answer(
                opening.stream,
                http::response(400, "Bad Request", &[], &why),
            )
            .await
        }
    };
    let upgraded = match endpoint.transport {
        EndpointTransport::Sse => {
            upgrade_sse(&shard, &mut opening.stream, endpoint, req, &query, cors).await
        }
        EndpointTransport::WebSocket => {
            upgrade_websocket(&shard, &mut opening.stream, endpoint, req, &query).await
        }
    };
    let Some(upgraded) = upgraded else {
        return;
    };
    let conn = install(&shard, opening, index, endpoint, upgraded, cursor);
    run_handler(shard, conn, endpoint).await;
}

/// Write a one-shot answer (the connection then closes).
async fn answer(mut stream: Socket, resp: Vec<u8>) {
    let _ = stream.write_all(&resp).await;
}

/// The SSE response head, after `$connect`; `None` when the request was answered
/// otherwise (refused, or the client went away).
async fn upgrade_sse(
    shard: &Rc<Shard>,
    stream: &mut Socket,
    endpoint: &Endpoint,
    req: &Request,
    query: &[(String, String)],
    cors: Option<(&str, bool)>,
) -> Option<Upgraded> {
    if let Err(resp) = sse_preflight(req) {
        let _ = stream.write_all(&resp).await;
        return None;
    }
    let admitted = match admit(shard, endpoint, req, stream, TransportKind::Sse) {
        Ok(a) => a,
        Err(resp) => {
            let _ = stream.write_all(&resp).await;
            return None;
        }
    };
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n");
    for (k, v) in cors_headers(cors) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return None;
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
    Some(Upgraded {
        decoder: Decoder::new(Limits::default(), None),
        compressed: false,
        transport,
        admitted,
    })
}

/// The WebSocket handshake, `$connect` before the 101; `None` when the request was
/// answered otherwise (refused, or the client went away).
async fn upgrade_websocket(
    shard: &Rc<Shard>,
    stream: &mut Socket,
    endpoint: &Endpoint,
    req: &Request,
    query: &[(String, String)],
) -> Option<Upgraded> {
    let accepted = match handshake::accept(req, &endpoint.protocols, &shard.shared.deflate) {
        Ok(a) => a,
        Err(rejection) => {
            let _ = stream.write_all(&rejection.response()).await;
            return None;
        }
    };
    // `$connect` and middleware decide before the 101 is written.
    let admitted = match admit(shard, endpoint, req, stream, TransportKind::WebSocket) {
        Ok(a) => a,
        Err(resp) => {
            let _ = stream.write_all(&resp).await;
            return None;
        }
    };
    if stream
        .write_all(&handshake::response(&accepted))
        .await
        .is_err()
    {
        return None;
    }
    let ws = &shard.shared.config.websocket;
    let limits = Limits {
        max_frame_size: ws.max_frame_size,
        max_message_size: ws.max_message_size,
        max_fragments: ws.max_fragments,
    };
    let envelope = query
        .iter()
        .any(|(k, v)| k == "envelope" && matches!(v.as_str(), "1" | "true" | "json"));
    Some(Upgraded {
        decoder: Decoder::new(limits, accepted.deflate.map(Inflater::new)),
        // Shared broadcast frames are compressed once per shard with a 15-bit
        // window; a client that limited the server's window gets uncompressed
        // frames instead (RFC 7692 lets any message go uncompressed).
        compressed: accepted
            .deflate
            .is_some_and(|d| d.server_max_window_bits >= 15),
        transport: if envelope {
            Transport::WebSocketEnvelope
        } else {
            Transport::WebSocket
        },
        admitted,
    })
}

/// Build the connection, put it in the shard's slab and set it up (metadata and
/// token expiry from `$connect`, counters, resume cursor, SSE retry).
fn install(
    shard: &Rc<Shard>,
    opening: Opening,
    index: usize,
    endpoint: &Endpoint,
    upgraded: Upgraded,
    cursor: Option<StreamCursor>,
) -> Rc<Conn> {
    let Opening {
        stream,
        req,
        pending,
        admission,
    } = opening;
    let Upgraded {
        decoder,
        compressed,
        transport,
        admitted,
    } = upgraded;
    let ws = &shard.shared.config.websocket;
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
        endpoint: index as u16,
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
            super::expiry::arm_expiry(shard, conn.id, at);
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
    conn
}

/// Run the endpoint's handler: callbacks (`on_open`, then the driver calls the
/// rest) or an async handler task until it returns.
async fn run_handler(shard: Rc<Shard>, conn: Rc<Conn>, endpoint: &Endpoint) {
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
                path = shard.shared.endpoints[conn.endpoint as usize].0.as_str(),
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
    let connecting = Connecting::new(req, stream.peer_addr().ok(), transport);
    run_admission(&shard.stats, endpoint.admission.as_deref(), connecting).map_err(|r| {
        let mut headers = Vec::new();
        if r.status == 401 {
            headers.push(("WWW-Authenticate", "Bearer"));
        }
        http::response(r.status, r.phrase(), &headers, &r.reason)
    })
}

/// Run an endpoint's `$connect` (if it has one) and count a refusal
/// (`connect_rejected`, and `auth_failures` for 401/403). Shared by the TCP
/// upgrade and the WebTransport CONNECT.
pub(crate) fn run_admission(
    stats: &ShardStats,
    admission: Option<&dyn crate::vocab::connect::Admission>,
    connecting: Connecting<'_>,
) -> Result<Option<crate::vocab::connect::Admitted>, crate::vocab::connect::Reject> {
    let Some(admission) = admission else {
        return Ok(None);
    };
    admission.admit(connecting).map(Some).inspect_err(|r| {
        ShardStats::add(&stats.connect_rejected, 1);
        if matches!(r.status, 401 | 403) {
            ShardStats::add(&stats.auth_failures, 1);
        }
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
