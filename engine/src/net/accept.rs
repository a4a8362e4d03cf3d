//! Accepting connections and the HTTP request that opens each one: route it, answer
//! plain HTTP (stats, errors) or complete the WebSocket handshake and hand the
//! connection to its endpoint's handler.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncWriteExt, FutureExt};
use glommio::net::TcpListener;

use super::endpoint::{Endpoint, HttpHandler, Shared};
use super::health::Probe;
use super::limits::{Admission, Handshaking};
use super::read::{read_into, settle};
use super::shard::Shard;
use super::socket::Socket;
use crate::proto::http::{self, Request};
use crate::stats::ShardStats;

/// Accept for as long as the shard runs (`tls`: the TLS listener's settings, for
/// `tls.listen`). Each connection gets its own task at once: nothing here awaits a
/// client, so a slow one (slowloris) never delays the next accept.
///
/// Accepting goes on while the shard drains, so that load balancers can still read
/// `/readyz` (503 `draining`) and `/healthz`; [`route`] refuses everything that
/// would start new work during the drain with 503.
pub(crate) async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<Arc<super::endpoint::TlsShared>>,
) {
    let mut failures = AcceptFailures::default();
    loop {
        match listener.accept().await {
            Ok(stream) => {
                failures.recovered(shard.id, tls.is_some());
                ShardStats::add(&shard.stats.accepted, 1);
                let _ = stream.set_nodelay(true);
                let socket = match &tls {
                    None => Some(Socket::Plain(stream)),
                    #[cfg(feature = "tls")]
                    Some(tls) => super::tls::wrap(&shard, tls, stream),
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match **never {},
                };
                if let Some(socket) = socket {
                    glommio::spawn_local(serve(shard.clone(), socket)).detach();
                }
            }
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                ShardStats::add(&shard.stats.accept_failures, 1);
                failures.failed(shard.id, tls.is_some(), &std::io::Error::from(e));
                glommio::timer::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// How long the accept loop waits after a failed `accept()`.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// How often a stretch of failing accepts is logged again while it lasts.
const ACCEPT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Failing `accept()` calls, logged at most once per [`ACCEPT_FAILURE_LOG_EVERY`]
/// (and their recovery likewise), not once per 10 ms retry: at the open-file limit
/// accepts fail and succeed in turn as descriptors free up, which would otherwise
/// be 100 lines a second.
#[derive(Default)]
struct AcceptFailures {
    /// Failures since the last successful accept.
    count: u64,
    /// When the current run of failures began.
    since: Option<Instant>,
    /// When a failure, and a recovery, were last logged.
    warned: Option<Instant>,
    recovered: Option<Instant>,
}

fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= ACCEPT_FAILURE_LOG_EVERY)
}

impl AcceptFailures {
    fn failed(&mut self, shard: usize, tls: bool, e: &std::io::Error) {
        self.count += 1;
        let now = Instant::now();
        let start = *self.since.get_or_insert(now);
        if !due(self.warned, now) {
            return;
        }
        self.warned = Some(now);
        if self.count > 1 {
            tracing::warn!(
                shard, tls, error = %e, failures = self.count,
                for_s = now.duration_since(start).as_secs(),
                "accept still failing"
            );
        } else if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            tracing::warn!(
                shard, tls, error = %e,
                "accept failed: out of file descriptors; new connections wait in the listen backlog (retrying every 10 ms). Raise the open-file limit (the start-up log says what it got: ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=) or lower limits.max_connections_per_shard"
            );
        } else {
            tracing::warn!(shard, tls, error = %e, "accept failed (retrying every 10 ms)");
        }
    }

    fn recovered(&mut self, shard: usize, tls: bool) {
        let Some(start) = self.since.take() else {
            return;
        };
        let now = Instant::now();
        if due(self.recovered, now) {
            self.recovered = Some(now);
            tracing::info!(
                shard,
                tls,
                failures = self.count,
                after_ms = now.duration_since(start).as_millis() as u64,
                "accept recovered"
            );
        }
        self.count = 0;
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
        #[cfg(feature = "tls")]
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
        #[cfg(feature = "tls")]
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

/// What a request path names, matched in this order.
enum Target<'a> {
    /// The metrics path on the main listener.
    Metrics,
    /// `GET /stats`.
    Stats,
    /// `GET /webtransport/cert-hash`.
    CertHash,
    /// `/api/...` (API key).
    Api,
    /// A plain GET route registered with `Engine::http_get`.
    HttpGet(&'a HttpHandler),
    /// A WebSocket or SSE endpoint, with its index.
    Stream(usize, &'a Endpoint),
    /// `/healthz` or `/readyz`, unless a route or endpoint above took the path.
    Health(Probe),
    /// Nothing.
    NotFound,
}

fn target<'a>(shared: &'a Shared, path: &str) -> Target<'a> {
    if shared.main_metrics_path() == Some(path) {
        return Target::Metrics;
    }
    match path {
        "/stats" => return Target::Stats,
        "/webtransport/cert-hash" => return Target::CertHash,
        _ if path.starts_with("/api/") => return Target::Api,
        _ => {}
    }
    if let Some((_, h)) = shared.http_routes.iter().find(|(p, _)| p == path) {
        return Target::HttpGet(h);
    }
    match (shared.endpoint(path), Probe::at(path)) {
        (Some((i, e)), _) => Target::Stream(i, e),
        (None, Some(probe)) => Target::Health(probe),
        (None, None) => Target::NotFound,
    }
}

/// Answer a request by what its path names: a one-shot HTTP answer, the API, or an
/// upgrade to a WebSocket / SSE connection.
async fn route(
    shard: Rc<Shard>,
    mut stream: Socket,
    req: Request,
    pending: BytesMut,
    admission: Admission,
) {
    let shared = shard.shared.clone();
    let resp = match target(&shared, &req.path) {
        Target::Metrics => crate::metrics::http_response(
            &req.method,
            &shared.stats,
            &shared.routers,
            shared.sequencer.families().as_ref(),
        ),
        Target::Stats => stats_response(&shared, &req),
        Target::CertHash => cert_hash_response(&shared),
        Target::HttpGet(handler) => http_get_response(&shard, handler, &req),
        Target::Health(probe) => super::health::response(&shared, probe, &req),
        Target::NotFound => {
            let body = format!("no endpoint at {}", req.path);
            http::response(404, "Not Found", &[], &body)
        }
        // Draining: no new publishes or lookups (the shards are closing); the stream
        // endpoints answer the same 503 themselves (net::upgrade).
        Target::Api if shard.draining.fired() => http::response(
            503,
            "Service Unavailable",
            &[("Retry-After", "1")],
            "server is shutting down",
        ),
        Target::Api => return super::api::serve(shard, stream, req, pending).await,
        Target::Stream(index, endpoint) => {
            let opening = Opening {
                stream,
                req,
                pending,
                admission,
            };
            return super::upgrade::serve_endpoint(shard, opening, index, endpoint).await;
        }
    };
    let _ = stream.write_all(&resp).await;
}

fn stats_response(shared: &Shared, req: &Request) -> Vec<u8> {
    if req.method == "GET" {
        http::response_with_type(
            200,
            "OK",
            &[],
            "application/json",
            shared.stats_json().as_bytes(),
        )
    } else {
        http::response(405, "Method Not Allowed", &[("Allow", "GET")], "use GET")
    }
}

/// `{"sha256","base64"}` of the certificate new connections get (the original
/// shape), plus `hashes`: every certificate a client should trust, current first,
/// then the next one while a renewal is pending.
fn cert_hash_response(shared: &Shared) -> Vec<u8> {
    let Some(hashes) = shared.wt_cert_hashes() else {
        return http::response(404, "Not Found", &[], "WebTransport is not enabled");
    };
    let entry = |sha: &[u8; 32]| {
        format!(
            "{{\"sha256\":\"{}\",\"base64\":\"{}\"}}",
            crate::cert::hex(sha),
            crate::cert::base64(sha)
        )
    };
    let Some(current) = hashes.first() else {
        return http::response(503, "Service Unavailable", &[], "no certificate");
    };
    let list: Vec<String> = hashes.iter().map(entry).collect();
    let mut body = entry(current);
    body.pop();
    body.push_str(&format!(",\"hashes\":[{}]}}", list.join(",")));
    http::response_with_type(
        200,
        "OK",
        &[
            ("Access-Control-Allow-Origin", "*"),
            // Renewal changes the answer: a cached copy would name a retired hash.
            ("Cache-Control", "no-store"),
        ],
        "application/json",
        body.as_bytes(),
    )
}

fn http_get_response(shard: &Shard, handler: &HttpHandler, req: &Request) -> Vec<u8> {
    if req.method != "GET" && req.method != "HEAD" {
        return http::response(405, "Method Not Allowed", &[("Allow", "GET")], "use GET");
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(req))) {
        Ok(r) => r.encode(),
        Err(_) => {
            ShardStats::add(&shard.stats.handler_panics, 1);
            http::response(500, "Internal Server Error", &[], "handler failed")
        }
    }
}

/// A connection whose request head was read, on its way to an endpoint.
pub(crate) struct Opening {
    pub(crate) stream: Socket,
    pub(crate) req: Request,
    /// Bytes that came after the head.
    pub(crate) pending: BytesMut,
    pub(crate) admission: Admission,
}
