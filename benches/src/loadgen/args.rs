//! The command line (clap, derive): `loadgen MODE --flag value ...` (or
//! `--flag=value`). Errors name the bad flag; `loadgen MODE --help` lists every flag
//! with its default.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::loadgen::payload;

/// What `--help` adds after the flags.
const OUTPUT_NOTE: &str = "\
Output: one JSON line on stdout; progress every second on stderr (on a terminal one line,
redrawn in place; otherwise one line per second).
Exit status: 0 = ran (see the JSON for failures), 1 = no connection succeeded, 2 = bad usage.";

/// The command line.
#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "WebSocket, Server-Sent Events and WebTransport load generator for corecast benchmarks",
    after_help = OUTPUT_NOTE
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Publishers broadcast into one room; subscribers measure latency and loss.
    Fanout(FanoutArgs),
    /// Like fanout, but the subscribers are SSE streams (GET /sse?room=); payloads
    /// always carry the text head, so --size must be >= 44.
    Sse(SseArgs),
    /// Like fanout, but the subscribers are WebTransport sessions (HTTP/3); the
    /// session's UDP port is the TCP port of --addr/--targets, and the certificate
    /// is trusted by the SHA-256 served at GET /webtransport/cert-hash.
    Wt(WtArgs),
    /// Round trips against an echo endpoint.
    Echo(EchoArgs),
    /// Open N connections and hold them idle (for RSS measurements).
    Idle(IdleArgs),
}

/// Flags every mode takes.
#[derive(Args)]
struct CommonArgs {
    /// Server address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Several servers; connections go round-robin (overrides --addr).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    targets: Vec<String>,
    /// Endpoint path [fanout, idle: /ws/chat; echo: /ws/echo; sse, idle --sse: /sse; wt: /wt/chat].
    #[arg(long, value_name = "PATH", value_parser = abs_path)]
    path: Option<String>,
    /// New connections per second while ramping.
    #[arg(long, value_name = "N", default_value_t = 5000.0, value_parser = positive)]
    connect_rate: f64,
    /// Connections per source address; on a 127.x target sources are 127.0.0.1,
    /// 127.0.0.2, ... (0 = let the kernel choose).
    #[arg(long, value_name = "N", default_value_t = 15_000)]
    per_source: usize,
    /// Explicit source addresses (cycled per --per-source block).
    #[arg(long, value_name = "IP,IP,...", value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Runtime threads (1 = current_thread runtime).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Connect and handshake timeout, each, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = positive_secs)]
    timeout: Duration,
}

/// The measured window (fanout, sse, wt, echo).
#[derive(Args)]
struct TimingArgs {
    /// Measured window, seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = secs)]
    duration: Duration,
    /// Traffic before the window, seconds.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = secs)]
    warmup: Duration,
    /// Max wait for in-flight messages after the window, seconds.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = secs)]
    drain: Duration,
}

/// The fan-out shape (fanout, sse, wt).
#[derive(Args)]
struct ShapeArgs {
    /// Subscriber connections.
    #[arg(long, value_name = "N", default_value_t = 100)]
    subscribers: usize,
    /// Publisher connections, also room members [1; 0 with --listen-only].
    #[arg(long, value_name = "P")]
    publishers: Option<usize>,
    /// Payload size in bytes (>= 24, or >= 44 for text payloads).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// Total messages/s over all publishers (0 = as fast as the in-flight window allows).
    #[arg(long, value_name = "N", default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,
    /// Rate 0 only: max unacknowledged messages per publisher (sse with --publish
    /// http: also caps concurrent POSTs per publisher at a fixed --rate).
    #[arg(long, value_name = "N", default_value_t = 64)]
    window: u64,
    #[command(flatten)]
    timing: TimingArgs,
    /// Room to join.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    room: String,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Send text frames (hex head) instead of binary.
    #[arg(long)]
    text: bool,
    /// N more room members that handshake and never read (4 KiB SO_RCVBUF), opened
    /// before the others; their messages are not counted (slow-consumer benchmark).
    #[arg(long, value_name = "N", default_value_t = 0)]
    slow: usize,
    /// Publishing starts at this wall-clock time (e.g. $(( $(date +%s) + 20 )))
    /// instead of right after the ramp, so several loadgen processes share one
    /// warmup and window (payload timestamps are on the machine-wide CLOCK_MONOTONIC).
    #[arg(long, value_name = "UNIX_SECS", allow_negative_numbers = true, value_parser = unix_secs)]
    start_at: Option<f64>,
    /// No publishers here (--publishers 0): the subscribers count and time what
    /// other loadgen processes publish into the room (same --size, --text, --warmup,
    /// --duration and --start-at).
    #[arg(long)]
    listen_only: bool,
}

