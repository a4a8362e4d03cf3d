//! Tests for `corecast::auth`. Key pairs and PyJWT-minted tokens live in
//! `engine/testdata/auth/` (test-only keys; see `mint_pyjwt.py` there).

use super::*;
use crate::config::ConfigDuration;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::path::PathBuf;

const SECRET: &str = "corecast-test-secret-0123456789abcdef";
const FAR_FUTURE: u64 = 4_102_444_800; // 2100-01-01

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/auth")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        algorithm: Algorithm::Hs256,
        secret: SECRET.into(),
        ..AuthConfig::default()
    }
}

fn key_config(alg: Algorithm, public_key: &str) -> AuthConfig {
    AuthConfig {
        algorithm: alg,
        public_key: Some(testdata(public_key)),
        ..AuthConfig::default()
    }
}

fn auth(config: &AuthConfig) -> JwtAuth {
    JwtAuth::from_config(config).unwrap_or_else(|e| panic!("from_config: {e}"))
}

fn config_err(config: &AuthConfig) -> String {
    JwtAuth::from_config(config).expect_err("config should be refused")
}

fn sign_hs(claims: &Value) -> String {
    sign_hs_with(claims, SECRET)
}

fn sign_hs_with(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn sign_pem(alg: jsonwebtoken::Algorithm, private_key: &str, claims: &Value) -> String {
    let pem = std::fs::read(testdata(private_key)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::ES256 | jsonwebtoken::Algorithm::ES384 => {
            EncodingKey::from_ec_pem(&pem).unwrap()
        }
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn valid_claims() -> Value {
    json!({"sub": "alice", "exp": now() + 600, "role": "admin"})
}

/// A request head with `target` (path and query) and extra header lines.
fn request(target: &str, headers: &[(&str, &str)]) -> Request {
    let mut raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    crate::proto::http::parse_request(raw.as_bytes())
        .unwrap()
        .unwrap()
        .0
}

/// (name, token) pairs from the PyJWT fixture file.
fn pyjwt_tokens() -> Vec<(&'static str, &'static str)> {
    include_str!("../../../testdata/auth/pyjwt_tokens.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once(' ').expect("name token"))
        .collect()
}

fn pyjwt(name: &str) -> &'static str {
    pyjwt_tokens()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1
}

fn claims_of(v: Value) -> Claims {
    match v {
        Value::Object(m) => Claims::from_map(m),
        _ => panic!("claims must be an object"),
    }
}

// ---- happy paths -------------------------------------------------------------

#[test]
fn hs256_token_verifies_and_exposes_claims() {
    let a = auth(&hs_config());
    let exp = now() + 600;
    let token = sign_hs(&json!({"sub": "alice", "exp": exp, "role": "admin", "n": 7}));
    let c = a.verify(&token).unwrap();
    assert_eq!(c.sub.as_deref(), Some("alice"));
    assert_eq!(c.exp, Some(exp));
    assert_eq!(c.get("role"), Some(&json!("admin")));
    assert_eq!(c.all["n"], json!(7));
    assert_eq!(c.expires_at(), Some(UNIX_EPOCH + Duration::from_secs(exp)));
}

#[test]
fn rs256_token_verifies_with_spki_and_pkcs1_public_keys() {
    let token = sign_pem(
        jsonwebtoken::Algorithm::RS256,
        "rsa_private.pem",
        &valid_claims(),
    );
    for public in ["rsa_public.pem", "rsa_public_pkcs1.pem"] {
        let a = auth(&key_config(Algorithm::Rs256, public));
        assert_eq!(
            a.verify(&token).unwrap().sub.as_deref(),
            Some("alice"),
            "{public}"
        );
    }
    // Signed by another RSA key: the signature does not verify.
    let other = auth(&key_config(Algorithm::Rs256, "rsa_other_public.pem"));
    assert_eq!(other.verify(&token), Err(AuthError::BadSignature));
}

#[test]
fn es256_token_verifies() {
    let token = sign_pem(
        jsonwebtoken::Algorithm::ES256,
        "ec_private.pem",
        &valid_claims(),
    );
    let a = auth(&key_config(Algorithm::Es256, "ec_public.pem"));
    assert_eq!(a.verify(&token).unwrap().sub.as_deref(), Some("alice"));
}

#[test]
fn tokens_minted_by_pyjwt_verify() {
    let with = |mut c: AuthConfig| {
        c.issuer = Some("https://issuer.test".into());
        c.audience = Some("corecast".into());
        auth(&c)
    };
    let hs = |alg| {
        with(AuthConfig {
            algorithm: alg,
            ..hs_config()
        })
    };
    let cases = [
        ("hs256", hs(Algorithm::Hs256)),
        ("hs384", hs(Algorithm::Hs384)),
        ("hs512", hs(Algorithm::Hs512)),
        (
            "rs256",
            with(key_config(Algorithm::Rs256, "rsa_public.pem")),
        ),
        (
            "rs384",
            with(key_config(Algorithm::Rs384, "rsa_public.pem")),
        ),
        ("es256", with(key_config(Algorithm::Es256, "ec_public.pem"))),
        (
            "es384",
            with(key_config(Algorithm::Es384, "ec384_public.pem")),
        ),
    ];
    for (name, a) in &cases {
        let c = a
            .verify(pyjwt(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.sub.as_deref(), Some("alice"), "{name}");
        assert_eq!(c.exp, Some(FAR_FUTURE), "{name}");
        assert_eq!(c.get("rooms"), Some(&json!(["chat-*", "lobby"])), "{name}");
        assert!(
            a.may_join(&c, "chat-42") && !a.may_join(&c, "ops"),
            "{name}"
        );
    }
    // The same tokens, expired.
    assert_eq!(
        cases[0].1.verify(pyjwt("hs256_expired")),
        Err(AuthError::Expired)
    );
    assert_eq!(
        cases[3].1.verify(pyjwt("rs256_expired")),
        Err(AuthError::Expired)
    );
    // An RS256 token offered to an ES256 configuration.
    assert_eq!(
        cases[5].1.verify(pyjwt("rs256")),
        Err(AuthError::WrongAlgorithm)
    );
}

// ---- each error kind -----------------------------------------------------------

#[test]
fn malformed_tokens() {
    let a = auth(&hs_config());
    let good = sign_hs(&valid_claims());
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    for bad in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{good}.extra"),
        format!("!!.{p}.{s}"),                      // header not base64url
        format!("{}.{p}.{s}", b64("not json")),     // header not JSON
        format!("{}.{p}.{s}", b64(r#"{"typ":1}"#)), // header without alg
        format!("{h}.{}.{s}", b64("[1,2]")),        // payload not an object
        format!("{h}.***.{s}"),                     // payload not base64url
        format!("{h}.{p}.***"),                     // signature not base64url
    ] {
        let e = a.verify(&bad).unwrap_err();
        // A tampered payload may fail the signature first; both are 401s.
        assert!(
            matches!(e, AuthError::Malformed | AuthError::BadSignature),
            "{bad:?}: {e:?}"
        );
        if !bad.starts_with(h) || bad.ends_with(".extra") {
            assert_eq!(e, AuthError::Malformed, "{bad:?}");
        }
    }
}

#[test]
fn bad_signatures() {
    let a = auth(&hs_config());
    let wrong_secret = sign_hs_with(&valid_claims(), "another-secret-another-secret!!");
    assert_eq!(a.verify(&wrong_secret), Err(AuthError::BadSignature));
    // Payload swapped for another one: the signature no longer matches.
    let good = sign_hs(&valid_claims());
    let other = sign_hs(&json!({"sub": "mallory", "exp": now() + 600}));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(a.verify(&parts.join(".")), Err(AuthError::BadSignature));
}

#[test]
fn expiry_and_not_before_respect_the_leeway() {
    let strict = auth(&AuthConfig {
        leeway: ConfigDuration(Duration::ZERO),
        ..hs_config()
    });
    let lenient = auth(&hs_config()); // 30 s default
    let t = now();

    let just_expired = sign_hs(&json!({"exp": t - 10}));
    assert_eq!(strict.verify(&just_expired), Err(AuthError::Expired));
    assert!(lenient.verify(&just_expired).is_ok());

    let long_expired = sign_hs(&json!({"exp": t - 120}));
    assert_eq!(lenient.verify(&long_expired), Err(AuthError::Expired));

    let soon_valid = sign_hs(&json!({"exp": t + 600, "nbf": t + 10}));
    assert_eq!(strict.verify(&soon_valid), Err(AuthError::NotYetValid));
    assert!(lenient.verify(&soon_valid).is_ok());

    let later_valid = sign_hs(&json!({"exp": t + 600, "nbf": t + 120}));
    assert_eq!(lenient.verify(&later_valid), Err(AuthError::NotYetValid));
}

#[test]
fn exp_is_required_unless_configured_otherwise() {
    let no_exp = sign_hs(&json!({"sub": "alice"}));
    assert_eq!(
        auth(&hs_config()).verify(&no_exp),
        Err(AuthError::MissingExp)
    );
    let optional = auth(&AuthConfig {
        require_exp: false,
        ..hs_config()
    });
    let c = optional.verify(&no_exp).unwrap();
    assert_eq!((c.exp, c.expires_at()), (None, None));
    // Present exp is still checked.
    assert_eq!(
        optional.verify(&sign_hs(&json!({"exp": now() - 3600}))),
        Err(AuthError::Expired)
    );
}

#[test]
fn registered_claims_of_the_wrong_type() {
    let a = auth(&hs_config());
    assert_eq!(
        a.verify(&sign_hs(&json!({"exp": "tomorrow"}))),
        Err(AuthError::InvalidClaim { claim: "exp" })
    );
    let e = a
        .verify(&sign_hs(&json!({"exp": now() + 60, "nbf": "now"})))
        .unwrap_err();
    assert_eq!(e, AuthError::InvalidClaim { claim: "nbf" });
    assert_eq!(e.reason(), "token nbf claim is not a number");
    // Also when the claim is a required one.
    let with_iss = auth(&AuthConfig {
        issuer: Some("https://issuer.test".into()),
        ..hs_config()
    });
    assert_eq!(
        with_iss.verify(&sign_hs(&json!({"exp": now() + 60, "iss": 42}))),
        Err(AuthError::InvalidClaim { claim: "iss" })
    );
}

#[test]
fn issuer_and_audience_are_checked_when_set() {
    let a = auth(&AuthConfig {
        issuer: Some("https://issuer.test".into()),
        audience: Some("corecast".into()),
        ..hs_config()
    });
    let exp = now() + 600;
    let ok = json!({"exp": exp, "iss": "https://issuer.test", "aud": "corecast"});
    assert!(a.verify(&sign_hs(&ok)).is_ok());
    let aud_list = json!({"exp": exp, "iss": "https://issuer.test", "aud": ["x", "corecast"]});
    assert!(a.verify(&sign_hs(&aud_list)).is_ok());
    for (claims, want) in [
        (
            json!({"exp": exp, "iss": "https://evil.test", "aud": "corecast"}),
            AuthError::WrongIssuer,
        ),
        (
            json!({"exp": exp, "aud": "corecast"}),
            AuthError::WrongIssuer,
        ),
        (
            json!({"exp": exp, "iss": "https://issuer.test", "aud": "other"}),
            AuthError::WrongAudience,
        ),
        (
            json!({"exp": exp, "iss": "https://issuer.test"}),
            AuthError::WrongAudience,
        ),
    ] {
        assert_eq!(a.verify(&sign_hs(&claims)), Err(want), "{claims}");
    }
    // Unset: neither is checked, even when the token carries them.
    let open = auth(&hs_config());
    let any = json!({"exp": exp, "iss": "whoever", "aud": "someone-else"});
    assert!(open.verify(&sign_hs(&any)).is_ok());
}

#[test]
fn algorithm_must_match_the_configuration() {
    // The classic confusion: an HS256 token "signed" with an RSA public key.
    let rs = auth(&key_config(Algorithm::Rs256, "rsa_public.pem"));
    let public_pem = std::fs::read_to_string(testdata("rsa_public.pem")).unwrap();
    let forged = sign_hs_with(&valid_claims(), &public_pem);
    assert_eq!(rs.verify(&forged), Err(AuthError::WrongAlgorithm));

    // alg "none" with an empty signature.
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&valid_claims().to_string())
    );
    let hs = auth(&hs_config());
    assert_eq!(hs.verify(&none), Err(AuthError::WrongAlgorithm));

    // HS384 token to an HS256 configuration with the same secret.
    let hs384 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS384),
        &valid_claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(hs.verify(&hs384), Err(AuthError::WrongAlgorithm));
}

#[test]
fn statuses_and_messages() {
    let all = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::WrongAlgorithm,
        AuthError::MissingExp,
        AuthError::InvalidClaim { claim: "exp" },
    ];
    for e in &all {
        assert_eq!(e.status(), 401, "{e:?}");
        assert_eq!(e.to_string(), e.reason());
        let resp = String::from_utf8(e.http_response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{resp}");
        assert!(resp.contains("WWW-Authenticate: Bearer realm=\"corecast\""));
        assert!(
            resp.ends_with(&format!("\r\n\r\n{}\n", e.reason())),
            "{resp}"
        );
    }
    assert_eq!(AuthError::Expired.reason(), "token expired");
    assert_eq!(
        AuthError::WrongIssuer.reason(),
        "token issuer does not match auth.issuer"
    );
    let forbidden = AuthError::Forbidden {
        room: "admin-1".into(),
    };
    assert_eq!(forbidden.status(), 403);
    assert_eq!(
        forbidden.to_string(),
        "token does not allow joining room \"admin-1\""
    );
    assert!(String::from_utf8(forbidden.http_response())
        .unwrap()
        .starts_with("HTTP/1.1 403 Forbidden\r\n"));
}

#[test]
fn errors_and_debug_output_never_contain_the_token_or_secret() {
    let config = hs_config();
    let a = auth(&config);
    let t = now();
    let tokens = [
        sign_hs(&json!({"exp": t - 3600})),
        sign_hs_with(&valid_claims(), "another-secret-another-secret!!"),
        sign_hs(&json!({"sub": "x"})),
        "eyJhbGciOiJIUzI1NiJ9.garbage-payload.sig".to_string(),
    ];
    for token in &tokens {
        let e = a.verify(token).unwrap_err();
        let shown = format!("{e} {e:?} {}", String::from_utf8_lossy(&e.http_response()));
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(!shown.contains(part), "{shown}");
        }
    }
    for shown in [format!("{config:?}"), format!("{a:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(
            shown.contains("HS256") || shown.contains("Hs256"),
            "{shown}"
        );
    }
    // An env: reference is not a secret and stays visible.
    let env_config = AuthConfig {
        secret: "env:JWT_SECRET".into(),
        ..hs_config()
    };
    assert!(format!("{env_config:?}").contains("env:JWT_SECRET"));
}

// ---- token sources ---------------------------------------------------------------

#[test]
fn each_source_alone() {
    let a = auth(&hs_config());
    let token = sign_hs(&valid_claims());
    let cases = [
        (
            request(&format!("/ws?room=a&token={token}"), &[]),
            TokenSource::Query,
        ),
        (
            request(
                "/ws?room=a",
                &[("Authorization", &format!("Bearer {token}"))],
            ),
            TokenSource::Header,
        ),
        (
            request("/ws", &[("authorization", &format!("bearer   {token} "))]),
            TokenSource::Header,
        ),
        (
            request("/ws", &[("Cookie", &format!("corecast_token={token}"))]),
            TokenSource::Cookie,
        ),
    ];
    for (req, source) in &cases {
        assert_eq!(
            a.extract_token(req),
            Some((*source, token.clone())),
            "{req:?}"
        );
        assert_eq!(a.authenticate(req).unwrap().sub.as_deref(), Some("alice"));
    }
    assert_eq!(
        a.authenticate(&request("/ws?room=a", &[])),
        Err(AuthError::Missing)
    );
}

#[test]
fn sources_are_tried_in_order_and_only_the_first_is_verified() {
    let a = auth(&hs_config());
    let good = sign_hs(&valid_claims());
    let expired = sign_hs(&json!({"exp": now() - 3600}));
    let all_three = |q: &str, h: &str, c: &str| {
        request(
            &format!("/ws?token={q}"),
            &[
                ("Authorization", &format!("Bearer {h}")),
                ("Cookie", &format!("corecast_token={c}")),
            ],
        )
    };
    // Query first.
    let req = all_three(&good, &expired, &expired);
    assert_eq!(a.extract_token(&req).unwrap().0, TokenSource::Query);
    assert!(a.authenticate(&req).is_ok());
    // A bad token in the first source is not rescued by a good one later.
    assert_eq!(
        a.authenticate(&all_three(&expired, &good, &good)),
        Err(AuthError::Expired)
    );
    // Header before cookie.
    let req = request(
        "/ws",
        &[
            ("Cookie", &format!("corecast_token={expired}")),
            ("Authorization", &format!("Bearer {good}")),
        ],
    );
    assert_eq!(a.extract_token(&req).unwrap().0, TokenSource::Header);
    assert!(a.authenticate(&req).is_ok());
    // Empty query value and a non-Bearer Authorization count as absent.
    let req = request(
        "/ws?token=",
        &[
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Cookie", &format!("corecast_token={good}")),
        ],
    );
    assert_eq!(a.extract_token(&req).unwrap().0, TokenSource::Cookie);
}

#[test]
fn disabled_and_renamed_sources() {
    let token = sign_hs(&valid_claims());
    let a = auth(&AuthConfig {
        query_param: None,
        header: false,
        cookie: Some("sess".into()),
        ..hs_config()
    });
    let ignored = request(
        &format!("/ws?token={token}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Cookie", &format!("corecast_token={token}")),
        ],
    );
    assert_eq!(a.authenticate(&ignored), Err(AuthError::Missing));
    let req = request("/ws", &[("Cookie", &format!("sess={token}"))]);
    assert_eq!(a.extract_token(&req).unwrap().0, TokenSource::Cookie);

    let a = auth(&AuthConfig {
        query_param: Some("access_token".into()),
        cookie: Some(String::new()),
        ..hs_config()
    });
    let req = request(&format!("/sse?access_token={token}"), &[]);
    assert!(a.authenticate(&req).is_ok());
    let req = request("/ws", &[("Cookie", &format!("corecast_token={token}"))]);
    assert_eq!(a.extract_token(&req), None);
}

