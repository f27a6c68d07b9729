//! `signet serve --config`: bearer tokens, client certificates, per-principal
//! policy, and `signet check`.

use signet_core::testing::Ready as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use signet_core::VerifiedCsr;
use signet_core::caller::Caller;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig, Profile};
use signet_core::spiffe::TrustDomain;
use signet_core::testing;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;

const TOKEN: &str = "s3cret-token-for-ci";
const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const DAY: Duration = Duration::from_secs(86_400);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn sha256_hex(s: &str) -> String {
    signet_core::crypto::sha256(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A root and intermediate for signing, a separate CA for client
/// certificates, a tokens file and a config; returns the config path.
fn setup(dir: &Path, listen: &str) -> PathBuf {
    let now = SystemTime::now();
    let td = TrustDomain::new("cluster.local").unwrap();
    let root = LocalCa::self_signed_root(
        "e2e root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP384).unwrap(),
        now,
        365 * DAY,
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(Some("e2e intermediate"), &[]).unwrap()).unwrap();
    let d = IssuanceDecision::intermediate(
        "e2e intermediate",
        &td,
        0,
        now,
        30 * DAY,
        Duration::from_secs(60),
        "test",
    );
    let inter = root.sign(&d, csr.public_key()).ready().unwrap();
    std::fs::write(dir.join("root.pem"), root.trust_bundle().to_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), inter.leaf_pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), key.to_pem().as_bytes()).unwrap();

    // Client certificates come from their own CA.
    let clients = LocalCa::self_signed_root(
        "clients",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        30 * DAY,
    )
    .unwrap();
    std::fs::write(dir.join("clients-ca.pem"), clients.trust_bundle().to_pem()).unwrap();
    let admin_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let admin_csr = VerifiedCsr::from_der(
        &admin_key
            .csr_der(None, &[San::Uri(ADMIN.parse().unwrap())])
            .unwrap(),
    )
    .unwrap();
    let policy = AuthorityPolicy::new(td, PolicyConfig::default()).unwrap();
    let grant = testing::grant(&["spiffe://cluster.local/**"], &[Profile::Client]);
    let req = testing::request(Profile::Client);
    let d = policy
        .decide(&Caller::internal("t"), &grant, &admin_csr, &req, now)
        .unwrap();
    let admin = clients.sign(&d, admin_csr.public_key()).ready().unwrap();
    std::fs::write(
        dir.join("admin-identity.pem"),
        format!("{}{}", admin.leaf_pem(), admin_key.to_pem().as_str()),
    )
    .unwrap();
    // ... and a client certificate from a CA signet does not trust.
    let rogue = LocalCa::self_signed_root(
        "rogue",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        30 * DAY,
    )
    .unwrap();
    let rogue_cert = rogue.sign(&d, admin_csr.public_key()).ready().unwrap();
    std::fs::write(
        dir.join("rogue-identity.pem"),
        format!("{}{}", rogue_cert.leaf_pem(), admin_key.to_pem().as_str()),
    )
    .unwrap();

    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n  - principal: ci\n    sha256: {}\n",
            sha256_hex(TOKEN)
        ),
    )
    .unwrap();
    let d = dir.display();
    let config = format!(
        r#"trust_domain: cluster.local
admin:
  listen: 127.0.0.1:0
backends:
  ca:
    type: local
    cert_file: {d}/ca.pem
    key_file: {d}/ca-key.pem
    chain_file: {d}/root.pem
authorities:
  mesh:
    backend: ca
    policy: {{ default_ttl: 1h, max_ttl: 24h }}
frontends:
  rest:
    listen: "{listen}"
    authority: mesh
    auth:
      tokens_file: {d}/tokens.yaml
      mtls: {{ client_ca_file: {d}/clients-ca.pem }}
    principals:
      - name: token:ci
        allowed_sans: ["spiffe://cluster.local/ns/ci/sa/*"]
        profiles: [workload]
      - name: "uri:{ADMIN}"
        allowed_sans: ["**.example.com"]
        profiles: [server]
"#
    );
    let path = dir.join("signet.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client.post(format!("{url}/v1/sign")).json(body);
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.expect("JSON"), headers)
}

