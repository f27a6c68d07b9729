//! Issue 19, deliverable 3: a delegated authority's intermediate key made
//! inside the store (SoftHSM2, moto's KMS, OpenBao's Transit), its CSR
//! signed there, certified by the upstream backend; every leaf signed
//! there. A re-key makes a new key and destroys the old one; a key a
//! stopped process left behind is swept.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use signet_tests::moto::Moto;
use signet_tests::openbao::{OpenBao, write};
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;
use signet_tests::softhsm::Token;

const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";
/// A key of authority `mesh` made in 2001: left by a process long gone.
const LEFT_BEHIND: &str = "signet-mesh-1000000000-0badc0de";
/// Someone else's key in the same store, which signet must not touch.
const BYSTANDER: &str = "other-team";

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key store as the test sees it, with its own tools.
struct Store<'a> {
    /// `authorities.mesh.intermediate.key`.
    yaml: String,
    /// The names of the keys in the store.
    keys: Names<'a>,
    /// The public key named so (the EC point, or PKCS#1 RSAPublicKey).
    public_key: PublicKeyOf<'a>,
}

type Names<'a> = Box<dyn Fn() -> Vec<String> + 'a>;
type PublicKeyOf<'a> = Box<dyn Fn(&str) -> Vec<u8> + 'a>;

/// The public key a certificate (PEM) certifies.
fn certified_key(cert_pem: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer as _;
    let der = signet_core::pem::certificates(cert_pem.as_bytes())
        .unwrap()
        .remove(0);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

/// The public key a DER SubjectPublicKeyInfo holds.
fn spki_key(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer as _;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).unwrap();
    spki.subject_public_key.data.to_vec()
}

async fn sign(signet: &Signet, dir: &Path, csr: &str) -> Value {
    let r = signet_tests::http::client(&dir.join("root.pem"))
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    body
}

/// The leaf verifies with openssl under the organisation root through the
/// intermediate signet holds; returns the intermediate (PEM).
fn verified_intermediate(dir: &Path, body: &Value, n: usize) -> String {
    let chain = body["ca_chain"].as_array().unwrap();
    let intermediate = chain[0].as_str().unwrap().to_owned();
    let leaf = write(
        dir,
        &format!("leaf-{n}.pem"),
        body["certificate"].as_str().unwrap(),
    );
    let untrusted = write(dir, &format!("chain-{n}.pem"), &intermediate);
    openssl::verify(
        &dir.join("root.pem"),
        Some(&untrusted),
        &leaf,
        Some("sslclient"),
    )
    .expect("the chain verifies");
    intermediate
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// signet serves a delegated authority over a local root whose
/// intermediates' keys `store` makes; checks that each intermediate
/// certifies a key in the store, that a re-key replaces the key and
/// destroys the old one, and that [`LEFT_BEHIND`] is swept.
async fn intermediates_keys_live_in(dir: &Path, store: Store<'_>) {
    let all = &store.keys;
    let signets = || -> Vec<String> {
        all()
            .into_iter()
            .filter(|n| n.starts_with("signet-mesh-"))
            .collect()
    };
    openssl::root_ca(dir);
    let cfg = write(
        dir,
        "signet.yaml",
        &format!(
            r#"trust_domain: cluster.local
trust: {{ state_file: {d}/rotation.yaml, poll: 1s }}
backends:
  root: {{ type: local, cert_file: {d}/root.pem, key_file: {d}/root.key }}
authorities:
  mesh:
    backend: root
    mode: delegated
    intermediate:
      key: {key}
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: mesh
    auth: {{ loopback_unauthenticated: true }}
    principals:
      - name: "*"
        allowed_sans: ["spiffe://cluster.local/**"]
"#,
            d = dir.display(),
            key = store.yaml,
        ),
    );
    assert!(signets().contains(&LEFT_BEHIND.to_owned()));
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let signet = Signet::start_in(&bin(), &["serve", "--config", cfg.to_str().unwrap()], &cwd)
        .expect("signet starts");
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "workload",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    ))
    .unwrap();

    let first = verified_intermediate(dir, &sign(&signet, dir, &csr).await, 1);
    assert!(openssl::field(&write(dir, "first.pem", &first), "issuer").contains("org root"));
    // The intermediate certifies a key the store made (and the one left
    // behind is gone).
    let mut held = Vec::new();
    wait_for("the key left behind is swept", async || {
        held = signets();
        held.len() == 1
    })
    .await;
    assert_ne!(held[0], LEFT_BEHIND);
    assert!(held[0].starts_with("signet-mesh-"), "{held:?}");
    assert_eq!((store.public_key)(&held[0]), certified_key(&first));

    // An emergency re-key: a new key in the store, the old one destroyed.
    run(Command::new(bin())
        .args([
            "revoke",
            "--authority",
            "mesh",
            "--intermediate",
            "--rekey",
            "--config",
        ])
        .arg(&cfg));
    let mut second = String::new();
    wait_for("a new intermediate after the re-key", async || {
        second = sign(&signet, dir, &csr).await["ca_chain"][0]
            .as_str()
            .unwrap()
            .to_owned();
        second != first
    })
    .await;
    let second = verified_intermediate(dir, &sign(&signet, dir, &csr).await, 2);
    let mut now = Vec::new();
    wait_for("the withdrawn key destroyed", async || {
        now = signets();
        now.len() == 1 && now != held
    })
    .await;
    assert_eq!((store.public_key)(&now[0]), certified_key(&second));
    assert_ne!(certified_key(&first), certified_key(&second));

    let written: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
    assert!(written.is_empty(), "signet wrote {written:?}");
    assert_eq!(
        signet
            .logs_containing("retired the key of a replaced intermediate", 1)
            .len(),
        1
    );
    // A graceful stop leaves no key behind (waited for off the runtime,
    // which must keep serving the client side of the drained connections).
    let stopped = tokio::task::spawn_blocking(move || signet.terminate())
        .await
        .unwrap();
    assert!(stopped, "signet stops cleanly");
    assert_eq!(signets(), Vec::<String>::new());
    assert!(all().contains(&BYSTANDER.to_owned()), "{:?}", all());
}