#[derive(Args)]
struct SseArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    /// ws: WebSocket publishers on --ws-path (room members, acked by their own
    /// message); http: one POST /api/rooms/ROOM/publish per message, acked by the 200.
    #[arg(long, value_enum, default_value = "ws")]
    publish: PublishVia,
    /// WebSocket path of ws publishers.
    #[arg(long, value_name = "PATH", default_value = "/ws/chat", value_parser = abs_path)]
    ws_path: String,
    /// X-API-Key for http publishers [env CORECAST_API_KEY].
    #[arg(long, value_name = "KEY", value_parser = api_key)]
    api_key: Option<String>,
}

#[derive(Args)]
struct WtArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    /// reliable: records on the server-opened unidirectional stream (loss must be
    /// 0); datagram: one datagram per message (loss is counted; prefer a fixed --rate).
    #[arg(long, value_enum, default_value = "reliable")]
    delivery: WtDelivery,
    /// WebSocket path of the publishers (room members, acked by their own message).
    #[arg(long, value_name = "PATH", default_value = "/ws/chat", value_parser = abs_path)]
    ws_path: String,
    /// Send text (kind 0x00 records) instead of binary.
    #[arg(long)]
    text: bool,
}

#[derive(Args)]
struct EchoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections.
    #[arg(long, value_name = "N", default_value_t = 100)]
    connections: usize,
    /// Payload size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection (1..=1048576).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pipeline: usize,
    #[command(flatten)]
    timing: TimingArgs,
    /// Send text frames instead of binary.
    #[arg(long)]
    text: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections to open.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    connections: usize,
    /// How long to hold them once the ramp is done, seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = secs)]
    hold: Duration,
    /// Room to join (added as ?room= unless --path already has one).
    #[arg(long, value_name = "NAME", default_value = "idle")]
    room: String,
    /// Open Server-Sent Events streams (GET /sse?room=...) instead of
    /// WebSockets: read the response head, then hold the socket, discarding
    /// whatever the server sends (a chunked body is accepted).
    #[arg(long)]
    sse: bool,
}

/// Flags shared by every mode.
#[derive(Debug, Clone)]
pub struct Common {
    /// `host:port` of each server.
    pub targets: Vec<String>,
    /// WebSocket path (mode default when `None`).
    pub path: Option<String>,
    /// Connections per second while ramping.
    pub connect_rate: f64,
    /// Connections per source address (0 = no bind).
    pub per_source: usize,
    /// Explicit source addresses.
    pub sources: Vec<IpAddr>,
    /// Runtime worker threads (1 = current_thread).
    pub threads: usize,
    /// Connect and handshake timeout.
    pub timeout: Duration,
}

/// `loadgen fanout` configuration.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Shared flags.
    pub common: Common,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Payload bytes.
    pub size: usize,
    /// Total published messages per second (0 = windowed max).
    pub rate: f64,
    /// Max unacknowledged messages per publisher when `rate == 0`.
    pub window: u64,
    /// Measured window length.
    pub duration: Duration,
    /// Warmup before the window.
    pub warmup: Duration,
    /// Max wait for in-flight messages after the window.
    pub drain: Duration,
    /// Room name.
    pub room: String,
    /// Text frames instead of binary.
    pub text: bool,
    /// Extra room members that handshake and never read (4 KiB `SO_RCVBUF`): slow
    /// consumers beside the measured subscribers (`fanout` mode only).
    pub slow: usize,
    /// Wall-clock (unix seconds) start of publishing shared with other loadgen
    /// processes; `None` = right after the ramp (`fanout` mode only).
    pub start_at: Option<f64>,
    /// No publishers: subscribers measure messages other processes publish
    /// (`fanout` mode only).
    pub listen_only: bool,
}

/// How `loadgen sse` publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    /// WebSocket publishers (room members; their own message is the ack).
    Ws,
    /// `POST /api/rooms/ROOM/publish`, one TCP connection per message (the 200 is the ack).
    Http,
}

impl PublishVia {
    /// The flag value (`ws` or `http`).
    pub fn name(self) -> &'static str {
        match self {
            PublishVia::Ws => "ws",
            PublishVia::Http => "http",
        }
    }
}