/// The admin listener: plain-HTTP probes and metrics, and nothing else.
#[tokio::test]
async fn the_admin_listener_serves_probes_and_metrics_only() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), "127.0.0.1:0");
    let signet = Signet::start(&bin(), &["serve", "--config", config.to_str().unwrap()]).unwrap();
    let admin = format!("http://{}", signet.admin_addr.expect("admin listener"));
    let http = reqwest::Client::new();
    let get = async |path: &str| {
        let r = http.get(format!("{admin}{path}")).send().await.unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), ct, r.text().await.unwrap())
    };
    assert_eq!(get("/healthz").await.2, "ok\n");
    let (status, _, body) = get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, ct, body) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.unwrap().starts_with("application/openmetrics-text"));
    assert!(
        body.contains("signet_authority_ready{authority=\"mesh\",backend=\"ca\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("signet_ca_expiry_timestamp_seconds"),
        "{body}"
    );
    // No signing and no trust bundle over plain HTTP.
    let r = http
        .post(format!("{admin}/v1/sign"))
        .json(&json!({ "csr": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(get("/v1/trust-bundle").await.0, 404);
}

#[tokio::test]
async fn tokens_client_certificates_and_per_principal_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = setup(dir, "127.0.0.1:0");
    signet_tests::secrets::register(TOKEN);
    let signet = Signet::start(&bin(), &["serve", "--config", config.to_str().unwrap()]).unwrap();
    let url = signet.url();
    let root = dir.join("root.pem");
    let client = signet_tests::http::client(&root);
    let csr = |name: &str, san: &str| {
        std::fs::read_to_string(openssl::csr(dir, name, Key::EcP256, Some(san), &[])).unwrap()
    };
    let runner = csr("runner", "URI:spiffe://cluster.local/ns/ci/sa/runner");
    let bearer = format!("Bearer {TOKEN}");

    // Missing, wrong and malformed credentials: 401, nothing signed.
    let (status, body, headers) = post(&client, &url, None, &json!({ "csr": runner })).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (401, "unauthenticated"),
        "{body}"
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = post(
        &client,
        &url,
        Some("Bearer not-the-token"),
        &json!({ "csr": runner }),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = post(
        &client,
        &url,
        Some("Basic Y2k6cGFzcw=="),
        &json!({ "csr": runner }),
    )
    .await;
    assert_eq!(status, 401);

    // The token's principal gets what its grant allows, and nothing else.
    let (status, body, _) = post(&client, &url, Some(&bearer), &json!({ "csr": runner })).await;
    assert_eq!(status, 200, "{body}");
    std::fs::write(
        dir.join("runner.pem"),
        body["certificate"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("runner-chain.pem"),
        body["ca_chain"][0].as_str().unwrap(),
    )
    .unwrap();
    openssl::verify(
        &root,
        Some(&dir.join("runner-chain.pem")),
        &dir.join("runner.pem"),
        None,
    )
    .unwrap();
    let prod = csr("prod", "URI:spiffe://cluster.local/ns/prod/sa/db");
    let (status, body, _) = post(&client, &url, Some(&bearer), &json!({ "csr": prod })).await;
    assert_eq!(
        (status, body["error"]["reason"].as_str().unwrap()),
        (403, "san_not_allowed"),
        "{body}"
    );
    let (status, body, _) = post(
        &client,
        &url,
        Some(&bearer),
        &json!({ "csr": runner, "profile": "server" }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["reason"].as_str().unwrap()),
        (403, "profile_not_allowed"),
        "{body}"
    );
    let (status, body, _) = post(
        &client,
        &url,
        Some(&bearer),
        &json!({ "csr": runner, "ttl": "48h" }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["reason"].as_str().unwrap()),
        (403, "ttl_too_long"),
        "{body}"
    );

    // A client certificate makes its URI SAN the principal.
    let identity = std::fs::read(dir.join("admin-identity.pem")).unwrap();
    let mtls = signet_tests::http::client_with_identity(&root, &identity);
    let api = csr("api", "DNS:api.example.com");
    let (status, body, _) = post(
        &mtls,
        &url,
        None,
        &json!({ "csr": api, "profile": "server" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = post(&mtls, &url, None, &json!({ "csr": runner })).await;
    assert_eq!(
        (status, body["error"]["reason"].as_str().unwrap()),
        (403, "profile_not_allowed"),
        "{body}"
    );
    // One from an untrusted CA does not get past the handshake.
    let rogue = signet_tests::http::client_with_identity(
        &root,
        &std::fs::read(dir.join("rogue-identity.pem")).unwrap(),
    );
    assert!(
        rogue
            .post(format!("{url}/v1/sign"))
            .json(&json!({ "csr": api }))
            .send()
            .await
            .is_err()
    );

    let audits = signet.logs_containing("\"target\":\"signet::audit\"", 3);
    assert_eq!(audits.len(), 3, "serving certificate, runner, api");
    assert!(audits.iter().any(
        |l| l.contains("\"principal\":\"token:ci\"") && l.contains("\"auth\":\"bearer_token\"")
    ));
    assert!(
        audits
            .iter()
            .any(|l| l.contains(ADMIN) && l.contains("\"auth\":\"client_certificate\""))
    );
    assert!(
        !signet.logs().iter().any(|l| l.contains(TOKEN)),
        "the token never reaches the logs"
    );
}

#[test]
fn check_validates_configs_and_names_the_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), "127.0.0.1:0");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        signet_tests::secrets::assert_clean("signet check", &String::from_utf8_lossy(&out.stderr));
        signet_tests::secrets::assert_clean("signet check", &String::from_utf8_lossy(&out.stdout));
        out
    };
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend ca (local): ok, 1 root(s)"));
    let out = run(&["check", "--offline", "--config", config.to_str().unwrap()]);
    assert!(out.status.success());

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("    policy:", "    polcy:")).unwrap();
    let out = run(&["check", "--offline", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    signet_tests::secrets::assert_clean("signet serve", &err);
    assert!(
        err.contains("line 13")
            && err.contains("authorities.mesh.polcy")
            && err.contains("unknown field"),
        "{err}"
    );

    // A CA key that does not match fails the online check, not the offline one.
    std::fs::write(&config, &text).unwrap();
    std::fs::write(
        tmp.path().join("ca-key.pem"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .to_pem()
            .as_bytes(),
    )
    .unwrap();
    assert!(
        run(&["check", "--offline", "--config", config.to_str().unwrap()])
            .status
            .success()
    );
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unauthenticated_access_is_refused_off_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), "0.0.0.0:0");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "    auth:\n",
            "    server_names: [signet.example]\n    auth:\n      loopback_unauthenticated: true\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback_unauthenticated")
            && err.contains("only allowed when listen is a loopback address"),
        "{err}"
    );
}

/// `signet policy test` prints the decision the running server makes for
/// the same caller and CSR: the certificate's names, or the same refusal
/// code and reason.
#[tokio::test]
async fn policy_test_prints_the_servers_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = setup(dir, "127.0.0.1:0");
    signet_tests::secrets::register(TOKEN);
    let signet = Signet::start(&bin(), &["serve", "--config", config.to_str().unwrap()]).unwrap();
    let client = signet_tests::http::client(&dir.join("root.pem"));
    let bearer = format!("Bearer {TOKEN}");
    let cases: [(&str, &str, Option<&str>, Option<&str>); 5] = [
        (
            "ok",
            "URI:spiffe://cluster.local/ns/ci/sa/runner",
            None,
            None,
        ),
        (
            "other-ns",
            "URI:spiffe://cluster.local/ns/prod/sa/x",
            None,
            None,
        ),
        (
            "too-long",
            "URI:spiffe://cluster.local/ns/ci/sa/runner",
            None,
            Some("48h"),
        ),
        (
            "wrong-profile",
            "URI:spiffe://cluster.local/ns/ci/sa/runner",
            Some("server"),
            None,
        ),
        (
            "bad-profile",
            "URI:spiffe://cluster.local/ns/ci/sa/runner",
            Some("nonsense"),
            None,
        ),
    ];
    for (name, san, profile, ttl) in cases {
        let csr_path = openssl::csr(dir, name, Key::EcP256, Some(san), &[]);
        let mut body = json!({ "csr": std::fs::read_to_string(&csr_path).unwrap() });
        if let Some(p) = profile {
            body["profile"] = json!(p);
        }
        if let Some(t) = ttl {
            body["ttl"] = json!(t);
        }
        let (status, server, _) = post(&client, &signet.url(), Some(&bearer), &body).await;
        let mut args = vec![
            "policy",
            "test",
            "--config",
            config.to_str().unwrap(),
            "--frontend",
            "rest",
            "--principal",
            "token:ci",
            "--csr",
            csr_path.to_str().unwrap(),
        ];
        if let Some(p) = profile {
            args.extend(["--profile", p]);
        }
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let out = std::process::Command::new(bin())
            .args(&args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        if status == 200 {
            assert!(out.status.success(), "{name}: {said}");
            assert!(said.contains("decision: issue"), "{name}: {said}");
            assert!(said.contains(&format!("name: {san}")), "{name}: {said}");
        } else {
            assert!(
                !out.status.success(),
                "{name}: the server refused ({server}), the test did not: {said}"
            );
            let code = server["error"]["code"].as_str().unwrap();
            let reason = server["error"]["reason"]
                .as_str()
                .map(|r| format!("/{r}"))
                .unwrap_or_default();
            assert!(
                said.contains(&format!("refused: {code}{reason} (HTTP {status},")),
                "{name}: server {status} {server}, test: {said}"
            );
        }
    }
}
