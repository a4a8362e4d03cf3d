//! Helpers for corecast's end-to-end tests.
//!
//! Every test starts its own `corecast serve` child process ([`Server`]) on a
//! free loopback port with its own temporary config file, and talks to it with
//! independent clients: `tokio-tungstenite` for ordinary WebSocket traffic,
//! and the byte-level [`raw`] client for frames no well-behaved library sends.
//!
//! The server binary is `$CORECAST_BIN` when set, else
//! `<workspace>/target/debug/corecast`, else `<workspace>/target/release/corecast`
//! (see [`server_binary`]); `scripts/test.sh` builds it first.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod api;
pub mod raw;
pub mod redis;
pub mod sse;
pub mod wt;

/// How long a server may take from spawn to its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Default per-step timeout for client operations in tests.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Registered io_uring memory per shard used by test configs (bytes). Small, so
/// that many test servers fit under RLIMIT_MEMLOCK at once.
pub const TEST_IO_MEMORY: u64 = 131_072;

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The default configuration file shipped with the project.
pub fn default_config_path() -> PathBuf {
    workspace_root().join("config.yaml")
}

/// Path of the `corecast` binary under test.
///
/// `$CORECAST_BIN` if set (relative: to the workspace root); otherwise `target/debug/corecast`, then
/// `target/release/corecast` under the workspace (or `$CARGO_TARGET_DIR`).
/// Panics with a hint when none exists.
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CORECAST_BIN") {
        let mut bin = PathBuf::from(bin);
        // cargo runs test binaries inside the package directory: resolve a
        // relative path against the workspace root, where it was likely given.
        if bin.is_relative() && !bin.is_file() {
            bin = workspace_root().join(bin);
        }
        assert!(
            bin.is_file(),
            "CORECAST_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                workspace_root().join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["debug", "release"] {
        let bin = target.join(profile).join("corecast");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "corecast binary not found under {}: run `cargo build -p corecast --bin corecast` \
         (or set CORECAST_BIN)",
        target.display()
    );
}

/// A loopback port that was free a moment ago and that this test process has not
/// handed out before.
///
/// The server binds with SO_REUSEPORT, so two test servers given the same port
/// would silently share it; the process-wide set rules that out within one test
/// binary (cargo runs test binaries one after another).
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if used.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// A unique temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "corecast-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Returns `yaml` with the value of the (indentation-insensitive) key `key`
/// replaced by `value`, keeping indentation and any trailing comment out.
///
/// `key` is a dotted path such as `websocket.enable_compression`; the last
/// component is matched against `key:` lines inside the section named by the
/// first component (or at top level for a single component). Panics if the key
/// is absent, so that a config change that breaks a test shows up loudly.
pub fn set_yaml_value(yaml: &str, key: &str, value: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let (section, leaf) = match parts.as_slice() {
        [leaf] => (None, *leaf),
        [section, leaf] => (Some(*section), *leaf),
        _ => panic!("set_yaml_value supports `key` or `section.key`, got {key}"),
    };
    let mut out = Vec::new();
    let mut in_section = section.is_none();
    let mut replaced = false;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        let is_content = !trimmed.is_empty() && !trimmed.starts_with('#');
        if let Some(section) = section {
            if is_content && indent == 0 {
                in_section = trimmed.starts_with(&format!("{section}:"));
            }
        }
        let wanted_indent = section.is_some() == (indent > 0);
        if !replaced
            && in_section
            && is_content
            && wanted_indent
            && trimmed.starts_with(&format!("{leaf}:"))
        {
            out.push(format!("{}{leaf}: {value}", &line[..indent]));
            replaced = true;
        } else {
            out.push(line.to_string());
        }
    }
    assert!(replaced, "config key {key} not found in the default config");
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// The publish-API key test servers get with [`ServerOptions::api_key`]
/// (through `CORECAST_API_KEY`, which the default config's `api.key` names).
pub const TEST_API_KEY: &str = "corecast-test-key-7f3a";

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Number of shards (`shards:` in the config and `--shards`).
    pub shards: usize,
    /// Extra `(dotted.key, yaml value)` edits applied to the default config.
    pub overrides: Vec<(String, String)>,
    /// Environment variables for the child. `CORECAST_API_KEY` is removed from
    /// the inherited environment unless set here, so the publish API is off
    /// unless a test turns it on.
    pub env: Vec<(String, String)>,
    /// Literal `(from, to)` replacements applied to the config text after the
    /// key edits (for nested values `set` cannot reach, e.g. an endpoint flag).
    pub replacements: Vec<(String, String)>,
    /// YAML appended to the config (new top-level sections).
    pub append: String,
    /// The whole config file as written, instead of the edited default config
    /// (the server merges it over its embedded defaults; `--listen` and
    /// `--shards` are still passed).
    pub text: Option<String>,
    /// The address to listen on instead of 127.0.0.1 (a free port is still picked).
    pub listen_ip: Option<std::net::IpAddr>,
    /// A soft `RLIMIT_NOFILE` for the server process (set between fork and exec;
    /// the hard limit stays as inherited).
    pub nofile_soft: Option<u64>,
    /// Open-file limit, soft and hard, for the server process (it cannot raise it).
    pub nofile_hard: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            shards: 1,
            overrides: Vec::new(),
            env: Vec::new(),
            replacements: Vec::new(),
            append: String::new(),
            text: None,
            listen_ip: None,
            nofile_soft: None,
            nofile_hard: None,
        }
    }
}

