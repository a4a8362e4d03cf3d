//! The `tls:` section: a second listener serving the same endpoints over TLS
//! (`wss://`, `https://`). Absent: no TLS listener.

use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// TLS for WebSocket and SSE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// TCP address of the TLS listener (every shard listens, like `listen`).
    pub listen: SocketAddr,
    /// Certificate chain PEM file (leaf first). Re-read on `SIGHUP`.
    pub cert: String,
    /// Private key PEM file (PKCS#8, RSA or SEC1). Re-read on `SIGHUP`.
    pub key: String,
    /// Oldest protocol version accepted: `1.2` (default) or `1.3`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a TLS version: 1.2 or 1.3")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                match v {
                    1.2 => Ok(TlsVersion::V1_2),
                    1.3 => Ok(TlsVersion::V1_3),
                    _ => Err(E::invalid_value(de::Unexpected::Float(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TlsVersion, E> {
                match s.trim() {
                    "1.2" => Ok(TlsVersion::V1_2),
                    "1.3" => Ok(TlsVersion::V1_3),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl TlsConfig {
    /// Check the section, reading the certificate and key (errors name the key and
    /// the file).
    pub(crate) fn validate(&self, main_listen: SocketAddr) -> Result<(), String> {
        if self.listen == main_listen && self.listen.port() != 0 {
            return Err(format!(
                "tls.listen {} is the plain listener's address (listen): use another port",
                self.listen
            ));
        }
        if self.cert.trim().is_empty() {
            return Err("tls.cert is required: the certificate chain PEM file".into());
        }
        if self.key.trim().is_empty() {
            return Err("tls.key is required: the private key PEM file".into());
        }
        #[cfg(feature = "tls")]
        return crate::cert::load_certified_key(&self.cert, &self.key).map(|_| ());
        #[cfg(not(feature = "tls"))]
        Err("tls: this build has no TLS support (the `tls` cargo feature)".into())
    }
}
