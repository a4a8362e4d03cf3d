//! HTTP/1.1 request heads (parsed with httparse) and the small responses we write.

use std::fmt::Write as _;

/// Largest request head we accept, bytes (431 beyond it).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines we accept (431 beyond it).
pub const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (after `?`), possibly empty.
    pub query: String,
    /// Header lines in order; names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not valid HTTP/1.1 (400).
    Malformed(&'static str),
    /// Head or header count over the limit (431).
    TooLarge,
}

impl HeadError {
    /// The response that reports this error.
    pub fn response(&self) -> Vec<u8> {
        match self {
            HeadError::Malformed(why) => response(400, "Bad Request", &[], why),
            HeadError::TooLarge => response(
                431,
                "Request Header Fields Too Large",
                &[],
                "request head too large",
            ),
        }
    }
}

/// Parse a request head from the start of `buf`. `Ok(None)`: need more bytes;
/// `Ok(Some((req, n)))`: the head took `n` bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            if req.version != Some(1) {
                return Err(HeadError::Malformed("HTTP/1.1 required"));
            }
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, q),
                None => (target, ""),
            };
            let request = Request {
                method: req.method.unwrap_or("").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.to_vec()))
                    .collect(),
            };
            Ok(Some((request, n)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(match e {
            httparse::Error::HeaderName => "invalid header name",
            httparse::Error::HeaderValue => "invalid header value",
            httparse::Error::NewLine => "invalid line ending",
            httparse::Error::Status => "invalid status",
            httparse::Error::Token => "invalid token in request line",
            httparse::Error::Version => "invalid HTTP version",
            _ => "malformed request",
        })),
    }
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of header `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// True when some value of header `name` lists `token` (comma-separated,
    /// case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name).any(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Query parameters, percent-decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        parse_query(&self.query)
    }
}

/// Every value of `key` in a query string, in order (percent-decoded).
pub fn query_values(query: &str, key: &str) -> Vec<String> {
    parse_query(query)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

/// Split and percent-decode a query string (`+` is a space).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-decode `s` (`+` is a space; invalid escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A complete response with `Connection: close` and a plain-text body (one line).
pub fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let body_line = if body.is_empty() {
        String::new()
    } else {
        format!("{body}\n")
    };
    response_with_type(
        status,
        reason,
        headers,
        "text/plain; charset=utf-8",
        body_line.as_bytes(),
    )
}

/// A complete response with `Connection: close`, a content type and a body.
pub fn response_with_type(
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut head = String::with_capacity(160);
    let _ = write!(head, "HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(
        head,
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_query_and_headers() {
        let raw = b"GET /ws/chat?room=a&room=b%20c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\nextra";
        let (req, n) = parse_request(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 5);
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws/chat");
        assert_eq!(
            req.query_pairs(),
            vec![("room".into(), "a".into()), ("room".into(), "b c".into())]
        );
        assert!(req.header_has_token("connection", "upgrade"));
        assert_eq!(req.header("HOST"), Some(&b"x"[..]));
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost:").unwrap(), None);
    }

    #[test]
    fn oversized_head_is_refused() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 1));
        assert_eq!(parse_request(&raw), Err(HeadError::TooLarge));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_request(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
