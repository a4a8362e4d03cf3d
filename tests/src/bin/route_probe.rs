//! A probe application for the router end-to-end tests (tests/python/test_router.py):
//! one [`Router`] whose actions exercise every [`Ctx`] feature, served on
//!
//! - `/ws/probe` and WebTransport `/wt/probe` (the same `Arc<Router>`);
//! - `/ws/probe-default`: the same routes plus `$default`;
//! - `/ws/probe-strict`: the same routes with `close_on_bad_message`;
//! - `/ws/probe-auth` and WebTransport `/wt/probe-auth`: the same routes behind
//!   `JwtMiddleware` (the config's `auth:` section; absent: not served).
//!
//! Usage: `route_probe CONFIG.yaml`. The config is a corecast config plus an
//! optional top-level `auth:` section. The first stdout line is
//! `LISTENING <tcp addr> WT <udp addr|none>`; then one `DISCONNECT <id>` line per
//! `$disconnect`, flushed at once; the engine's tracing events (info and up) go
//! to stderr. SIGTERM/SIGINT drain gracefully; the last line is
//! `STOPPED`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use corecast::auth::{AuthConfig, JwtMiddleware};
use corecast::router::{Connecting, Ctx, Reject, RouteError, Router};
use corecast::{ClientHandle, Config, ConnId, Engine, Message};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Room {
    room: String,
}

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[derive(Deserialize)]
struct Shout {
    text: String,
}

#[derive(Deserialize)]
struct Dm {
    to: String,
    text: String,
}

#[derive(Deserialize)]
struct Lookup {
    id: String,
}

#[derive(Deserialize)]
struct Members {
    room: String,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// One stdout line, flushed (tests read them while the probe runs).
fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn parse_id(raw: &str) -> Result<ConnId, RouteError> {
    raw.parse()
        .map_err(|_| RouteError::client("invalid_body", format!("not a connection id: {raw:?}")))
}

fn whoami(ctx: &Ctx) -> Value {
    let info = ctx.info();
    json!({
        "type": "whoami",
        "id": info.id.to_string(),
        "node": ctx.node_id(),
        "shard": ctx.shard(),
        "transport": info.transport.as_str(),
        "meta": info.meta,
        "rooms": info.rooms,
    })
}

/// What any client handle says about itself, written once against the
/// transport-independent vocabulary: joins and leaves a room on the way, and
/// answers with its own `send` (not `Ctx::reply`).
fn describe(client: &dyn ClientHandle, room: &str) {
    let joined = client.join(room) && client.in_room(room);
    client.leave(room);
    let age = client
        .connected_at()
        .elapsed()
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    let answer = json!({
        "type": "described",
        "id": client.id().to_string(),
        "path": client.path(),
        "tag": client.query_get("tag"),
        "transport": client.transport().as_str(),
        "remote_ip": client.remote_addr().map(|a| a.ip().to_string()),
        "age_s": age,
        "joined": joined,
        "left": !client.in_room(room),
        "closed": client.is_closed(),
    });
    let _ = client.send(Message::text(answer.to_string()));
}

/// Reply to `ctx` from a task once `fut` (a registry question) answers.
fn reply_later<F>(ctx: &Ctx, fut: impl FnOnce(Ctx) -> F + 'static)
where
    F: std::future::Future<Output = Value> + 'static,
{
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let answer = fut(ctx.clone()).await;
        let _ = ctx.reply(&answer);
    })
    .detach();
}

