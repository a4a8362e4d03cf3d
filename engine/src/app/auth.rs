//! JWT authentication and room authorization for incoming connections.
//!
//! [`AuthConfig`] is the strict YAML section; [`JwtAuth::from_config`] checks it once
//! at startup (secret present, key file readable and of the right type for the
//! algorithm); [`JwtAuth::authenticate`] finds the token in a request head and
//! verifies it; [`JwtAuth::may_join`] decides which rooms the token's claims allow.
//!
//! ```
//! use corecast::auth::{Algorithm, AuthConfig, JwtAuth};
//!
//! let config = AuthConfig {
//!     algorithm: Algorithm::Hs256,
//!     secret: "a-long-random-secret".into(),
//!     ..AuthConfig::default()
//! };
//! let auth = JwtAuth::from_config(&config).unwrap();
//! let err = auth.verify("not-a-jwt").unwrap_err();
//! assert_eq!((err.status(), err.reason()), (401, "token is not a well-formed JWT"));
//! ```
//!
//! Neither the token nor the secret ever appears in an error, a `Debug` output or a
//! `Display` output of this module.
//!
//! Crypto backend: `jsonwebtoken` 12 needs one; this crate enables `rust_crypto`
//! (pure Rust: RSA, P-256/P-384 and HMAC from RustCrypto) rather than `aws_lc_rs`,
//! which would add a second C/C++ build next to quiche's BoringSSL. Only public-key
//! operations run here (verification), which are not affected by the `rsa` crate's
//! private-key timing advisory (RUSTSEC-2023-0071).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::pattern_matches;
use crate::proto::http::{parse_query, Request};

use crate::config::auth::Family;
pub use crate::config::auth::{Algorithm, AuthConfig, RoomRule, MAX_LEEWAY};

/// The `jsonwebtoken` name of an algorithm.
fn jwt_algorithm(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
        Algorithm::Hs384 => jsonwebtoken::Algorithm::HS384,
        Algorithm::Hs512 => jsonwebtoken::Algorithm::HS512,
        Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::Rs384 => jsonwebtoken::Algorithm::RS384,
        Algorithm::Rs512 => jsonwebtoken::Algorithm::RS512,
        Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::Es384 => jsonwebtoken::Algorithm::ES384,
    }
}

/// Where [`JwtAuth::extract_token`] found a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The `auth.query_param` query parameter.
    Query,
    /// `Authorization: Bearer`.
    Header,
    /// The `auth.cookie` cookie.
    Cookie,
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The `sub` claim, when it is a string.
    pub sub: Option<String>,
    /// The `exp` claim (seconds since the Unix epoch), when present.
    pub exp: Option<u64>,
    /// Every claim of the token, including `sub` and `exp`.
    pub all: Map<String, Value>,
}

impl Claims {
    /// Claims from their JSON object (e.g. the `claims` metadata the middleware
    /// stored).
    pub fn from_map(all: Map<String, Value>) -> Self {
        let sub = all.get("sub").and_then(Value::as_str).map(str::to_owned);
        let exp = all.get("exp").and_then(numeric_date);
        Claims { sub, exp, all }
    }

    /// When the token expires (`None`: no `exp`, or beyond what `SystemTime` holds).
    pub fn expires_at(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.exp?))
    }

    /// The claim `name`, if the token has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.all.get(name)
    }
}

/// A JSON NumericDate as whole seconds (fractions are rounded, as the verifier does).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

/// Why a request was not authenticated or a room not allowed. Messages name what was
/// wrong and never include the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token in any configured source.
    Missing,
    /// Not three base64url parts with a JSON header and payload.
    Malformed,
    /// The signature does not verify with the configured key.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is missing or differs from `auth.issuer`.
    WrongIssuer,
    /// `aud` is missing or does not contain `auth.audience`.
    WrongAudience,
    /// The header's `alg` is not `auth.algorithm` (including `none`).
    WrongAlgorithm,
    /// No `exp` claim while `auth.require_exp` is true.
    MissingExp,
    /// A registered claim has the wrong type (e.g. `exp` as a string).
    InvalidClaim {
        /// `exp`, `nbf`, `iss`, `aud` or `sub`.
        claim: &'static str,
    },
    /// A valid token whose claims do not allow this room (403).
    Forbidden {
        /// The room that was refused.
        room: String,
    },
}

