//! signet as a cert-manager external issuer on a real API server:
//! cert-manager's own CRDs (from its Go module) and signet's SignetIssuer /
//! SignetClusterIssuer CRDs are accepted by the real API server's schema
//! checks; the chart for the `cert_manager` front-end is applied and signet
//! runs as its ServiceAccount; a CertificateRequest is signed only once
//! Approved (Ready, `certificate` and `ca` set), a Denied one never.
//! cert-manager's controller itself is not run: it is not buildable from the
//! Go module proxy (see tests/conformance/certmanager/go.mod), so approval is
//! written as cert-manager's approver writes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use signet_backends::cert_manager::{CertificateRequest, RequestCondition, now_rfc3339};
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San};
use signet_core::pem;
use signet_tests::control_plane::ControlPlane;
use signet_tests::eventually;
use signet_tests::openssl;
use signet_tests::process::Signet;

use super::support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn crds_dir() -> PathBuf {
    PathBuf::from(std::env::var("SIGNET_CERT_MANAGER_CRDS").expect(
        "SIGNET_CERT_MANAGER_CRDS is not set: run the suite with scripts/test or scripts/conformance",
    ))
}

fn config(admin: &str) -> Value {
    serde_yaml_ng::from_str(&format!(
        r#"trust_domain: cluster.local
admin: {{ listen: "{admin}" }}
leader_election: {{ namespace: signet, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
  cert_manager: {{ cluster_resource_namespace: signet }}
"#
    ))
    .unwrap()
}

/// How long a controller has to converge in these tests.
const WITHIN: Duration = Duration::from_secs(30);

async fn create_dynamic(c: &Client, v: Value) {
    let name = format!("{} {}", v["kind"], v["metadata"]["name"]);
    let doc = serde_yaml_ng::to_string(&v).unwrap();
    apply_manifests(c, &json!({ name: doc }), "default", false).await;
}

fn request(name: &str, csr: &str) -> CertificateRequest {
    serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "metadata": { "name": name, "namespace": "apps" },
        "spec": {
            "request": B64.encode(csr),
            "issuerRef": { "name": "local", "kind": "SignetIssuer", "group": "signet.dev" },
            "duration": "2160h0m0s",
            "usages": ["digital signature", "key encipherment", "server auth"],
        }
    }))
    .unwrap()
}

async fn decide(c: &Client, name: &str, type_: &str) {
    let api: Api<CertificateRequest> = Api::namespaced(c.clone(), "apps");
    for _ in 0..50 {
        let mut cr = api.get(name).await.unwrap();
        cr.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(RequestCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some("cert-manager.io".into()),
                message: Some(format!("{type_} as cert-manager's approver writes it")),
                last_transition_time: Some(now_rfc3339(&signet_core::SystemClock)),
            });
        match api.replace_status(name, &PostParams::default(), &cr).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("could not set {type_}");
}

async fn ready_reason(c: &Client, name: &str) -> Option<String> {
    let cr = Api::<CertificateRequest>::namespaced(c.clone(), "apps")
        .get(name)
        .await
        .ok()?;
    cr.condition("Ready").and_then(|r| r.reason.clone())
}