/// The probe's routes; `default` adds `$default`, `strict` closes on bad messages.
fn build_router(default: bool, strict: bool, auth: Option<JwtMiddleware>) -> Router {
    let mut r = Router::new();
    if let Some(m) = auth {
        r.middleware(m);
    }
    r.on_connect(|c: &mut Connecting<'_>| {
        if c.query_get("panic").is_some() {
            panic!("the probe's $connect panics on request");
        }
        if let Some(status) = c.query_get("reject") {
            let status: u16 = status.parse().unwrap_or(403);
            let reason = c
                .query_get("reason")
                .unwrap_or_else(|| "rejected by the probe".to_string());
            return Err(Reject::new(status, reason));
        }
        if let Some(name) = c.query_get("name") {
            c.set_meta("name", name)?;
        }
        if let Some(color) = c.query_get("color") {
            c.set_meta("color", color)?;
        }
        Ok(())
    })
    .on_disconnect(|ctx| line(&format!("DISCONNECT {}", ctx.id())))
    .route("echo", |ctx, body: Value| {
        ctx.reply(&json!({"type": "echo", "body": body}))
    })
    .route("whoami", |ctx, _: Value| ctx.reply(&whoami(ctx)))
    .route("describe", |ctx, b: Room| {
        describe(ctx.client(), &b.room);
        Ok(())
    })
    .route("join", |ctx, b: Room| {
        ctx.join(&b.room)?;
        ctx.reply(&json!({"type": "joined", "room": b.room}))
    })
    .route("leave", |ctx, b: Room| {
        ctx.leave(&b.room);
        ctx.reply(&json!({"type": "left", "room": b.room}))
    })
    .route("say", |ctx, b: Say| {
        let from = ctx.id().to_string();
        ctx.broadcast(
            &b.room,
            &json!({"type": "said", "room": b.room, "from": from, "text": b.text}),
        )
    })
    .route("say_others", |ctx, b: Say| {
        let from = ctx.id().to_string();
        ctx.broadcast_except_me(
            &b.room,
            &json!({"type": "said", "room": b.room, "from": from, "text": b.text}),
        )?;
        ctx.reply(&json!({"type": "said_others", "room": b.room}))
    })
    .route("shout", |ctx, b: Shout| {
        let from = ctx.id().to_string();
        ctx.broadcast_all(&json!({"type": "shout", "from": from, "text": b.text}))
    })
    .route("dm", |ctx, b: Dm| {
        let from = ctx.id().to_string();
        let text = json!({"type": "dm", "from": from, "text": b.text});
        // `NODE:SHARD.SLOT.GEN` is a connection of another cluster node.
        match b.to.split_once(':') {
            Some((node, id)) => ctx.send_to_node(node, parse_id(id)?, &text)?,
            None => ctx.send_to(parse_id(&b.to)?, &text)?,
        }
        ctx.reply(&json!({"type": "dm_sent", "to": b.to}))
    })
    .route("lookup", |ctx, b: Lookup| {
        let id = parse_id(&b.id)?;
        reply_later(ctx, move |ctx| async move {
            match ctx.lookup(id).await {
                Ok(Some(info)) => json!({"type": "lookup", "found": true, "info": info.to_json()}),
                Ok(None) => json!({"type": "lookup", "found": false, "id": id.to_string()}),
                Err(e) => json!({"type": "lookup", "error": e.to_string()}),
            }
        });
        Ok(())
    })
    .route("members", |ctx, b: Members| {
        reply_later(ctx, move |ctx| async move {
            match ctx.room_members(&b.room, b.limit).await {
                Ok((infos, truncated)) => json!({
                    "type": "members",
                    "room": b.room,
                    "ids": infos.iter().map(|i| i.id.to_string()).collect::<Vec<_>>(),
                    "truncated": truncated,
                }),
                Err(e) => json!({"type": "members", "error": e.to_string()}),
            }
        });
        Ok(())
    })
    .route("presence", |ctx, b: Room| {
        reply_later(ctx, move |ctx| async move {
            match ctx.presence(&b.room).await {
                Ok(list) => json!({
                    "type": "presence_list",
                    "room": b.room,
                    "members": list.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"type": "presence_list", "error": e.to_string()}),
            }
        });
        Ok(())
    })
    .route("fail", |_, _: Value| {
        Err(RouteError::internal("the probe fails on request"))
    })
    .route("panic", |_, _: Value| -> Result<(), RouteError> {
        panic!("the probe panics on request")
    })
    .route("client_error", |_, _: Value| {
        Err(RouteError::client(
            "probe_refused",
            "the probe refuses politely",
        ))
    });
    if default {
        r.on_default(|ctx, body| {
            let action = body.get("action").cloned().unwrap_or(Value::Null);
            ctx.reply(&json!({"type": "default", "action": action}))
        });
    }
    r.close_on_bad_message(strict);
    r
}

/// The corecast config and the optional `auth:` section from one YAML file.
fn load(path: &Path) -> Result<(Config, Option<AuthConfig>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let auth = match doc.as_mapping_mut().and_then(|m| m.remove("auth")) {
        Some(v) => {
            Some(serde_yaml_ng::from_value::<AuthConfig>(v).map_err(|e| format!("auth: {e}"))?)
        }
        None => None,
    };
    let rest = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    let config =
        Config::from_yaml(&rest, &path.display().to_string()).map_err(|e| e.to_string())?;
    Ok((config, auth))
}

fn main() -> std::process::ExitCode {
    // The engine's warnings (handler errors, panics, refusals) on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: route_probe CONFIG.yaml");
        return std::process::ExitCode::from(2);
    };
    let (config, auth) = match load(Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("route_probe: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let jwt = match auth.as_ref().map(JwtMiddleware::from_config).transpose() {
        Ok(j) => j,
        Err(e) => {
            eprintln!("route_probe: auth: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let wt_enabled = config.webtransport.enabled;
    let mut engine = Engine::new(config);
    let probe = Arc::new(build_router(false, false, None));
    engine.websocket_router("/ws/probe", probe.clone());
    if wt_enabled {
        engine.webtransport_router("/wt/probe", probe);
    }
    engine.websocket_router("/ws/probe-default", build_router(true, false, None));
    engine.websocket_router("/ws/probe-strict", build_router(false, true, None));
    if let Some(m) = jwt {
        let auth = Arc::new(build_router(false, false, Some(m)));
        engine.websocket_router("/ws/probe-auth", auth.clone());
        if wt_enabled {
            engine.webtransport_router("/wt/probe-auth", auth);
        }
    }
    let running = match engine.start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("route_probe: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let handle = running.handle();
    let mut signals = match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("route_probe: signals: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let h = handle.clone();
    std::thread::spawn(move || {
        let mut first = true;
        for _ in signals.forever() {
            if first {
                first = false;
                h.shutdown();
            } else {
                std::process::exit(130);
            }
        }
    });
    let wt = running
        .webtransport_addr()
        .map_or_else(|| "none".to_string(), |a| a.to_string());
    line(&format!("LISTENING {} WT {wt}", running.local_addr()));
    match running.wait() {
        Ok(()) => {
            line("STOPPED");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("route_probe: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
