//! Self-signed certificates for WebTransport dev mode and the `corecast cert` CLI.
//!
//! Browsers can trust a server without a CA through the WebTransport
//! `serverCertificateHashes` option, but Chromium only accepts certificates that are
//! ECDSA (P-256 or P-384) and whose *total* validity (`notAfter - notBefore`, counting
//! any backdating) is at most 14 days. [`generate`] makes exactly such a certificate
//! (ECDSA P-256, SHA-256 signature) and reports the SHA-256 of its DER, which is the
//! value a page passes to `serverCertificateHashes`.
//!
//! Times in the certificate have whole-second precision, so [`SelfSigned::not_before`]
//! and [`SelfSigned::not_after`] are the truncated values that were actually encoded.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
#[cfg(feature = "tls")]
use rustls::sign::CertifiedKey;
#[cfg(feature = "tls")]
use rustls_pki_types::pem::PemObject;
#[cfg(feature = "tls")]
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The longest total validity Chromium accepts for `serverCertificateHashes`: 14 days.
pub const MAX_VALIDITY: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// How far `notBefore` is backdated so a client whose clock is slightly behind ours
/// still sees the certificate as valid. It counts against [`MAX_VALIDITY`].
const BACKDATE: Duration = Duration::from_secs(60);

/// RFC 5280's upper bound on a commonName, in characters.
const MAX_CN_LEN: usize = 64;

const PEM_BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END_CERT: &str = "-----END CERTIFICATE-----";

/// A freshly generated self-signed certificate and its private key.
#[derive(Clone)]
pub struct SelfSigned {
    /// The certificate, PEM encoded (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The ECDSA P-256 private key, PKCS#8 PEM encoded (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// The certificate in DER form.
    pub cert_der: Vec<u8>,
    /// SHA-256 of [`SelfSigned::cert_der`]: the value for `serverCertificateHashes`.
    pub sha256: [u8; 32],
    /// Start of validity as encoded in the certificate (whole seconds).
    pub not_before: SystemTime,
    /// End of validity as encoded in the certificate (whole seconds).
    pub not_after: SystemTime,
}

// Hand-written so the private key never ends up in logs through `{:?}`.
impl fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSigned")
            .field("sha256", &hex(&self.sha256))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be generated, read or written.
#[derive(Debug)]
#[non_exhaustive]
pub enum CertError {
    /// The requested validity is longer than [`MAX_VALIDITY`].
    ValidityTooLong(Duration),
    /// The requested validity is shorter than one second (certificate times have
    /// whole-second precision).
    ValidityTooShort(Duration),
    /// No host names or addresses were given.
    NoHosts,
    /// A host is neither an IP address nor a valid (ASCII, non-empty) DNS name.
    InvalidHost(String),
    /// The validity window falls outside what the certificate can encode
    /// (1970-01-01 to 9999-12-31 here).
    TimeOutOfRange,
    /// Key generation or signing failed.
    Generate(String),
    /// The PEM text holds no usable CERTIFICATE block.
    Pem(String),
    /// Reading or writing a file failed.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ValidityTooLong(d) => write!(
                f,
                "certificate validity of {}s exceeds the {}s (14 day) maximum browsers accept",
                d.as_secs(),
                MAX_VALIDITY.as_secs()
            ),
            Self::ValidityTooShort(d) => {
                write!(
                    f,
                    "certificate validity of {d:?} is shorter than one second"
                )
            }
            Self::NoHosts => f.write_str("no host names or IP addresses given for the certificate"),
            Self::InvalidHost(h) => write!(
                f,
                "host {h:?} is neither an IP address nor a valid ASCII DNS name"
            ),
            Self::TimeOutOfRange => {
                f.write_str("certificate validity window is outside years 1970..=9999")
            }
            Self::Generate(e) => write!(f, "certificate generation failed: {e}"),
            Self::Pem(e) => write!(f, "bad certificate PEM: {e}"),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for CertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// ECDSA P-256 self-signed certificate for `hosts` (DNS names, or IP addresses which
