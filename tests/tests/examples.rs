//! The engine's examples (`engine/examples/`), run as programs and driven by an
//! independent client: they are the embedding API's smoke test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use corecast_tests::client::{connect, recv_text, send_text};
use corecast_tests::{free_port, server_binary, within};

/// A running example program, killed (by its own PID) on drop.
struct Example {
    child: Child,
    port: u16,
}

impl Example {
    fn start(name: &str, env: &[(&str, &str)]) -> Example {
        let bin: PathBuf = server_binary()
            .parent()
            .expect("binary directory")
            .join("examples")
            .join(name);
        assert!(
            bin.exists(),
            "{} is missing: build with `cargo build -p corecast --examples`",
            bin.display()
        );
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn example");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("example {name} did not print its listening line"));
        Example { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn echo_example_echoes_through_the_async_handler_api() {
    let ex = Example::start("echo", &[]);
    let mut ws = connect(&ex.url("/echo")).await;
    for text in ["one", "two", "ünïcode"] {
        send_text(&mut ws, text).await;
        assert_eq!(recv_text(&mut ws).await, text);
    }
}

#[tokio::test]
async fn chat_example_relays_between_clients_and_broadcasts_from_another_thread() {
    let ex = Example::start("chat", &[("CHAT_TICK_MS", "200")]);
    let mut ada = connect(&ex.url("/ws/chat?room=general&name=ada")).await;
    let mut bob = connect(&ex.url("/ws/chat?room=general&name=bob")).await;
    // The handler joins after the upgrade: once bob sees his own join line he is
    // in the room, so ada's line cannot be published before he joined.
    within(Duration::from_secs(10), "bob's join line", async {
        while recv_text(&mut bob).await != "* bob joined general" {}
    })
    .await;
    send_text(&mut ada, "hi bob").await;
    let mut saw_line = false;
    let mut saw_tick = false;
    within(Duration::from_secs(10), "chat line and tick", async {
        while !(saw_line && saw_tick) {
            let m = recv_text(&mut bob).await;
            saw_line |= m == "ada: hi bob";
            // The ticker thread broadcasts through EngineHandle::broadcast.
            saw_tick |= m.starts_with("* tick ");
        }
    })
    .await;
}
