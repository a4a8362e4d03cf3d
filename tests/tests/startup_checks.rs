//! Start-up checks (docs/OPERATIONS.md#start-up-checks), read from the server's
//! JSON logs: a low soft open-file limit is raised to the hard limit and logged;
//! a listener on 0.0.0.0 with the default open configuration gets one warning
//! naming the fields to set, and one on 127.0.0.1 gets none; a locked-memory
//! limit below what io_uring needs stops the server with the fix.

use std::process::{Command, Stdio};
use std::time::Duration;

use corecast_tests::{server_binary, Server, ServerOptions};

fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn hard_nofile() -> u64 {
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_max
    }
}

/// Starts a one-shard server with JSON logs, stops it, returns its log lines.
async fn logs_of(options: ServerOptions) -> Vec<serde_json::Value> {
    let mut server = Server::start_with(options.set("log.format", "json")).await;
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(Duration::from_secs(10)).await;
    json_lines(&server.stderr())
}

fn open_server_warnings(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("OPEN SERVER"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let hard = hard_nofile();
    let soft = 256.min(hard);
    assert!(
        soft < hard,
        "the hard limit ({hard}) leaves nothing to raise"
    );
    let lines = logs_of(ServerOptions::shards(1).nofile_soft(soft)).await;
    let raised = lines
        .iter()
        .find(|l| l["message"] == "raised the open-file limit (RLIMIT_NOFILE) to its hard limit")
        .unwrap_or_else(|| panic!("no raise logged in {lines:#?}"));
    assert_eq!(raised["level"], "INFO", "{raised}");
    assert_eq!(raised["target"], "corecast::startup", "{raised}");
    assert_eq!(raised["from"], soft, "{raised}");
    assert_eq!(raised["to"], hard, "{raised}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listener_with_the_open_default_config_is_warned_about_once() {
    let lines = logs_of(ServerOptions::shards(1).listen_ip([0, 0, 0, 0].into())).await;
    let warnings = open_server_warnings(&lines);
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    let w = warnings[0];
    assert_eq!(w["level"], "WARN", "{w}");
    let text = w["message"].as_str().unwrap_or_default();
    assert!(text.contains("listen 0.0.0.0:"), "{text}");
    for field in [
        "auth:",
        "websocket.allowed_origins",
        "sse.allowed_origins",
        "limits.max_connections_per_ip",
    ] {
        assert!(text.contains(field), "{field} not named in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_or_a_per_address_cap_is_not_warned_about() {
    let loopback = logs_of(ServerOptions::shards(1)).await;
    assert!(loopback.iter().any(|l| l["message"] == "listening"));
    assert_eq!(
        open_server_warnings(&loopback),
        Vec::<&serde_json::Value>::new()
    );

    let capped = logs_of(
        ServerOptions::shards(1)
            .listen_ip([0, 0, 0, 0].into())
            .set("limits.max_connections_per_ip", "100"),
    )
    .await;
    assert!(capped.iter().any(|l| l["message"] == "listening"));
    assert_eq!(
        open_server_warnings(&capped),
        Vec::<&serde_json::Value>::new()
    );
}

#[test]
fn a_locked_memory_limit_below_what_io_uring_needs_stops_with_the_fix() {
    let mut command = Command::new(server_binary());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn corecast");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(None) = child.try_wait() {
        // Still running: it started although it should not have. Our own child only.
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("corecast output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it listened"
    );
    for part in [
        "RLIMIT_MEMLOCK",
        "64 KiB",
        "ulimit -l",
        "memlock=-1",
        "LimitMEMLOCK=",
    ] {
        assert!(stderr.contains(part), "{part} not in {stderr}");
    }
}

/// At the open-file limit `accept()` fails with EMFILE and is retried every 10 ms:
/// the log says so once (at most once per 10 s), with the fix, instead of once per
/// retry; `/stats` counts every failure; and the log says when accepting works
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_logged_once_per_stretch() {
    let mut server = Server::start_with(
        ServerOptions::shards(1)
            .nofile_hard(64)
            .set("log.format", "json"),
    )
    .await;
    // Far more connections than descriptors: the kernel completes them into the
    // listen backlog, where the server cannot take them.
    let mut clients = Vec::new();
    for _ in 0..120 {
        clients.push(
            tokio::net::TcpStream::connect(server.addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(clients);
    // Closing them frees the server's descriptors, so /stats can be reached again.
    let stats = tokio::time::timeout(Duration::from_secs(20), server.stats())
        .await
        .expect("/stats answers once descriptors are free");
    let failures = stats["accept_failures"].as_u64().expect("accept_failures");
    assert!(failures >= 20, "1.5 s at the limit: {failures} failures");
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(Duration::from_secs(10)).await;
    let lines = json_lines(&server.stderr());
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("accept failed"))
        })
        .collect();
    assert_eq!(failed.len(), 1, "one line in 10 s: {failed:#?}");
    assert_eq!(failed[0]["level"], "WARN", "{}", failed[0]);
    let text = failed[0]["message"].as_str().unwrap();
    assert!(text.contains("out of file descriptors"), "{text}");
    assert!(text.contains("limits.max_connections_per_shard"), "{text}");
    let recovered: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "accept recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "one line in 10 s: {recovered:#?}");
    assert!(
        recovered[0]["failures"].as_u64().unwrap_or(0) >= 1,
        "{}",
        recovered[0]
    );
}
