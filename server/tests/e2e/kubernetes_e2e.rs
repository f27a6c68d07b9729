//! Two real `signet` replicas against the Kubernetes API fake: one leader
//! writes (CSR signer, root ConfigMaps, cacerts), the other stays silent, and
//! takes over when the leader stops.

use signet_core::testing::Ready as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde_json::json;
use signet_core::VerifiedCsr;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::pem;
use signet_core::policy::IssuanceDecision;
use signet_core::spiffe::TrustDomain;
use signet_tests::kube_fake::KubeFake;
use signet_tests::process::Signet;

const DAY: Duration = Duration::from_secs(86_400);
const ISTIOD: &str = "system:serviceaccount:istio-system:istiod";

fn write_pki(dir: &Path) {
    let now = SystemTime::now();
    let root = LocalCa::self_signed_root(
        "e2e root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        365 * DAY,
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(Some("e2e int"), &[]).unwrap()).unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let d = IssuanceDecision::intermediate(
        "e2e int",
        &td,
        0,
        now,
        90 * DAY,
        Duration::from_secs(60),
        "t",
    );
    let inter = root.sign(&d, csr.public_key()).ready().unwrap();
    std::fs::write(
        dir.join("root.pem"),
        pem::encode_certificate(root.certificate()),
    )
    .unwrap();
    std::fs::write(
        dir.join("root-key.pem"),
        root.private_key().unwrap().to_pem().as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("int.pem"), inter.leaf_pem()).unwrap();
    std::fs::write(dir.join("int-key.pem"), key.to_pem().as_bytes()).unwrap();
}

fn config(dir: &Path, kubeconfig: &Path, identity: &str) -> PathBuf {
    let d = dir.display();
    let yaml = format!(
        r#"trust_domain: cluster.local
admin: {{ listen: "127.0.0.1:0" }}
backends:
  int: {{ type: local, cert_file: {d}/int.pem, key_file: {d}/int-key.pem, chain_file: {d}/root.pem }}
  root: {{ type: local, cert_file: {d}/root.pem, key_file: {d}/root-key.pem }}
authorities:
  mesh: {{ backend: int }}
kubernetes: {{ kubeconfig: {kc} }}
leader_election: {{ namespace: signet, identity: {identity}, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: mesh
    auth: {{ loopback_unauthenticated: true }}
    principals: [{{ name: "*", allowed_sans: ["spiffe://cluster.local/**"] }}]
  kubernetes_csr: {{ authority: mesh, signer_names: [signet.dev/mesh], allowed_requesters: ["{ISTIOD}"] }}
  istio_root_cert: {{ authority: mesh, namespace_selector: "istio-injection=enabled", poll: 1s }}
  istio_cacerts: {{ backend: root, ttl: 720h }}
  istiod_tls: {{ authority: mesh, revisions: [default, canary] }}
  cluster_trust_bundles: {{ bundles: [{{ authority: mesh, signer_name: signet.dev/mesh }}], poll: 1s }}
"#,
        kc = kubeconfig.display()
    );
    let p = dir.join(format!("{identity}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

fn csr_object(name: &str) -> serde_json::Value {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let der = key
        .csr_der(
            None,
            &[San::Uri(
                "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap(),
            )],
        )
        .unwrap();
    json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": { "name": name },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem::encode("CERTIFICATE REQUEST", &der)),
            "signerName": "signet.dev/mesh", "username": ISTIOD, "usages": ["digital signature"]
        },
        "status": { "conditions": [{ "type": "Approved", "status": "True", "reason": "Test", "message": "t" }] }
    })
}

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn holder(fake: &KubeFake) -> Option<String> {
    fake.get(
        "coordination.k8s.io/v1",
        "leases",
        "signet",
        "signet-leader",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn signed(fake: &KubeFake, name: &str) -> bool {
    fake.get(
        "certificates.k8s.io/v1",
        "certificatesigningrequests",
        "",
        name,
    )
    .is_some_and(|c| c["status"]["certificate"].is_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_failover() {
    let fake = KubeFake::start().await;
    for (ns, labels) in [
        ("signet", json!({})),
        ("istio-system", json!({})),
        ("default", json!({ "istio-injection": "enabled" })),
        ("kube-system", json!({})),
    ] {
        fake.add_namespace(ns, labels);
    }
    let tmp = tempfile::tempdir().unwrap();
    write_pki(tmp.path());
    let kc = fake.kubeconfig(tmp.path(), "fake");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_signet"));
    let a = Signet::start(
        &bin,
        &[
            "serve",
            "--config",
            config(tmp.path(), &kc, "replica-a").to_str().unwrap(),
        ],
    )
    .unwrap();
    wait("replica-a leads", || {
        holder(&fake).as_deref() == Some("replica-a")
    })
    .await;
    let b = Signet::start(
        &bin,
        &[
            "serve",
            "--config",
            config(tmp.path(), &kc, "replica-b").to_str().unwrap(),
        ],
    )
    .unwrap();

    fake.apply(csr_object("first"));
    wait("first CSR signed", || signed(&fake, "first")).await;
    wait("root ConfigMap", || {
        fake.get("v1", "configmaps", "default", "istio-ca-root-cert")
            .is_some()
    })
    .await;
    wait("cacerts", || {
        fake.get("v1", "secrets", "istio-system", "cacerts")
            .is_some()
    })
    .await;
    wait("ClusterTrustBundle", || {
        fake.get(
            "certificates.k8s.io/v1",
            "clustertrustbundles",
            "",
            "signet.dev:mesh:mesh",
        )
        .is_some_and(|o| {
            o["spec"]["trustBundle"].as_str()
                == Some(&std::fs::read_to_string(tmp.path().join("root.pem")).unwrap())
        })
    })
    .await;
    assert!(
        fake.get("v1", "configmaps", "kube-system", "istio-ca-root-cert")
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signed_by = |s: &Signet| {
        s.logs()
            .iter()
            .filter(|l| l.contains("kubernetes CSR signed"))
            .count()
    };
    assert_eq!(
        (signed_by(&a), signed_by(&b)),
        (1, 0),
        "only the leader writes"
    );
    assert_eq!(holder(&fake).as_deref(), Some("replica-a"));

    // The leader stops (SIGTERM releases the Lease): the other takes over.
    assert!(a.terminate());
    wait("replica-b leads", || {
        holder(&fake).as_deref() == Some("replica-b")
    })
    .await;
    fake.apply(csr_object("second"));
    wait("second CSR signed", || signed(&fake, "second")).await;
    assert_eq!(signed_by(&b), 1);
    drop(b);

    // Everything both replicas asked of the API server is allowed by the
    // RBAC the Helm chart renders for this same configuration.
    let config: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(tmp.path().join("replica-a.yaml")).unwrap(),
    )
    .unwrap();
    let rbac = signet_tests::helm::rbac_for_config(&config, "signet");
    let mut accesses = fake.accesses();
    accesses.sort();
    accesses.dedup();
    assert!(accesses.len() > 10, "{accesses:?}");
    let denied: Vec<_> = accesses.iter().filter(|a| !rbac.allows(a)).collect();
    assert!(
        denied.is_empty(),
        "not allowed by the chart's RBAC: {denied:#?}"
    );
}
