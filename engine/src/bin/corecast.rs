//! The `corecast` command: `serve`, `check-config`, `cert`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use corecast::{Config, Engine};

const USAGE: &str = "\
corecast — thread-per-core real-time fan-out server

USAGE:
    corecast serve [--config FILE] [--listen ADDR] [--shards N|auto]
    corecast check-config [--print] FILE
    corecast cert --out DIR [--days N] [--host NAME]...
    corecast --help | --version

serve         run the server (without --config: the embedded default config.yaml)
check-config  validate a configuration file and exit (0 = valid); --print also
              prints it merged over the embedded defaults (the effective config)
cert          write a self-signed ECDSA P-256 cert.pem + key.pem for WebTransport
              (at most 14 days, default 14; hosts default: localhost 127.0.0.1 ::1)
              and print the SHA-256 for a browser's serverCertificateHashes
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("check-config") => check_config(&args[1..]),
        Some("cert") => cert(&args[1..]),
        Some("--help") | Some("-h") | Some("help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version") | Some("-V") => {
            println!("corecast {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => fail(&format!("unknown command {other:?}\n\n{USAGE}")),
        None => fail(USAGE),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("corecast: {msg}");
    ExitCode::from(2)
}

fn check_config(args: &[String]) -> ExitCode {
    let (print, file) = match args {
        [file] if file != "--print" => (false, file),
        [flag, file] | [file, flag] if flag == "--print" => (true, file),
        _ => return fail("usage: corecast check-config [--print] FILE"),
    };
    let path = PathBuf::from(file);
    let config = Config::from_file(&path);
    if let Err(e) = config {
        eprintln!("corecast: invalid configuration: {e}");
        return ExitCode::from(1);
    }
    if print {
        // Valid, so it reads and merges: print what the server would run with.
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        match Config::effective_yaml(&text, file).map(|v| serde_yaml_ng::to_string(&v)) {
            Ok(Ok(yaml)) => print!("{yaml}"),
            Ok(Err(e)) => return fail(&format!("cannot print the configuration: {e}")),
            Err(e) => return fail(&e.to_string()),
        }
    }
    println!("ok");
    ExitCode::SUCCESS
}

fn cert(args: &[String]) -> ExitCode {
    use corecast::cert;
    let mut out: Option<PathBuf> = None;
    let mut days: u64 = 14;
    let mut hosts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            return fail(&format!("cert: {flag} needs a value"));
        };
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value)),
            "--host" => hosts.push(value.clone()),
            "--days" => match value.parse() {
                Ok(d) if (1..=14).contains(&d) => days = d,
                _ => return fail("cert: --days must be 1..=14 (browsers refuse longer certificates for serverCertificateHashes)"),
            },
            other => return fail(&format!("cert: unknown flag {other:?}\n\n{USAGE}")),
        }
    }
    let Some(out) = out else {
        return fail("cert: --out DIR is required");
    };
    if hosts.is_empty() {
        hosts = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    }
    let validity = std::time::Duration::from_secs(days * 24 * 3600);
    let made = match cert::generate(&hosts, validity, std::time::SystemTime::now()) {
        Ok(m) => m,
        Err(e) => return fail(&format!("cert: {e}")),
    };
    match cert::write_pair(&out, &made) {
        Ok((c, k)) => {
            println!("certificate: {}", c.display());
            println!("private key: {}", k.display());
            println!("sha256: {}", cert::hex(&made.sha256));
            println!("sha256 (base64): {}", cert::base64(&made.sha256));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corecast: cert: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &[String]) -> ExitCode {
    let mut config_path: Option<PathBuf> = None;
    let mut listen: Option<String> = None;
    let mut shards: Option<String> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--config" | "-c" => {
                config_path = it.next().map(PathBuf::from);
                config_path.is_some()
            }
            "--listen" => {
                listen = it.next().cloned();
                listen.is_some()
            }
            "--shards" => {
                shards = it.next().cloned();
                shards.is_some()
            }
            other => return fail(&format!("serve: unknown flag {other:?}\n\n{USAGE}")),
        };
        if !slot {
            return fail(&format!("serve: {flag} needs a value"));
        }
    }
    let mut config = match &config_path {
        Some(p) => match Config::from_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("corecast: invalid configuration: {e}");
                return ExitCode::from(1);
            }
        },
        None => Config::default(),
    };
    if let Some(l) = listen {
        match l.parse() {
            Ok(a) => config.listen = a,
            Err(_) => {
                return fail(&format!(
                    "--listen: {l:?} is not an address like 127.0.0.1:8080"
                ))
            }
        }
    }
    if let Some(s) = shards {
        config.shards = match s.as_str() {
            "auto" => corecast::config::Shards::Auto,
            n => match n.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => corecast::config::Shards::Count(n),
                _ => return fail(&format!("--shards: {s:?} is not `auto` or 1..=64")),
            },
        };
    }
    // Logs from here on go through tracing (stderr), as the `log:` section says.
    let _log_guard = match corecast::logging::init(&config.log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("corecast: cannot set up logging: {e}");
            return ExitCode::from(1);
        }
    };
    let engine = Engine::new(config);
    let cfg = engine.config();
    let mut endpoints: Vec<String> = cfg
        .websocket
        .endpoints
        .iter()
        .map(|e| format!("ws {} ({:?})", e.path, e.kind))
        .collect();
    endpoints.extend(cfg.sse.endpoints.iter().map(|e| format!("sse {}", e.path)));
    endpoints.push(match cfg.api.resolved_key() {
        Some(_) => "api /api/rooms/{room}".to_string(),
        None => "api disabled (no api.key)".to_string(),
    });
    let cfg_wt_paths: Vec<String> = engine.webtransport_paths();
    let metrics_path = cfg.metrics.enabled.then(|| cfg.metrics.path.clone());
    let running = match engine.start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corecast: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = running.handle();
    // Handlers first: a signal right after the "listening" line must drain, not kill.
    if let Err(e) = install_signal_handler(handle.clone()) {
        tracing::error!(error = %e, "cannot install signal handlers");
        return ExitCode::from(1);
    }
    let metrics = match (metrics_path, running.metrics_addr()) {
        (None, _) => "off".to_string(),
        (Some(path), Some(addr)) => format!("http://{addr}{path}"),
        (Some(path), None) => format!("http://{}{path}", running.local_addr()),
    };
    tracing::info!(
        addr = %running.local_addr(),
        shards = handle.shards(),
        endpoints = %endpoints.join(", "),
        metrics = %metrics,
        "listening"
    );
    // A closed stdout (e.g. piped into `head`) must not take the server down.
    let _ = writeln!(
        std::io::stdout(),
        "corecast listening on ws://{} ({} shards; endpoints: {}; stats: http://{}/stats; metrics: {})",
        running.local_addr(),
        handle.shards(),
        endpoints.join(", "),
        running.local_addr(),
        metrics
    );
    if let (Some(addr), Some(sha)) = (
        running.webtransport_addr(),
        running.webtransport_cert_sha256(),
    ) {
        let paths: Vec<&str> = cfg_wt_paths.iter().map(String::as_str).collect();
        let _ = writeln!(
            std::io::stdout(),
            "corecast webtransport on https://{addr} (udp; endpoints: {}; cert sha256 {})",
            paths.join(", "),
            corecast::cert::hex(&sha)
        );
    }
    if let (Some(addr), Some(sha)) = (running.tls_addr(), running.tls_cert_sha256()) {
        tracing::info!(addr = %addr, cert_sha256 = %corecast::cert::hex(&sha), "TLS listening");
        let _ = writeln!(
            std::io::stdout(),
            "corecast tls on wss://{addr} (https for SSE and the API; cert sha256 {}; SIGHUP reloads tls.cert and tls.key)",
            corecast::cert::hex(&sha)
        );
    }
    let _ = std::io::stdout().flush();
    match running.wait() {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            let _ = writeln!(std::io::stdout(), "corecast: shut down cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "shards failed");
            ExitCode::from(1)
        }
    }
}

/// First SIGINT/SIGTERM: graceful drain. Second: exit at once. SIGHUP: reload the
/// TLS certificate and key (a bad file keeps the one in use).
fn install_signal_handler(handle: corecast::EngineHandle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("corecast-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    match handle.reload_tls() {
                        Ok(sha) => tracing::info!(
                            cert_sha256 = %corecast::cert::hex(&sha),
                            "SIGHUP: TLS certificate reloaded"
                        ),
                        Err(e) => tracing::error!(
                            error = %e,
                            "SIGHUP: TLS certificate not reloaded; the one in use stays"
                        ),
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "draining (signal again to exit now)");
                    handle.shutdown();
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}
