//! Live-streaming rooms with chat and viewer counts, built on the action router:
//! JWT-authenticated WebSocket clients start a stream (a `stream-<id>` room they
//! broadcast to), others join it by id, everyone in it chats, presence counts the
//! viewers, and the stream ends when its broadcaster ends it or goes away.
//!
//! ```text
//! cargo run --release -p corecast --example streaming -- 127.0.0.1:9300
//! ```
//!
//! then open `http://127.0.0.1:9300/` in two browser windows. The page gets a dev
//! token from `GET /dev/token?name=NAME` and connects to
//! `ws://127.0.0.1:9300/ws/streaming?token=...`.
//!
//! Environment:
//! - `STREAMING_JWT_SECRET`: HS256 secret tokens are signed with (default: a dev
//!   secret, with a warning).
//! - `STREAMING_JWT_LEEWAY_SECS`: clock skew allowed on `exp` at connect (default 30).
//! - `STREAMING_DEV_TOKENS=0`: turn `GET /dev/token` off (404).
//!
//! Routes, frames and error codes: `engine/examples/streaming/README.md` and the
//! "Streaming example" section of `docs/PROTOCOL.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corecast::auth::{Algorithm, AuthConfig, JwtMiddleware};
use corecast::config::{ConfigDuration, PresenceRule};
use corecast::router::{Connecting, Ctx, Reject, RouteError, Router};
use corecast::{Config, ConnId, Engine, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The page, served at `/`.
const INDEX_HTML: &str = include_str!("index.html");
/// Secret used when `STREAMING_JWT_SECRET` is not set (never use it in production).
const DEV_SECRET: &str = "corecast-streaming-dev-secret-do-not-use-in-production";
/// Lifetime of a token minted by `GET /dev/token`.
const DEV_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Room-name prefix of every stream (the presence rule matches `stream-*`).
const ROOM_PREFIX: &str = "stream-";
/// Display names (the token's `name`, or `sub`) are 1 to this many characters.
const MAX_NAME_CHARS: usize = 32;
/// Stream titles are 1 to this many characters.
const MAX_TITLE_CHARS: usize = 100;
/// Stream descriptions are at most this many characters.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Chat messages are 1 to this many characters.
const MAX_MESSAGE_CHARS: usize = 500;
/// Live streams the server holds at once (each is a map entry and a room).
const MAX_STREAMS: usize = 10_000;

/// A live stream.
#[derive(Debug, Clone)]
struct Stream {
    title: String,
    description: String,
    /// The connection that started it; its leaving ends the stream.
    broadcaster: ConnId,
    broadcaster_name: String,
    started_at_ms: u64,
}

/// Live streams by id (the id is also the room name).
///
/// A process-wide `Mutex` is fine for an example: handlers are synchronous and only
/// hold the lock for a map lookup or insert (never across an `await` or any I/O),
/// control messages (start, join, leave, end, list) are rare, and a chat message
/// costs one lookup. A server with very many streams or messages per second would
/// rather keep each stream's state on the shard that owns its room, or shard the
/// map, so shards do not contend on one lock.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<HashMap<String, Stream>>>);

impl Streams {
    /// The map, even if a handler panicked while holding the lock (the router
    /// catches handler panics; the map is still consistent: every change is one
    /// insert or remove).
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Stream>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `stream.start` body.
#[derive(Deserialize)]
struct StartBody {
    title: String,
    #[serde(default)]
    description: String,
}

/// Body of `stream.join`, `stream.leave` and `stream.end`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamRef {
    stream_id: String,
}

/// `chat.message` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatBody {
    stream_id: String,
    message: String,
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `invalid_body` naming `field`.
fn invalid(field: &str, what: &str) -> RouteError {
    RouteError::client("invalid_body", format!("{field}: {what}"))
}

/// How much of the control range a text field accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// One line: no control characters at all (titles, chat messages).
    One,
    /// Several lines: newlines and tabs, no other control characters (descriptions).
    Many,
}

