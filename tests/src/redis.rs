//! A real `redis-server` child process for the cluster tests, and a tiny RESP
//! client to drive it (`PUBLISH`, `DBSIZE`, `CLIENT KILL TYPE pubsub`, ...).
//!
//! The server runs on a free loopback port without persistence
//! (`--save "" --appendonly no`), so a restart loses every key: exactly the
//! "Redis lost its data" case the cluster's epochs are for. It is stopped by its
//! own PID (SIGTERM, or SIGKILL in [`RedisServer::kill`]) and killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{free_port, TempDir};

/// How long `redis-server` may take to answer its first `PING`.
pub const REDIS_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bulk string (`None`: the nil bulk `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` array (`None`: the nil array `*-1`).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The integer of an `Int` reply; panics otherwise.
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// A bulk or simple string as text (`None` for nil); panics on other types.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(b) => b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// The elements of an array reply (empty for nil); panics on other types.
    pub fn array(&self) -> Vec<Resp> {
        match self {
            Resp::Array(a) => a.clone().unwrap_or_default(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// Encodes `args` as a RESP command (an array of bulk strings).
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP value from `r`.
pub fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("bad RESP line {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    match line[0] {
        b'+' => Ok(Resp::Simple(body)),
        b'-' => Ok(Resp::Error(body)),
        b':' => body.parse().map(Resp::Int).map_err(|_| bad("bad integer")),
        b'$' => {
            let n: i64 = body.parse().map_err(|_| bad("bad bulk length"))?;
            if n < 0 {
                return Ok(Resp::Bulk(None));
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(Resp::Bulk(Some(buf)))
        }
        b'*' => {
            let n: i64 = body.parse().map_err(|_| bad("bad array length"))?;
            if n < 0 {
                return Ok(Resp::Array(None));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_resp(r)?);
            }
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(bad("unknown RESP type byte")),
    }
}

/// A blocking RESP connection (one command at a time, 5 s I/O timeouts).
#[derive(Debug)]
pub struct RedisConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RedisConn {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> std::io::Result<RedisConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(RedisConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads its reply.
    pub fn command(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.writer.write_all(&encode_command(&bytes))?;
        read_resp(&mut self.reader)
    }
}

/// A running `redis-server` on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    output: Arc<Mutex<String>>,
    dir: TempDir,
}

/// `redis-server` on PATH; panics naming the set-up script when missing.
pub fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let bin = dir.join("redis-server");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "redis-server not found on PATH: the cluster tests need a real Redis. \
         Install it with scripts/setup-test-deps.sh (or `apt-get install redis-server`)."
    );
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers
    /// `PING`; panics (with its output) otherwise.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                output: Arc::new(Mutex::new(String::new())),
                dir: TempDir::new("redis"),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&self.output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().expect("redis output");
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_STARTUP_TIMEOUT;
        loop {
            if let Ok(mut c) = RedisConn::connect(self.addr()) {
                if let Ok(Resp::Simple(s)) = c.command(&["PING"]) {
                    if s == "PONG" {
                        return Ok(());
                    }
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "redis-server exited ({status}):\n{}",
                        self.output()
                    ));
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server did not answer PING within {REDIS_STARTUP_TIMEOUT:?}:\n{}",
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The child's PID (`None` while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Everything redis-server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("redis output").clone()
    }

    /// SIGTERM to its own PID, then waits (up to 10 s, then SIGKILL) for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) on our own, not yet reaped, child's PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }

    /// SIGKILLs its own PID and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (stopping it first if running). The data
    /// is gone (no persistence). Retries while the port is still being released.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// A new connection to it.
    pub fn conn(&self) -> RedisConn {
        RedisConn::connect(self.addr())
            .unwrap_or_else(|e| panic!("connect to redis {}: {e}", self.addr()))
    }

    /// Runs one command on a fresh connection; panics on an I/O error (a Redis
    /// error reply is returned as [`Resp::Error`]).
    pub fn command(&self, args: &[&str]) -> Resp {
        self.conn()
            .command(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// [`RedisServer::command`] on a blocking thread, for async tests.
    pub async fn command_async(&self, args: &[&str]) -> Resp {
        let addr = self.addr();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            RedisConn::connect(addr)
                .and_then(|mut c| c.command(&refs))
                .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
        })
        .await
        .expect("redis command task")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("redis-server {} output:\n{}", self.addr(), self.output());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_roundtrip_of_every_type() {
        let wire = b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$0\r\n\r\n*-1\r\n";
        let mut r = BufReader::new(&wire[..]);
        assert_eq!(read_resp(&mut r).unwrap(), Resp::Simple("OK".into()));
        assert_eq!(read_resp(&mut r).unwrap(), Resp::Error("ERR bad".into()));
        assert_eq!(read_resp(&mut r).unwrap(), Resp::Int(42));
        assert_eq!(
            read_resp(&mut r).unwrap(),
            Resp::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(read_resp(&mut r).unwrap(), Resp::Bulk(None));
        assert_eq!(
            read_resp(&mut r).unwrap(),
            Resp::Array(Some(vec![Resp::Int(1), Resp::Bulk(Some(Vec::new()))]))
        );
        assert_eq!(read_resp(&mut r).unwrap(), Resp::Array(None));
        assert!(read_resp(&mut r).is_err(), "EOF is an error");
        assert_eq!(
            encode_command(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }

    #[test]
    fn a_real_redis_server_starts_answers_restarts_empty_and_stops() {
        let mut redis = RedisServer::start();
        assert!(redis.is_running());
        assert_eq!(redis.command(&["SET", "k", "v"]), Resp::Simple("OK".into()));
        assert_eq!(redis.command(&["GET", "k"]).text().as_deref(), Some("v"));
        assert_eq!(redis.command(&["DBSIZE"]).int(), 1);
        assert_eq!(redis.command(&["PUBLISH", "ch", "x"]).int(), 0);
        assert!(matches!(redis.command(&["NOSUCHCMD"]), Resp::Error(_)));
        let port = redis.port();
        let pid = redis.pid().expect("pid");
        redis.restart();
        assert_eq!(redis.port(), port, "same port after restart");
        assert_ne!(redis.pid(), Some(pid), "a new process");
        assert_eq!(redis.command(&["DBSIZE"]).int(), 0, "no persistence");
        redis.stop();
        assert!(!redis.is_running());
        assert!(
            RedisConn::connect(redis.addr()).is_err(),
            "nothing listens after stop"
        );
        redis.restart();
        assert_eq!(redis.command(&["PING"]), Resp::Simple("PONG".into()));
        redis.kill();
        assert!(RedisConn::connect(redis.addr()).is_err());
    }
}