/// become IP SANs; `[::1]`-style brackets are accepted), valid from `now - 60s` for
/// `validity` in total. The commonName is the first host.
///
/// # Errors
///
/// [`CertError::ValidityTooLong`] over [`MAX_VALIDITY`], [`CertError::ValidityTooShort`]
/// under one second, [`CertError::NoHosts`] / [`CertError::InvalidHost`] for bad
/// `hosts`, [`CertError::TimeOutOfRange`] if the window is not encodable, and
/// [`CertError::Generate`] if key generation or signing fails.
pub fn generate(
    hosts: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<SelfSigned, CertError> {
    check_validity(validity)?;
    let first = hosts.first().ok_or(CertError::NoHosts)?;
    let sans = hosts
        .iter()
        .map(String::as_str)
        .map(san_for)
        .collect::<Result<Vec<_>, _>>()?;
    let (not_before, not_after) = window(now, validity)?;

    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name(first));
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let cert_der = cert.der().to_vec();
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        sha256: sha256(&cert_der),
        cert_der,
        not_before: to_system_time(not_before)?,
        not_after: to_system_time(not_after)?,
    })
}

/// SHA-256 of the DER of the first CERTIFICATE block in a PEM text (what
/// `serverCertificateHashes` wants). Other blocks (keys, etc.) are skipped.
///
/// # Errors
///
/// [`CertError::Pem`] if there is no complete CERTIFICATE block or its body is not
/// base64 of a DER SEQUENCE.
pub fn sha256_of_pem(cert_pem: &str) -> Result<[u8; 32], CertError> {
    let der = first_cert_der(cert_pem)?;
    Ok(sha256(&der))
}

/// Lower-case hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Standard base64 (with padding).
#[must_use]
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Write `cert.pem` (mode 0644) and `key.pem` (mode 0600) into `dir`, creating `dir`
/// if missing, and return `(cert_path, key_path)`.
///
/// Existing files are replaced. Each file is created fresh with its mode (never
/// chmod-ed afterwards), so the key is never readable by others, even briefly, and an
/// old world-readable `key.pem` does not keep its permissions. The process umask
/// can only narrow these modes.
///
/// # Errors
///
/// [`CertError::Io`], naming the directory or file that could not be created or
/// written.
pub fn write_pair(dir: &Path, cert: &SelfSigned) -> Result<(PathBuf, PathBuf), CertError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    write_new(&cert_path, cert.cert_pem.as_bytes(), 0o644)?;
    write_new(&key_path, cert.key_pem.as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

/// Write `bytes` to `path` as a new file readable by its owner only (mode 0600),
/// replacing any file there (see [`write_pair`] for why it is created fresh).
///
/// # Errors
///
/// [`CertError::Io`], naming the file.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    write_new(path, bytes, 0o600)
}

fn check_validity(validity: Duration) -> Result<(), CertError> {
    if validity > MAX_VALIDITY {
        return Err(CertError::ValidityTooLong(validity));
    }
    if validity.as_secs() == 0 {
        return Err(CertError::ValidityTooShort(validity));
    }
    Ok(())
}

/// An IP literal becomes an IP SAN, anything else must be an ASCII DNS name.
fn san_for(host: &str) -> Result<SanType, CertError> {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if host.is_empty() {
        return Err(CertError::InvalidHost(host.to_owned()));
    }
    rcgen::string::Ia5String::try_from(host)
        .map(SanType::DnsName)
        .map_err(|_| CertError::InvalidHost(host.to_owned()))
}

/// Clients match the SANs, not the CN, so clipping an over-long name to RFC 5280's
/// bound only keeps strict parsers happy.
fn common_name(host: &str) -> String {
    host.chars().take(MAX_CN_LEN).collect()
}

/// `[now - BACKDATE, now - BACKDATE + validity]`, truncated to whole seconds so the
/// encoded span never exceeds `validity`.
fn window(
    now: SystemTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CertError::TimeOutOfRange)?
        .as_secs();
    let start = now_secs
        .checked_sub(BACKDATE.as_secs())
        .ok_or(CertError::TimeOutOfRange)?;
    let end = start
        .checked_add(validity.as_secs())
        .ok_or(CertError::TimeOutOfRange)?;
    Ok((to_datetime(start)?, to_datetime(end)?))
}