/// Check that `value` has between `min` and `max` characters (after trimming
/// surrounding whitespace) and only the control characters `lines` allows; return
/// it trimmed. Errors are `invalid_body` naming `field`.
fn checked_text(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    lines: Lines,
) -> Result<String, RouteError> {
    let value = value.trim();
    let n = value.chars().count();
    if n < min || n > max {
        let range = if min == 0 {
            format!("at most {max} characters")
        } else {
            format!("{min} to {max} characters")
        };
        return Err(invalid(field, &format!("must be {range} (got {n})")));
    }
    let allowed = |c: char| lines == Lines::Many && matches!(c, '\n' | '\r' | '\t');
    if value.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(value.to_string())
}

/// A display name: 1 to [`MAX_NAME_CHARS`] characters, no control characters.
fn valid_name(name: &str) -> Option<String> {
    let name = name.trim();
    let n = name.chars().count();
    ((1..=MAX_NAME_CHARS).contains(&n) && !name.chars().any(char::is_control))
        .then(|| name.to_string())
}

/// A fresh stream id: `stream-` and 16 random hex digits.
fn new_stream_id() -> Result<String, RouteError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RouteError::internal("no randomness for a stream id"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{ROOM_PREFIX}{hex}"))
}

/// This connection's display name (set by `$connect`).
fn name_of(ctx: &Ctx) -> String {
    ctx.meta("name").unwrap_or_default()
}

/// `$connect`, after the JWT middleware verified the token: the token's `name`
/// claim (or else `sub`) becomes the `name` metadata, and everyone starts as a
/// viewer.
fn on_connect(c: &mut Connecting<'_>) -> Result<(), Reject> {
    let claims: Map<String, Value> = c.meta("claims").unwrap_or_default();
    let raw = claims
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| claims.get("sub").and_then(Value::as_str))
        .ok_or_else(|| Reject::unauthorized("token has no name or sub claim"))?;
    let name = valid_name(raw).ok_or_else(|| {
        Reject::unauthorized(format!(
            "token name must be 1 to {MAX_NAME_CHARS} characters without control characters"
        ))
    })?;
    c.set_meta("name", name)?;
    c.set_meta("role", "viewer")?;
    Ok(())
}

/// Tell the stream's room it ended (its members get `stream.ended`).
fn announce_end(ctx: &Ctx, stream_id: &str) -> Result<(), RouteError> {
    ctx.broadcast(
        stream_id,
        &json!({"type": "stream.ended", "streamId": stream_id}),
    )
}

