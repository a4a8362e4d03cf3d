//! `corecast check-config` and `serve` with bad configuration files: the error
//! names the bad key and its line.

use std::time::Duration;

use corecast_tests::{default_config_path, run_corecast, set_yaml_value, TempDir};

const TIMEOUT: Duration = Duration::from_secs(20);

fn default_config() -> String {
    std::fs::read_to_string(default_config_path()).expect("read config.yaml")
}

/// Writes `text` to a fresh file and returns (dir guard, path string).
fn write_config(text: &str) -> (TempDir, String) {
    let dir = TempDir::new("config");
    let path = dir.path().join("corecast.yaml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_str().expect("utf-8 temp path").to_string();
    (dir, path)
}

/// 1-based line number of the first line of `text` starting (after
/// indentation) with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
        + 1
}

/// Runs check-config on `text` and asserts exit 1 with a stderr naming `key`
/// and `line N`.
fn assert_rejected(text: &str, key: &str, line: usize) {
    let (_dir, path) = write_config(text);
    let out = run_corecast(&["check-config", &path], TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check-config accepted a bad config (key {key}); stdout {:?} stderr {stderr:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(key),
        "error does not name the key {key:?}: {stderr:?}"
    );
    assert!(
        stderr.contains(&format!("line {line}")),
        "error does not give line {line}: {stderr:?}"
    );
}

#[test]
fn check_config_accepts_the_default_config() {
    let path = default_config_path();
    let out = run_corecast(&["check-config", path.to_str().unwrap()], TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_config_accepts_an_edited_valid_config() {
    let mut text = set_yaml_value(&default_config(), "shards", "2");
    text = set_yaml_value(&text, "websocket.enable_compression", "false");
    text = set_yaml_value(&text, "listen", "127.0.0.1:0");
    let (_dir, path) = write_config(&text);
    let out = run_corecast(&["check-config", &path], TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_top_level_key_is_named_with_its_line() {
    let default = default_config();
    let mut lines: Vec<&str> = default.lines().collect();
    let at = line_of(&default, "listen:"); // insert right after `listen:`
    lines.insert(at, "foo: 1");
    let text = lines.join("\n") + "\n";
    assert_rejected(&text, "foo", at + 1);
}

#[test]
fn unknown_nested_key_is_named_with_its_line() {
    let default = default_config();
    let mut lines: Vec<&str> = default.lines().collect();
    let at = line_of(&default, "read_buffer_size:");
    lines.insert(at, "  bogus_option: true");
    let text = lines.join("\n") + "\n";
    assert_rejected(&text, "bogus_option", at + 1);
}

#[test]
fn mistyped_shards_value_is_named_with_its_line() {
    let text = set_yaml_value(&default_config(), "shards", "\"lots\"");
    assert_rejected(&text, "shards", line_of(&text, "shards:"));
}

#[test]
fn mistyped_nested_value_is_named_with_its_line() {
    let text = set_yaml_value(&default_config(), "runtime.io_memory", "plenty");
    assert_rejected(&text, "io_memory", line_of(&text, "io_memory:"));
    let text = set_yaml_value(&default_config(), "websocket.enable_compression", "maybe");
    assert_rejected(
        &text,
        "enable_compression",
        line_of(&text, "enable_compression:"),
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("does-not-exist.yaml");
    let path = path.to_str().unwrap();
    let out = run_corecast(&["check-config", path], TIMEOUT);
    assert!(!out.status.success(), "missing file accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does-not-exist.yaml"),
        "error does not name the file: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_refuses_an_invalid_config_without_listening() {
    let text = set_yaml_value(&default_config(), "shards", "\"lots\"");
    let (_dir, path) = write_config(&text);
    let port = corecast_tests::free_port();
    let out = run_corecast(
        &[
            "serve",
            "--config",
            &path,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        TIMEOUT,
    );
    assert!(!out.status.success(), "serve accepted a bad config");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "serve listened with a bad config"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shards"),
        "serve's error does not name the key: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file with only `listen:` and one override is merged over the embedded
/// defaults: the default endpoints are served, and the override applies.
#[tokio::test]
async fn a_partial_config_serves_the_default_endpoints() {
    use corecast_tests::client::{self, recv, send_text};
    use corecast_tests::raw::{Frame, WsConn};
    use corecast_tests::sse::SseClient;
    use corecast_tests::{Server, ServerOptions};
    use tokio_tungstenite::tungstenite::Message;

    let text = "listen: {listen}\nwebsocket:\n  max_message_size: 1000\n";
    let server = Server::start_with(ServerOptions::default().text(text)).await;
    // /ws/echo and /sse come from config.yaml, which the file does not mention.
    let mut ws = client::connect(&server.url("/ws/echo")).await;
    send_text(&mut ws, "hello").await;
    assert_eq!(recv(&mut ws).await, Message::Text("hello".into()));
    // Panics unless /sse answers 200 with an event stream.
    let _sse = SseClient::connect(server.addr(), "/sse?room=partial").await;
    // The override: a 2,000-byte message is over max_message_size (1009).
    let mut raw = WsConn::connect(server.addr(), "/ws/echo").await;
    raw.send(&Frame::text("x".repeat(2000)))
        .await
        .expect("send");
    raw.expect_close_code(1009).await;
}

/// `check-config --print` shows the file merged over the defaults.
#[test]
fn check_config_print_shows_the_effective_config() {
    let (_dir, path) = write_config("shards: 3\n");
    let out = run_corecast(&["check-config", "--print", &path], TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shards: 3"), "{stdout}");
    assert!(stdout.contains("path: /ws/chat"), "{stdout}");
    assert!(stdout.contains("max_message_size: 1048576"), "{stdout}");
}