/// Years past 9999 are rejected here; the DER encoder would panic on them.
fn to_datetime(unix_secs: u64) -> Result<OffsetDateTime, CertError> {
    let secs = i64::try_from(unix_secs).map_err(|_| CertError::TimeOutOfRange)?;
    let dt = OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CertError::TimeOutOfRange)?;
    if dt.year() > 9999 {
        return Err(CertError::TimeOutOfRange);
    }
    Ok(dt)
}

fn to_system_time(dt: OffsetDateTime) -> Result<SystemTime, CertError> {
    let secs = u64::try_from(dt.unix_timestamp()).map_err(|_| CertError::TimeOutOfRange)?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or(CertError::TimeOutOfRange)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Base64 body of the first `CERTIFICATE` block, decoded. Other block types
/// (`TRUSTED CERTIFICATE`, `CERTIFICATE REQUEST`, keys) do not match the exact
/// delimiters and are skipped.
fn first_cert_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let begin = pem
        .find(PEM_BEGIN_CERT)
        .ok_or_else(|| CertError::Pem("no BEGIN CERTIFICATE line".into()))?;
    let body_start = begin + PEM_BEGIN_CERT.len();
    let rest = pem.get(body_start..).unwrap_or_default();
    let body_len = rest
        .find(PEM_END_CERT)
        .ok_or_else(|| CertError::Pem("BEGIN CERTIFICATE without END CERTIFICATE".into()))?;
    let body: String = rest
        .get(..body_len)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| CertError::Pem(format!("CERTIFICATE body is not base64: {e}")))?;
    // A certificate is a DER SEQUENCE; this catches empty or obviously wrong bodies.
    if der.first() != Some(&0x30) {
        return Err(CertError::Pem(
            "CERTIFICATE body is not a DER SEQUENCE".into(),
        ));
    }
    Ok(der)
}

/// Replace `path` with a new file created with `mode`. Removing first matters:
/// `mode` only applies at creation, and `create_new` refuses to follow a symlink.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, e)),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    set_mode(&mut options, mode);
    let mut file = options.open(path).map_err(|e| io_err(path, e))?;
    file.write_all(bytes).map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))
}

#[cfg(unix)]
fn set_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut OpenOptions, _mode: u32) {}

