//! The Istio issue's "done when": an independent gRPC client (generated from
//! the test suite's own copy of the proto) against `signet serve --dev`, with a
//! token from `signet dev token`, over TLS verified against `root.pem`.

use std::path::{Path, PathBuf};

use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";
const AUDIT: &str = "\"target\":\"signet::audit\"";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn dev_token(data: &Path, ns: &str, sa: &str) -> String {
    let out = std::process::Command::new(bin())
        .args(["dev", "token", "--data-dir"])
        .arg(data)
        .args(["--ns", ns, "--sa", sa, "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A TLS channel as istio-agent opens one: verified against the mesh root,
/// ServerName `istiod.istio-system.svc`, h2.
async fn channel(signet: &Signet, root: &Path, identity: Option<Identity>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(root).unwrap()))
        .domain_name("istiod.istio-system.svc");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Channel::from_shared(format!(
        "https://{}",
        signet.grpc_addr.expect("gRPC listener")
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap()
}

fn request(csr: String, token: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r.metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    r
}

#[tokio::test]
async fn an_independent_client_gets_a_chain_to_the_dev_root() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&bin(), &data).unwrap();
    let root = data.join("root.pem");
    let token = dev_token(&data, "default", "demo");
    let mut client = IstioCertificateServiceClient::new(channel(&signet, &root, None).await);

    let csr_path = openssl::csr(
        tmp.path(),
        "demo",
        Key::EcP256,
        Some(&format!("critical,URI:{DEMO}")),
        &[],
    );
    let csr = std::fs::read_to_string(&csr_path).unwrap();
    let resp = client
        .create_certificate(request(csr.clone(), Some(&token)))
        .await
        .unwrap()
        .into_inner();
    let chain = resp.cert_chain;
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    std::fs::write(tmp.path().join("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(tmp.path().join("middle.pem"), &chain[1]).unwrap();
    std::fs::write(tmp.path().join("roots.pem"), &chain[2]).unwrap();
    openssl::verify(
        &root,
        Some(&tmp.path().join("middle.pem")),
        &tmp.path().join("leaf.pem"),
        Some("sslclient"),
    )
    .unwrap();
    assert_eq!(
        chain[2],
        std::fs::read_to_string(&root).unwrap(),
        "the last element is the root bundle"
    );
    let text = openssl::text(&tmp.path().join("leaf.pem"));
    assert!(
        text.contains(&format!("URI:{DEMO}")) && !text.contains("DNS:"),
        "{text}"
    );

    // Another identity: PERMISSION_DENIED, and nothing signed.
    let before = signet.logs_containing(AUDIT, 3).len();
    let other = std::fs::read_to_string(openssl::csr(
        tmp.path(),
        "other",
        Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/default/sa/other"),
        &[],
    ))
    .unwrap();
    let err = client
        .create_certificate(request(other, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // No token, and a garbage CSR.
    let err = client
        .create_certificate(request(csr.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .create_certificate(request(
            "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n".into(),
            Some(&token),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        signet.logs_containing(AUDIT, before).len(),
        before,
        "refusals sign nothing"
    );

    // Renewal with the live certificate instead of a token (mTLS).
    let key = std::fs::read_to_string(tmp.path().join("demo.key")).unwrap();
    let identity = Identity::from_pem(format!("{}{}", chain[0], chain[1]), key);
    let mut mtls =
        IstioCertificateServiceClient::new(channel(&signet, &root, Some(identity)).await);
    let renewed = mtls
        .create_certificate(request(csr, None))
        .await
        .unwrap()
        .into_inner();
    std::fs::write(tmp.path().join("renewed.pem"), &renewed.cert_chain[0]).unwrap();
    openssl::verify(
        &root,
        Some(&tmp.path().join("middle.pem")),
        &tmp.path().join("renewed.pem"),
        None,
    )
    .unwrap();
}

#[tokio::test]
async fn the_grpc_health_service_reports_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let mut health = HealthClient::new(channel(&signet, &data.join("root.pem"), None).await);
    for service in ["", "istio.v1.auth.IstioCertificateService"] {
        let mut status = ServingStatus::Unknown as i32;
        for _ in 0..50 {
            status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
