//! The hostile-CSR corpus (`signet_tests::hostile`) against the real dev
//! server, over REST and the Istio gRPC API: every refusal has its exact
//! code and reason, nothing refused is signed (no audit line), what is
//! signed carries only what policy chose (checked by OpenSSL), and the
//! server keeps serving throughout.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use signet_tests::hostile::{self, DEMO, Expect};
use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::openssl;
use signet_tests::process::Signet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const ISSUED: &str = "\"message\":\"certificate issued\"";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn dev_token(data: &Path) -> String {
    let out = std::process::Command::new(bin())
        .args(["dev", "token", "--data-dir"])
        .arg(data)
        .args(["--ns", "default", "--sa", "demo", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn grpc(signet: &Signet, root: &Path) -> IstioCertificateServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(root).unwrap()))
        .domain_name("istiod.istio-system.svc");
    let channel = Channel::from_shared(format!("https://{}", signet.grpc_addr.unwrap()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel)
}

fn grpc_request(csr: String, token: &str) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// OpenSSL's reading of a certificate the corpus's "extras" case got.
fn check_without_extras(
    dir: &Path,
    name: &str,
    root: &Path,
    cert: &str,
    chain: &[&str],
    renewable: bool,
) {
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    let chain_path = dir.join(format!("{name}-chain.pem"));
    std::fs::write(&chain_path, chain.concat()).unwrap();
    openssl::verify(root, Some(&chain_path), &cert_path, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = openssl::text(&cert_path);
    for absent in [
        "Certificate Sign",
        "CRL Sign",
        "Code Signing",
        "Name Constraints",
        "1.3.6.1.4.1.55555",
        "CA:TRUE",
        "admin",
        "evil",
    ] {
        assert!(!text.contains(absent), "{name}: {absent} in\n{text}");
    }
    assert!(text.contains("CA:FALSE"), "{name}:\n{text}");
    // signet's renewal extension comes from policy (gRPC, a workload's own
    // token), never from the CSR (which asks for it in the extras case).
    assert_eq!(
        text.contains("signet renewable workload"),
        renewable,
        "{name}:\n{text}"
    );
    assert!(text.contains(&format!("URI:{DEMO}")), "{name}:\n{text}");
}

#[tokio::test]
async fn every_hostile_csr_gets_its_own_refusal_and_nothing_is_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let root = data.join("root.pem");
    let client = signet_tests::http::client(&root);
    let url = signet.url();
    let token = dev_token(&data);
    let mut istio = grpc(&signet, &root).await;

    // signet's own serving certificates are on the audit trail too.
    let before = signet.logs_containing(ISSUED, 1).len();
    let corpus = hostile::csr_corpus();
    assert!(corpus.len() >= 62, "{} cases", corpus.len());
    let mut wrong = Vec::new();
    let mut signed = 0;
    for case in &corpus {
        // REST.
        let r = client
            .post(format!("{url}/v1/sign"))
            .json(&json!({ "csr": case.pem, "profile": case.profile }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: the server stopped answering: {e}", case.name));
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON");
        let got = (
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body["error"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        match &case.expect {
            Expect::Refused { code, reason } => {
                let want_status = if *code == "policy_denied" { 403 } else { 400 };
                if (status, got.0.as_str(), got.1.as_str()) != (want_status, *code, *reason) {
                    wrong.push(format!(
                        "REST {}: want {want_status} {code}/{reason}, got {status} {body}",
                        case.name
                    ));
                }
                assert!(
                    body.get("certificate").is_none(),
                    "{}: refused with a certificate",
                    case.name
                );
            }
            Expect::SignedWithoutExtras => {
                assert_eq!(status, 200, "REST {}: {body}", case.name);
                let chain: Vec<&str> = body["ca_chain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect();
                check_without_extras(
                    tmp.path(),
                    case.name,
                    &root,
                    body["certificate"].as_str().unwrap(),
                    &chain,
                    false,
                );
                signed += 1;
            }
        }

        // Istio gRPC, as workload default/demo.
        let result = istio
            .create_certificate(grpc_request(case.pem.clone(), &token))
            .await;
        match (&case.expect, result) {
            (Expect::Refused { code, .. }, Err(status)) => {
                let want = if *code == "policy_denied" {
                    tonic::Code::PermissionDenied
                } else {
                    tonic::Code::InvalidArgument
                };
                if status.code() != want {
                    wrong.push(format!("gRPC {}: want {want:?}, got {status:?}", case.name));
                }
            }
            (Expect::Refused { .. }, Ok(_)) => {
                wrong.push(format!("gRPC {}: signed", case.name));
            }
            (Expect::SignedWithoutExtras, Ok(resp)) => {
                let chain = &resp.get_ref().cert_chain;
                let inter: Vec<&str> = chain[1..chain.len() - 1]
                    .iter()
                    .map(String::as_str)
                    .collect();
                check_without_extras(
                    tmp.path(),
                    &format!("{}-grpc", case.name),
                    &root,
                    &chain[0],
                    &inter,
                    true,
                );
                signed += 1;
            }
            (Expect::SignedWithoutExtras, Err(status)) => {
                wrong.push(format!("gRPC {}: refused {status:?}", case.name));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Exactly the certificates that were returned were signed and audited.
    let audited = signet.logs_containing(ISSUED, before + signed);
    assert_eq!(audited.len(), before + signed, "{audited:#?}");
    assert!(signet.logs().iter().all(|l| !l.contains("panicked")));

    // And the server still serves an honest request on both APIs.
    let good = hostile::csr_corpus_good();
    let r = client
        .post(format!("{url}/v1/sign"))
        .json(&json!({ "csr": good }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    istio
        .create_certificate(grpc_request(good, &token))
        .await
        .expect("gRPC still signs");
}
