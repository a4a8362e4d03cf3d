//! The `auth` section: how JWTs are verified, where they are looked for, and which
//! rooms their claims allow. Data only; [`crate::app::auth::JwtAuth`] does the verifying.

use std::path::PathBuf;
#[cfg(feature = "jwt")]
use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

/// A JWT signature algorithm accepted in `auth.algorithm` (spelled as in the JWT
/// `alg` header: `HS256`, `RS256`, `ES256`, ...). Exactly one is accepted per
/// configuration: a token whose header names another is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    /// HMAC with SHA-256 (shared secret).
    #[default]
    Hs256,
    /// HMAC with SHA-384 (shared secret).
    Hs384,
    /// HMAC with SHA-512 (shared secret).
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA public key).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (RSA public key).
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (RSA public key).
    Rs512,
    /// ECDSA on P-256 with SHA-256 (EC public key).
    Es256,
    /// ECDSA on P-384 with SHA-384 (EC public key).
    Es384,
}

impl Algorithm {
    /// The name used in the JWT `alg` header and in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Hs384 => "HS384",
            Algorithm::Hs512 => "HS512",
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
        }
    }

    #[cfg(feature = "jwt")]
    pub(crate) fn family(self) -> Family {
        match self {
            Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => Family::Hmac,
            Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512 => Family::Rsa,
            Algorithm::Es256 | Algorithm::Es384 => Family::Ec,
        }
    }

    #[cfg(feature = "jwt")]
    pub(crate) fn key_description(self) -> &'static str {
        match self {
            Algorithm::Es256 => "an EC P-256 public key",
            Algorithm::Es384 => "an EC P-384 public key",
            _ => "an RSA public key",
        }
    }
}

/// Largest `auth.leeway` accepted.
#[cfg(feature = "jwt")]
pub const MAX_LEEWAY: Duration = Duration::from_secs(24 * 3600);

#[cfg(feature = "jwt")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    Ec,
}

/// The `auth` configuration section: how tokens are verified, where they are looked
/// for, and which rooms their claims allow. `algorithm` is required in YAML; every
/// other key has a default. `Debug` does not show a literal secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Signature algorithm every token must use (`HS256`, `HS384`, `HS512`, `RS256`,
    /// `RS384`, `RS512`, `ES256`, `ES384`).
    pub algorithm: Algorithm,
    /// HMAC secret for `HS*`: the literal secret, or `env:NAME` to read it from
    /// environment variable NAME at startup. Must be empty for `RS*`/`ES*`.
    #[serde(default)]
    pub secret: String,
    /// Path of a PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY` for RSA) for
    /// `RS*`/`ES*`. Must be unset for `HS*`.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// Required `iss` claim value; unset: `iss` is not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` claim value (the token's `aud` may be this string or an array
    /// containing it); unset: `aud` is not checked.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (seconds as a number, or `"30s"`);
    /// whole seconds count; at most [`MAX_LEEWAY`].
    #[serde(default = "defaults::leeway")]
    pub leeway: ConfigDuration,
    /// Refuse tokens without an `exp` claim.
    #[serde(default = "defaults::yes")]
    pub require_exp: bool,
    /// Query parameter holding the token (first source tried; browsers cannot set
    /// headers on a WebSocket). `null` or empty: not looked at.
    #[serde(default = "defaults::query_param")]
    pub query_param: Option<String>,
    /// Look for `Authorization: Bearer TOKEN` (second source tried).
    #[serde(default = "defaults::yes")]
    pub header: bool,
    /// Cookie holding the token (third source tried). `null` or empty: not looked at.
    #[serde(default = "defaults::cookie")]
    pub cookie: Option<String>,
    /// Claim listing the room patterns the token may join (a string or an array of
    /// strings; `*` matches any run of characters). `null` or empty: rooms are not
    /// limited by a claim.
    #[serde(default = "defaults::rooms_claim")]
    pub rooms_claim: Option<String>,
    /// Without the `rooms_claim` claim a token may join no room (`true`) or any room
    /// (`false`, the default).
    #[serde(default)]
    pub rooms_claim_required: bool,
    /// Extra conditions by room pattern: every rule whose pattern matches the room
    /// must hold.
    #[serde(default)]
    pub room_rules: Vec<RoomRule>,
}

impl Default for AuthConfig {
    /// `HS256` with no secret (which [`JwtAuth::from_config`](crate::app::auth::JwtAuth::from_config) refuses) and every
    /// other key at its default.
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            secret: String::new(),
            public_key: None,
            issuer: None,
            audience: None,
            leeway: defaults::leeway(),
            require_exp: true,
            query_param: defaults::query_param(),
            header: true,
            cookie: defaults::cookie(),
            rooms_claim: defaults::rooms_claim(),
            rooms_claim_required: false,
            room_rules: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // An `env:NAME` reference is not the secret and helps debugging; a literal is.
        let secret = if self.secret.is_empty() {
            ""
        } else if self.secret.starts_with("env:") {
            self.secret.as_str()
        } else {
            "<redacted>"
        };
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &secret)
            .field("public_key", &self.public_key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("require_exp", &self.require_exp)
            .field("query_param", &self.query_param)
            .field("header", &self.header)
            .field("cookie", &self.cookie)
            .field("rooms_claim", &self.rooms_claim)
            .field("rooms_claim_required", &self.rooms_claim_required)
            .field("room_rules", &self.room_rules)
            .finish()
    }
}

/// A condition on rooms whose name matches `pattern`: the token's `claim` must equal
/// `value`, or be an array containing it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRule {
    /// Room-name pattern, e.g. `admin-*` (`*` matches any run of characters).
    pub pattern: String,
    /// Claim name, e.g. `role`.
    pub claim: String,
    /// Required value, e.g. `admin`. A number or boolean claim matches its JSON text
    /// (`true`, `42`).
    pub value: String,
}

mod defaults {
    pub fn leeway() -> super::ConfigDuration {
        super::ConfigDuration(std::time::Duration::from_secs(30))
    }
    pub fn yes() -> bool {
        true
    }
    pub fn query_param() -> Option<String> {
        Some("token".into())
    }
    pub fn cookie() -> Option<String> {
        Some("corecast_token".into())
    }
    pub fn rooms_claim() -> Option<String> {
        Some("rooms".into())
    }
}
