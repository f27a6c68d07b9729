//! `signet doctor` on a real kube-apiserver: a setup signet itself filled
//! passes; then one fault per kind of object is planted, and the report
//! names each one and fails.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_tests::control_plane::ControlPlane;
use signet_tests::eventually;
use signet_tests::process::Signet;

use super::support::*;

const WITHIN: Duration = Duration::from_secs(30);

fn config(d: &Path, kubeconfig: &Path) -> String {
    let d = d.display();
    format!(
        r#"trust_domain: cluster.local
backends:
  int: {{ type: local, cert_file: {d}/ca.pem, key_file: {d}/ca-key.pem, chain_file: {d}/root.pem }}
  root: {{ type: local, cert_file: {d}/root.pem, key_file: {d}/root-key.pem }}
authorities:
  mesh: {{ backend: int }}
kubernetes: {{ kubeconfig: {kc} }}
leader_election: {{ namespace: signet, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
  istio_root_cert: {{ authority: mesh, namespace_selector: "istio-injection=enabled", poll: 1s }}
  istio_cacerts: {{ backend: root, ttl: 720h }}
  istiod_tls: {{ authority: mesh, revisions: [default] }}
  cluster_trust_bundles: {{ bundles: [{{ authority: mesh, signer_name: signet.dev/mesh }}], poll: 1s }}
"#,
        kc = kubeconfig.display()
    )
}

fn doctor(config: &Path, extra: &[&str]) -> (bool, String) {
    let out: Output = std::process::Command::new(bin())
        .args(["doctor", "--config", config.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_each_planted_fault() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    local_ca(d);
    mesh_namespaces(&admin).await;
    let cfg = d.join("signet.yaml");
    std::fs::write(&cfg, config(d, &cp.admin_kubeconfig())).unwrap();

    // signet fills everything, then stops.
    {
        let _signet = Signet::start(&bin(), &["serve", "--config", cfg.to_str().unwrap()])
            .expect("signet starts");
        eventually("signet's objects", WITHIN, async || {
            let secrets = Api::<Secret>::namespaced(admin.clone(), "istio-system");
            let ok = secrets.get_opt("cacerts").await.unwrap().is_some()
                && secrets.get_opt("istiod-tls").await.unwrap().is_some()
                && Api::<ConfigMap>::namespaced(admin.clone(), "mesh-apps")
                    .get_opt("istio-ca-root-cert")
                    .await
                    .unwrap()
                    .is_some()
                && Api::<ClusterTrustBundle>::all(admin.clone())
                    .get_opt("signet.dev:mesh:mesh")
                    .await
                    .unwrap()
                    .is_some();
            ok.then_some(())
        })
        .await;
    }
    let (ok, report) = tokio::task::block_in_place(|| doctor(&cfg, &[]));
    assert!(ok, "a healthy setup passes:\n{report}");
    assert!(!report.contains("FAIL"), "{report}");
    // The roots expire within a long enough window: a warning, not a failure.
    let (ok, report) = tokio::task::block_in_place(|| doctor(&cfg, &["--warn-within", "400days"]));
    assert!(
        ok && report.contains("WARN authority mesh root 0: expires at"),
        "{report}"
    );

    // Plant one fault per object.
    let foreign = LocalCa::self_signed_root(
        "someone else's root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        30 * DAY,
    )
    .unwrap();
    let foreign_pem = foreign.trust_bundle().to_pem();
    let merge = |v: serde_json::Value| Patch::Merge(v);
    Api::<ConfigMap>::namespaced(admin.clone(), "mesh-apps")
        .patch(
            "istio-ca-root-cert",
            &PatchParams::default(),
            &merge(json!({ "data": { "root-cert.pem": foreign_pem } })),
        )
        .await
        .unwrap();
    Api::<ClusterTrustBundle>::all(admin.clone())
        .patch(
            "signet.dev:mesh:mesh",
            &PatchParams::default(),
            &merge(json!({ "spec": { "trustBundle": foreign_pem } })),
        )
        .await
        .unwrap();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let secrets = Api::<Secret>::namespaced(admin.clone(), "istio-system");
    secrets
        .patch(
            "istiod-tls",
            &PatchParams::default(),
            &merge(json!({ "data": { "tls.crt": b64(&foreign_pem) } })),
        )
        .await
        .unwrap();
    secrets
        .patch(
            "cacerts",
            &PatchParams::default(),
            &merge(json!({ "data": { "root-cert.pem": null } })),
        )
        .await
        .unwrap();

    let (ok, report) = tokio::task::block_in_place(|| doctor(&cfg, &[]));
    assert!(!ok, "faults fail the run:\n{report}");
    for (fault, says) in [
        (
            "FAIL configmap mesh-apps/istio-ca-root-cert",
            "roots differ",
        ),
        (
            "FAIL clustertrustbundle signet.dev:mesh:mesh",
            "roots differ",
        ),
        ("FAIL secret istio-system/istiod-tls", "does not chain"),
        ("FAIL secret istio-system/cacerts", "root-cert.pem missing"),
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(fault) && l.contains(says)),
            "{fault} ({says}) not named:\n{report}"
        );
    }
    assert!(report.contains("4 check(s) failed"), "{report}");
    println!("{report}");
    println!(
        "proved: signet doctor passes a setup signet filled on kube-apiserver v1.37.2, warns about roots expiring within --warn-within, and names each planted fault (a root ConfigMap and a ClusterTrustBundle with another root, an istiod-tls that does not chain, a cacerts istiod would refuse) with a failing exit code"
    );
}
