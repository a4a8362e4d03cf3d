//! The `corecast` command: `serve`, `check-config`, `cert`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corecast::config::Shards;
use corecast::{Config, Engine};

/// corecast — thread-per-core real-time fan-out server (WebSocket, SSE, WebTransport).
#[derive(Parser)]
#[command(name = "corecast", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (without --config: the embedded default config.yaml).
    Serve {
        /// A configuration file, merged over the embedded defaults.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen here instead of the configuration's `listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Shard count instead of the configuration's `shards`: `auto` (one per
        /// allowed core) or 1..=64.
        #[arg(long, value_name = "N|auto", value_parser = parse_shards)]
        shards: Option<Shards>,
    },
    /// Validate a configuration file and exit (0 = valid, 1 = invalid, naming the
    /// key and line).
    CheckConfig {
        /// Also print the effective configuration: FILE merged over the embedded
        /// defaults (`env:NAME` references shown as written).
        #[arg(long)]
        print: bool,
        /// The configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write a self-signed ECDSA P-256 cert.pem + key.pem for WebTransport and print
    /// the SHA-256 a browser passes in serverCertificateHashes.
    Cert {
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days, 1..=14 (browsers refuse longer certificates for
        /// serverCertificateHashes).
        #[arg(long, value_name = "N", default_value_t = 14, value_parser = parse_days)]
        days: u64,
        /// A host name or address the certificate is for (repeat the flag);
        /// default: localhost 127.0.0.1 ::1.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

fn parse_shards(s: &str) -> Result<Shards, String> {
    match s {
        "auto" => Ok(Shards::Auto),
        n => match n.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(Shards::Count(n)),
            _ => Err(format!("{s:?} is not `auto` or 1..=64")),
        },
    }
}

fn parse_days(s: &str) -> Result<u64, String> {
    match s.parse() {
        Ok(d) if (1..=14).contains(&d) => Ok(d),
        _ => Err("--days must be 1..=14 (browsers refuse longer certificates for serverCertificateHashes)".into()),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            shards,
        } => serve(config, listen, shards),
        Command::CheckConfig { print, file } => check_config(print, &file),
        Command::Cert { out, days, hosts } => cert(&out, days, hosts),
    }
}

fn check_config(print: bool, path: &Path) -> ExitCode {
    let file = path.display().to_string();
    if let Err(e) = Config::from_file(path) {
        eprintln!("corecast: invalid configuration: {e}");
        return ExitCode::from(1);
    }
    if print {
        // Valid, so it reads and merges: print what the server would run with.
        let text = std::fs::read_to_string(path).unwrap_or_default();
        match Config::effective_yaml(&text, &file).map(|v| serde_yaml_ng::to_string(&v)) {
            Ok(Ok(yaml)) => print!("{yaml}"),
            Ok(Err(e)) => eprintln!("corecast: cannot print the configuration: {e}"),
            Err(e) => eprintln!("corecast: {e}"),
        }
    }
    println!("ok");
    ExitCode::SUCCESS
}

fn cert(out: &Path, days: u64, mut hosts: Vec<String>) -> ExitCode {
    use corecast::cert;
    if hosts.is_empty() {
        hosts = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    }
    let validity = std::time::Duration::from_secs(days * 24 * 3600);
    let made = match cert::generate(&hosts, validity, std::time::SystemTime::now()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("corecast: cert: {e}");
            return ExitCode::from(2);
        }
    };
    match cert::write_pair(out, &made) {
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

fn serve(
    config_path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shards: Option<Shards>,
) -> ExitCode {
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
        config.listen = l;
    }
    if let Some(s) = shards {
        config.shards = s;
    }
    // Logs from here on go through tracing (stderr), as the `log:` section says.
    let _log_guard = match corecast::logging::init(&config.log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("corecast: cannot set up logging: {e}");
            return ExitCode::from(1);
        }
    };
    // Limits, io_uring and exposure, before anything is bound: a machine or container
    // that cannot run the shards gets the reason and the fix, not a shard error.
    if let Err(e) = corecast::startup::run(&config) {
        eprintln!("corecast: cannot start: {e}");
        return ExitCode::from(1);
    }
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
    let reload = Reloadable {
        tls: cfg.tls.is_some(),
        webtransport: cfg.webtransport.enabled && cfg.webtransport.cert != "auto",
    };
    let running = match engine.start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corecast: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = running.handle();
    // Handlers first: a signal right after the "listening" line must drain, not kill.
    if let Err(e) = install_signal_handler(handle.clone(), reload) {
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
    if let Some(dir) = handle.webtransport_key_dir() {
        tracing::info!(
            dir = %dir.display(),
            "WebTransport certificate and key files in a private directory (removed at exit)"
        );
        // No panic hook: handler panics are caught and the server goes on. A panic
        // that ends the process unwinds through `RunningEngine`, which removes it.
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

/// What `SIGHUP` re-reads: the certificates configured as files.
#[derive(Clone, Copy)]
struct Reloadable {
    tls: bool,
    webtransport: bool,
}

/// First SIGINT/SIGTERM: graceful drain. Second: exit at once. SIGHUP: reload the
/// TLS and WebTransport certificate files (a bad file keeps the one in use).
fn install_signal_handler(
    handle: corecast::EngineHandle,
    reload: Reloadable,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("corecast-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reload_certificates(&handle, reload);
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "draining (signal again to exit now)");
                    handle.shutdown();
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    handle.remove_webtransport_keys();
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}

/// `SIGHUP`: re-read each certificate configured as files, logging what was
/// reloaded or why not (the certificate in use then stays).
fn reload_certificates(handle: &corecast::EngineHandle, reload: Reloadable) {
    if !reload.tls && !reload.webtransport {
        tracing::info!("SIGHUP: no certificate files configured (tls: or webtransport.cert); nothing to reload");
    }
    if reload.tls {
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
    }
    if reload.webtransport {
        match handle.reload_webtransport_cert() {
            Ok(sha) => tracing::info!(
                cert_sha256 = %corecast::cert::hex(&sha),
                "SIGHUP: WebTransport certificate reloaded (new QUIC connections get it)"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: WebTransport certificate not reloaded; the one in use stays"
            ),
        }
    }
}