/// The router: every route of the example.
fn router(streams: &Streams) -> Router {
    let mut r = Router::new();
    r.on_connect(on_connect);

    let s = streams.clone();
    r.route("stream.start", move |ctx, body: StartBody| {
        let title = checked_text("title", &body.title, 1, MAX_TITLE_CHARS, Lines::One)?;
        let description = checked_text(
            "description",
            &body.description,
            0,
            MAX_DESCRIPTION_CHARS,
            Lines::Many,
        )?;
        let name = name_of(ctx);
        let stream_id = new_stream_id()?;
        {
            let mut map = s.lock();
            if let Some((id, _)) = map.iter().find(|(_, st)| st.broadcaster == ctx.id()) {
                return Err(RouteError::client(
                    "already_broadcasting",
                    format!("this connection already broadcasts {id}: end it first"),
                ));
            }
            if map.len() >= MAX_STREAMS {
                return Err(RouteError::client(
                    "too_many_streams",
                    "the server holds as many live streams as it allows",
                ));
            }
            map.insert(
                stream_id.clone(),
                Stream {
                    title: title.clone(),
                    description: description.clone(),
                    broadcaster: ctx.id(),
                    broadcaster_name: name,
                    started_at_ms: unix_ms(),
                },
            );
        }
        // Role first, so the presence entry made by the join carries it.
        ctx.set_meta("role", "broadcaster")?;
        if let Err(e) = ctx.join(&stream_id) {
            s.lock().remove(&stream_id);
            let _ = ctx.set_meta("role", "viewer");
            return Err(e);
        }
        ctx.reply(&json!({
            "type": "stream.started",
            "streamId": stream_id,
            "title": title,
            "description": description,
        }))
    });

    let s = streams.clone();
    r.route("stream.join", move |ctx, body: StreamRef| {
        let stream = {
            let map = s.lock();
            let Some(stream) = map.get(&body.stream_id) else {
                return Err(stream_not_found(&body.stream_id));
            };
            if ctx.in_room(&body.stream_id) {
                return Err(RouteError::client(
                    "already_in_stream",
                    format!("already in {}", body.stream_id),
                ));
            }
            // Joined under the lock: a concurrent `stream.end` either removed the
            // stream before (not found above) or announces the end after this join.
            ctx.join(&body.stream_id)?;
            stream.clone()
        };
        ctx.reply(&json!({
            "type": "stream.joined",
            "streamId": body.stream_id,
            "title": stream.title,
            "description": stream.description,
            "broadcaster": stream.broadcaster_name,
        }))
    });

    let s = streams.clone();
    r.route("chat.message", move |ctx, body: ChatBody| {
        if !s.lock().contains_key(&body.stream_id) {
            return Err(stream_not_found(&body.stream_id));
        }
        if !ctx.in_room(&body.stream_id) {
            return Err(not_in_stream(&body.stream_id));
        }
        let message = checked_text("message", &body.message, 1, MAX_MESSAGE_CHARS, Lines::One)?;
        ctx.broadcast(
            &body.stream_id,
            &json!({
                "type": "chat",
                "streamId": body.stream_id,
                "from": name_of(ctx),
                "message": message,
                "at": unix_ms(),
            }),
        )
    });

    let s = streams.clone();
    r.route("stream.leave", move |ctx, body: StreamRef| {
        // Leaving works for an ended stream too (its room is still joined).
        if !ctx.in_room(&body.stream_id) {
            return Err(not_in_stream(&body.stream_id));
        }
        ctx.leave(&body.stream_id);
        let ended = end_if_broadcaster(&s, ctx.id(), &body.stream_id);
        ctx.reply(&json!({"type": "stream.left", "streamId": body.stream_id}))?;
        if ended {
            let _ = ctx.set_meta("role", "viewer");
            announce_end(ctx, &body.stream_id)?;
        }
        Ok(())
    });

    let s = streams.clone();
    r.route("stream.end", move |ctx, body: StreamRef| {
        {
            let mut map = s.lock();
            let Some(stream) = map.get(&body.stream_id) else {
                return Err(stream_not_found(&body.stream_id));
            };
            if stream.broadcaster != ctx.id() {
                return Err(RouteError::client(
                    "not_broadcaster",
                    format!("only the broadcaster can end {}", body.stream_id),
                ));
            }
            map.remove(&body.stream_id);
        }
        let _ = ctx.set_meta("role", "viewer");
        // The broadcaster is still in the room: it gets `stream.ended` too.
        announce_end(ctx, &body.stream_id)
    });

    let s = streams.clone();
    r.route("stream.list", move |ctx, _body: Value| {
        let mut live: Vec<(String, Stream)> = s
            .lock()
            .iter()
            .map(|(id, st)| (id.clone(), st.clone()))
            .collect();
        live.sort_by(|a, b| (a.1.started_at_ms, &a.0).cmp(&(b.1.started_at_ms, &b.0)));
        let streams: Vec<Value> = live
            .into_iter()
            .map(|(id, st)| {
                json!({
                    "streamId": id,
                    "title": st.title,
                    "description": st.description,
                    "broadcaster": st.broadcaster_name,
                    "startedAt": st.started_at_ms,
                })
            })
            .collect();
        ctx.reply(&json!({"type": "stream.list", "streams": streams}))
    });

    let s = streams.clone();
    r.on_disconnect(move |ctx| {
        // The connection already left its rooms; end whatever it broadcast.
        let ended: Vec<String> = {
            let mut map = s.lock();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, st)| st.broadcaster == ctx.id())
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                map.remove(id);
            }
            ids
        };
        for id in ended {
            let _ = announce_end(ctx, &id);
        }
    });
    r
}

