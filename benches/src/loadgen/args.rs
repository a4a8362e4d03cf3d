//! Hand-rolled command-line parsing (no clap): `loadgen MODE --flag value ...`.
//! Flags accept `--flag value` or `--flag=value`. Errors name the bad flag.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::loadgen::payload;

/// Usage text.
pub const USAGE: &str = "\
loadgen: WebSocket, Server-Sent Events and WebTransport load generator for corecast benchmarks

USAGE:
  loadgen fanout [FLAGS]   publishers broadcast into one room, subscribers measure latency/loss
  loadgen sse    [FLAGS]   like fanout, but the subscribers are SSE streams (GET /sse?room=)
  loadgen wt     [FLAGS]   like fanout, but the subscribers are WebTransport sessions (HTTP/3)
  loadgen echo   [FLAGS]   round trips against an echo endpoint
  loadgen idle   [FLAGS]   open N connections and hold them idle (for RSS measurements)
  loadgen --help

COMMON FLAGS:
  --addr HOST:PORT        server address                         [127.0.0.1:8080]
  --targets A,B,...       several servers; connections go round-robin (overrides --addr)
  --path PATH             WebSocket path        [fanout, idle: /ws/chat; echo: /ws/echo]
                          (sse: the event-stream path                        [/sse])
                          (wt: the WebTransport path                     [/wt/chat])
  --connect-rate N        new connections per second while ramping             [5000]
  --per-source N          connections per source address; on a 127.x target sources are
                          127.0.0.1, 127.0.0.2, ... (0 = let the kernel choose) [15000]
  --sources IP,IP,...     explicit source addresses (cycled per --per-source block)
  --threads N             runtime threads (1 = current_thread runtime)            [1]
  --timeout SECS          connect and handshake timeout, each                     [5]

FANOUT FLAGS:
  --subscribers N         subscriber connections                                  [100]
  --publishers P          publisher connections (also room members)                 [1]
  --size BYTES            payload size (>= 24, or >= 44 with --text)               [64]
  --rate N                total messages/s over all publishers (0 = as fast as the
                          in-flight window allows)                                  [0]
  --window N              rate 0 only: max unacknowledged messages per publisher   [64]
  --duration SECS         measured window                                          [10]
  --warmup SECS           traffic before the window                                 [2]
  --drain SECS            max wait for in-flight messages after the window           [2]
  --room NAME             room to join                                          [bench]
  --text                  send text frames (hex head) instead of binary
  --slow N                fanout only: N more room members that handshake and never
                          read (4 KiB SO_RCVBUF), opened before the others; their
                          messages are not counted (slow-consumer benchmark)      [0]
  --start-at UNIX_SECS    fanout only: publishing starts at this wall-clock time
                          (e.g. $(( $(date +%s) + 20 ))) instead of right after the
                          ramp, so several loadgen processes share one warmup and
                          window (payload timestamps are on the machine-wide
                          CLOCK_MONOTONIC, so any process can time any message)
  --listen-only           fanout only: no publishers here (--publishers 0); the
                          subscribers count and time messages that other loadgen
                          processes publish into the room (same --size, --text,
                          --warmup, --duration and --start-at). `published` is then
                          inferred per publisher from the lowest to the highest
                          sequence number received inside the window

ECHO FLAGS:
  --connections N         connections                                              [100]
  --size BYTES            payload size                                              [64]
  --pipeline K            messages in flight per connection                          [1]
  --duration SECS / --warmup SECS / --drain SECS / --text    as for fanout

SSE FLAGS (plus every FANOUT flag except --text: SSE carries text, so payloads
always use the hex text head and --size must be >= 44):
  --publish ws|http       ws: WebSocket publishers on --ws-path, also room members,
                          acked by their own message coming back; http: one
                          POST /api/rooms/ROOM/publish per message, each on its own
                          TCP connection (the server answers Connection: close),
                          acked by the 200 response                               [ws]
  --ws-path PATH          WebSocket path of ws publishers                   [/ws/chat]
  --api-key KEY           X-API-Key for http publishers    [env CORECAST_API_KEY]
  --window N              as for fanout; with --publish http also caps concurrent
                          POSTs per publisher at a fixed --rate                    [64]