impl AuthError {
    /// HTTP status for this error: 403 for [`AuthError::Forbidden`], 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden { .. } => 403,
            _ => 401,
        }
    }

    /// A short, specific explanation (no token, no secret, no room name).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "no token in the request",
            AuthError::Malformed => "token is not a well-formed JWT",
            AuthError::BadSignature => "token signature is invalid",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token is not valid yet (nbf is in the future)",
            AuthError::WrongIssuer => "token issuer does not match auth.issuer",
            AuthError::WrongAudience => "token audience does not match auth.audience",
            AuthError::WrongAlgorithm => "token algorithm does not match auth.algorithm",
            AuthError::MissingExp => "token has no exp claim (auth.require_exp is true)",
            AuthError::InvalidClaim { claim } => match *claim {
                "exp" => "token exp claim is not a number",
                "nbf" => "token nbf claim is not a number",
                "iss" => "token iss claim is not a string",
                "aud" => "token aud claim is not a string or an array of strings",
                "sub" => "token sub claim is not a string",
                _ => "token has a registered claim of the wrong type",
            },
            AuthError::Forbidden { .. } => "token does not allow this room",
        }
    }

    /// A complete HTTP/1.1 response reporting this error: 401 with a
    /// `WWW-Authenticate: Bearer` challenge (RFC 6750), or 403.
    pub fn http_response(&self) -> Vec<u8> {
        use crate::proto::http::response;
        let body = self.to_string();
        match self {
            AuthError::Forbidden { .. } => response(403, "Forbidden", &[], &body),
            AuthError::Missing => response(
                401,
                "Unauthorized",
                &[("WWW-Authenticate", "Bearer realm=\"corecast\"")],
                &body,
            ),
            _ => {
                let challenge = format!(
                    "Bearer realm=\"corecast\", error=\"invalid_token\", error_description=\"{}\"",
                    self.reason()
                );
                response(
                    401,
                    "Unauthorized",
                    &[("WWW-Authenticate", &challenge)],
                    &body,
                )
            }
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Forbidden { room } => {
                write!(f, "token does not allow joining room {room:?}")
            }
            _ => f.write_str(self.reason()),
        }
    }
}

impl std::error::Error for AuthError {}

/// A checked `auth` configuration, ready to verify tokens. Cheap to clone (one per
/// shard) and `Send + Sync`. `Debug` shows neither the secret nor the key.
#[derive(Clone)]
pub struct JwtAuth {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    query_param: Option<String>,
    header: bool,
    cookie: Option<String>,
    rooms_claim: Option<String>,
    rooms_claim_required: bool,
    room_rules: Vec<RoomRule>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.validation.leeway)
            .field(
                "require_exp",
                &self.validation.required_spec_claims.contains("exp"),
            )
            .field("query_param", &self.query_param)
            .field("header", &self.header)
            .field("cookie", &self.cookie)
            .field("rooms_claim", &self.rooms_claim)
            .field("rooms_claim_required", &self.rooms_claim_required)
            .field("room_rules", &self.room_rules)
            .finish()
    }
}

impl JwtAuth {
    /// Check `config` and load its key. Errors name the key (`auth.secret`,
    /// `auth.public_key`, ...) and what is wrong with it; a key that does not fit the
    /// algorithm is refused here, not at the first request.
    pub fn from_config(config: &AuthConfig) -> Result<JwtAuth, String> {
        Self::from_config_with_env(config, |name| std::env::var(name).ok())
    }