#[tokio::test]
async fn softhsm2_makes_the_intermediates_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Token::new();
    token.generate("EC:prime256v1", LEFT_BEHIND, "0b");
    token.generate("EC:prime256v1", BYSTANDER, "0c");
    let store = Store {
        yaml: token.store_yaml("ecdsa-p384"),
        keys: Box::new(|| {
            let keys = token.private_keys();
            for (label, access) in &keys {
                // Made by signet: sensitive and never extractable.
                if label.starts_with("signet-mesh-") && label != LEFT_BEHIND {
                    assert!(
                        access.contains("sensitive") && access.contains("never extractable"),
                        "{label}: {access}"
                    );
                }
            }
            keys.into_iter().map(|(label, _)| label).collect()
        }),
        public_key: Box::new(|label| token.ec_point(label)),
    };
    intermediates_keys_live_in(tmp.path(), store).await;
}

#[tokio::test]
async fn aws_kms_makes_the_intermediates_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let kms = |op: &str, body: Value| moto.call_service("TrentService", "kms", op, body);
    let stale = moto.kms_key("ECC_NIST_P256");
    kms(
        "CreateAlias",
        json!({ "AliasName": format!("alias/{LEFT_BEHIND}"), "TargetKeyId": stale }),
    );
    let other = moto.kms_key("ECC_NIST_P256");
    kms(
        "CreateAlias",
        json!({ "AliasName": format!("alias/{BYSTANDER}"), "TargetKeyId": other }),
    );
    let id = write(tmp.path(), "aws-id", "testing");
    let secret = write(tmp.path(), "aws-secret", "testing");
    let store = Store {
        yaml: format!(
            "{{ type: aws_kms, region: us-east-1, endpoint_url: {url}, access_key_id_file: {id}, secret_access_key_file: {secret}, algorithm: rsa-2048 }}",
            url = moto.endpoint(),
            id = id.display(),
            secret = secret.display(),
        ),
        keys: Box::new(|| {
            kms("ListAliases", json!({}))["Aliases"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a["AliasName"].as_str()?.strip_prefix("alias/"))
                .map(str::to_owned)
                .collect()
        }),
        public_key: Box::new(|name| {
            let out = kms("GetPublicKey", json!({ "KeyId": format!("alias/{name}") }));
            use base64::Engine as _;
            spki_key(
                &base64::engine::general_purpose::STANDARD
                    .decode(out["PublicKey"].as_str().unwrap())
                    .unwrap(),
            )
        }),
    };
    intermediates_keys_live_in(tmp.path(), store).await;
    // Retired keys are scheduled for deletion, not left usable.
    let untouched = kms("DescribeKey", json!({ "KeyId": other }));
    assert_eq!(
        untouched["KeyMetadata"]["KeyState"], "Enabled",
        "{untouched}"
    );
    let state = kms("DescribeKey", json!({ "KeyId": stale }));
    assert_eq!(
        state["KeyMetadata"]["KeyState"], "PendingDeletion",
        "{state}"
    );
}

#[tokio::test]
async fn openbao_transit_makes_the_intermediates_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let bao = OpenBao::dev();
    bao.api(
        "POST",
        "sys/mounts/transit",
        Some(json!({ "type": "transit" })),
    );
    bao.api(
        "POST",
        &format!("transit/keys/{LEFT_BEHIND}"),
        Some(json!({ "type": "ecdsa-p256" })),
    );
    bao.api(
        "POST",
        &format!("transit/keys/{BYSTANDER}"),
        Some(json!({ "type": "ecdsa-p256" })),
    );
    // The policy docs/keys.md gives: signet's own keys only.
    bao.write_policy(
        "signet-intermediates",
        "path \"transit/keys\" { capabilities = [\"list\"] }\n\
         path \"transit/keys/signet-mesh-*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\"] }\n\
         path \"transit/sign/signet-mesh-*\" { capabilities = [\"update\"] }\n",
    );
    let token = bao.create_token(&["signet-intermediates"], "24h", true, None);
    let token_file = write(tmp.path(), "token", &token);
    let store = Store {
        yaml: format!(
            "{{ type: vault_transit, address: {addr}, auth: {{ token: {{ token_file: {file} }} }}, algorithm: ecdsa-p256 }}",
            addr = bao.addr(),
            file = token_file.display()
        ),
        keys: Box::new(|| {
            bao.api("LIST", "transit/keys", None)["data"]["keys"]
                .as_array()
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        }),
        public_key: Box::new(|name| {
            let key = bao.api("GET", &format!("transit/keys/{name}"), None);
            let pem = key["data"]["keys"]["1"]["public_key"]
                .as_str()
                .unwrap()
                .to_owned();
            spki_key(
                &signet_core::pem::parse_lenient(pem.as_bytes())
                    .unwrap()
                    .remove(0)
                    .der,
            )
        }),
    };
    intermediates_keys_live_in(tmp.path(), store).await;
}