/// `loadgen sse` configuration: SSE subscribers, WebSocket or HTTP publishers.
#[derive(Debug, Clone)]
pub struct Sse {
    /// Shared flags and the fan-out shape (`text` is always true; `common.path`
    /// is the event-stream path).
    pub fanout: Fanout,
    /// How messages are published.
    pub publish: PublishVia,
    /// WebSocket path of ws publishers.
    pub ws_path: String,
    /// API key for http publishers (`None`: read `CORECAST_API_KEY` at start).
    pub api_key: Option<String>,
}

/// How `loadgen wt` subscribers receive room messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WtDelivery {
    /// Records on the server-opened unidirectional stream.
    Reliable,
    /// One datagram per message (`&datagram=ROOM`).
    Datagram,
}

impl WtDelivery {
    /// The flag value (`reliable` or `datagram`).
    pub fn name(self) -> &'static str {
        match self {
            WtDelivery::Reliable => "reliable",
            WtDelivery::Datagram => "datagram",
        }
    }
}

/// `loadgen wt` configuration: WebTransport subscribers, WebSocket publishers.
#[derive(Debug, Clone)]
pub struct Wt {
    /// Shared flags and the fan-out shape (`common.path` is the WebTransport path).
    pub fanout: Fanout,
    /// Stream or datagram delivery.
    pub delivery: WtDelivery,
    /// WebSocket path of the publishers.
    pub ws_path: String,
}

/// `loadgen echo` configuration.
#[derive(Debug, Clone)]
pub struct Echo {
    /// Shared flags.
    pub common: Common,
    /// Connections.
    pub connections: usize,
    /// Payload bytes.
    pub size: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// Measured window length.
    pub duration: Duration,
    /// Warmup before the window.
    pub warmup: Duration,
    /// Max wait for in-flight messages after the window.
    pub drain: Duration,
    /// Text frames instead of binary.
    pub text: bool,
}

/// `loadgen idle` configuration.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Shared flags.
    pub common: Common,
    /// Connections to open.
    pub connections: usize,
    /// Hold time after the ramp.
    pub hold: Duration,
    /// Room name.
    pub room: String,
    /// Server-Sent Events streams instead of WebSockets.
    pub sse: bool,
}

/// A parsed command line.
#[derive(Debug, Clone)]
pub enum Command {
    /// Fan-out benchmark.
    Fanout(Fanout),
    /// Fan-out to Server-Sent Events subscribers.
    Sse(Sse),
    /// Fan-out to WebTransport subscribers.
    Wt(Wt),
    /// Echo benchmark.
    Echo(Echo),
    /// Idle connections.
    Idle(Idle),
    /// `--help` or `--version`: print this text and exit 0.
    Help(String),
}

fn secs(v: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("'{v}' is not a number of seconds"))?;
    if !s.is_finite() || !(0.0..=1e7).contains(&s) {
        return Err(format!("'{v}' (seconds, >= 0)"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn positive_secs(v: &str) -> Result<Duration, String> {
    let d = secs(v)?;
    if d.is_zero() {
        return Err(format!("'{v}' (must be > 0)"));
    }
    Ok(d)
}

fn positive(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("'{v}' (must be > 0)")),
    }
}

fn non_negative(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("'{v}' (must be >= 0)")),
    }
}

fn unix_secs(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 => Ok(t),
        _ => Err(format!("'{v}' (unix seconds, > 0)")),
    }
}

fn abs_path(v: &str) -> Result<String, String> {
    if v.starts_with('/') {
        Ok(v.to_string())
    } else {
        Err(format!("'{v}' (must start with '/')"))
    }
}

fn api_key(v: &str) -> Result<String, String> {
    if v.is_empty() || v.bytes().any(|b| b.is_ascii_control()) {
        return Err("empty or control characters".into());
    }
    Ok(v.to_string())
}

impl CommonArgs {
    fn into_common(self) -> Common {
        Common {
            targets: if self.targets.is_empty() {
                vec![self.addr]
            } else {
                self.targets
            },
            path: self.path,
            connect_rate: self.connect_rate,
            per_source: self.per_source,
            sources: self.sources,
            threads: usize::from(self.threads),
            timeout: self.timeout,
        }
    }
}