WT FLAGS (plus every FANOUT flag; --text sends text, kind 0x00 records):
  --delivery reliable|datagram
                          reliable: /wt/chat?room=R, records on the server-opened
                          unidirectional stream (loss must be 0); datagram: adds
                          &datagram=R, one datagram per message (loss is counted,
                          not an error; prefer a fixed --rate)              [reliable]
  --ws-path PATH          WebSocket path of the publishers (room members, acked by
                          their own message coming back)                    [/ws/chat]
  The session's UDP port is the TCP port of --addr/--targets (the default
  webtransport.listen); the certificate is trusted by the SHA-256 served at
  GET /webtransport/cert-hash. One QUIC connection (and UDP socket) per session.

IDLE FLAGS:
  --connections N         connections to open                                     [1000]
  --hold SECS             how long to hold them once the ramp is done              [30]
  --room NAME             room to join (with the default /ws/chat path)          [idle]

Output: one JSON line on stdout; progress every second on stderr.
Exit status: 0 = ran (see the JSON for failures), 1 = no connection succeeded, 2 = bad usage.
";

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

impl Default for Common {
    fn default() -> Self {
        Common {
            targets: vec!["127.0.0.1:8080".into()],
            path: None,
            connect_rate: 5000.0,
            per_source: 15_000,
            sources: Vec::new(),
            threads: 1,
            timeout: Duration::from_secs(5),
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Print usage and exit 0.
    Help,
}

fn num<T: FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("invalid value for {flag}: '{v}'"))
}

