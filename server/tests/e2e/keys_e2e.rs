//! Issue 19's "done when": with SoftHSM2, moto's KMS and OpenBao's Transit
//! each holding the issuing key, `signet serve` signs REST and Istio
//! requests whose chains verify with openssl, and no private key reaches
//! signet's logs or its working directory. The CA certificate is made as an
//! operator would: `signet key csr` has the store sign the CSR, and an
//! organisation root made by `openssl` certifies it (`openssl x509 -req`
//! checks the CSR's signature first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::moto::Moto;
use signet_tests::openbao::{OpenBao, write};
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;
use signet_tests::softhsm::Token;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
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

/// The configuration: a local backend whose key is `key_yaml`, REST for
/// loopback callers and the Istio CA API with JWTs of the development
/// issuer in `dir/issuer`.
fn config(dir: &Path, key_yaml: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("issuer")).unwrap();
    let issuer = signet_istio::dev::DevIssuer::ensure(&dir.join("issuer")).unwrap();
    let yaml = format!(
        r#"trust_domain: cluster.local
backends:
  ca:
    type: local
    cert_file: {dir}/ca.pem
    chain_file: {dir}/root.pem
    key: {key_yaml}
    resilience: {{ timeout: 5s, attempts: 2, backoff: 100ms, circuit_breaker: {{ failures: 50, open_for: 1s }} }}
authorities:
  mesh: {{ backend: ca }}
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: mesh
    auth: {{ loopback_unauthenticated: true }}
    principals:
      - name: "*"
        allowed_sans: ["spiffe://cluster.local/**"]
  istio:
    listen: 127.0.0.1:0
    authority: mesh
    auth:
      mtls: false
      jwt:
        - issuer: {iss}
          cluster: Kubernetes
          jwks_file: {jwks}
          audiences: [{aud}]
"#,
        dir = dir.display(),
        iss = signet_istio::dev::DEV_ISSUER,
        aud = signet_istio::dev::DEV_AUDIENCE,
        jwks = issuer.jwks.display(),
    );
    write(dir, "signet.yaml", &yaml)
}

/// `signet key csr`, then an openssl root certifies the CSR as a CA
/// (pathlen 0): `dir/ca.pem` and `dir/root.pem`.
fn certify_key(dir: &Path, config: &Path, env: &[(&str, &str)]) {
    let csr = run(Command::new(bin())
        .args([
            "key",
            "csr",
            "--backend",
            "ca",
            "--common-name",
            "signet HSM CA",
            "--config",
        ])
        .arg(config)
        .envs(env.iter().copied()));
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"), "{csr}");
    let csr_file = write(dir, "ca.csr", &csr);
    openssl::root_ca(dir);
    let ext = write(
        dir,
        "ca.ext",
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectAltName=URI:spiffe://cluster.local\n",
    );
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "7", "-sha256"])
        .arg("-in")
        .arg(&csr_file)
        .arg("-CA")
        .arg(dir.join("root.pem"))
        .arg("-CAkey")
        .arg(dir.join("root.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(dir.join("ca.pem")));
}

async fn rest_sign(signet: &Signet, root: &Path, csr: &str) -> (u16, Value) {
    let r = signet_tests::http::client(root)
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

/// webpki's verdict on `leaf` (PEM) with `chain` (PEM) under `root` (PEM),
/// for a client certificate: a second verifier besides openssl.
fn webpki_verify(root: &Path, chain: &str, leaf: &str) {
    let der = |pem: &str| -> Vec<rustls_pki_types::CertificateDer<'static>> {
        signet_core::pem::certificates(pem.as_bytes())
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect()
    };
    let roots = der(&std::fs::read_to_string(root).unwrap());
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let leaf = der(leaf).remove(0);
    webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &der(chain),
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("webpki verifies the chain");
}

async fn istio_channel(signet: &Signet, root: &Path) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(root).unwrap()))
        .domain_name("istiod.istio-system.svc");
    Channel::from_shared(format!("https://{}", signet.grpc_addr.expect("gRPC")))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Starts signet on the key, has it sign one REST and one Istio request