impl ServerOptions {
    /// Options for `shards` shards and otherwise the default config.
    pub fn shards(shards: usize) -> ServerOptions {
        ServerOptions {
            shards,
            ..ServerOptions::default()
        }
    }

    /// Adds a config edit, e.g. `.set("websocket.enable_compression", "false")`.
    pub fn set(mut self, key: &str, value: &str) -> ServerOptions {
        self.overrides.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds an environment variable for the server process.
    pub fn env(mut self, key: &str, value: &str) -> ServerOptions {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Replaces `from` (which must occur) with `to` in the config text.
    pub fn replace(mut self, from: &str, to: &str) -> ServerOptions {
        self.replacements.push((from.to_string(), to.to_string()));
        self
    }

    /// Appends `yaml` (top-level sections) to the config.
    pub fn append(mut self, yaml: &str) -> ServerOptions {
        self.append.push_str(yaml);
        self
    }

    /// Enables the publish API with [`TEST_API_KEY`] (via `CORECAST_API_KEY`).
    pub fn api_key(self) -> ServerOptions {
        self.env("CORECAST_API_KEY", TEST_API_KEY)
    }

    /// Listen on `ip` (and a free port) instead of 127.0.0.1.
    pub fn listen_ip(mut self, ip: std::net::IpAddr) -> ServerOptions {
        self.listen_ip = Some(ip);
        self
    }

    /// Start the server with its soft open-file limit at `soft`.
    pub fn nofile_soft(mut self, soft: u64) -> ServerOptions {
        self.nofile_soft = Some(soft);
        self
    }

    /// Start the server with soft and hard open-file limits at `limit`.
    pub fn nofile_hard(mut self, limit: u64) -> ServerOptions {
        self.nofile_hard = Some(limit);
        self
    }

    /// Serve `text` as the whole config file (a partial file: what it leaves out
    /// comes from the embedded defaults).
    pub fn text(mut self, text: &str) -> ServerOptions {
        self.text = Some(text.to_string());
        self
    }

    /// The config file text for these options, listening on `listen`.
    pub fn config_text(&self, listen: SocketAddr) -> String {
        if let Some(text) = &self.text {
            return text.replace("{listen}", &listen.to_string()) + &self.append;
        }
        let default = std::fs::read_to_string(default_config_path()).expect("read config.yaml");
        let mut yaml = set_yaml_value(&default, "listen", &listen.to_string());
        yaml = set_yaml_value(&yaml, "shards", &self.shards.to_string());
        yaml = set_yaml_value(&yaml, "runtime.io_memory", &TEST_IO_MEMORY.to_string());
        for (key, value) in &self.overrides {
            yaml = set_yaml_value(&yaml, key, value);
        }
        for (from, to) in &self.replacements {
            assert!(yaml.contains(from.as_str()), "config text has no {from:?}");
            yaml = yaml.replacen(from.as_str(), to, 1);
        }
        yaml.push_str(&self.append);
        yaml
    }
}

/// A running `corecast serve` child process. Dropping it kills (SIGKILL) and
/// reaps that one child, by its own PID, if it is still running.
#[derive(Debug)]
pub struct Server {
    child: Child,
    addr: SocketAddr,
    options: ServerOptions,
    exit: Option<ExitStatus>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl Server {
    /// Starts a one-shard server with the default (test-adjusted) config.
    pub async fn start() -> Server {
        Server::start_with(ServerOptions::default()).await
    }

    /// Starts a server with `options`; panics (with the server's output) if it
    /// does not print its `listening on` line within [`STARTUP_TIMEOUT`].
    pub async fn start_with(options: ServerOptions) -> Server {
        tokio::task::spawn_blocking(move || Server::start_blocking(options))
            .await
            .expect("server start task")
    }

    fn start_blocking(options: ServerOptions) -> Server {
        // A port can be taken between probing and binding; retry a few times if
        // the server exits before listening.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Server::try_start(&options, None) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("corecast did not start: {last_error}");
    }

    /// Kills this server (SIGKILL, its own PID only) and starts a new one with the
    /// same options on the same address: a restart, as clients see it (every room
    /// gets a new epoch).
    pub async fn restart(mut self) -> Server {
        let addr = self.addr;
        let options = self.options.clone();
        if self.exit.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            self.exit = self.child.wait().ok();
        }
        drop(self);
        tokio::task::spawn_blocking(move || {
            // The old listener's port is free again once the process is gone;
            // retry briefly in case the kernel has not released it yet.
            let mut last_error = String::new();
            for _ in 0..20 {
                match Server::try_start(&options, Some(addr)) {
                    Ok(server) => return server,
                    Err(e) => last_error = e,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("corecast did not restart on {addr}: {last_error}");
        })
        .await
        .expect("server restart task")
    }

    fn try_start(options: &ServerOptions, at: Option<SocketAddr>) -> Result<Server, String> {
        let dir = TempDir::new("server");
        let ip = options.listen_ip.unwrap_or([127, 0, 0, 1].into());
        let listen = at.unwrap_or_else(|| SocketAddr::new(ip, free_port()));
        let config = dir.path().join("corecast.yaml");
        std::fs::write(&config, options.config_text(listen)).expect("write config");
        let mut command = Command::new(server_binary());
        command.env_remove("CORECAST_API_KEY");
        for (k, v) in &options.env {
            command.env(k, v);
        }
        if options.nofile_soft.is_some() || options.nofile_hard.is_some() {
            let (soft, hard) = (options.nofile_soft, options.nofile_hard);
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between
            // fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let mut lim: libc::rlimit = std::mem::zeroed();
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(hard) = hard {
                        lim.rlim_max = hard.min(lim.rlim_max);
                        lim.rlim_cur = lim.rlim_max;
                    }
                    if let Some(soft) = soft {
                        lim.rlim_cur = soft.min(lim.rlim_max);
                    }
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--shards")
            .arg(options.shards.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", server_binary().display()))?;

        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().expect("stdout pipe");
        let out_buf = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                out_buf.lock().expect("stdout buf").push_str(&line);
                out_buf.lock().expect("stdout buf").push('\n');
                let _ = tx.send(line);
            }
        });
        let err_pipe = child.stderr.take().expect("stderr pipe");
        let err_buf = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err_pipe);
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                err_buf
                    .lock()
                    .expect("stderr buf")
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut server = Server {
            child,
            addr: listen,
            options: options.clone(),
            exit: None,
            stdout,
            stderr,
            _dir: dir,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no `listening on` line within {STARTUP_TIMEOUT:?}\n{}",
                    server.output()
                ));
            }
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ws://").nth(1) {
                        let printed = rest.split_whitespace().next().unwrap_or("");
                        if let Ok(addr) = printed.parse::<SocketAddr>() {
                            server.addr = addr;
                        }
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting or exited.
                    let status = server.child.wait().ok();
                    server.exit = status;
                    return Err(format!(
                        "server exited ({status:?}) before listening\n{}",
                        server.output()
                    ));
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.exit = Some(status);
                // Give the reader thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "server exited ({status}) before listening\n{}",
                    server.output()
                ));
            }
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR{path}`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed so far, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- corecast stdout ---\n{}--- corecast stderr ---\n{}",
            self.stdout.lock().expect("stdout buf"),
            self.stderr.lock().expect("stderr buf")
        )
    }

    /// Everything the server wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buf").clone()
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout buf").clone()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to this server's process only.
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(self.exit.is_none(), "server already exited");
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exit = Some(status);
            panic!("server exited ({status}) before signal\n{}", self.output());
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own, not yet reaped, child's PID.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return Some(status);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Fetches `GET /stats` and parses its JSON body.
    pub async fn stats(&self) -> serde_json::Value {
        let resp = raw::http_request(
            self.addr,
            &format!(
                "GET /stats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            ),
        )
        .await;
        assert_eq!(resp.status, 200, "GET /stats: {resp:?}");
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "GET /stats body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&resp.body)
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Ok(None) = self.child.try_wait() {
                // Child::kill targets this child's own PID, and only while it has
                // not been reaped, so it can never hit an unrelated process.
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("server {} output:\n{}", self.addr, self.output());
        }
    }
}

/// Runs `corecast ARGS...` to completion (bounded by `timeout`; killed after
/// it) and returns its output.
pub fn run_corecast(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(server_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corecast");
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait");
                panic!(
                    "corecast {args:?} did not finish within {timeout:?}; stdout: {} stderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    child.wait_with_output().expect("wait_with_output")
}

/// Awaits `fut` for at most `timeout`, panicking with `what` if it takes longer.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// Thin `tokio-tungstenite` helpers with timeouts.
pub mod client {
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use crate::{within, STEP_TIMEOUT};

    /// A client connection.
    pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    /// Connects to `url` (e.g. `ws://127.0.0.1:1234/ws/echo`), panicking on failure.
    pub async fn connect(url: &str) -> Ws {
        let (ws, resp) = within(
            STEP_TIMEOUT,
            "websocket connect",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "upgrade status");
        ws
    }

    /// Connects `n` clients to `url` concurrently.
    pub async fn connect_many(url: &str, n: usize) -> Vec<Ws> {
        let futs = (0..n).map(|_| connect(url));
        futures_util::future::join_all(futs).await
    }

    /// Sends `msg`, panicking on error or timeout.
    pub async fn send(ws: &mut Ws, msg: Message) {
        within(STEP_TIMEOUT, "websocket send", ws.send(msg))
            .await
            .expect("websocket send");
    }

    /// Sends a text message.
    pub async fn send_text(ws: &mut Ws, text: impl Into<String>) {
        send(ws, Message::Text(text.into())).await;
    }

    /// The next frame-level message of any kind (ping, pong and close included),
    /// within the step timeout; panics on EOF or error.
    pub async fn recv_any(ws: &mut Ws) -> Message {
        within(STEP_TIMEOUT, "websocket message", ws.next())
            .await
            .expect("connection ended")
            .expect("websocket error")
    }

    /// The next data message (text or binary), skipping pings and pongs;
    /// panics on close, EOF, error or timeout.
    pub async fn recv(ws: &mut Ws) -> Message {
        loop {
            match recv_any(ws).await {
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(c) => panic!("expected a data message, got close {c:?}"),
                m => return m,
            }
        }
    }

    /// The next text message; panics on anything else.
    pub async fn recv_text(ws: &mut Ws) -> String {
        match recv(ws).await {
            Message::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Receives `n` text messages on every client concurrently (each message within
    /// 20 s); returns each client with what it got, in client order.
    pub async fn collect_all(clients: Vec<Ws>, n: usize) -> Vec<(Ws, Vec<String>)> {
        let tasks = clients.into_iter().enumerate().map(|(i, mut ws)| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(n);
                for k in 0..n {
                    let m = within(
                        std::time::Duration::from_secs(20),
                        &format!("client {i}: message {k} of {n}"),
                        recv_text(&mut ws),
                    )
                    .await;
                    got.push(m);
                }
                (ws, got)
            })
        });
        futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("receiver task"))
            .collect()
    }
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after
/// `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