#[test]
fn query_token_is_percent_decoded() {
    let a = auth(&hs_config());
    let token = sign_hs(&valid_claims());
    let encoded: String = token
        .bytes()
        .map(|b| {
            if b == b'.' || b == b'-' || b == b'_' {
                format!("%{b:02X}")
            } else {
                (b as char).to_string()
            }
        })
        .collect();
    assert!(encoded.contains("%2E"));
    let req = request(&format!("/ws?room=x&token={encoded}&since=3"), &[]);
    assert_eq!(a.extract_token(&req), Some((TokenSource::Query, token)));
    assert!(a.authenticate(&req).is_ok());
}

#[test]
fn cookie_header_parsing() {
    let name = "corecast_token";
    for (header, want) in [
        ("corecast_token=abc", Some("abc")),
        ("a=1; corecast_token=abc; b=2", Some("abc")),
        ("a=1;corecast_token=abc;b=2", Some("abc")),
        ("  corecast_token  =  abc  ; b=2", Some("abc")),
        ("corecast_token=\"abc\"", Some("abc")),
        ("a=\"x;y\"; corecast_token=abc", Some("abc")),
        ("xcorecast_token=abc; corecast_tokenx=def", None),
        ("corecast_token=; corecast_token=second", Some("second")),
        ("corecast_token=first; corecast_token=second", Some("first")),
        ("corecast_token=a=b", Some("a=b")),
        ("corecast_token", None),
        ("", None),
        ("corecast_token=\"\"", None),
    ] {
        assert_eq!(cookie_value(header.as_bytes(), name), want, "{header:?}");
    }
    // Several Cookie header lines: the first that has the cookie wins.
    let a = auth(&hs_config());
    let token = sign_hs(&valid_claims());
    let req = request(
        "/ws",
        &[
            ("Cookie", "theme=dark; lang=en"),
            ("Cookie", &format!("session=1; corecast_token=\"{token}\"")),
        ],
    );
    assert_eq!(a.extract_token(&req), Some((TokenSource::Cookie, token)));
}