    fn from_config_with_env(
        config: &AuthConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<JwtAuth, String> {
        let alg = config.algorithm;
        let key = match alg.family() {
            Family::Hmac => {
                if config.public_key.is_some() {
                    return Err(format!(
                        "auth.public_key is for RS*/ES* algorithms; {} uses auth.secret",
                        alg.name()
                    ));
                }
                let secret = resolve_secret(&config.secret, alg, env)?;
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| format!("auth.secret: unusable as an HMAC key: {e}"))?
            }
            Family::Rsa | Family::Ec => {
                if !config.secret.is_empty() {
                    return Err(format!(
                        "auth.secret is for HS* algorithms; {} uses auth.public_key",
                        alg.name()
                    ));
                }
                let path = config.public_key.as_deref().ok_or_else(|| {
                    format!(
                        "auth.public_key is required for {} (path to a PEM file with {})",
                        alg.name(),
                        alg.key_description()
                    )
                })?;
                load_public_key(path, alg)?
            }
        };

        for (name, value) in [("issuer", &config.issuer), ("audience", &config.audience)] {
            if value.as_deref() == Some("") {
                return Err(format!(
                    "auth.{name} must not be empty (leave it out to skip the check)"
                ));
            }
        }
        // jsonwebtoken computes `now - leeway` unchecked: keep it far from underflow.
        if config.leeway.0 > MAX_LEEWAY {
            return Err(format!(
                "auth.leeway must be at most {}s, got {}s",
                MAX_LEEWAY.as_secs(),
                config.leeway.0.as_secs()
            ));
        }
        for (i, rule) in config.room_rules.iter().enumerate() {
            if rule.pattern.is_empty() {
                return Err(format!("auth.room_rules[{i}].pattern must not be empty"));
            }
            if rule.claim.is_empty() {
                return Err(format!("auth.room_rules[{i}].claim must not be empty"));
            }
        }

        let mut validation = Validation::new(jwt_algorithm(alg));
        validation.leeway = config.leeway.0.as_secs();
        validation.validate_exp = true; // when present; required only with require_exp
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        if config.require_exp {
            validation.required_spec_claims.insert("exp".into());
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        // jsonwebtoken refuses any token carrying `aud` when no audience is set;
        // here an unset auth.audience means "not checked".
        validation.validate_aud = config.audience.is_some();
        if let Some(aud) = &config.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }

        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        if non_empty(&config.query_param).is_none()
            && !config.header
            && non_empty(&config.cookie).is_none()
        {
            return Err(
                "auth: query_param, header and cookie are all off; no token could be found".into(),
            );
        }
        Ok(JwtAuth {
            algorithm: alg,
            key,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            query_param: non_empty(&config.query_param),
            header: config.header,
            cookie: non_empty(&config.cookie),
            rooms_claim: non_empty(&config.rooms_claim),
            rooms_claim_required: config.rooms_claim_required,
            room_rules: config.room_rules.clone(),
        })
    }

    /// The algorithm every token must use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// How far past `exp` (and before `nbf`) a token is still accepted.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Find the token in `req` and verify it. Sources are tried in order — the
    /// `auth.query_param` parameter (percent-decoded), `Authorization: Bearer`, the
    /// `auth.cookie` cookie — and the first one present is the only one verified.
    pub fn authenticate(&self, req: &Request) -> Result<Claims, AuthError> {
        let (_, token) = self.extract_token(req).ok_or(AuthError::Missing)?;
        self.verify(&token)
    }

    /// The token `req` carries and where it was found, without verifying it. Empty
    /// values count as absent; an `Authorization` header with another scheme (e.g.
    /// `Basic`) is ignored.
    pub fn extract_token(&self, req: &Request) -> Option<(TokenSource, String)> {
        if let Some(name) = &self.query_param {
            if let Some((_, v)) = parse_query(&req.query)
                .into_iter()
                .find(|(k, v)| k == name && !v.is_empty())
            {
                return Some((TokenSource::Query, v));
            }
        }
        if self.header {
            if let Some(t) = req.headers_named("authorization").find_map(bearer_token) {
                return Some((TokenSource::Header, t.to_owned()));
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(t) = req
                .headers_named("cookie")
                .find_map(|v| cookie_value(v, name))
            {
                return Some((TokenSource::Cookie, t.to_owned()));
            }
        }
        None
    }

    /// Verify a compact JWT: its `alg` must be `auth.algorithm`, its signature must
    /// verify with the configured key, and `exp`/`nbf`/`iss`/`aud` must pass.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        // Read `alg` first so that `none` or another algorithm is reported as such
        // rather than as an unparseable header.
        let header_alg = header_alg(token)?;
        if header_alg != self.algorithm.name() {
            return Err(AuthError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            // The verifier reports a required claim of the wrong type (`"exp":
            // "soon"`) as missing; this only happens after the signature has
            // verified, so the payload may be read to tell the two apart.
            ErrorKind::MissingRequiredClaim(c) if claim_present(token, c) => {
                AuthError::InvalidClaim {
                    claim: registered_claim(c),
                }
            }
            kind => map_error(kind),
        })?;
        Ok(Claims::from_map(data.claims))
    }