/// Forget `stream_id` if `conn` broadcasts it; true if it did.
fn end_if_broadcaster(streams: &Streams, conn: ConnId, stream_id: &str) -> bool {
    let mut map = streams.lock();
    if map.get(stream_id).is_some_and(|st| st.broadcaster == conn) {
        map.remove(stream_id);
        true
    } else {
        false
    }
}

fn stream_not_found(id: &str) -> RouteError {
    RouteError::client("stream_not_found", format!("no live stream {id:?}"))
}

fn not_in_stream(id: &str) -> RouteError {
    RouteError::client("not_in_stream", format!("join {id} first"))
}

/// A JSON error answer for the HTTP routes.
fn http_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse {
        status,
        ..HttpResponse::json(&json!({"error": code, "message": message}))
    }
}

/// `GET /dev/token?name=NAME`: a one-hour HS256 token for `NAME` (dev only).
fn dev_token(req: &corecast::proto::http::Request, secret: &str) -> HttpResponse {
    let raw = corecast::proto::http::query_values(&req.query, "name")
        .into_iter()
        .next()
        .unwrap_or_default();
    let Some(name) = valid_name(&raw) else {
        return http_error(
            400,
            "invalid_name",
            &format!("name must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        );
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let exp = now + DEV_TOKEN_LIFETIME.as_secs();
    let claims = json!({"sub": name, "name": name, "iat": now, "exp": exp});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let signed = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .and_then(|key| jsonwebtoken::encode(&header, &claims, &key));
    match signed {
        Ok(token) => HttpResponse::json(&json!({"token": token, "name": name, "expiresAt": exp})),
        Err(_) => http_error(500, "internal", "could not sign a token"),
    }
}

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9300".into())
        .parse()
        .expect("listen address like 127.0.0.1:9300");
    let secret = match std::env::var("STREAMING_JWT_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => {
            eprintln!(
                "WARNING: STREAMING_JWT_SECRET is not set: using a built-in dev secret; \
                 anyone can mint tokens for this server"
            );
            DEV_SECRET.to_string()
        }
    };
    let leeway: u64 = match std::env::var("STREAMING_JWT_LEEWAY_SECS") {
        Ok(v) => v
            .parse()
            .expect("STREAMING_JWT_LEEWAY_SECS: whole seconds, e.g. 30"),
        Err(_) => 30,
    };
    let dev_tokens = std::env::var("STREAMING_DEV_TOKENS").map_or(true, |v| v != "0");

    let mut config = Config {
        listen,
        ..Config::default()
    };
    config.websocket.endpoints.clear();
    config.sse.endpoints.clear();
    config.webtransport.enabled = false;
    config.webtransport.endpoints.clear();
    config.presence.rooms = vec![PresenceRule {
        pattern: format!("{ROOM_PREFIX}*"),
        meta: vec!["name".into()],
    }];

    let auth = AuthConfig {
        algorithm: Algorithm::Hs256,
        secret: secret.clone(),
        leeway: ConfigDuration(Duration::from_secs(leeway)),
        require_exp: true,
        query_param: Some("token".into()),
        header: false,
        cookie: None,
        rooms_claim: None,
        ..AuthConfig::default()
    };
    let jwt = JwtMiddleware::from_config(&auth).expect("auth configuration");

    let streams = Streams::default();
    let mut router = router(&streams);
    router.middleware(jwt);
    // Global middleware runs before `$connect`, whatever the order of the calls.

    let mut engine = Engine::new(config);
    engine.websocket_router("/ws/streaming", router);
    engine.http_get("/", |_| {
        HttpResponse::ok("text/html; charset=utf-8", INDEX_HTML)
    });
    engine.http_get("/dev/token", move |req| {
        if dev_tokens {
            dev_token(req, &secret)
        } else {
            HttpResponse::text(404, "dev tokens are off (STREAMING_DEV_TOKENS=0)")
        }
    });
    let running = engine.start().expect("start");
    println!(
        "streaming listening on http://{}/ (WebSocket: /ws/streaming?token=JWT)",
        running.local_addr()
    );
    running.wait().expect("shards");
}