#[test]
fn bearer_header_parsing() {
    for (value, want) in [
        ("Bearer abc", Some("abc")),
        ("BEARER abc", Some("abc")),
        ("Bearer\tabc", Some("abc")),
        ("  Bearer   abc  ", Some("abc")),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic abc", None),
        ("Bearerabc", None),
    ] {
        assert_eq!(bearer_token(value.as_bytes()), want, "{value:?}");
    }
}

// ---- room authorization ---------------------------------------------------------

#[test]
fn room_patterns_are_globs() {
    for (p, n, m) in [
        ("*", "", true),
        ("*", "anything", true),
        ("chat-*", "chat-", true),
        ("chat-*", "chat-42", true),
        ("chat-*", "chat", false),
        ("chat-*", "xchat-1", false),
        ("*-eu", "ticker-eu", true),
        ("*-eu", "ticker-us", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "a-b-b-c", true),
        ("a*b*c", "acb", false),
        ("*mid*", "has-mid-here", true),
        ("**", "x", true),
        ("lobby", "lobby", true),
        ("lobby", "lobby2", false),
        ("a*a", "a", false),
        ("é*ü", "éxü", true),
    ] {
        assert_eq!(pattern_matches(p, n), m, "{p} ~ {n}");
    }
}

#[test]
fn rooms_claim_limits_rooms() {
    let a = auth(&hs_config());
    let list = claims_of(json!({"rooms": ["chat-*", "lobby"]}));
    assert!(a.may_join(&list, "chat-1"));
    assert!(a.may_join(&list, "lobby"));
    assert!(!a.may_join(&list, "lobby-2"));
    let one = claims_of(json!({"rooms": "news-*"}));
    assert!(a.may_join(&one, "news-eu") && !a.may_join(&one, "chat-1"));
    let none = claims_of(json!({"rooms": []}));
    assert!(!a.may_join(&none, "lobby"));
    // Wrong types list no room; non-string entries are skipped.
    assert!(!a.may_join(&claims_of(json!({"rooms": 5})), "5"));
    assert!(a.may_join(&claims_of(json!({"rooms": [1, "ok"]})), "ok"));
    // Missing claim: any room, unless the claim is required.
    let bare = claims_of(json!({"sub": "alice"}));
    assert!(a.may_join(&bare, "anything"));
    let strict = auth(&AuthConfig {
        rooms_claim_required: true,
        ..hs_config()
    });
    assert!(!strict.may_join(&bare, "anything"));
    assert!(strict.may_join(&list, "chat-9"));
    assert_eq!(
        strict.check_join(&bare, "lobby"),
        Err(AuthError::Forbidden {
            room: "lobby".into()
        })
    );
    assert_eq!(strict.check_join(&list, "lobby"), Ok(()));
    // Renamed and disabled claim.
    let renamed = auth(&AuthConfig {
        rooms_claim: Some("channels".into()),
        ..hs_config()
    });
    let ch = claims_of(json!({"channels": ["a"], "rooms": ["b"]}));
    assert!(renamed.may_join(&ch, "a") && !renamed.may_join(&ch, "b"));
    let off = auth(&AuthConfig {
        rooms_claim: None,
        rooms_claim_required: true,
        ..hs_config()
    });
    assert!(off.may_join(&ch, "b") && off.may_join(&bare, "z"));
}

