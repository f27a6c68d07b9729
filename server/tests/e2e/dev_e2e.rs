//! `signet serve --dev` end to end: the real binary, CSRs made by OpenSSL,
//! chains checked by `openssl verify`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;

const AUDIT: &str = "\"target\":\"signet::audit\"";
const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn start_dev(data: &Path) -> Signet {
    Signet::dev(&bin(), data).expect("signet starts")
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let resp = client
        .post(format!("{url}/v1/sign"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn write_chain(dir: &Path, resp: &Value) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let chain = dir.join("chain.pem");
    std::fs::write(&cert, resp["certificate"].as_str().unwrap()).unwrap();
    let inter: String = resp["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    std::fs::write(&chain, inter).unwrap();
    (cert, chain)
}

#[tokio::test]
async fn dev_server_signs_an_openssl_csr_that_openssl_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = start_dev(&data);
    let root = data.join("root.pem");
    let client = signet_tests::http::client(&root);

    let csr = openssl::csr(
        tmp.path(),
        "demo",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    );
    let (status, resp) = post(
        &client,
        &signet.url(),
        &json!({ "csr": std::fs::read_to_string(&csr).unwrap() }),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let (cert, chain) = write_chain(tmp.path(), &resp);
    openssl::verify(&root, Some(&chain), &cert, None).expect("openssl verify");
    openssl::verify(&root, Some(&chain), &cert, Some("sslserver")).expect("serverAuth");
    openssl::verify(&root, Some(&chain), &cert, Some("sslclient")).expect("clientAuth");

    let text = openssl::text(&cert);
    assert!(text.contains(&format!("URI:{DEMO}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    assert!(!text.contains("DNS:"), "{text}");

    // Lifetime: the default 24h (plus one minute of back-dating), within the 7d maximum.
    let not_after = humantime::parse_rfc3339(resp["not_after"].as_str().unwrap()).unwrap();
    let not_before = humantime::parse_rfc3339(resp["not_before"].as_str().unwrap()).unwrap();
    let lifetime = not_after.duration_since(not_before).unwrap();
    assert_eq!(lifetime, Duration::from_secs(86_400 + 60));
    assert!(not_before <= SystemTime::now());
    assert_eq!(resp["trust_bundle"].as_array().unwrap().len(), 1);
    assert_eq!(
        resp["trust_bundle"][0].as_str().unwrap(),
        std::fs::read_to_string(&root).unwrap()
    );
    let serial = openssl::field(&cert, "serial");
    assert_eq!(
        serial.trim_start_matches("serial=").to_lowercase(),
        resp["serial_number"].as_str().unwrap()
    );

    // Every supported key type, and the other profiles.
    for (i, key) in [Key::EcP384, Key::Rsa(2048), Key::Ed25519]
        .into_iter()
        .enumerate()
    {
        let csr = openssl::csr(
            tmp.path(),
            &format!("k{i}"),
            key,
            Some(&format!("URI:{DEMO}")),
            &[],
        );
        let (status, resp) = post(
            &client,
            &signet.url(),
            &json!({ "csr": std::fs::read_to_string(&csr).unwrap(), "ttl": "1h" }),
        )
        .await;
        assert_eq!(status, 200, "{key:?}: {resp}");
        let (cert, chain) = write_chain(tmp.path(), &resp);
        openssl::verify(&root, Some(&chain), &cert, None)
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }
    let csr = openssl::csr(
        tmp.path(),
        "srv",
        Key::EcP256,
        Some("DNS:api.cluster.local,IP:127.0.0.1"),
        &[],
    );
    let (status, resp) = post(
        &client,
        &signet.url(),
        &json!({ "csr": std::fs::read_to_string(&csr).unwrap(), "profile": "server" }),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let (cert, chain) = write_chain(tmp.path(), &resp);
    openssl::verify(&root, Some(&chain), &cert, Some("sslserver")).unwrap();
    assert!(
        openssl::verify(&root, Some(&chain), &cert, Some("sslclient")).is_err(),
        "server profile is not a client cert"
    );

    // The trust bundle endpoint serves the root.
    let bundle = client
        .get(format!("{}/v1/trust-bundle", signet.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(bundle, std::fs::read_to_string(&root).unwrap());
    let ready = client
        .get(format!("{}/readyz", signet.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (ready.status().as_u16(), ready.version()),
        (200, reqwest::Version::HTTP_2)
    );
    // HTTP/1.1 works too.
    let h1 = signet_tests::http::client_http1(&root);
    let csr = openssl::csr(
        tmp.path(),
        "h1",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    );
    let body = json!({ "csr": std::fs::read_to_string(&csr).unwrap() });
    let r = h1
        .post(format!("{}/v1/sign", signet.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
    assert_eq!(
        client
            .get(format!("{}/healthz", signet.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = client
        .get(format!("{}/metrics", signet.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"signet_requests_total{frontend="rest",route="default",authority="dev",outcome="issued"} 6"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("signet_ca_expiry_timestamp_seconds{"),
        "{metrics}"
    );

    // One audit line per issuance, with no key material.
    let audits = signet.logs_containing(AUDIT, 8);
    assert_eq!(
        audits.len(),
        8,
        "six certificates plus the REST and gRPC serving certificates"
    );
    let last_serial = resp["serial_number"].as_str().unwrap();
    assert!(
        audits
            .iter()
            .any(|l| l.contains(last_serial) && l.contains("api.cluster.local")),
        "{audits:?}"
    );
    assert_eq!(audits.iter().filter(|l| l.contains(DEMO)).count(), 5);
    assert!(!signet.logs().iter().any(|l| l.contains("PRIVATE KEY")));
}

/// Posts `body` with `content_type`; returns (status, code, reason).
async fn refusal(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String, String) {
    let r = client
        .post(format!("{url}/v1/sign"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("JSON error body");
    let field = |k: &str| v["error"][k].as_str().unwrap_or_default().to_owned();
    (status, field("code"), field("reason"))
}

#[tokio::test]
async fn dev_server_refuses_bad_requests_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = start_dev(&data);
    let client = signet_tests::http::client(&data.join("root.pem"));
    let url = signet.url();
    let csr = |name: &str, key: Key, san: &str, extra: &[&str]| {
        std::fs::read_to_string(openssl::csr(tmp.path(), name, key, Some(san), extra)).unwrap()
    };
    let good = csr("good", Key::EcP256, &format!("URI:{DEMO}"), &[]);

    // A forged signature: flip a bit inside the signature of a real CSR.
    let mut der = base64_decode(
        &good
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    );
    let n = der.len();
    der[n - 5] ^= 0x01;
    let forged = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64_encode(&der)
    );

    let json_cases: Vec<(Value, u16, &str, &str)> = vec![
        // SANs outside policy: another trust domain, a DNS name no grant covers.
        (
            json!({ "csr": csr("other", Key::EcP256, "URI:spiffe://example.org/ns/default/sa/demo", &[]) }),
            403,
            "policy_denied",
            "wrong_trust_domain",
        ),
        (
            json!({ "csr": csr("dns", Key::EcP256, "DNS:www.example.com", &[]), "profile": "server" }),
            403,
            "policy_denied",
            "san_not_allowed",
        ),
        (
            json!({ "csr": forged }),
            400,
            "invalid_csr",
            "bad_signature",
        ),
        // A CSR asking for CA:TRUE never yields a CA certificate.
        (
            json!({ "csr": csr("ca", Key::EcP256, &format!("URI:{DEMO}"), &["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign"]) }),
            403,
            "policy_denied",
            "ca_requested",
        ),
        (
            json!({ "csr": csr("weak", Key::Rsa(1024), &format!("URI:{DEMO}"), &[]) }),
            400,
            "invalid_csr",
            "weak_key",
        ),
        (
            json!({ "csr": good, "ttl": "100000h" }),
            403,
            "policy_denied",
            "ttl_too_long",
        ),
        (
            json!({ "csr": good, "ttl": "-5s" }),
            400,
            "invalid_request",
            "invalid_ttl",
        ),
        (
            json!({ "csr": good, "profile": "root" }),
            400,
            "invalid_request",
            "invalid_profile",
        ),
        (
            json!({ "csr": good, "is_ca": true }),
            400,
            "invalid_request",
            "malformed_json",
        ),
    ];
    for (body, status, code, reason) in json_cases {
        let got = refusal(
            &client,
            &url,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(got, (status, code.to_owned(), reason.to_owned()), "{body}");
    }
    let raw_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            b"\x00\xffgarbage".to_vec(),
            400,
            "malformed_json",
        ),
        ("text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
        (
            "application/json",
            vec![b'a'; 200_000],
            413,
            "body_too_large",
        ),
    ];
    for (content_type, body, status, reason) in raw_cases {
        let got = refusal(&client, &url, content_type, body).await;
        assert_eq!((got.0, got.2.as_str()), (status, reason), "{content_type}");
    }

    // Still serving, and nothing was issued for any of the above.
    let (status, _) = post(&client, &url, &json!({ "csr": good })).await;
    assert_eq!(status, 200);
    let audits = signet.logs_containing(AUDIT, 3).len();
    assert_eq!(
        audits, 3,
        "only the two serving certificates and the last request were issued"
    );
}

#[tokio::test]
async fn dev_pki_is_reused_across_restarts_and_sigterm_is_graceful() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = start_dev(&data);
    let root = std::fs::read(data.join("root.pem")).unwrap();
    let inter = std::fs::read(data.join("intermediate.pem")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in ["root-key.pem", "intermediate-key.pem"] {
            let mode = std::fs::metadata(data.join(key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
    }
    assert!(first.terminate(), "exits 0 on SIGTERM");
    let second = start_dev(&data);
    assert_eq!(
        std::fs::read(data.join("root.pem")).unwrap(),
        root,
        "root reused"
    );
    assert_eq!(
        std::fs::read(data.join("intermediate.pem")).unwrap(),
        inter,
        "intermediate reused"
    );
    assert!(second.logs().iter().any(|l| l.contains("DEVELOPMENT MODE")));

    // The bundled client: `signet sign --out`.
    let csr = openssl::csr(
        tmp.path(),
        "cli",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    );
    let out = tmp.path().join("out");
    let status = std::process::Command::new(bin())
        .args(["sign", "--url", &second.url(), "--ca-file"])
        .arg(data.join("root.pem"))
        .arg("--csr")
        .arg(&csr)
        .args(["--ttl", "2h", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    signet_tests::secrets::assert_clean("signet sign", &String::from_utf8_lossy(&status.stderr));
    openssl::verify(
        &data.join("root.pem"),
        Some(&out.join("ca-chain.pem")),
        &out.join("cert.pem"),
        None,
    )
    .unwrap();
    // A refused request exits non-zero with the code.
    let bad = openssl::csr(
        tmp.path(),
        "bad",
        Key::EcP256,
        Some("URI:spiffe://evil.org/x"),
        &[],
    );
    let status = std::process::Command::new(bin())
        .args(["sign", "--url", &second.url(), "--ca-file"])
        .arg(data.join("root.pem"))
        .arg("--csr")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("policy_denied"));
    signet_tests::secrets::assert_clean("signet sign", &String::from_utf8_lossy(&status.stderr));

    // Closing its standard input stops a `--exit-with-stdin` server cleanly.
    assert!(second.close_stdin(), "exits 0 when stdin closes");
}

fn base64_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn the_spiffe_bundle_endpoint_serves_the_root_as_an_x509_svid_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = start_dev(&data);
    let client = signet_tests::http::client(&data.join("root.pem"));
    let get = async |query: &str| {
        let resp = client
            .get(format!("{}/v1/spiffe-bundle{query}", signet.url()))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };
    let root_der = {
        let pem = std::fs::read_to_string(data.join("root.pem")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    for query in ["", "?trust_domain=cluster.local"] {
        let (status, bundle) = get(query).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["spiffe_refresh_hint"], 300);
        assert!(bundle["spiffe_sequence"].as_u64().unwrap() > 0);
        let keys = bundle["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{bundle}");
        let key = &keys[0];
        assert_eq!(key["use"], "x509-svid");
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        let x5c = key["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        let der = base64::engine::general_purpose::STANDARD
            .decode(x5c[0].as_str().unwrap())
            .unwrap();
        assert_eq!(
            der, root_der,
            "x5c holds the root served at /v1/trust-bundle"
        );
    }
    let (status, err) = get("?trust_domain=example.org").await;
    assert_eq!(
        (status, err["error"]["reason"].as_str()),
        (404, Some("not_found")),
        "{err}"
    );
    let (status, err) = get("?bogus=1").await;
    assert_eq!(
        (status, err["error"]["reason"].as_str()),
        (400, Some("invalid_query")),
        "{err}"
    );
}

/// `openssl <args>` in `dir`: (success, stdout + stderr).
fn openssl_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_revoked_serial_is_in_the_crl_openssl_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = start_dev(&data);
    let root = data.join("root.pem");
    let client = signet_tests::http::client(&root);
    let d = tmp.path();
    let csr = openssl::csr(d, "victim", Key::EcP256, Some(&format!("URI:{DEMO}")), &[]);
    let (status, resp) = post(
        &client,
        &signet.url(),
        &json!({ "csr": std::fs::read_to_string(&csr).unwrap() }),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let (cert, chain) = write_chain(d, &resp);
    let serial = resp["serial_number"].as_str().unwrap().to_owned();
    let fetch_crl = async || {
        let r = client
            .get(format!("{}/v1/crl/dev?format=pem", signet.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        std::fs::write(d.join("crl.pem"), r.text().await.unwrap()).unwrap();
    };
    // The issuing CA is the dev intermediate: OpenSSL checks the CRL's
    // signature against it.
    std::fs::write(
        d.join("issuers.pem"),
        format!(
            "{}{}",
            std::fs::read_to_string(data.join("intermediate.pem")).unwrap(),
            std::fs::read_to_string(&root).unwrap()
        ),
    )
    .unwrap();
    fetch_crl().await;
    let (ok, said) = openssl_in(
        d,
        &["crl", "-in", "crl.pem", "-CAfile", "issuers.pem", "-noout"],
    );
    assert!(ok && said.contains("verify OK"), "{said}");
    let verify_with_crl = || {
        openssl_in(
            d,
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                "crl.pem",
                "-CAfile",
                "issuers.pem",
                "-untrusted",
                chain.to_str().unwrap(),
                cert.to_str().unwrap(),
            ],
        )
    };
    let (ok, said) = verify_with_crl();
    assert!(ok, "not revoked yet: {said}");

    // `signet revoke` records it; a second time and a bad serial change nothing.
    let config = d.join("revoke.yaml");
    std::fs::write(
        &config,
        format!(
            "trust_domain: cluster.local\nbackends:\n  dev: {{ type: local, cert_file: {i}, key_file: {k}, chain_file: {r} }}\nauthorities:\n  dev: {{ backend: dev, revocation_file: {f} }}\n",
            i = data.join("intermediate.pem").display(),
            k = data.join("intermediate-key.pem").display(),
            r = root.display(),
            f = data.join("revoked.yaml").display(),
        ),
    )
    .unwrap();
    let revoke = |serial: &str| {
        std::process::Command::new(bin())
            .args(["revoke", "--config", config.to_str().unwrap()])
            .args([
                "--authority",
                "dev",
                "--serial",
                serial,
                "--reason",
                "key-compromise",
            ])
            .output()
            .unwrap()
    };
    let out = revoke(&serial);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = std::fs::read_to_string(data.join("revoked.yaml")).unwrap();
    for (bad, why) in [
        (serial.as_str(), "already revoked"),
        ("not-hex", "not a hexadecimal"),
    ] {
        let out = revoke(bad);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
        assert_eq!(
            std::fs::read_to_string(data.join("revoked.yaml")).unwrap(),
            recorded,
            "a refused revocation writes nothing"
        );
    }

    fetch_crl().await;
    let (ok, said) = openssl_in(
        d,
        &[
            "crl",
            "-in",
            "crl.pem",
            "-CAfile",
            "issuers.pem",
            "-noout",
            "-text",
        ],
    );
    assert!(ok && said.contains("verify OK"), "{said}");
    assert!(
        said.to_ascii_lowercase()
            .replace(':', "")
            .contains(&serial.trim_start_matches('0').to_ascii_lowercase()),
        "{serial} listed: {said}"
    );
    assert!(said.contains("Key Compromise"), "{said}");
    let (ok, said) = verify_with_crl();
    assert!(!ok && said.contains("certificate revoked"), "{said}");

    // Another authority's CRL, and a format that does not exist.
    for (path, want) in [("/v1/crl/other", 404), ("/v1/crl/dev?format=xml", 400)] {
        let r = client
            .get(format!("{}{path}", signet.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
}
