//! `loadgen`: the corecast load generator (fan-out, SSE and WebTransport fan-out,
//! echo and idle modes).
//!
//! Runs on a tokio current_thread runtime by default so it can be pinned to a
//! single core (`taskset -c 1 loadgen ...`); `--threads N` switches to a
//! multi-thread runtime. Prints one JSON result line on stdout and progress on
//! stderr. See `loadgen --help`.

#[path = "../loadgen/mod.rs"]
mod loadgen;

use std::io::Write;
use std::process::ExitCode;

use loadgen::args::{self, Command};

fn main() -> ExitCode {
    loadgen::stats::init_clock();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match args::parse(&argv) {
        Ok(Command::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(c) => c,
        Err(msg) => {
            eprintln!("loadgen: {msg}");
            return ExitCode::from(2);
        }
    };
    let threads = match &cmd {
        Command::Fanout(c) => c.common.threads,
        Command::Sse(c) => c.fanout.common.threads,
        Command::Wt(c) => c.fanout.common.threads,
        Command::Echo(c) => c.common.threads,
        Command::Idle(c) => c.common.threads,
        Command::Help(_) => 1,
    };
    let nofile = loadgen::net::raise_nofile_limit();
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cmd {
            Command::Fanout(c) => loadgen::fanout::run(c).await,
            Command::Sse(c) => loadgen::sse::run(c).await,
            Command::Wt(c) => loadgen::wt::run(c).await,
            Command::Echo(c) => loadgen::echo::run(c).await,
            Command::Idle(c) => loadgen::idle::run(c, nofile).await,
            Command::Help(_) => unreachable!("handled above"),
        }
    });
    loadgen::stats::finish_progress();
    let code = match outcome {
        Ok((json, any_connected)) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{json}");
            let _ = out.flush();
            if any_connected {
                0
            } else {
                eprintln!("loadgen: no connection succeeded");
                1
            }
        }
        Err(msg) => {
            eprintln!("loadgen: {msg}");
            2
        }
    };
    // Exit without tearing down thousands of connection tasks one by one.
    std::process::exit(code);
}