#[test]
fn room_rules_require_claim_values() {
    let a = auth(&AuthConfig {
        room_rules: vec![
            RoomRule {
                pattern: "admin-*".into(),
                claim: "role".into(),
                value: "admin".into(),
            },
            RoomRule {
                pattern: "*-eu".into(),
                claim: "region".into(),
                value: "eu".into(),
            },
            RoomRule {
                pattern: "beta-*".into(),
                claim: "beta".into(),
                value: "true".into(),
            },
        ],
        ..hs_config()
    });
    let admin = claims_of(json!({"role": "admin"}));
    let admin_in_list = claims_of(json!({"role": ["user", "admin"], "region": "eu"}));
    let user = claims_of(json!({"role": "user", "region": ["us", "eu"]}));
    let nobody = claims_of(json!({}));
    assert!(a.may_join(&admin, "admin-1"));
    assert!(a.may_join(&admin_in_list, "admin-1"));
    assert!(!a.may_join(&user, "admin-1"));
    assert!(!a.may_join(&nobody, "admin-1"));
    // Rooms no rule matches are open (no rooms claim in these tokens).
    assert!(a.may_join(&nobody, "lobby"));
    // Every matching rule must hold: admin-eu needs both.
    assert!(a.may_join(&admin_in_list, "admin-eu"));
    assert!(!a.may_join(&admin, "admin-eu"));
    assert!(a.may_join(&user, "chat-eu"));
    // Booleans compare by their JSON text.
    assert!(a.may_join(&claims_of(json!({"beta": true})), "beta-x"));
    assert!(!a.may_join(&claims_of(json!({"beta": false})), "beta-x"));
    assert!(!a.may_join(&claims_of(json!({"beta": {"on": true}})), "beta-x"));
    // Rules apply on top of the rooms claim.
    let listed = claims_of(json!({"rooms": ["admin-*"], "role": "user"}));
    assert!(!a.may_join(&listed, "admin-1"));
}

