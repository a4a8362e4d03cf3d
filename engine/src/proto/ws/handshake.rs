//! The opening handshake (RFC 6455 section 4.2): validate the client's upgrade
//! request and build the `101 Switching Protocols` response.

use base64::Engine as _;

use super::deflate::{self, DeflateSettings, Negotiated};
use crate::proto::http::{self, Request};

/// The GUID every accept key is derived with (RFC 6455 section 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The protocol version we speak.
pub const VERSION: &str = "13";

/// What the server agreed to for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The subprotocol chosen from the client's list, if any.
    pub protocol: Option<String>,
    /// permessage-deflate parameters, if negotiated.
    pub deflate: Option<Negotiated>,
}

/// Why an upgrade request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 405: the method is not GET.
    MethodNotAllowed,
    /// 400 with a one-line reason.
    BadRequest(String),
    /// 426: an unsupported `Sec-WebSocket-Version`.
    UnsupportedVersion,
}

impl Rejection {
    /// The HTTP response that reports this rejection.
    pub fn response(&self) -> Vec<u8> {
        match self {
            Rejection::MethodNotAllowed => http::response(
                405,
                "Method Not Allowed",
                &[("Allow", "GET")],
                "WebSocket upgrade requires GET",
            ),
            Rejection::BadRequest(why) => http::response(400, "Bad Request", &[], why),
            Rejection::UnsupportedVersion => http::response(
                426,
                "Upgrade Required",
                &[("Sec-WebSocket-Version", VERSION)],
                "unsupported Sec-WebSocket-Version: this server speaks 13",
            ),
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Validate an upgrade request. `protocols` are the subprotocols this endpoint
/// speaks, in order of preference; the first the client also lists is chosen.
pub fn accept(
    req: &Request,
    protocols: &[String],
    compression: &DeflateSettings,
) -> Result<Accepted, Rejection> {
    if req.method != "GET" {
        return Err(Rejection::MethodNotAllowed);
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Err(bad(
            "missing or invalid Upgrade header (expected websocket)",
        ));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(bad(
            "missing or invalid Connection header (expected Upgrade)",
        ));
    }
    if req.header("host").is_none() {
        return Err(bad("missing Host header"));
    }
    match req.header("sec-websocket-version") {
        None => return Err(Rejection::UnsupportedVersion),
        Some(v) if v.trim_ascii() != VERSION.as_bytes() => {
            return Err(Rejection::UnsupportedVersion)
        }
        Some(_) => {}
    }
    let key = req
        .header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or_else(|| bad("missing Sec-WebSocket-Key header"))?;
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|raw| raw.len() == 16);
    if !key_ok {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let offered: Vec<&[u8]> = req.headers_named("sec-websocket-extensions").collect();
    let deflate = deflate::negotiate(&offered, compression)
        .map_err(|e| bad(&format!("invalid Sec-WebSocket-Extensions: {e}")))?;
    let protocol = choose_protocol(req, protocols);
    Ok(Accepted {
        accept: accept_key(key),
        protocol,
        deflate,
    })
}

fn bad(why: &str) -> Rejection {
    Rejection::BadRequest(why.to_string())
}

fn choose_protocol(req: &Request, protocols: &[String]) -> Option<String> {
    let asked: Vec<String> = req
        .headers_named("sec-websocket-protocol")
        .flat_map(|v| v.split(|b| *b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .map(str::to_string)
        .collect();
    protocols.iter().find(|p| asked.contains(p)).cloned()
}

/// The `101 Switching Protocols` response for an accepted upgrade.
pub fn response(accepted: &Accepted) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.push_str(&accepted.accept);
    out.push_str("\r\n");
    if let Some(p) = &accepted.protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    if let Some(d) = &accepted.deflate {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(&d.response_header());
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::parse_request;

    fn req(extra: &str) -> Request {
        let raw = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        );
        parse_request(raw.as_bytes()).unwrap().unwrap().0
    }

    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_a_valid_upgrade_and_picks_a_protocol() {
        let r = req(&format!(
            "{KEY}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, chat\r\n"
        ));
        let off = DeflateSettings {
            enabled: false,
            ..Default::default()
        };
        let a = accept(&r, &["chat".into()], &off).unwrap();
        assert_eq!(a.protocol.as_deref(), Some("chat"));
        assert!(String::from_utf8(response(&a))
            .unwrap()
            .contains("Sec-WebSocket-Protocol: chat\r\n"));
    }

    #[test]
    fn refuses_wrong_version_with_426() {
        let r = req(&format!("{KEY}Sec-WebSocket-Version: 8\r\n"));
        let e = accept(&r, &[], &DeflateSettings::default()).unwrap_err();
        assert_eq!(e, Rejection::UnsupportedVersion);
        let resp = String::from_utf8(e.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426"));
        assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn refuses_a_bad_key_with_a_reason() {
        let r = req("Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n");
        match accept(&r, &[], &DeflateSettings::default()) {
            Err(Rejection::BadRequest(why)) => assert!(why.contains("Sec-WebSocket-Key")),
            other => panic!("{other:?}"),
        }
    }
}
