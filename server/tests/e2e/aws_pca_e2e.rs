//! AWS Private CA end to end: moto's server, a PCA created and activated
//! through the AWS API under an external root, a config
//! `backends.p: {type: aws_pca, region, certificate_authority_arn, endpoint_url}`
//! with a direct authority, and `POST /v1/sign` returning a leaf with the
//! requested SPIFFE ID whose chain OpenSSL verifies to that root.

use std::path::PathBuf;

use signet_tests::moto::{Moto, REGION};
use signet_tests::openssl;
use signet_tests::process::Signet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_signs_through_aws_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (moto, pca) = tokio::task::spawn_blocking(move || {
        let moto = Moto::start();
        let pca = moto.subordinate_pca(&dir, "signet e2e PCA");
        (moto, pca)
    })
    .await
    .unwrap();
    let d = tmp.path();
    // The REST listener's own certificate comes from a file: moto ignores
    // requested lifetimes, so it cannot issue a short-lived serving
    // certificate that signet would accept.
    let (serving, serving_key) = (d.join("serving.pem"), d.join("serving.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-days",
            "2",
            "-subj",
            "/CN=signet e2e",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&serving_key)
        .arg("-out")
        .arg(&serving)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // moto always issues for 365 days; signet refuses a certificate that
    // outlives its decision, so this authority allows a little more.
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
    policy: {{ default_ttl: 8761h, max_ttl: 8761h }}
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: mesh
    tls: {{ cert_file: {cert}, key_file: {key} }}
    auth: {{ loopback_unauthenticated: true }}
    principals: [{{ name: "*", allowed_sans: ["spiffe://cluster.local/**"] }}]
"#,
        arn = pca.arn,
        endpoint = moto.endpoint(),
        cert = serving.display(),
        key = serving_key.display(),
    );
    std::fs::write(d.join("signet.yaml"), config).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ];
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_signet"));
    let check = std::process::Command::new(&bin)
        .args(["check", "--config", "signet.yaml"])
        .current_dir(d)
        .envs(env)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let signet =
        Signet::start_with_env(&bin, &["serve", "--config", "signet.yaml"], d, &env).unwrap();

    let csr = openssl::csr(
        d,
        "w",
        openssl::Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/shop/sa/cart"),
        &[],
    );
    let r = signet_tests::http::client(&serving)
        .post(format!("{}/v1/sign", signet.url()))
        .json(&serde_json::json!({ "csr": std::fs::read_to_string(&csr).unwrap() }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (leaf, chain) = (d.join("leaf.pem"), d.join("chain.pem"));
    std::fs::write(&leaf, body["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&chain, body["ca_chain"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        body["trust_bundle"][0].as_str().unwrap(),
        std::fs::read_to_string(&pca.root_pem).unwrap()
    );
    openssl::verify(&pca.root_pem, Some(&chain), &leaf, None).unwrap();
    assert!(openssl::text(&leaf).contains("URI:spiffe://cluster.local/ns/shop/sa/cart"));
    assert_eq!(
        std::fs::read_to_string(&chain).unwrap(),
        std::fs::read_to_string(&pca.ca_pem).unwrap()
    );
    drop(signet);
    drop(moto);
}
