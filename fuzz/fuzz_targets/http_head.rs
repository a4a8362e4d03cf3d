//! HTTP/1.1 request heads (`proto::http::parse_request`) and what the server does
//! with one: the WebSocket upgrade checks and permessage-deflate negotiation.
//!
//! Checks: a complete head is within the limits and parses the same from exactly
//! its own bytes; one byte fewer is incomplete; errors and rejections produce a
//! 4xx response; an accepted upgrade produces a 101 whose negotiated extension
//! header, offered back, negotiates the same parameters.
#![no_main]

use corecast::proto::http::{self, parse_request, HeadError, MAX_HEADERS, MAX_HEAD_BYTES};
use corecast::proto::ws::deflate::{negotiate, DeflateSettings};
use corecast::proto::ws::handshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(None) => assert!(data.len() <= MAX_HEAD_BYTES),
        Err(e) => {
            if let HeadError::TooLarge(max) | HeadError::TooManyHeaders(max) = e {
                // The default limits, named in the 431 body.
                assert!(max == MAX_HEAD_BYTES || max == MAX_HEADERS);
                assert!(
                    data.len() > MAX_HEAD_BYTES
                        || data.windows(2).filter(|w| w[1] == b'\n').count() > MAX_HEADERS
                );
            }
            assert!(e.response().starts_with(b"HTTP/1.1 4"));
        }
        Ok(Some((req, n))) => {
            assert!(n <= data.len() && n <= MAX_HEAD_BYTES);
            assert!(req.headers.len() <= MAX_HEADERS);
            assert!(!req.method.is_empty());
            assert!(!req.path.contains('?'));
            assert_eq!(parse_request(&data[..n]), Ok(Some((req.clone(), n))));
            assert_eq!(parse_request(&data[..n - 1]), Ok(None));
            upgrade(&req);
        }
    }
});

fn upgrade(req: &http::Request) {
    let _ = req.query_pairs();
    for (name, _) in &req.headers {
        assert!(req.header(name).is_some());
    }
    let protocols = vec!["chat".to_string(), "json".to_string()];
    let settings = DeflateSettings::default();
    match handshake::accept(req, &protocols, &settings) {
        Ok(accepted) => {
            assert_eq!(accepted.accept.len(), 28);
            if let Some(p) = &accepted.protocol {
                assert!(protocols.contains(p));
            }
            assert!(handshake::response(&accepted).starts_with(b"HTTP/1.1 101 "));
            if let Some(agreed) = accepted.deflate {
                // What we answered, offered back, is accepted as is.
                let header = agreed.response_header();
                let again = negotiate(&[header.as_bytes()], &settings);
                assert_eq!(again, Ok(Some(agreed)), "{header}");
            }
        }
        Err(rejection) => assert!(rejection.response().starts_with(b"HTTP/1.1 4")),
    }
}