/// (the Istio listener's own serving certificate is signed by the key too)
/// and verifies both chains with openssl.
async fn signs_rest_and_istio(dir: &Path, key_yaml: &str, env: &[(&str, &str)], csr_key: Key) {
    let cfg = config(dir, key_yaml);
    certify_key(dir, &cfg, env);
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let signet = Signet::start_with_env(
        &bin(),
        &["serve", "--config", cfg.to_str().unwrap()],
        &cwd,
        env,
    )
    .expect("signet starts");
    let root = dir.join("root.pem");

    // REST.
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "rest",
        csr_key,
        Some(&format!("URI:{DEMO}")),
        &[],
    ))
    .unwrap();
    let (status, body) = rest_sign(&signet, &root, &csr).await;
    assert_eq!(status, 200, "{body}");
    let leaf = write(dir, "rest-leaf.pem", body["certificate"].as_str().unwrap());
    let chain: String = body["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    webpki_verify(&root, &chain, body["certificate"].as_str().unwrap());
    let chain = write(dir, "rest-chain.pem", &chain);
    openssl::verify(&root, Some(&chain), &leaf, Some("sslclient")).expect("REST chain");

    // Istio's CA API, as istio-agent calls it.
    let issuer = signet_istio::dev::DevIssuer::in_dir(&dir.join("issuer"));
    let token = issuer
        .mint(
            "default",
            "demo",
            Duration::from_secs(600),
            std::time::SystemTime::now(),
        )
        .unwrap();
    let mut istio = IstioCertificateServiceClient::new(istio_channel(&signet, &root).await);
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "istio",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    ))
    .unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let chain = istio
        .create_certificate(req)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 3, "leaf, CA, roots");
    webpki_verify(&root, &chain[1], &chain[0]);
    let leaf = write(dir, "istio-leaf.pem", &chain[0]);
    let middle = write(dir, "istio-chain.pem", &chain[1]);
    openssl::verify(&root, Some(&middle), &leaf, Some("sslclient")).expect("Istio chain");
    let issued_by = openssl::field(&leaf, "issuer");
    assert!(issued_by.contains("signet HSM CA"), "{issued_by}");

    // Nothing of a private key in the working directory (the process's
    // logs are scanned for keys when it stops).
    let written: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
    assert!(written.is_empty(), "signet wrote {written:?}");
}

#[tokio::test]
async fn softhsm2_holds_the_issuing_key() {
    for (kind, csr_key) in [
        ("EC:prime256v1", Key::EcP256),
        ("EC:secp384r1", Key::EcP384),
        ("rsa:2048", Key::Rsa(2048)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let token = Token::new();
        token.generate(kind, "issuing", "0a01");
        signs_rest_and_istio(tmp.path(), &token.key_yaml("issuing"), &[], csr_key).await;
    }
}

#[tokio::test]
async fn aws_kms_holds_the_issuing_key() {
    let moto = Moto::start();
    for spec in ["ECC_NIST_P256", "ECC_NIST_P384", "RSA_2048"] {
        let tmp = tempfile::tempdir().unwrap();
        let key_id = moto.kms_key(spec);
        let id = write(tmp.path(), "aws-id", "testing");
        let secret = write(tmp.path(), "aws-secret", "testing");
        let key_yaml = format!(
            "{{ type: aws_kms, key_id: {key_id}, region: {region}, endpoint_url: {url}, access_key_id_file: {id}, secret_access_key_file: {secret} }}",
            region = signet_tests::moto::REGION,
            url = moto.endpoint(),
            id = id.display(),
            secret = secret.display()
        );
        signs_rest_and_istio(tmp.path(), &key_yaml, &[], Key::EcP256).await;
    }
}

/// The token goes away under signet (a removed or failed HSM): requests get
/// 503 with the reason, and when the token is back signet finds it, logs
/// in and signs again, without a restart.
#[tokio::test]
async fn a_token_that_goes_away_and_comes_back_is_used_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let token = Token::new();
    token.generate("EC:prime256v1", "issuing", "0b01");
    let cfg = config(dir, &token.key_yaml("issuing"));
    certify_key(dir, &cfg, &[]);
    let signet = Signet::start(&bin(), &["serve", "--config", cfg.to_str().unwrap()])
        .expect("signet starts");
    let root = dir.join("root.pem");
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "hsm",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    ))
    .unwrap();
    assert_eq!(rest_sign(&signet, &root, &csr).await.0, 200);

    token.go_away();
    // SoftHSM2 notices on its next look at the token directory.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rest_sign(&signet, &root, &csr).await.0 == 200 {
        assert!(Instant::now() < deadline, "still signing without the token");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        let (status, body) = rest_sign(&signet, &root, &csr).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");
    }

    token.come_back();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = rest_sign(&signet, &root, &csr).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// KMS goes away under load (its endpoint unreachable, connections cut):
