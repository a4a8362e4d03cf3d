//! What handlers fail with and how bodies are parsed.

use super::*;

impl From<MetaError> for Reject {
    fn from(e: MetaError) -> Self {
        Reject::new(500, e.to_string())
    }
}

/// What a handler can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The client's fault (bad body, unknown stream, not allowed): answered with an
    /// error frame; the connection stays.
    Client {
        /// Machine-readable code, e.g. `invalid_body`.
        code: String,
        /// What was wrong, naming the field where there is one.
        message: String,
    },
    /// The server's fault: the connection is closed with 1011 and the error counted.
    Internal(String),
}

impl RouteError {
    /// A client error answered with an error frame.
    pub fn client(code: impl Into<String>, message: impl Into<String>) -> Self {
        RouteError::Client {
            code: code.into(),
            message: message.into(),
        }
    }

    /// An internal error: closes the connection (1011).
    pub fn internal(message: impl Into<String>) -> Self {
        RouteError::Internal(message.into())
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Client { code, message } => write!(f, "{code}: {message}"),
            RouteError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// Any other error a handler `?`-propagates is internal.
impl<E: std::error::Error> From<E> for RouteError {
    fn from(e: E) -> Self {
        RouteError::Internal(e.to_string())
    }
}

/// Parse a message body (or part of one) into `T`; a mismatch is a client error
/// (`invalid_body`) naming the field serde could not read.
pub fn parse_body<T: DeserializeOwned>(body: Value) -> Result<T, RouteError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        RouteError::client("invalid_body", message)
    })
}
