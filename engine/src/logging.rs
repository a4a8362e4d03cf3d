//! Logging: corecast reports through [`tracing`] events and spans; [`init`] installs
//! the process-wide subscriber the `log:` config section describes (the `corecast`
//! binary calls it; the library never installs one by itself).
//!
//! Connection events use the target `corecast::conn` (open and close at `debug`), so
//! `RUST_LOG=info,corecast::conn=debug` turns them on alone. Only request paths are
//! logged; a query string, if ever logged, goes through [`redact_query`] first so a
//! `token=` (JWT) never reaches a log.

use std::borrow::Cow;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// The target of connection open/close events and connection spans.
pub const CONN_TARGET: &str = "corecast::conn";

/// Query parameters whose values never reach a log.
const SECRET_KEYS: &[&str] = &[
    "token",
    "access_token",
    "id_token",
    "jwt",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
];

/// `query` (without the leading `?`) with the value of every secret-bearing
/// parameter (`token`, `access_token`, `api_key`, ...; names compared
/// case-insensitively, percent-encoded names decoded) replaced by `REDACTED`.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let is_secret = |name: &str| {
        let decoded = crate::proto::http::percent_decode(name);
        SECRET_KEYS.iter().any(|k| decoded.eq_ignore_ascii_case(k))
    };
    if !query
        .split('&')
        .any(|p| is_secret(p.split('=').next().unwrap_or_default()))
    {
        return Cow::Borrowed(query);
    }
    let parts: Vec<String> = query
        .split('&')
        .map(|p| {
            let name = p.split('=').next().unwrap_or_default();
            if is_secret(name) {
                format!("{name}=REDACTED")
            } else {
                p.to_string()
            }
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// Keeps what the subscriber needs until the process ends (the OTLP exporter, when
/// built with the `otlp` feature, is flushed and shut down on drop).
#[must_use = "dropping the guard stops span export"]
pub struct LogGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The filter: `RUST_LOG` when set (and valid), else `log.level`.
fn filter(cfg: &LogConfig) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG {v:?}: {e}"))
        }
        _ => EnvFilter::try_new(&cfg.level).map_err(|e| format!("log.level {:?}: {e}", cfg.level)),
    }
}

/// Install the global subscriber for `cfg`: human-readable lines (`pretty`) or one
/// JSON object per line (`json`) on stderr, filtered by `RUST_LOG` or `log.level`,
/// plus OTLP span export when `log.otlp_endpoint` is set and the crate was built
/// with the `otlp` feature. Fails if a subscriber is already installed or the
/// filter does not parse.
pub fn init(cfg: &LogConfig) -> Result<LogGuard, String> {
    let filter = filter(cfg)?;
    let fmt_layer = match cfg.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt_layer);

    #[cfg(feature = "otlp")]
    {
        let (otel_layer, provider) = match &cfg.otlp_endpoint {
            Some(endpoint) => {
                let (layer, provider) = otlp::layer(endpoint)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        registry
            .with(otel_layer)
            .try_init()
            .map_err(|e| e.to_string())?;
        if let Some(endpoint) = &cfg.otlp_endpoint {
            tracing::info!(endpoint = %endpoint, "exporting spans with OTLP/HTTP");
        }
        Ok(LogGuard { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.try_init().map_err(|e| e.to_string())?;
        if let Some(endpoint) = &cfg.otlp_endpoint {
            tracing::warn!(
                endpoint = %endpoint,
                "log.otlp_endpoint is set but this corecast was built without the `otlp` feature: spans are not exported (cargo build --features otlp)"
            );
        }
        Ok(LogGuard {})
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    /// A tracing layer exporting spans to `endpoint` (OTLP over HTTP/protobuf, e.g.
    /// `http://127.0.0.1:4318/v1/traces`). The batch processor runs on its own
    /// thread and the blocking HTTP client needs no async runtime from us.
    pub(super) fn layer<S>(
        endpoint: &str,
    ) -> Result<
        (
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
            SdkTracerProvider,
        ),
        String,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("log.otlp_endpoint {endpoint:?}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("corecast").build())
            .build();
        let tracer = provider.tracer("corecast");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_and_everything_else_kept() {
        assert_eq!(redact_query("room=a&room=b"), "room=a&room=b");
        assert!(matches!(redact_query("room=a"), Cow::Borrowed(_)));
        assert_eq!(
            redact_query("room=a&token=SECRET123&since=1:2"),
            "room=a&token=REDACTED&since=1:2"
        );
        assert_eq!(redact_query("token=SECRET123"), "token=REDACTED");
        assert_eq!(
            redact_query("TOKEN=x&Access_Token=y"),
            "TOKEN=REDACTED&Access_Token=REDACTED"
        );
        // A percent-encoded name is still a token.
        assert_eq!(redact_query("%74oken=SECRET123"), "%74oken=REDACTED");
        // A bare name (no value) is redacted too; an empty query stays empty.
        assert_eq!(redact_query("token"), "token=REDACTED");
        assert_eq!(redact_query(""), "");
        assert!(!redact_query("a=1&token=SECRET123&token=SECRET456").contains("SECRET"));
    }

    #[test]
    fn a_bad_level_is_an_error_not_a_panic() {
        let cfg = LogConfig {
            level: "info,[".into(),
            ..LogConfig::default()
        };
        if std::env::var_os("RUST_LOG").is_none() {
            assert!(filter(&cfg).is_err());
        }
    }
}
