//! `corecast cert`: writes a certificate/key pair a browser accepts for
//! `serverCertificateHashes` and prints the hash of exactly that certificate.

use std::process::Command;

use base64::Engine as _;

fn run_cert(args: &[&str]) -> std::process::Output {
    Command::new(corecast_tests::server_binary())
        .arg("cert")
        .args(args)
        .output()
        .expect("run corecast cert")
}

/// SHA-256 of the DER inside a PEM certificate, computed with `openssl` when present.
fn openssl_sha256(pem: &std::path::Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(
        text.split('=')
            .nth(1)?
            .trim()
            .replace(':', "")
            .to_lowercase(),
    )
}

#[test]
fn cert_writes_a_pair_and_prints_the_hash_of_that_certificate() {
    let dir = std::env::temp_dir().join(format!("corecast-cert-cli-{}", std::process::id()));
    let out = run_cert(&[
        "--out",
        dir.to_str().unwrap(),
        "--days",
        "7",
        "--host",
        "localhost",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha256: "))
        .expect("a sha256 line")
        .to_string();
    assert_eq!(hex.len(), 64);
    let b64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha256 (base64): "))
        .expect("a base64 line");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let from_b64: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(from_b64, hex);
    let cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    if let Some(sha) = openssl_sha256(&dir.join("cert.pem")) {
        assert_eq!(sha, hex, "printed hash is not the certificate's");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_refuses_validity_browsers_would_reject() {
    let dir = std::env::temp_dir().join(format!("corecast-cert-cli-bad-{}", std::process::id()));
    let out = run_cert(&["--out", dir.to_str().unwrap(), "--days", "15"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--days must be 1..=14"), "{err}");
    let out = run_cert(&["--days", "3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out <DIR>"));
}
