//! A connection attempt as `$connect` and middleware see it ([`Connecting`]), what
//! they decide ([`Admitted`] or a [`Reject`]), and the hook the engine calls
//! ([`Admission`], implemented by the router).

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::http;
use crate::vocab::meta::{Meta, MetaError};
use crate::vocab::registry::TransportKind;

/// A refusal of a connection attempt: the HTTP status and reason it is answered
/// with (before any upgrade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status, e.g. 401.
    pub status: u16,
    /// Plain-text reason sent as the body.
    pub reason: String,
}

impl Reject {
    /// A refusal with `status` and `reason`.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(400, reason)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(401, reason)
    }

    /// 403 Forbidden.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(403, reason)
    }

    /// The standard reason phrase for the status.
    pub fn phrase(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            s if s >= 500 => "Internal Server Error",
            _ => "Refused",
        }
    }
}

/// A connection attempt being decided by `$connect` and middleware: the request,
/// and the metadata the connection will start with.
pub struct Connecting<'a> {
    pub(crate) req: &'a http::Request,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) transport: TransportKind,
    pub(crate) meta: Meta,
    pub(crate) expires_at: Option<SystemTime>,
}

impl<'a> Connecting<'a> {
    pub(crate) fn new(
        req: &'a http::Request,
        remote: Option<SocketAddr>,
        transport: TransportKind,
    ) -> Self {
        Self {
            req,
            remote,
            transport,
            meta: Meta::new(),
            expires_at: None,
        }
    }

    /// The HTTP request (WebTransport: its CONNECT head as a request).
    pub fn request(&self) -> &http::Request {
        self.req
    }

    /// The request path.
    pub fn path(&self) -> &str {
        &self.req.path
    }

    /// The first value of query parameter `key` (percent-decoded).
    pub fn query_get(&self, key: &str) -> Option<String> {
        http::query_values(&self.req.query, key).into_iter().next()
    }

    /// A request header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.req
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// WebSocket or WebTransport.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Attach `value` under `key` to the connection-to-be.
    pub fn set_meta<T: Serialize>(&mut self, key: &str, value: T) -> Result<(), MetaError> {
        let v = serde_json::to_value(value).map_err(|e| MetaError(e.to_string()))?;
        self.meta.insert(key.to_string(), v);
        Ok(())
    }

    /// A value set by an earlier step (e.g. the auth middleware's `claims`).
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.meta.get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// Close the connection at `at` (e.g. its token's expiry); the earliest of
    /// several calls wins.
    pub fn expire_at(&mut self, at: SystemTime) {
        self.expires_at = Some(self.expires_at.map_or(at, |e| e.min(at)));
    }
}

/// What `$connect` decided for an accepted connection.
pub(crate) struct Admitted {
    pub(crate) meta: Meta,
    pub(crate) expires_at: Option<SystemTime>,
}

/// What the engine asks before it upgrades a connection on an endpoint that has
/// a router: run the middleware and `$connect`, never panicking.
pub(crate) trait Admission: Send + Sync {
    /// Admit (with the connection's starting metadata) or refuse.
    fn admit(&self, c: Connecting<'_>) -> Result<Admitted, Reject>;
}
