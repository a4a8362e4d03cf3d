//! `/healthz` (liveness) and `/readyz` (readiness) for load balancers and
//! orchestrators, on the main and TLS listeners. No auth: the answers name only the
//! reasons below, nothing about clients or rooms.
//!
//! Readiness reads state the engine already keeps (the shutdown flag, the cluster
//! bridge's connection flag) plus a count of shards that finished booting: atomic
//! loads on the probe's request only, never on the message path.

use std::sync::atomic::Ordering;

use super::endpoint::Shared;
use crate::proto::http::{self, Request};

/// The liveness path.
pub(crate) const HEALTHZ: &str = "/healthz";
/// The readiness path.
pub(crate) const READYZ: &str = "/readyz";

/// Which probe a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `/healthz`: 200 while the shard answering it runs.
    Live,
    /// `/readyz`: 200 only when new clients can be served.
    Ready,
}

impl Probe {
    /// The probe at `path`, if any.
    pub(crate) fn at(path: &str) -> Option<Probe> {
        match path {
            HEALTHZ => Some(Probe::Live),
            READYZ => Some(Probe::Ready),
            _ => None,
        }
    }
}

/// Why the engine is not ready; empty when it is. In the order a probe reports them.
pub(crate) fn not_ready(shared: &Shared) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if shared.booted.load(Ordering::Acquire) < shared.senders.len() {
        reasons.push("starting");
    }
    if shared.is_shutting_down() {
        reasons.push("draining");
    }
    #[cfg(feature = "cluster")]
    if shared.cluster().is_some_and(|c| !c.is_connected()) {
        reasons.push("redis_unreachable");
    }
    reasons
}

/// The whole response to a probe: GET and HEAD (no body), 405 with `Allow` for
/// other methods.
pub(crate) fn response(shared: &Shared, probe: Probe, req: &Request) -> Vec<u8> {
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return http::response(
                405,
                "Method Not Allowed",
                &[("Allow", "GET, HEAD")],
                "use GET or HEAD",
            )
        }
    };
    let (status, reason, body) = match probe {
        Probe::Live => (200, "OK", "{\"status\":\"ok\"}".to_string()),
        Probe::Ready => {
            let reasons = not_ready(shared);
            if reasons.is_empty() {
                let body = format!("{{\"ready\":true,\"shards\":{}}}", shared.senders.len());
                (200, "OK", body)
            } else {
                let list: Vec<String> = reasons.iter().map(|r| format!("\"{r}\"")).collect();
                let body = format!("{{\"ready\":false,\"reasons\":[{}]}}", list.join(","));
                (503, "Service Unavailable", body)
            }
        }
    };
    let mut resp = http::response_with_type(
        status,
        reason,
        &[("Cache-Control", "no-store")],
        "application/json",
        body.as_bytes(),
    );
    if head_only {
        // HEAD: the same head (Content-Length included), no body.
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(resp.len(), |i| i + 4);
        resp.truncate(end);
    }
    resp
}