/// 503 with the reason, and signing resumes when it is back.
#[tokio::test]
async fn a_kms_outage_is_retryable_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let moto = Moto::start();
    let proxy = signet_tests::latency_proxy::LatencyProxy::start(
        moto.endpoint().trim_start_matches("http://"),
    );
    let key_id = moto.kms_key("ECC_NIST_P256");
    let id = write(dir, "aws-id", "testing");
    let secret = write(dir, "aws-secret", "testing");
    let key_yaml = format!(
        "{{ type: aws_kms, key_id: {key_id}, region: {region}, endpoint_url: {url}, access_key_id_file: {id}, secret_access_key_file: {secret} }}",
        region = signet_tests::moto::REGION,
        url = proxy.url(),
        id = id.display(),
        secret = secret.display()
    );
    let cfg = config(dir, &key_yaml);
    certify_key(dir, &cfg, &[]);
    let signet = Signet::start(&bin(), &["serve", "--config", cfg.to_str().unwrap()])
        .expect("signet starts");
    let root = dir.join("root.pem");
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "kms",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    ))
    .unwrap();
    assert_eq!(rest_sign(&signet, &root, &csr).await.0, 200);

    proxy.set_down(true);
    for _ in 0..3 {
        let (status, body) = rest_sign(&signet, &root, &csr).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            matches!(
                body["error"]["code"].as_str(),
                Some("backend_unavailable" | "overloaded")
            ),
            "{body}"
        );
    }

    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = rest_sign(&signet, &root, &csr).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A Transit engine with `name` of `key_type`, and a token whose policy
/// allows only reading that key and signing with it.
fn transit_key(bao: &OpenBao, dir: &Path, name: &str, key_type: &str) -> String {
    bao.api(
        "POST",
        &format!("transit/keys/{name}"),
        Some(json!({ "type": key_type })),
    );
    bao.write_policy(
        &format!("signet-{name}"),
        &format!(
            "path \"transit/keys/{name}\" {{ capabilities = [\"read\"] }}\npath \"transit/sign/{name}\" {{ capabilities = [\"update\"] }}\n"
        ),
    );
    let token = bao.create_token(&[&format!("signet-{name}")], "24h", true, None);
    let token_file = write(dir, &format!("{name}-token"), &token);
    format!(
        "{{ type: vault_transit, address: {addr}, auth: {{ token: {{ token_file: {file} }} }}, mount: transit, name: {name} }}",
        addr = bao.addr(),
        file = token_file.display()
    )
}

#[tokio::test]
async fn openbao_transit_holds_the_issuing_key() {
    let bao = OpenBao::dev();
    bao.api(
        "POST",
        "sys/mounts/transit",
        Some(json!({ "type": "transit" })),
    );
    for (name, key_type) in [
        ("ca-p256", "ecdsa-p256"),
        ("ca-p384", "ecdsa-p384"),
        ("ca-rsa", "rsa-2048"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let key_yaml = transit_key(&bao, tmp.path(), name, key_type);
        signs_rest_and_istio(tmp.path(), &key_yaml, &[], Key::EcP256).await;
    }
}

/// The key store goes away under load: requests get retryable errors
/// (503 with the reason), nothing is signed, and signing resumes by itself
/// when the store is back.
#[tokio::test]
async fn a_transit_outage_under_load_is_retryable_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut bao = OpenBao::persistent();
    bao.api(
        "POST",
        "sys/mounts/transit",
        Some(json!({ "type": "transit" })),
    );
    let key_yaml = transit_key(&bao, dir, "ca", "ecdsa-p256");
    let cfg = config(dir, &key_yaml);
    certify_key(dir, &cfg, &[]);
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let signet = Signet::start_in(&bin(), &["serve", "--config", cfg.to_str().unwrap()], &cwd)
        .expect("signet starts");
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "load",
        Key::EcP256,
        Some(&format!("URI:{DEMO}")),
        &[],
    ))
    .unwrap();
    let signet = std::sync::Arc::new(signet);
    let root = dir.join("root.pem");
    let load = |n: usize| {
        let (signet, csr, root) = (signet.clone(), csr.clone(), root.clone());
        async move {
            let calls = (0..n).map(|_| {
                let (signet, csr, root) = (signet.clone(), csr.clone(), root.clone());
                tokio::spawn(async move { rest_sign(&signet, &root, &csr).await })
            });
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        }
    };
    assert!(load(20).await.iter().all(|(s, _)| *s == 200));

    bao.kill();
    let down = load(20).await;
    for (status, body) in &down {
        assert_eq!(*status, 503, "{body}");
        assert!(
            matches!(
                body["error"]["code"].as_str(),
                Some("backend_unavailable" | "overloaded")
            ),
            "{body}"
        );
    }
    assert!(
        signet
            .logs()
            .iter()
            .any(|l| l.contains("CA key") && l.contains("unavailable")),
        "the reason is logged"
    );

    bao.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results = load(20).await;
        if results.iter().all(|(s, _)| *s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {:?}", results[0]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
