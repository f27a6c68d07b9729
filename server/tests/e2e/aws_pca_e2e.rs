//! AWS Private CA end to end, for each layout a user can have: moto's server,
//! a PCA created and activated through the AWS API (a ROOT used directly, a
//! SUBORDINATE under an external root, a SUBORDINATE under another PCA), a
//! config `backends.p: {type: aws_pca, region, certificate_authority_arn,
//! endpoint_url}` with a direct authority, `signet check` reporting the
//! layout, and `POST /v1/sign` returning a leaf with the requested SPIFFE ID
//! whose chain OpenSSL verifies to the right root. moto reports every CA as
//! SHORT_LIVED_CERTIFICATE (it does not model usage modes), so a recording
//! proxy says what AWS would: GENERAL_PURPOSE, or SHORT_LIVED_CERTIFICATE for
//! the refusal test.

use std::path::{Path, PathBuf};

use serde_json::json;
use signet_tests::json_proxy::JsonProxy;
use signet_tests::moto::{Moto, Pca, REGION};
use signet_tests::openssl;
use signet_tests::process::Signet;

const ENV: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
];

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Root,
    UnderExternalRoot,
    UnderPca,
}

/// A serving certificate from a file: moto ignores requested lifetimes, so
/// it cannot issue a short-lived serving certificate signet would accept.
fn serving(d: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (d.join("serving.pem"), d.join("serving.key"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-days", "2"])
        .args([
            "-subj",
            "/CN=signet e2e",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// moto always issues for 365 days; signet refuses a certificate that
/// outlives its decision, so the authority allows a little more.
fn config(d: &Path, arn: &str, endpoint: &str, max_ttl: &str) -> PathBuf {
    let (cert, key) = serving(d);
    let config = format!(
        r#"trust_domain: cluster.local
backends:
  p:
    type: aws_pca
    region: {REGION}
    certificate_authority_arn: {arn}
    endpoint_url: {endpoint}
authorities:
  mesh:
    backend: p
    policy: {{ default_ttl: {max_ttl}, max_ttl: {max_ttl} }}
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: mesh
    tls: {{ cert_file: {cert}, key_file: {key} }}
    auth: {{ loopback_unauthenticated: true }}
    principals: [{{ name: "*", allowed_sans: ["spiffe://cluster.local/**"] }}]
"#,
        cert = cert.display(),
        key = key.display(),
    );
    let path = d.join("signet.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

fn check(d: &Path) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["check", "--config", "signet.yaml"])
        .current_dir(d)
        .envs(ENV)
        .output()
        .unwrap()
}

async fn layout_serves(shape: Shape) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (moto, pca, parent) = tokio::task::spawn_blocking(move || {
        let moto = Moto::start();
        let (pca, parent): (Pca, Option<Pca>) = match shape {
            Shape::Root => (moto.root_pca(&dir, "org root PCA", "EC_prime256v1"), None),
            Shape::UnderExternalRoot => (moto.subordinate_pca(&dir, "signet e2e PCA"), None),
            Shape::UnderPca => {
                let root = moto.root_pca(&dir, "org root PCA", "RSA_2048");
                (moto.subordinate_of(&root, &dir, "mesh sub PCA"), Some(root))
            }
        };
        (moto, pca, parent)
    })
    .await
    .unwrap();
    let proxy = JsonProxy::start(&moto.endpoint()).await;
    proxy.patch(
        "ACMPrivateCA.DescribeCertificateAuthority",
        "/CertificateAuthority/UsageMode",
        json!("GENERAL_PURPOSE"),
    );
    let d = tmp.path();
    config(d, &pca.arn, &proxy.url(), "8761h");
    let out = check(d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shape:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (position, ty) = match shape {
        Shape::Root => ("layout: root CA used directly", "type: ROOT"),
        Shape::UnderExternalRoot | Shape::UnderPca => (
            "layout: subordinate CA, 1 certificate(s) to the anchor",
            "type: SUBORDINATE",
        ),
    };
    assert!(stdout.contains(position), "{shape:?}:\n{stdout}");
    assert!(stdout.contains(ty), "{shape:?}:\n{stdout}");
    assert!(
        stdout.contains("usage mode: GENERAL_PURPOSE"),
        "{shape:?}:\n{stdout}"
    );

    let signet =
        Signet::start_with_env(&bin(), &["serve", "--config", "signet.yaml"], d, &ENV).unwrap();
    let csr = openssl::csr(
        d,
        "w",
        openssl::Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/shop/sa/cart"),
        &[],
    );
    let serving = d.join("serving.pem");
    let r = signet_tests::http::client(&serving)
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": std::fs::read_to_string(&csr).unwrap() }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{shape:?}: {body}");
    let (leaf, chain) = (d.join("leaf.pem"), d.join("chain.pem"));
    std::fs::write(&leaf, body["certificate"].as_str().unwrap()).unwrap();
    let inter: String = body["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    std::fs::write(&chain, &inter).unwrap();
    // The trust bundle is the right root, and OpenSSL agrees.
    let root = std::fs::read_to_string(&pca.root_pem).unwrap();
    assert_eq!(
        body["trust_bundle"][0].as_str().unwrap().trim(),
        root.trim(),
        "{shape:?}"
    );
    assert_eq!(body["trust_bundle"].as_array().unwrap().len(), 1);
    let untrusted = (!inter.is_empty()).then_some(chain.as_path());
    openssl::verify(&pca.root_pem, untrusted, &leaf, None)
        .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
    assert!(openssl::text(&leaf).contains("URI:spiffe://cluster.local/ns/shop/sa/cart"));
    match shape {
        // A root CA's leaves need no intermediate.
        Shape::Root => assert!(inter.is_empty(), "{inter}"),
        _ => assert_eq!(
            inter.trim(),
            std::fs::read_to_string(&pca.ca_pem).unwrap().trim()
        ),
    }
    drop(signet);
    drop(parent);
    drop(moto);
    println!(
        "proved: AWS Private CA {shape:?}: check reports the layout, REST chains verify with OpenSSL to the right root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_private_ca_used_directly_serves_rest() {
    layout_serves(Shape::Root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_signs_through_aws_private_ca() {
    layout_serves(Shape::UnderExternalRoot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_under_another_private_ca_serves_rest() {
    layout_serves(Shape::UnderPca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_ca_is_refused_for_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (moto, pca) = tokio::task::spawn_blocking(move || {
        let moto = Moto::start();
        let pca = moto.root_pca(&dir, "short lived", "EC_prime256v1");
        (moto, pca)
    })
    .await
    .unwrap();
    let proxy = JsonProxy::start(&moto.endpoint()).await;
    proxy.patch(
        "ACMPrivateCA.DescribeCertificateAuthority",
        "/CertificateAuthority/UsageMode",
        json!("SHORT_LIVED_CERTIFICATE"),
    );
    let d = tmp.path();
    // Direct mode asking for more than seven days: refused, saying what to change.
    config(d, &pca.arn, &proxy.url(), "30d");
    let out = check(d);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("policy.max_ttl 30d exceeds the 7d this CA allows"),
        "{text}"
    );
    let start = Signet::start_with_env(&bin(), &["serve", "--config", "signet.yaml"], d, &ENV);
    let err = start.expect_err("signet must refuse to start");
    assert!(err.contains("exceeds the 7d"), "{err}");
    // Delegated: a short-lived CA cannot sign the intermediate at all.
    let text = std::fs::read_to_string(d.join("signet.yaml"))
        .unwrap()
        .replace(
            "    backend: p\n",
            "    backend: p\n    mode: delegated\n    intermediate: { ttl: 5d }\n",
        )
        .replace(
            "default_ttl: 30d, max_ttl: 30d",
            "default_ttl: 1h, max_ttl: 1h",
        );
    std::fs::write(d.join("signet.yaml"), text).unwrap();
    let out = check(d);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("SHORT_LIVED_CERTIFICATE CA must be the last CA")
            && text.contains("mode: direct"),
        "{text}"
    );
    drop(moto);
    println!(
        "proved: a SHORT_LIVED_CERTIFICATE PCA is refused at start-up for delegated mode and for max_ttl over 7 days, with what to change"
    );
}