impl ShapeArgs {
    /// The shape as a [`Fanout`]; `listen_only` decides the default publisher count.
    fn into_fanout(self, common: Common, text: bool, listen_only: bool) -> Fanout {
        Fanout {
            common,
            subscribers: self.subscribers,
            publishers: self.publishers.unwrap_or(if listen_only { 0 } else { 1 }),
            size: self.size,
            rate: self.rate,
            window: self.window,
            duration: self.timing.duration,
            warmup: self.timing.warmup,
            drain: self.timing.drain,
            room: self.room,
            text,
            slow: 0,
            start_at: None,
            listen_only,
        }
    }
}

/// Checks a payload size; `text_note` explains a text-payload minimum (e.g. " with --text").
fn check_size(flag: &str, size: usize, text: bool, text_note: &str) -> Result<(), String> {
    let min = payload::min_size(text);
    if size < min {
        return Err(format!(
            "invalid value for {flag}: {size} (must be >= {min}{})",
            if text { text_note } else { "" }
        ));
    }
    if size > 64 * 1024 * 1024 {
        return Err(format!("invalid value for {flag}: {size} (max 64 MiB)"));
    }
    Ok(())
}

fn check_fanout(c: &Fanout, text_note: &str) -> Result<(), String> {
    if c.listen_only {
        if c.publishers != 0 {
            return Err("invalid value for --publishers: must be 0 with --listen-only".into());
        }
    } else if c.publishers == 0 || c.publishers > u32::MAX as usize {
        return Err(
            "invalid value for --publishers: must be >= 1 (0 only with --listen-only)".into(),
        );
    }
    if c.window == 0 {
        return Err("invalid value for --window: must be >= 1".into());
    }
    if c.duration.is_zero() {
        return Err("invalid value for --duration: must be > 0".into());
    }
    if c.room.is_empty() {
        return Err("invalid value for --room: empty".into());
    }
    check_size("--size", c.size, c.text, text_note)
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let argv = std::iter::once("loadgen".to_string()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(Command::Help(e.render().to_string()))
                }
                _ => Err(e.render().to_string()),
            };
        }
    };
    match cli.mode {
        Mode::Fanout(a) => {
            let mut c = a
                .shape
                .into_fanout(a.common.into_common(), a.text, a.listen_only);
            c.slow = a.slow;
            c.start_at = a.start_at;
            check_fanout(&c, " with --text")?;
            Ok(Command::Fanout(c))
        }
        Mode::Sse(a) => {
            let c = Sse {
                fanout: a.shape.into_fanout(a.common.into_common(), true, false),
                publish: a.publish,
                ws_path: a.ws_path,
                api_key: a.api_key,
            };
            check_fanout(&c.fanout, ": SSE payloads carry the 44-byte text head")?;
            Ok(Command::Sse(c))
        }
        Mode::Wt(a) => {
            let c = Wt {
                fanout: a.shape.into_fanout(a.common.into_common(), a.text, false),
                delivery: a.delivery,
                ws_path: a.ws_path,
            };
            check_fanout(&c.fanout, " with --text")?;
            Ok(Command::Wt(c))
        }
        Mode::Echo(a) => {
            let c = Echo {
                common: a.common.into_common(),
                connections: a.connections,
                size: a.size,
                pipeline: a.pipeline,
                duration: a.timing.duration,
                warmup: a.timing.warmup,
                drain: a.timing.drain,
                text: a.text,
            };
            if c.pipeline == 0 || c.pipeline > 1 << 20 {
                return Err("invalid value for --pipeline: must be 1..=1048576".into());
            }
            if c.connections > u32::MAX as usize {
                return Err("invalid value for --connections: too large".into());
            }
            if c.duration.is_zero() {
                return Err("invalid value for --duration: must be > 0".into());
            }
            check_size("--size", c.size, c.text, " with --text")?;
            Ok(Command::Echo(c))
        }
        Mode::Idle(a) => Ok(Command::Idle(Idle {
            common: a.common.into_common(),
            connections: a.connections,
            hold: a.hold,
            room: a.room,
            sse: a.sse,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_fanout() {
        let Ok(Command::Fanout(f)) =
            p("fanout --addr 127.0.0.1:9 --subscribers 5 --rate=1000 --text --size 50")
        else {
            panic!("expected fanout");
        };
        assert_eq!(f.subscribers, 5);
        assert_eq!(f.rate, 1000.0);
        assert!(f.text);
        assert_eq!(f.common.targets, vec!["127.0.0.1:9".to_string()]);
        assert_eq!(f.slow, 0);
        let Ok(Command::Fanout(f)) = p("fanout --slow 1000") else {
            panic!("expected fanout");
        };
        assert_eq!(f.slow, 1000);
        assert!(p("fanout --slow many").unwrap_err().contains("--slow"));
        assert!(p("sse --slow 3").unwrap_err().contains("--slow"));
    }

    #[test]
    fn parses_listen_only_and_start_at() {
        let Ok(Command::Fanout(f)) =
            p("fanout --listen-only --subscribers 9 --start-at 1700000000")
        else {
            panic!("expected fanout");
        };
        assert!(f.listen_only);
        assert_eq!(f.publishers, 0);
        assert_eq!(f.subscribers, 9);
        assert_eq!(f.start_at, Some(1_700_000_000.0));
        let Ok(Command::Fanout(f)) = p("fanout --listen-only --publishers 0") else {
            panic!("expected fanout");
        };
        assert_eq!(f.publishers, 0);
        let Ok(Command::Fanout(f)) = p("fanout") else {
            panic!("expected fanout");
        };
        assert!(!f.listen_only);
        assert_eq!(f.start_at, None);
        for (bad, flag) in [
            ("fanout --listen-only --publishers 2", "--publishers"),
            ("fanout --publishers 0", "--publishers"),
            ("fanout --start-at soon", "--start-at"),
            ("fanout --start-at -5", "--start-at"),
            ("sse --listen-only", "--listen-only"),
            ("wt --start-at 1700000000", "--start-at"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(flag), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_sse() {
        let Ok(Command::Sse(s)) = p("sse --subscribers 7 --publish http --api-key k --size 44")
        else {
            panic!("expected sse");
        };
        assert_eq!(s.fanout.subscribers, 7);
        assert_eq!(s.publish, PublishVia::Http);
        assert_eq!(s.api_key.as_deref(), Some("k"));
        assert!(s.fanout.text);
        assert_eq!(s.ws_path, "/ws/chat");
        let Ok(Command::Sse(s)) = p("sse --path /events --ws-path=/ws/x") else {
            panic!("expected sse");
        };
        assert_eq!(s.publish, PublishVia::Ws);
        assert_eq!(s.fanout.common.path.as_deref(), Some("/events"));
        assert_eq!(s.ws_path, "/ws/x");
        let e = p("sse --size 43").unwrap_err();
        assert!(e.contains("--size"), "{e}");
        let e = p("sse --publish udp").unwrap_err();
        assert!(e.contains("--publish"), "{e}");
        let e = p("sse --text").unwrap_err();
        assert!(e.contains("--text"), "{e}");
        let e = p("fanout --publish ws").unwrap_err();
        assert!(e.contains("--publish"), "{e}");
    }

    #[test]
    fn parses_wt() {
        let Ok(Command::Wt(w)) = p("wt --subscribers 3 --delivery datagram --rate 100") else {
            panic!("expected wt");
        };
        assert_eq!(w.fanout.subscribers, 3);
        assert_eq!(w.delivery, WtDelivery::Datagram);
        assert_eq!(w.ws_path, "/ws/chat");
        assert!(!w.fanout.text);
        let Ok(Command::Wt(w)) = p("wt --path /wt/x --ws-path /ws/x --text --size 44") else {
            panic!("expected wt");
        };
        assert_eq!(w.delivery, WtDelivery::Reliable);
        assert_eq!(w.fanout.common.path.as_deref(), Some("/wt/x"));
        assert_eq!(w.ws_path, "/ws/x");
        assert!(w.fanout.text);
        for (bad, flag) in [
            ("wt --delivery udp", "--delivery"),
            ("wt --ws-path x", "--ws-path"),
            ("wt --text --size 43", "--size"),
            ("wt --publish ws", "--publish"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(flag), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let e = p("fanout --bogus 1").unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
        let e = p("echo --pipeline x").unwrap_err();
        assert!(e.contains("--pipeline"), "{e}");
        let e = p("fanout --size 10").unwrap_err();
        assert!(e.contains("--size"), "{e}");
        let e = p("idle --hold").unwrap_err();
        assert!(e.contains("--hold"), "{e}");
        assert!(matches!(p("idle --help"), Ok(Command::Help(_))));
    }

    #[test]
    fn parses_idle() {
        let Ok(Command::Idle(i)) = p("idle --connections 7") else {
            panic!("expected idle");
        };
        assert_eq!(i.connections, 7);
        assert!(!i.sse);
        let Ok(Command::Idle(i)) = p("idle --sse --path /events") else {
            panic!("expected idle");
        };
        assert!(i.sse);
        assert_eq!(i.common.path.as_deref(), Some("/events"));
    }
}
