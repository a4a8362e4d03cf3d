//! HTTP/1.1 request heads (parsed with httparse) and the small responses we write.

use std::fmt::Write as _;

/// Largest request head accepted by default, bytes (431 beyond it;
/// `limits.max_request_head_bytes`).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines accepted by default (431 beyond it; `limits.max_headers`).
pub const MAX_HEADERS: usize = 64;
/// Header slots parsed on the stack; a larger `max_headers` uses a heap array.
const STACK_HEADERS: usize = 128;

/// Request-head limits (431 beyond them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest request head, bytes.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
        }
    }
}

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
    /// Head over `limits.max_request_head_bytes` (431); the limit, bytes.
    TooLarge(usize),
    /// More header lines than `limits.max_headers` (431); the limit.
    TooManyHeaders(usize),
}

impl HeadError {
    /// The response that reports this error.
    pub fn response(&self) -> Vec<u8> {
        match self {
            HeadError::Malformed(why) => response(400, "Bad Request", &[], why),
            HeadError::TooLarge(max) => response(
                431,
                "Request Header Fields Too Large",
                &[],
                &format!("request head larger than limits.max_request_head_bytes ({max} bytes)"),
            ),
            HeadError::TooManyHeaders(max) => response(
                431,
                "Request Header Fields Too Large",
                &[],
                &format!("more header lines than limits.max_headers ({max})"),
            ),
        }
    }
}

/// Parse a request head from the start of `buf` with the default [`HeadLimits`].
/// `Ok(None)`: need more bytes; `Ok(Some((req, n)))`: the head took `n` bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    parse_request_with(buf, HeadLimits::default())
}

/// [`parse_request`] with explicit limits.
pub fn parse_request_with(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(Request, usize)>, HeadError> {
    if limits.max_headers <= STACK_HEADERS {
        let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
        parse_into(buf, limits, &mut headers[..limits.max_headers])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        parse_into(buf, limits, &mut headers)
    }
}

fn parse_into<'b>(
    buf: &'b [u8],
    limits: HeadLimits,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<(Request, usize)>, HeadError> {
    let too_large = HeadError::TooLarge(limits.max_head_bytes);
    let mut req = httparse::Request::new(headers);
    // Only the first max_head_bytes + 1 bytes matter: a head not complete by then
    // is too large (and pipelined bytes after a head do not count against it).
    let window = &buf[..buf.len().min(limits.max_head_bytes + 1)];
    match req.parse(window) {
        Ok(httparse::Status::Partial) => {
            if window.len() > limits.max_head_bytes {
                Err(too_large)
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(n)) => {
            if n > limits.max_head_bytes {
                return Err(too_large);
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
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders(limits.max_headers)),
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
        assert_eq!(
            parse_request(&raw),
            Err(HeadError::TooLarge(MAX_HEAD_BYTES))
        );
    }

    #[test]
    fn configured_limits_name_themselves_in_the_431() {
        let limits = HeadLimits {
            max_head_bytes: 1024,
            max_headers: 8,
        };
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..9 {
            raw.extend(format!("X-H{i}: v\r\n").bytes());
        }
        raw.extend(b"\r\n");
        let e = parse_request_with(&raw, limits).unwrap_err();
        assert_eq!(e, HeadError::TooManyHeaders(8));
        let resp = String::from_utf8(e.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
        assert!(resp.contains("limits.max_headers (8)"), "{resp}");
        // Eight headers fit.
        let eight: Vec<u8> = raw
            .split(|b| *b == b'\n')
            .take(9)
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .chain(*b"\r\n")
            .collect();
        assert!(parse_request_with(&eight, limits).unwrap().is_some());
        // A head over the byte limit, complete or not.
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1100));
        let e = parse_request_with(&big, limits).unwrap_err();
        assert_eq!(e, HeadError::TooLarge(1024));
        assert!(String::from_utf8(e.response())
            .unwrap()
            .contains("limits.max_request_head_bytes (1024 bytes)"));
        big.extend(b"\r\n\r\n");
        assert_eq!(
            parse_request_with(&big, limits).unwrap_err(),
            HeadError::TooLarge(1024)
        );
        // A large head limit with many headers uses the heap array.
        let many = HeadLimits {
            max_head_bytes: 1 << 20,
            max_headers: 1000,
        };
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..500 {
            raw.extend(format!("X-H{i}: v\r\n").bytes());
        }
        raw.extend(b"\r\n");
        let (req, _) = parse_request_with(&raw, many).unwrap().unwrap();
        assert_eq!(req.headers.len(), 500);
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