fn csr(name: &str) -> String {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    pem::encode(
        "CERTIFICATE REQUEST",
        &key.csr_der(None, &[San::Dns(DnsName::new(name).unwrap())])
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signet_issuer_signs_approved_certificate_requests_on_a_real_api_server() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // cert-manager's CRDs, straight from its module, and signet's own.
    let mut crds = serde_json::Map::new();
    for entry in std::fs::read_dir(crds_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            crds.insert(
                p.display().to_string(),
                Value::String(std::fs::read_to_string(&p).unwrap()),
            );
        }
    }
    let out = std::process::Command::new(bin())
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    crds.insert(
        "signet crds".into(),
        Value::String(String::from_utf8(out.stdout).unwrap()),
    );
    let kinds = apply_manifests(&admin, &Value::Object(crds), "default", false).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "CustomResourceDefinition")
            .count(),
        8,
        "{kinds:?}"
    );
    // Established before use.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The chart for this mode, applied; signet runs as its ServiceAccount.
    namespace(&admin, "signet").await;
    namespace(&admin, "apps").await;
    let values = d.join("values.yaml");
    std::fs::write(
        &values,
        serde_json::to_string(&json!({ "config": config("0.0.0.0:9090") })).unwrap(),
    )
    .unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/signet");
    let rendered =
        signet_tests::helm::render(&chart, "signet", "signet", std::slice::from_ref(&values));
    let one = &rendered[values.to_str().unwrap()];
    assert!(one["render_error"].is_null(), "{}", one["render_error"]);
    apply_manifests(&admin, &one["manifests"], "signet", false).await;
    let sa_token = token(&admin, "signet", "signet", &[], None).await;
    let mut local = config("127.0.0.1:0");
    local["kubernetes"] = json!({ "kubeconfig": cp.kubeconfig_with_token("signet", &sa_token) });
    let path = d.join("signet.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&local).unwrap()).unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", path.to_str().unwrap()])
        .expect("signet starts");

    // A SignetIssuer with a local CA from a Secret of its namespace.
    let (cert, key, root) = local_ca(d);
    create_dynamic(&admin, json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "apps-ca", "namespace": "apps" },
        "data": { "tls.crt": B64.encode(std::fs::read(&cert).unwrap()), "tls.key": B64.encode(std::fs::read(&key).unwrap()),
                  "ca.crt": B64.encode(std::fs::read(&root).unwrap()) }
    }))
    .await;
    create_dynamic(
        &admin,
        json!({
            "apiVersion": "signet.dev/v1alpha1", "kind": "SignetIssuer",
            "metadata": { "name": "local", "namespace": "apps" },
            "spec": { "backend": { "type": "local",
                "cert_secret": { "name": "apps-ca", "key": "tls.crt" },
                "key_secret": { "name": "apps-ca", "key": "tls.key" },
                "chain_secret": { "name": "apps-ca", "key": "ca.crt" } } }
        }),
    )
    .await;
    // A cluster issuer object is accepted too (its schema is real).
    create_dynamic(
        &admin,
        json!({
            "apiVersion": "signet.dev/v1alpha1", "kind": "SignetClusterIssuer",
            "metadata": { "name": "cluster-local" },
            "spec": { "backend": { "type": "local",
                "cert_secret": { "name": "org-ca", "key": "tls.crt" },
                "key_secret": { "name": "org-ca", "key": "tls.key" } } }
        }),
    )
    .await;

    let api: Api<CertificateRequest> = Api::namespaced(admin.clone(), "apps");
    for name in ["web", "denied", "pending"] {
        api.create(
            &PostParams::default(),
            &request(name, &csr(&format!("{name}.apps.svc"))),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused the CertificateRequest: {e}"));
    }
    eventually("pending is Pending", WITHIN, async || {
        (ready_reason(&admin, "pending").await.as_deref() == Some("Pending")).then_some(())
    })
    .await;
    decide(&admin, "web", "Approved").await;
    decide(&admin, "denied", "Denied").await;
    let cr = eventually("web Issued", WITHIN, async || {
        let cr = api.get("web").await.ok()?;
        (cr.condition("Ready")?.reason.as_deref() == Some("Issued")).then_some(cr)
    })
    .await;
    let status = cr.status.clone().unwrap();
    let (leaf, ca) = (d.join("web.pem"), d.join("web-ca.pem"));
    std::fs::write(&leaf, B64.decode(status.certificate.unwrap()).unwrap()).unwrap();
    std::fs::write(&ca, B64.decode(status.ca.expect("status.ca")).unwrap()).unwrap();
    openssl::verify(&ca, Some(&leaf), &leaf, Some("sslserver")).unwrap();
    assert!(openssl::text(&leaf).contains("DNS:web.apps.svc"));
    eventually("denied is Denied", WITHIN, async || {
        (ready_reason(&admin, "denied").await.as_deref() == Some("Denied")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["denied", "pending"] {
        let cr = api.get(name).await.unwrap();
        assert!(
            cr.status.and_then(|s| s.certificate).is_none(),
            "{name} was signed"
        );
    }
    let issued: Vec<String> = signet
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"message\":\"certificate issued\""))
        .collect();
    assert_eq!(
        issued.len(),
        1,
        "signed once: {issued:#?}\n{:#?}",
        signet.logs()
    );
    // The issuer's outcomes are metrics like every front-end's.
    let metrics = reqwest::get(format!("http://{}/metrics", signet.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("signet_requests_total{")
                && l.contains("frontend=\"cert_manager\"")
                && l.contains("outcome=\"issued\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        !signet.logs().iter().any(|l| l.contains("forbidden")),
        "the chart's RBAC refused something: {:#?}",
        signet.logs()
    );
    // signet doctor: the signed request chains to its ca.crt; a ca.crt an
    // upstream change made wrong (here: another root) is named.
    let mut dcfg = local.clone();
    dcfg["kubernetes"] = json!({ "kubeconfig": cp.admin_kubeconfig() });
    let dpath = d.join("doctor.yaml");
    std::fs::write(&dpath, serde_yaml_ng::to_string(&dcfg).unwrap()).unwrap();
    let doctor = || {
        let o = std::process::Command::new(bin())
            .args(["doctor", "--config", dpath.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let report = doctor();
    assert!(
        report.contains("certificaterequests: 1 valid request(s) signed by signet's issuers chain to their ca.crt"),
        "{report}"
    );
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, _, other_root) = local_ca(&other);
    api.patch_status(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({ "status": { "ca": B64.encode(std::fs::read(&other_root).unwrap()) } }),
        ),
    )
    .await
    .unwrap();
    let report = doctor();
    assert!(
        report.contains(
            "FAIL certificaterequest apps/web: status.certificate does not chain to status.ca"
        ),
        "{report}"
    );
    drop(signet);
    println!(
        "proved: cert-manager's CRDs (v1.21.1) and signet's are accepted by kube-apiserver v1.37.2; under the chart's RBAC signet signs an Approved CertificateRequest (Ready/Issued, certificate and ca set, verified by openssl), leaves Denied and unapproved ones unsigned, and counts it in signet_requests_total for front-end cert_manager; signet doctor checks the request chains to its ca.crt and names one whose ca.crt was replaced"
    );
}