// ---- configuration ---------------------------------------------------------------

#[test]
fn yaml_defaults_and_strictness() {
    let c: AuthConfig = serde_yaml_ng::from_str("algorithm: RS256\npublic_key: /k.pem\n").unwrap();
    assert_eq!(c.algorithm, Algorithm::Rs256);
    assert_eq!(c.public_key.as_deref(), Some(Path::new("/k.pem")));
    assert_eq!(c.leeway.0, Duration::from_secs(30));
    assert!(c.require_exp && c.header && !c.rooms_claim_required);
    assert_eq!(c.query_param.as_deref(), Some("token"));
    assert_eq!(c.cookie.as_deref(), Some("corecast_token"));
    assert_eq!(c.rooms_claim.as_deref(), Some("rooms"));

    let c: AuthConfig = serde_yaml_ng::from_str(
        "algorithm: ES384\nleeway: 5s\nquery_param: null\ncookie: null\nroom_rules:\n  - pattern: admin-*\n    claim: role\n    value: admin\n",
    )
    .unwrap();
    assert_eq!(c.leeway.0, Duration::from_secs(5));
    assert_eq!((c.query_param, c.cookie), (None, None));
    assert_eq!(c.room_rules[0].claim, "role");

    let e = serde_yaml_ng::from_str::<AuthConfig>("algorithm: HS256\nsecrt: x\n").unwrap_err();
    assert!(e.to_string().contains("secrt"), "{e}");
    let e = serde_yaml_ng::from_str::<AuthConfig>("algorithm: none\n").unwrap_err();
    assert!(e.to_string().contains("HS256"), "{e}");
    let e = serde_yaml_ng::from_str::<AuthConfig>("secret: x\n").unwrap_err();
    assert!(e.to_string().contains("algorithm"), "{e}");
    let e = serde_yaml_ng::from_str::<AuthConfig>(
        "algorithm: HS256\nroom_rules:\n  - pattern: a\n    claim: b\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("value"), "{e}");
}

#[test]
fn secret_from_the_environment() {
    let env = |name: &str| match name {
        "JWT_SECRET" => Some(SECRET.to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let with = |secret: &str| {
        JwtAuth::from_config_with_env(
            &AuthConfig {
                secret: secret.into(),
                ..hs_config()
            },
            env,
        )
    };
    let a = with("env:JWT_SECRET").unwrap();
    assert!(a.verify(&sign_hs(&valid_claims())).is_ok());
    assert_eq!(
        with("env:NOPE").unwrap_err(),
        "auth.secret: environment variable NOPE is not set"
    );
    assert_eq!(
        with("env:EMPTY").unwrap_err(),
        "auth.secret: environment variable EMPTY is empty"
    );
    assert!(with("env:").unwrap_err().contains("env:NAME"));
    assert_eq!(
        with("").unwrap_err(),
        "auth.secret is required for HS256 (the secret, or env:NAME)"
    );
    // The real environment: a variable that is surely unset.
    let e = config_err(&AuthConfig {
        secret: "env:CORECAST_TEST_SURELY_UNSET_9F3A".into(),
        ..hs_config()
    });
    assert!(
        e.contains("CORECAST_TEST_SURELY_UNSET_9F3A is not set"),
        "{e}"
    );
}

#[test]
fn key_file_errors_name_the_field_and_the_problem() {
    let e = config_err(&AuthConfig {
        algorithm: Algorithm::Rs256,
        public_key: Some("/nonexistent/x.pem".into()),
        ..AuthConfig::default()
    });
    assert!(
        e.starts_with("auth.public_key: cannot read /nonexistent/x.pem: "),
        "{e}"
    );
    assert!(e.contains("No such file"), "{e}");

    let e = config_err(&key_config(Algorithm::Rs256, "ec_public.pem"));
    assert!(e.contains("holds an EC key"), "{e}");
    assert!(e.contains("RS256 needs an RSA public key"), "{e}");
    let e = config_err(&key_config(Algorithm::Es256, "rsa_public.pem"));
    assert!(e.contains("holds an RSA key"), "{e}");
    let e = config_err(&key_config(Algorithm::Es256, "ec384_public.pem"));
    assert!(e.contains("another curve") && e.contains("P-256"), "{e}");
    let e = config_err(&key_config(Algorithm::Es384, "ec_public.pem"));
    assert!(e.contains("another curve") && e.contains("P-384"), "{e}");
    let e = config_err(&key_config(Algorithm::Rs256, "rsa_private.pem"));
    assert!(e.contains("private key"), "{e}");
    let e = config_err(&key_config(Algorithm::Rs256, "mint_pyjwt.py"));
    assert!(e.contains("not a PEM file"), "{e}");
    let e = config_err(&AuthConfig {
        algorithm: Algorithm::Rs256,
        ..AuthConfig::default()
    });
    assert!(
        e.starts_with("auth.public_key is required for RS256"),
        "{e}"
    );
}

#[test]
fn damaged_key_is_refused_at_startup() {
    let dir = std::env::temp_dir().join(format!("corecast-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("damaged.pem");
    // A well-formed PEM whose body is a truncated SPKI.
    let good = std::fs::read_to_string(testdata("rsa_public.pem")).unwrap();
    let body: String = good.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let cut = base64::engine::general_purpose::STANDARD.encode(&der[..der.len() / 2]);
    std::fs::write(
        &path,
        format!("-----BEGIN PUBLIC KEY-----\n{cut}\n-----END PUBLIC KEY-----\n"),
    )
    .unwrap();
    let e = config_err(&AuthConfig {
        algorithm: Algorithm::Rs256,
        public_key: Some(path.clone()),
        ..AuthConfig::default()
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("not a usable RSA public key"), "{e}");
}

#[test]
fn mixed_up_and_empty_settings_are_refused() {
    let e = config_err(&AuthConfig {
        public_key: Some(testdata("rsa_public.pem")),
        ..hs_config()
    });
    assert!(e.starts_with("auth.public_key is for RS*/ES*"), "{e}");
    let e = config_err(&AuthConfig {
        secret: "x".into(),
        ..key_config(Algorithm::Es256, "ec_public.pem")
    });
    assert!(e.starts_with("auth.secret is for HS*"), "{e}");
    let e = config_err(&AuthConfig {
        issuer: Some(String::new()),
        ..hs_config()
    });
    assert!(e.starts_with("auth.issuer must not be empty"), "{e}");
    let e = config_err(&AuthConfig {
        room_rules: vec![RoomRule {
            pattern: "a-*".into(),
            claim: String::new(),
            value: "x".into(),
        }],
        ..hs_config()
    });
    assert_eq!(e, "auth.room_rules[0].claim must not be empty");
    let e = config_err(&AuthConfig {
        leeway: ConfigDuration(Duration::from_secs(u64::MAX / 2)),
        ..hs_config()
    });
    assert!(e.starts_with("auth.leeway must be at most 86400s"), "{e}");
    let e = config_err(&AuthConfig {
        query_param: Some(String::new()),
        header: false,
        cookie: None,
        ..hs_config()
    });
    assert!(e.contains("all off"), "{e}");
}

#[test]
fn jwt_auth_can_be_shared_across_shards() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    send_sync::<JwtAuth>();
    send_sync::<AuthConfig>();
    send_sync::<AuthError>();
}