    /// Whether `claims` allow joining `room`: the `auth.rooms_claim` claim (when the
    /// token has it) must list a pattern matching `room`, or, without the claim,
    /// `auth.rooms_claim_required` must be false; and every `auth.room_rules` entry
    /// whose pattern matches `room` must hold.
    pub fn may_join(&self, claims: &Claims, room: &str) -> bool {
        if let Some(claim) = &self.rooms_claim {
            let allowed = match claims.all.get(claim) {
                None => !self.rooms_claim_required,
                Some(Value::String(p)) => pattern_matches(p, room),
                Some(Value::Array(ps)) => ps
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|p| pattern_matches(p, room)),
                // Any other type lists no room.
                Some(_) => false,
            };
            if !allowed {
                return false;
            }
        }
        self.room_rules
            .iter()
            .filter(|r| pattern_matches(&r.pattern, room))
            .all(|r| claim_has_value(claims.all.get(&r.claim), &r.value))
    }

    /// [`JwtAuth::may_join`] as a `Result`: `Err(AuthError::Forbidden { room })`
    /// (403) when the room is not allowed.
    pub fn check_join(&self, claims: &Claims, room: &str) -> Result<(), AuthError> {
        if self.may_join(claims, room) {
            Ok(())
        } else {
            Err(AuthError::Forbidden { room: room.into() })
        }
    }
}

/// The HMAC secret from `auth.secret`: a literal, or `env:NAME` looked up with `env`.
fn resolve_secret(
    raw: &str,
    alg: Algorithm,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match raw.strip_prefix("env:") {
        Some("") => Err("auth.secret: `env:` needs a variable name (env:NAME)".into()),
        Some(var) => match env(var) {
            None => Err(format!(
                "auth.secret: environment variable {var} is not set"
            )),
            Some(v) if v.is_empty() => {
                Err(format!("auth.secret: environment variable {var} is empty"))
            }
            Some(v) => Ok(v),
        },
        None if raw.is_empty() => Err(format!(
            "auth.secret is required for {} (the secret, or env:NAME)",
            alg.name()
        )),
        None => Ok(raw.to_owned()),
    }
}

/// Load and check the PEM public key at `path` for `alg` (RSA or EC).
fn load_public_key(path: &Path, alg: Algorithm) -> Result<DecodingKey, String> {
    let shown = path.display();
    let pem =
        std::fs::read(path).map_err(|e| format!("auth.public_key: cannot read {shown}: {e}"))?;
    let tag = pem_tag(&pem)
        .ok_or_else(|| format!("auth.public_key: {shown} is not a PEM file (no BEGIN line)"))?;
    if tag.contains("PRIVATE") {
        return Err(format!(
            "auth.public_key: {shown} holds a private key; give the public key \
             (openssl pkey -in KEY -pubout)"
        ));
    }
    if tag == "CERTIFICATE" {
        return Err(format!(
            "auth.public_key: {shown} holds a certificate; give its public key \
             (openssl x509 -in CERT -pubkey -noout)"
        ));
    }
    if tag != "PUBLIC KEY" && tag != "RSA PUBLIC KEY" {
        return Err(format!(
            "auth.public_key: {shown} holds a {tag:?} PEM block, not a public key"
        ));
    }
    let wrong_type = |found: &str| {
        format!(
            "auth.public_key: {shown} holds {found}, but auth.algorithm {} needs {}",
            alg.name(),
            alg.key_description()
        )
    };
    let key = match alg.family() {
        Family::Rsa => DecodingKey::from_rsa_pem(&pem).map_err(|_| {
            if DecodingKey::from_ec_pem(&pem).is_ok() {
                wrong_type("an EC key")
            } else {
                format!("auth.public_key: {shown} is not a usable RSA public key")
            }
        })?,
        _ => DecodingKey::from_ec_pem(&pem).map_err(|_| {
            if DecodingKey::from_rsa_pem(&pem).is_ok() {
                wrong_type("an RSA key")
            } else {
                format!("auth.public_key: {shown} is not a usable EC public key")
            }
        })?,
    };
    // The PEM layer only classifies the key; parse it for real now so that a
    // damaged key or a curve that does not match the algorithm fails at startup.
    let provider = jsonwebtoken::crypto::CryptoProvider::try_get_default()
        .ok_or("auth: no jsonwebtoken crypto provider (build feature missing)")?;
    if (provider.verifier_factory)(&jwt_algorithm(alg), &key).is_err() {
        return Err(match alg {
            Algorithm::Es256 | Algorithm::Es384 => wrong_type("an EC key on another curve"),
            _ => format!("auth.public_key: {shown} is not a usable RSA public key"),
        });
    }
    if alg.family() == Family::Rsa
        && jsonwebtoken::jwk::Jwk::from_decoding_key(&key, Some(jwt_algorithm(alg))).is_err()
    {
        return Err(format!(
            "auth.public_key: {shown} is not a usable RSA public key"
        ));
    }
    Ok(key)
}

