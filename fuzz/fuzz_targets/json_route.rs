//! JSON action routing: how `Router` splits a client message into the action,
//! the request id and the body before dispatching it (`corecast::fuzzing::
//! route_decode`), then typed body parsing (`router::parse_body`).
//!
//! The first byte picks the route key and text/binary; the rest is the message.
//! Checks: a decoded message is a JSON object whose route-key field is the
//! action string and whose `id` is the request id; anything else is refused
//! with the documented error code, and exactly when serde_json (parsed
//! independently) says the message is not such an object.
#![no_main]

use corecast::fuzzing::route_decode;
use corecast::router::parse_body;
use corecast::{Message, RouteError, Router};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Chat {
    room: String,
    text: String,
    id: Option<u64>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut router = Router::new();
    let key = if mode & 1 == 0 { "action" } else { "type" };
    router.route_key(key);
    let msg = if mode & 2 == 0 {
        match std::str::from_utf8(body) {
            Ok(text) => Message::text(text),
            Err(_) => Message::binary(body.to_vec()),
        }
    } else {
        Message::binary(body.to_vec())
    };
    let independent: Option<Value> = msg.as_text().and_then(|t| serde_json::from_str(t).ok());
    match route_decode(&router, &msg) {
        Ok((action, id, value)) => {
            assert_eq!(Some(&value), independent.as_ref());
            let obj = value.as_object().expect("routed body is an object");
            assert_eq!(obj.get(key), Some(&Value::String(action.clone())));
            assert_eq!(id.as_ref(), obj.get("id"));
            // Serialised and decoded again, the same route. (Not the same body:
            // serde_json's default float parsing may come back 1 ULP off.)
            let again = Message::text(serde_json::to_string(&value).unwrap());
            let (a2, id2, v2) = route_decode(&router, &again).expect("re-encoded body");
            assert_eq!(a2, action);
            assert_eq!(id2.is_some(), id.is_some());
            assert!(v2.is_object());
            match parse_body::<Chat>(value) {
                Ok(_) => {}
                Err(RouteError::Client { code, message }) => {
                    assert_eq!(code, "invalid_body");
                    assert!(!message.is_empty());
                }
                Err(e) => panic!("parse_body gave a non-client error: {e:?}"),
            }
        }
        Err((code, message)) => {
            assert!(!message.is_empty());
            let want = match (&msg, &independent) {
                (Message::Binary(_), _) => "binary_not_routed",
                (_, None) => "invalid_json",
                (_, Some(Value::Object(o))) => {
                    assert!(!matches!(o.get(key), Some(Value::String(_))));
                    "missing_route"
                }
                (_, Some(_)) => "invalid_message",
            };
            assert_eq!(code, want);
        }
    }
});