fn io_err(path: &Path, source: io::Error) -> CertError {
    CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

/// The `tls:` certificate: parse a PEM certificate chain and private key (PKCS#8, RSA or SEC1) and check
/// that they belong together. Errors name the config key and the file.
#[cfg(feature = "tls")]
pub(crate) fn load_certified_key(
    cert_path: &str,
    key_path: &str,
) -> Result<(CertifiedKey, [u8; 32]), String> {
    let cert_pem =
        std::fs::read(cert_path).map_err(|e| format!("tls.cert {cert_path}: cannot read: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert {cert_path}: bad PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "tls.cert {cert_path}: no CERTIFICATE block in the PEM file"
        ));
    };
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()).as_ref());
    let key_pem =
        std::fs::read(key_path).map_err(|e| format!("tls.key {key_path}: cannot read: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!("tls.key {key_path}: no usable private key (PKCS#8, RSA or SEC1 PEM): {e}")
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key {key_path}: unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "tls.key {key_path} does not match the certificate in tls.cert {cert_path}"
            ))
        }
        Err(e) => return Err(format!("tls.cert {cert_path}: bad certificate: {e}")),
    }
    Ok((certified, sha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A fixed, whole-second "now" so window arithmetic is exact.
    fn fixed_now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn localhost_cert() -> SelfSigned {
        generate(
            &hosts(&["localhost", "127.0.0.1"]),
            MAX_VALIDITY,
            fixed_now(),
        )
        .unwrap()
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("certtok-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn pem_body(pem: &str, label: &str) -> Vec<u8> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = pem.find(&begin).unwrap() + begin.len();
        let stop = pem.find(&end).unwrap();
        let body: String = pem[start..stop].split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn key_is_ecdsa_p256_pkcs8() {
        let cert = localhost_cert();
        assert!(cert.key_pem.contains("-----BEGIN PRIVATE KEY-----"));
        let der = pem_body(&cert.key_pem, "PRIVATE KEY");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
            .expect("key parses as ECDSA P-256 PKCS#8");
    }

    #[test]
    fn validity_window_is_backdated_and_exact() {
        let cert = localhost_cert();
        assert_eq!(cert.not_before, fixed_now() - BACKDATE);
        assert_eq!(
            cert.not_after.duration_since(cert.not_before).unwrap(),
            MAX_VALIDITY
        );
    }

    #[test]
    fn sub_second_now_and_validity_are_truncated_not_extended() {
        let now = fixed_now() + Duration::from_millis(999);
        let validity = DAY + Duration::from_millis(500);
        let cert = generate(&hosts(&["localhost"]), validity, now).unwrap();
        assert_eq!(cert.not_before, fixed_now() - BACKDATE);
        assert_eq!(cert.not_after.duration_since(cert.not_before).unwrap(), DAY);
    }

    #[test]
    fn validity_over_14_days_refused() {
        let too_long = MAX_VALIDITY + Duration::from_secs(1);
        let err = generate(&hosts(&["localhost"]), too_long, fixed_now()).unwrap_err();
        assert!(matches!(err, CertError::ValidityTooLong(_)), "{err}");
        assert!(err.to_string().contains("14 day"), "{err}");
    }

    #[test]
    fn zero_or_sub_second_validity_refused() {
        for v in [Duration::ZERO, Duration::from_millis(999)] {
            let err = generate(&hosts(&["localhost"]), v, fixed_now()).unwrap_err();
            assert!(matches!(err, CertError::ValidityTooShort(_)), "{err}");
        }
    }

    #[test]
    fn no_hosts_refused() {
        let err = generate(&[], DAY, fixed_now()).unwrap_err();
        assert!(matches!(err, CertError::NoHosts), "{err}");
    }

    #[test]
    fn invalid_hosts_refused() {
        for bad in ["", "bücher.example"] {
            let err = generate(&hosts(&["localhost", bad]), DAY, fixed_now()).unwrap_err();
            assert!(
                matches!(err, CertError::InvalidHost(ref h) if h == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn unencodable_times_refused_without_panic() {
        let h = hosts(&["localhost"]);
        let far = UNIX_EPOCH.checked_add(Duration::from_secs(400_000_000_000));
        for now in [Some(UNIX_EPOCH), far, UNIX_EPOCH.checked_sub(DAY)]
            .into_iter()
            .flatten()
        {
            let err = generate(&h, DAY, now).unwrap_err();
            assert!(matches!(err, CertError::TimeOutOfRange), "{err}");
        }
        // Just inside the range still works.
        let ok = UNIX_EPOCH + BACKDATE;
        assert!(generate(&h, DAY, ok).is_ok());
    }

    #[test]
    fn sha256_of_pem_matches_struct_and_der() {
        let cert = localhost_cert();
        let from_pem = sha256_of_pem(&cert.cert_pem).unwrap();
        assert_eq!(from_pem, cert.sha256);
        let direct = ring::digest::digest(&ring::digest::SHA256, &cert.cert_der);
        assert_eq!(&from_pem[..], direct.as_ref());
        assert_eq!(pem_body(&cert.cert_pem, "CERTIFICATE"), cert.cert_der);
    }

    #[test]
    fn sha256_of_pem_takes_first_certificate_block() {
        let a = localhost_cert();
        let b = localhost_cert();
        let bundle = format!("{}\n{}{}", a.key_pem, a.cert_pem, b.cert_pem);
        assert_eq!(sha256_of_pem(&bundle).unwrap(), a.sha256);
    }

    #[test]
    fn sha256_of_pem_errors() {
        let cases = [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
        ];
        for case in cases {
            let err = sha256_of_pem(case).unwrap_err();
            assert!(matches!(err, CertError::Pem(_)), "{case:?}: {err}");
        }
    }

    #[test]
    fn ip_host_becomes_ip_san() {
        let cert = generate(&hosts(&["127.0.0.1"]), DAY, fixed_now()).unwrap();
        // GeneralName iPAddress is [7] IMPLICIT OCTET STRING: tag 0x87, length 4.
        assert!(contains(&cert.cert_der, &[0x87, 4, 127, 0, 0, 1]));
    }

    #[test]
    fn bracketed_ipv6_becomes_ip_san() {
        let cert = generate(&hosts(&["[::1]"]), DAY, fixed_now()).unwrap();
        let mut san = vec![0x87, 16];
        san.extend_from_slice(&[0; 15]);
        san.push(1);
        assert!(contains(&cert.cert_der, &san));
    }

    #[test]
    fn dns_host_becomes_dns_san() {
        let cert = generate(&hosts(&["example.test"]), DAY, fixed_now()).unwrap();
        // GeneralName dNSName is [2] IMPLICIT IA5String: tag 0x82.
        let mut san = vec![0x82, 12];
        san.extend_from_slice(b"example.test");
        assert!(contains(&cert.cert_der, &san));
    }

    #[test]
    fn each_generate_makes_a_new_key() {
        let a = localhost_cert();
        let b = localhost_cert();
        assert_ne!(a.key_pem, b.key_pem);
        assert_ne!(a.sha256, b.sha256);
    }

    #[test]
    fn hex_and_base64() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(base64(b"hi?"), "aGk/");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn debug_does_not_leak_key() {
        let cert = localhost_cert();
        let dbg = format!("{cert:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
        assert!(dbg.contains(&hex(&cert.sha256)));
    }

    #[cfg(unix)]
    #[test]
    fn write_pair_modes_and_contents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("modes").join("nested");
        let cert = localhost_cert();
        let (cert_path, key_path) = write_pair(&dir, &cert).unwrap();
        assert_eq!(cert_path, dir.join("cert.pem"));
        assert_eq!(key_path, dir.join("key.pem"));
        assert_eq!(fs::read_to_string(&cert_path).unwrap(), cert.cert_pem);
        assert_eq!(fs::read_to_string(&key_path).unwrap(), cert.key_pem);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        // The umask may narrow 0644, never widen it.
        assert_eq!(mode(&cert_path) & !0o644, 0);
        assert_eq!(mode(&cert_path) & 0o600, 0o600);
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn write_pair_replaces_a_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("replace");
        fs::create_dir_all(&dir).unwrap();
        let key_path = dir.join("key.pem");
        fs::write(&key_path, "old").unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o666)).unwrap();
        let cert = localhost_cert();
        write_pair(&dir, &cert).unwrap();
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&key_path).unwrap(), cert.key_pem);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_pair_reports_the_failing_path() {
        let dir = scratch_dir("blocked");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let err = write_pair(&file.join("sub"), &localhost_cert()).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `Mon DD HH:MM:SS YYYY GMT` (openssl's default date format) to unix seconds.
    fn parse_openssl_date(s: &str) -> i64 {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let parts: Vec<&str> = s.split_whitespace().collect();
        assert_eq!(parts.len(), 5, "unexpected date {s:?}");
        assert_eq!(parts[4], "GMT");
        let month = MONTHS.iter().position(|m| *m == parts[0]).unwrap() as u8 + 1;
        let day: u8 = parts[1].parse().unwrap();
        let hms: Vec<u8> = parts[2].split(':').map(|p| p.parse().unwrap()).collect();
        let year: i32 = parts[3].parse().unwrap();
        let date = time::Date::from_calendar_date(year, time::Month::try_from(month).unwrap(), day)
            .unwrap();
        let t = time::Time::from_hms(hms[0], hms[1], hms[2]).unwrap();
        date.with_time(t).assume_utc().unix_timestamp()
    }

    #[test]
    fn openssl_agrees_on_dates_and_sans() {
        let have_openssl = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_openssl {
            println!("skipping openssl_agrees_on_dates_and_sans: openssl not found");
            return;
        }
        let dir = scratch_dir("openssl");
        let now = SystemTime::now();
        let cert = generate(
            &hosts(&["localhost", "127.0.0.1", "::1"]),
            MAX_VALIDITY,
            now,
        )
        .unwrap();
        let (cert_path, _) = write_pair(&dir, &cert).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-dates", "-ext", "subjectAltName", "-in"])
            .arg(&cert_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let not_before = parse_openssl_date(field("notBefore="));
        let not_after = parse_openssl_date(field("notAfter="));
        let span = not_after - not_before;
        assert!(span > 0 && span as u64 <= MAX_VALIDITY.as_secs(), "{text}");
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(not_before, unix(cert.not_before), "{text}");
        assert_eq!(not_after, unix(cert.not_after), "{text}");
        assert!(text.contains("DNS:localhost"), "{text}");
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("IP Address:0:0:0:0:0:0:0:1"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