/// The label of the first `-----BEGIN LABEL-----` line.
fn pem_tag(pem: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(text[start..start + len].to_owned())
}

/// The `alg` named in the token's header, or `Malformed`.
fn header_alg(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    match json.get("alg") {
        Some(Value::String(alg)) => Ok(alg.clone()),
        _ => Err(AuthError::Malformed),
    }
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => AuthError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => AuthError::MissingExp,
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::Malformed,
        },
        ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim {
            claim: registered_claim(c),
        },
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidAlgorithmName => AuthError::Malformed,
        // Key errors cannot happen after from_config's checks; whatever else the
        // verifier reports, the token did not verify.
        _ => AuthError::BadSignature,
    }
}

/// A registered claim name as a `&'static str` (`"claim"` for any other name).
fn registered_claim(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "claim",
    }
}

/// Whether the token's payload has claim `name` (any type). Reads the payload
/// without verification: only for telling errors apart after verification.
fn claim_present(token: &str, name: &str) -> bool {
    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
        .is_ok_and(|claims| claims.contains_key(name))
}

/// The token of an `Authorization: Bearer TOKEN` value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of cookie `name` in one `Cookie` header value (`a=1; b="2"`): pairs
/// split on `;`, spaces around names and values ignored, one pair of double quotes
/// removed. Empty values count as absent.
fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a str> {
    let header = std::str::from_utf8(header).ok()?;
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

/// Whether a claim equals `want` or is an array containing it. Numbers and booleans
/// compare by their JSON text.
fn claim_has_value(claim: Option<&Value>, want: &str) -> bool {
    fn scalar_is(v: &Value, want: &str) -> bool {
        match v {
            Value::String(s) => s == want,
            Value::Bool(b) => want == if *b { "true" } else { "false" },
            Value::Number(n) => n.to_string().as_str() == want,
            _ => false,
        }
    }
    match claim {
        Some(Value::Array(items)) => items.iter().any(|v| scalar_is(v, want)),
        Some(v) => scalar_is(v, want),
        None => false,
    }
}

/// The auth middleware for routed endpoints: verifies the token before the
/// upgrade (401 with the reason, or 403 when a `?room=` of the request is not
/// allowed), stores the claims as metadata (`claims`: every claim, `sub`), closes
/// the connection with [`CLOSE_TOKEN_EXPIRED`](crate::app::router::CLOSE_TOKEN_EXPIRED)
/// when the token expires, and checks every [`Ctx::join`](crate::Ctx::join) against
/// the room rules (a `forbidden` error frame).
#[derive(Debug, Clone)]
pub struct JwtMiddleware {
    auth: JwtAuth,
}

impl JwtMiddleware {
    /// Middleware around a verifier.
    pub fn new(auth: JwtAuth) -> Self {
        Self { auth }
    }

    /// Middleware from an `auth:` config section.
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        JwtAuth::from_config(config).map(Self::new)
    }

    /// The verifier.
    pub fn auth(&self) -> &JwtAuth {
        &self.auth
    }
}

impl crate::app::router::Middleware for JwtMiddleware {
    fn on_connect(
        &self,
        c: &mut crate::app::router::Connecting<'_>,
    ) -> Result<(), crate::app::router::Reject> {
        use crate::app::router::Reject;
        let claims = self
            .auth
            .authenticate(c.request())
            .map_err(|e| Reject::new(e.status(), e.reason()))?;
        for room in crate::proto::http::query_values(&c.request().query, "room") {
            if let Err(e) = self.auth.check_join(&claims, &room) {
                return Err(Reject::new(e.status(), format!("{}: {room:?}", e.reason())));
            }
        }
        // Accepted up to `exp` + leeway, so closed then too (not at `exp`).
        if let Some(at) = claims.expires_at() {
            c.expire_at(at + self.auth.leeway());
        }
        if let Some(sub) = &claims.sub {
            c.set_meta("sub", sub)?;
        }
        c.set_meta("claims", &claims.all)?;
        Ok(())
    }

    fn may_join(
        &self,
        ctx: &crate::app::router::Ctx,
        room: &str,
    ) -> Result<(), crate::app::router::RouteError> {
        let all: Map<String, Value> = ctx.meta("claims").unwrap_or_default();
        let claims = Claims::from_map(all);
        self.auth.check_join(&claims, room).map_err(|e| {
            crate::app::router::RouteError::client("forbidden", format!("{}: {room:?}", e.reason()))
        })
    }
}

#[cfg(test)]
mod tests;
