//! Finds secrets in log output: private keys (PEM, or the base64 of their
//! DER), JWTs, Vault/OpenBao tokens, and any string a test registered as
//! secret (tokens it created). Every `signet` process the suite starts
//! ([`crate::process::Signet`]) has its stdout and stderr scanned when it
//! ends, so the whole suite's logs are checked, test by test.

use std::sync::Mutex;

static REGISTERED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Marks `secret` as something no log line may contain (for the rest of
/// this test process). Short strings are ignored: they would match by chance.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() >= 12 {
        let mut r = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        if !r.iter().any(|s| s == secret) {
            r.push(secret.to_owned());
        }
    }
}

/// Base64 prefixes of private-key DER: PKCS#8 EC P-256 and P-384, SEC1
/// EC, PKCS#8 RSA (2048/4096), PKCS#1 RSA, PKCS#8 Ed25519.
const KEY_DER_PREFIXES: &[&str] = &[
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEH",
    "MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGe",
    "MHcCAQEEI",
    "MIGkAgEBBDA",
    "AgEAMA0GCSqGSIb3DQEBAQUABIIE",
    "AgEAMA0GCSqGSIb3DQEBAQUABIIJ",
    "MIIEowIBAAKCAQEA",
    "MIIEpAIBAAKCAQEA",
    "MIIJKAIBAAKCAgEA",
    "MC4CAQAwBQYDK2VwBCIEI",
];

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A JWT: `eyJ...` header, `.`, `eyJ...` payload.
fn has_jwt(line: &str) -> bool {
    let b = line.as_bytes();
    let mut i = 0;
    while let Some(pos) = line[i..].find("eyJ") {
        let start = i + pos;
        let mut j = start;
        while j < b.len() && is_b64url(b[j]) {
            j += 1;
        }
        if j - start >= 10 && line[j..].starts_with(".eyJ") {
            return true;
        }
        i = start + 3;
    }
    false
}

/// `hvs.`/`s.`-style Vault and OpenBao service tokens.
fn has_vault_token(line: &str) -> bool {
    let b = line.as_bytes();
    for prefix in ["hvs.", "hvb.", "s."] {
        let mut i = 0;
        while let Some(pos) = line[i..].find(prefix) {
            let start = i + pos;
            let bounded = start == 0 || !b[start - 1].is_ascii_alphanumeric();
            let body = &b[start + prefix.len()..];
            let n = body
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            if bounded && n >= 24 && body[..n].iter().any(u8::is_ascii_digit) {
                return true;
            }
            i = start + prefix.len();
        }
    }
    false
}

/// What kind of secret `line` holds, if any.
pub fn find(line: &str) -> Option<&'static str> {
    if line.contains("PRIVATE KEY-----") {
        return Some("a PEM private key");
    }
    if KEY_DER_PREFIXES.iter().any(|p| line.contains(p)) {
        return Some("base64 private-key DER");
    }
    if has_jwt(line) {
        return Some("a JWT");
    }
    if has_vault_token(line) {
        return Some("a Vault token");
    }
    let registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if registered.iter().any(|s| line.contains(s.as_str())) {
        return Some("a registered secret");
    }
    None
}

/// Every offending line as "<what>: line N" (the line itself is not
/// repeated: it holds the secret).
pub fn scan<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    lines
        .into_iter()
        .enumerate()
        .filter_map(|(n, l)| find(l).map(|what| format!("{what} on log line {}", n + 1)))
        .collect()
}

/// Panics if `text` (a command's output) holds a secret.
pub fn assert_clean(what: &str, text: &str) {
    let found = scan(text.lines());
    assert!(found.is_empty(), "{what} logged secrets: {found:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_and_leaves_ordinary_lines_alone() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        for (line, what) in [
            ("-----BEGIN PRIVATE KEY-----", "a PEM private key"),
            ("-----BEGIN EC PRIVATE KEY-----", "a PEM private key"),
            (
                "key=MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg",
                "base64 private-key DER",
            ),
            (&*format!("{{\"token\":\"{jwt}\"}}"), "a JWT"),
            ("token hvs.CAESIJ2x5bK1q9Qw8e7rT0yZ4aB3", "a Vault token"),
            ("X-Vault-Token: s.4kQz8m2P1xVbN7cR5tW9yL3d", "a Vault token"),
        ] {
            assert_eq!(find(line), Some(what), "{line}");
        }
        register("my-very-secret-rest-token");
        assert_eq!(
            find("Authorization: Bearer my-very-secret-rest-token"),
            Some("a registered secret")
        );
        for fine in [
            r#"{"message":"certificate issued","serial":"4f2a","sans":"spiffe://cluster.local/ns/default/sa/demo"}"#,
            "-----BEGIN CERTIFICATE-----",
            "MIIBszCCAVmgAwIBAgIUeyJhbGciOiJFUzI1NiJ9",
            "backend vault-pki: status 403: permission denied",
            "listening on 127.0.0.1:8443; keys.json reloaded",
        ] {
            assert_eq!(find(fine), None, "{fine}");
        }
        assert_eq!(scan(["ok", jwt, "ok"]), vec!["a JWT on log line 2"]);
    }
}