fn secs(flag: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = num(flag, v)?;
    if !s.is_finite() || !(0.0..=1e7).contains(&s) {
        return Err(format!("invalid value for {flag}: '{v}' (seconds, >= 0)"));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Applies a common flag; `Ok(false)` if `flag` is not a common flag.
fn common_flag(c: &mut Common, flag: &str, v: &str) -> Result<bool, String> {
    match flag {
        "--addr" => c.targets = vec![v.to_string()],
        "--targets" => {
            c.targets = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if c.targets.is_empty() {
                return Err(format!("invalid value for {flag}: '{v}'"));
            }
        }
        "--path" => {
            if !v.starts_with('/') {
                return Err(format!(
                    "invalid value for {flag}: '{v}' (must start with '/')"
                ));
            }
            c.path = Some(v.to_string());
        }
        "--connect-rate" => {
            c.connect_rate = num(flag, v)?;
            if !(c.connect_rate > 0.0 && c.connect_rate.is_finite()) {
                return Err(format!("invalid value for {flag}: '{v}' (must be > 0)"));
            }
        }
        "--per-source" => c.per_source = num(flag, v)?,
        "--sources" => {
            c.sources = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| num::<IpAddr>(flag, s))
                .collect::<Result<_, _>>()?;
        }
        "--threads" => {
            c.threads = num(flag, v)?;
            if c.threads == 0 || c.threads > 1024 {
                return Err(format!("invalid value for {flag}: '{v}' (1..=1024)"));
            }
        }
        "--timeout" => {
            c.timeout = secs(flag, v)?;
            if c.timeout.is_zero() {
                return Err(format!("invalid value for {flag}: '{v}' (must be > 0)"));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["--text", "--listen-only", "--help", "-h"];

/// Splits `args` (after the mode) into `(flag, value)` pairs.
fn pairs(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if !a.starts_with('-') {
            return Err(format!("unexpected argument '{a}' (flags start with --)"));
        }
        if let Some((f, v)) = a.split_once('=') {
            out.push((f.to_string(), v.to_string()));
        } else if SWITCHES.contains(&a.as_str()) {
            out.push((a.clone(), String::new()));
        } else {
            let v = args
                .get(i + 1)
                .ok_or_else(|| format!("flag {a} needs a value"))?;
            out.push((a.clone(), v.clone()));
            i += 1;
        }
        i += 1;
    }
    Ok(out)
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

fn fanout_defaults() -> Fanout {
    Fanout {
        common: Common::default(),
        subscribers: 100,
        publishers: 1,
        size: 64,
        rate: 0.0,
        window: 64,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        drain: Duration::from_secs(2),
        room: "bench".into(),
        text: false,
        slow: 0,
        start_at: None,
        listen_only: false,
    }
}

/// Applies a fan-out shape flag (shared by `fanout` and `sse`); `Ok(false)` if it is not one.
fn fanout_flag(c: &mut Fanout, f: &str, v: &str) -> Result<bool, String> {
    match f {
        "--subscribers" => c.subscribers = num(f, v)?,
        "--publishers" => c.publishers = num(f, v)?,
        "--size" => c.size = num(f, v)?,
        "--rate" => {
            c.rate = num(f, v)?;
            if !(c.rate >= 0.0 && c.rate.is_finite()) {
                return Err(format!("invalid value for {f}: '{v}' (must be >= 0)"));
            }
        }
        "--window" => c.window = num(f, v)?,
        "--duration" => c.duration = secs(f, v)?,
        "--warmup" => c.warmup = secs(f, v)?,
        "--drain" => c.drain = secs(f, v)?,
        "--room" => c.room = v.to_string(),
        _ => return Ok(false),
    }
    Ok(true)
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
    let Some(mode) = args.first() else {
        return Err("missing mode (fanout, sse, wt, echo or idle)".into());
    };
    let rest = &args[1..];
    if matches!(mode.as_str(), "--help" | "-h" | "help") {
        return Ok(Command::Help);
    }
    let flags = pairs(rest)?;
    if flags.iter().any(|(f, _)| f == "--help" || f == "-h") {
        return Ok(Command::Help);
    }
    let mut common = Common::default();
    match mode.as_str() {
        "fanout" => {
            let mut c = fanout_defaults();
            for (f, v) in &flags {
                if common_flag(&mut common, f, v)? || fanout_flag(&mut c, f, v)? {
                    continue;
                }
                match f.as_str() {
                    "--text" => c.text = true,
                    "--slow" => c.slow = num(f, v)?,
                    "--start-at" => {
                        let t: f64 = num(f, v)?;
                        if !(t.is_finite() && t > 0.0) {
                            return Err(format!(
                                "invalid value for {f}: '{v}' (unix seconds, > 0)"
                            ));
                        }
                        c.start_at = Some(t);
                    }
                    "--listen-only" => c.listen_only = true,
                    _ => return Err(format!("unknown flag '{f}' for mode fanout")),
                }
            }
            // Listen-only has no publishers unless asked otherwise (then refused below).
            if c.listen_only && !flags.iter().any(|(f, _)| f == "--publishers") {
                c.publishers = 0;
            }
            check_fanout(&c, " with --text")?;
            c.common = common;
            Ok(Command::Fanout(c))
        }
        "sse" => {
            let mut c = Sse {
                fanout: Fanout {
                    text: true,
                    ..fanout_defaults()
                },
                publish: PublishVia::Ws,
                ws_path: "/ws/chat".into(),
                api_key: None,
            };
            for (f, v) in &flags {
                if common_flag(&mut common, f, v)? || fanout_flag(&mut c.fanout, f, v)? {
                    continue;
                }
                match f.as_str() {
                    "--publish" => {
                        c.publish = match v.as_str() {
                            "ws" => PublishVia::Ws,
                            "http" => PublishVia::Http,
                            _ => {
                                return Err(format!(
                                    "invalid value for {f}: '{v}' (expected ws or http)"
                                ))
                            }
                        }
                    }
                    "--ws-path" => {
                        if !v.starts_with('/') {
                            return Err(format!(
                                "invalid value for {f}: '{v}' (must start with '/')"
                            ));
                        }
                        c.ws_path = v.clone();
                    }
                    "--api-key" => {
                        if v.is_empty() || v.bytes().any(|b| b.is_ascii_control()) {
                            return Err(format!(
                                "invalid value for {f}: empty or control characters"
                            ));
                        }
                        c.api_key = Some(v.clone());
                    }
                    "--text" => {
                        return Err("--text is implied in mode sse (SSE carries text)".to_string())
                    }
                    _ => return Err(format!("unknown flag '{f}' for mode sse")),
                }
            }
            check_fanout(&c.fanout, ": SSE payloads carry the 44-byte text head")?;
            c.fanout.common = common;
            Ok(Command::Sse(c))
        }
        "wt" => {
            let mut c = Wt {
                fanout: fanout_defaults(),
                delivery: WtDelivery::Reliable,
                ws_path: "/ws/chat".into(),
            };
            for (f, v) in &flags {
                if common_flag(&mut common, f, v)? || fanout_flag(&mut c.fanout, f, v)? {
                    continue;
                }
                match f.as_str() {
                    "--delivery" => {
                        c.delivery = match v.as_str() {
                            "reliable" => WtDelivery::Reliable,
                            "datagram" => WtDelivery::Datagram,
                            _ => {
                                return Err(format!(
                                    "invalid value for {f}: '{v}' (expected reliable or datagram)"
                                ))
                            }
                        }
                    }
                    "--ws-path" if !v.starts_with('/') => {
                        return Err(format!(
                            "invalid value for {f}: '{v}' (must start with '/')"
                        ));
                    }
                    "--ws-path" => c.ws_path = v.clone(),
                    "--text" => c.fanout.text = true,
                    _ => return Err(format!("unknown flag '{f}' for mode wt")),
                }
            }
            check_fanout(&c.fanout, " with --text")?;
            c.fanout.common = common;
            Ok(Command::Wt(c))
        }
        "echo" => {
            let mut c = Echo {
                common: Common::default(),
                connections: 100,
                size: 64,
                pipeline: 1,
                duration: Duration::from_secs(10),
                warmup: Duration::from_secs(2),
                drain: Duration::from_secs(2),
                text: false,
            };
            for (f, v) in &flags {
                if common_flag(&mut common, f, v)? {
                    continue;
                }
                match f.as_str() {
                    "--connections" => c.connections = num(f, v)?,
                    "--size" => c.size = num(f, v)?,
                    "--pipeline" => c.pipeline = num(f, v)?,
                    "--duration" => c.duration = secs(f, v)?,
                    "--warmup" => c.warmup = secs(f, v)?,
                    "--drain" => c.drain = secs(f, v)?,
                    "--text" => c.text = true,
                    _ => return Err(format!("unknown flag '{f}' for mode echo")),
                }
            }
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
            c.common = common;
            Ok(Command::Echo(c))
        }
        "idle" => {
            let mut c = Idle {
                common: Common::default(),
                connections: 1000,
                hold: Duration::from_secs(30),
                room: "idle".into(),
            };
            for (f, v) in &flags {
                if common_flag(&mut common, f, v)? {
                    continue;
                }
                match f.as_str() {
                    "--connections" => c.connections = num(f, v)?,
                    "--hold" => c.hold = secs(f, v)?,
                    "--room" => c.room = v.clone(),
                    _ => return Err(format!("unknown flag '{f}' for mode idle")),
                }
            }
            c.common = common;
            Ok(Command::Idle(c))
        }
        other => Err(format!(
            "unknown mode '{other}' (expected fanout, sse, wt, echo or idle)"
        )),
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
        assert!(matches!(p("idle --help"), Ok(Command::Help)));
    }
}
