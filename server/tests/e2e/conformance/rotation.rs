//! The root-rotation proof: a full rotation (publish, issue, done) of the
//! backend that feeds both istiod's plug-in CA (`cacerts`) and signet's own
//! Istio gRPC front-end (a delegated authority), on the real API server with
//! real istiod, while four workloads built from istio-agent's CA client code
//! (two asking istiod, two asking signet) renew one-minute certificates and
//! do mutual-TLS handshakes with each other all the time, old roots with
//! new. `signet trust rotate --wait` walks the phases; zero handshakes may
//! fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use serde_json::Value;
use signet_tests::control_plane::ControlPlane;
use signet_tests::eventually;
use signet_tests::process::Signet;

use super::istiod::{cluster_for_istio, start_istiod};
use super::support::*;

const WITHIN: Duration = Duration::from_secs(60);

/// What the kubelet does with a Secret volume, atomically: the files live
/// in a timestamped directory that `..data` points to, and each key is a
/// symlink through `..data`; an update swaps `..data` in one rename.
fn mount_atomically(files: &std::collections::BTreeMap<String, Vec<u8>>, dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let version = dir.join(format!("..v{n}"));
    std::fs::create_dir_all(&version).unwrap();
    for (k, v) in files {
        std::fs::write(version.join(k), v).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for k in files.keys() {
        let link = dir.join(k);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{k}"), &link).unwrap();
        }
    }
}

/// Keeps `etc/cacerts` of istiod's directory and the mesh-root file (the
/// `istio-ca-root-cert` ConfigMap istiod writes in `default`) in step with
/// the API server, once a second, as the kubelet would.
fn kubelet(admin: Client, istiod_dir: PathBuf, mesh_root: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), "istio-system");
        let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
        let mut last = None;
        let mut n = 0;
        loop {
            if let Ok(Some(s)) = secrets.get_opt("cacerts").await {
                let files = signet_istio::k8s::secret_files(&s);
                if last.as_ref() != Some(&files) {
                    n += 1;
                    mount_atomically(&files, &istiod_dir.join("etc/cacerts"), n);
                    last = Some(files);
                }
            }
            if let Ok(Some(cm)) = cms.get_opt("istio-ca-root-cert").await
                && let Some(pem) = cm.data.as_ref().and_then(|d| d.get("root-cert.pem"))
                && std::fs::read_to_string(&mesh_root).ok().as_deref() != Some(pem)
            {
                let tmp = mesh_root.with_extension("tmp");
                std::fs::write(&tmp, pem).unwrap();
                std::fs::rename(&tmp, &mesh_root).unwrap();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// A workload: istio-agent's client keeping a certificate from `ca_addr`
/// and shaking hands with every other peer.
struct Peer {
    child: std::process::Child,
    status: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn status(&self) -> Value {
        std::fs::read(&self.status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }
}

async fn peer(admin: &Client, d: &Path, name: &str, ca_addr: &str, mesh_root: &Path) -> Peer {
    service_account(admin, "default", name).await;
    let t = token(admin, "default", name, &["istio-ca"], None).await;
    let token_file = d.join(format!("{name}.token"));
    std::fs::write(&token_file, t).unwrap();
    let peers = d.join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    let status = d.join(format!("{name}.status.json"));
    let child = Command::new(built("SIGNET_MESHPEER"))
        .args(["--ca-addr", ca_addr, "--name", name, "--ttl", "1m"])
        .args(["--service-account", name, "--namespace", "default"])
        .arg("--root-cert")
        .arg(mesh_root)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--peers-dir")
        .arg(&peers)
        .arg("--status")
        .arg(&status)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("meshpeer starts");
    Peer { child, status }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_under_istiod_and_signet_fails_no_handshake() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    let istiod_kc = cluster_for_istio(&cp, &admin).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    self_signed_root(d, "old-root");
    let new_root = self_signed_root(d, "new-root");
    let dd = d.display();
    let config = d.join("signet.yaml");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain: cluster.local
trust: {{ state_file: {dd}/rotation.yaml, poll: 1s }}
backends:
  root: {{ type: local, cert_file: {dd}/old-root.pem, key_file: {dd}/old-root-key.pem }}
  next: {{ type: local, cert_file: {dd}/new-root.pem, key_file: {dd}/new-root-key.pem }}
authorities:
  mesh:
    backend: root
    mode: delegated
    intermediate: {{ ttl: 10m }}
    policy: {{ min_ttl: 1m, default_ttl: 1m, max_ttl: 1m }}
kubernetes: {{ kubeconfig: {kc} }}
leader_election: {{ namespace: signet, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
  istio:
    listen: 127.0.0.1:0
    authority: mesh
    auth:
      token_review:
        clusters:
          Kubernetes: {{ kubeconfig: {kc} }}
  istio_cacerts: {{ backend: root, ttl: 2h, workload_ttl: 1m }}
"#,
            kc = cp.admin_kubeconfig().display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_owned();
    let signet = Signet::start(&bin(), &["serve", "--config", &cfg]).expect("signet starts");
    let grpc = signet.grpc_addr.expect("the Istio front-end").to_string();

    let istiod_dir = d.join("istiod");
    let mesh_root = d.join("mesh-root.pem");
    std::fs::copy(d.join("old-root.pem"), &mesh_root).unwrap();
    let kubelet = kubelet(admin.clone(), istiod_dir.clone(), mesh_root.clone());
    eventually("cacerts mounted", WITHIN, async || {
        istiod_dir
            .join("etc/cacerts/ca-cert.pem")
            .exists()
            .then_some(())
    })
    .await;
    let istiod = start_istiod(
        &istiod_dir,
        &istiod_kc,
        &[("ISTIO_MULTIROOT_MESH", "true")],
        &[],
    );

    let peers = [
        peer(&admin, d, "istiod-a", &istiod.secure_grpc, &mesh_root).await,
        peer(&admin, d, "istiod-b", &istiod.secure_grpc, &mesh_root).await,
        peer(&admin, d, "signet-c", &grpc, &mesh_root).await,
        peer(&admin, d, "signet-d", &grpc, &mesh_root).await,
    ];
    let report = || -> String {
        let mut out: Vec<String> = peers.iter().map(|p| p.status().to_string()).collect();
        for n in ["istiod-a", "istiod-b", "signet-c", "signet-d"] {
            let log = std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default();
            out.push(format!(
                "{n} stderr: {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ));
        }
        out.join("\n")
    };
    eventually("every peer shakes hands", WITHIN, async || {
        peers
            .iter()
            .all(|p| p.status()["ok"].as_u64().unwrap_or(0) >= 6)
            .then_some(())
    })
    .await;

    // The whole rotation, each phase moved on by the CLI when it may.
    let started = Instant::now();
    let out = Command::new(bin())
        .args([
            "trust",
            "rotate",
            "--config",
            &cfg,
            "--backend",
            "root",
            "--to",
            "next",
            "--wait",
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{log}\n{}\nistiod:\n{}",
        report(),
        istiod.log()
    );
    let took = started.elapsed();
    for phase in [
        "rotation from root to next begun",
        "phase issue begun",
        "phase done begun",
    ] {
        assert!(log.contains(phase), "{phase}:\n{log}");
    }
    // Every peer renews at least once more under the new root alone.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let report_text = report();
    for p in &peers {
        let s = p.status();
        assert_eq!(s["failed"], 0, "failed handshakes:\n{report_text}\n{log}");
        assert_eq!(
            s["renewal_failures"], 0,
            "failed renewals:\n{report_text}\n{log}"
        );
        assert!(s["renewals"].as_u64().unwrap() >= 5, "{report_text}");
        let issuers: Vec<&str> = s["issuers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        assert!(
            issuers.first().unwrap().ends_with("/ old-root")
                && issuers.last().unwrap().ends_with("/ new-root"),
            "issued first under the old root, last under the new: {report_text}"
        );
        assert_eq!(s["roots"], 1, "the old root is dropped: {report_text}");
    }
    // istiod holds the new root alone.
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), "default")
        .get("istio-ca-root-cert")
        .await
        .unwrap();
    assert_eq!(
        cm.data.unwrap()["root-cert.pem"].trim(),
        std::fs::read_to_string(&new_root).unwrap().trim()
    );
    let handshakes: u64 = peers
        .iter()
        .map(|p| p.status()["ok"].as_u64().unwrap())
        .sum();
    kubelet.abort();
    drop(peers);
    drop(istiod);
    drop(signet);
    println!("rotation log:\n{log}");
    println!(
        "proved: a root rotation of the backend behind istiod's plug-in CA and signet's Istio front-end ran publish -> issue -> done in {took:?} on the real API server with real istiod, while four istio-agent clients (two on istiod, two on signet) renewed 1-minute certificates and did {handshakes} mutual-TLS handshakes with each other, old root with new, and none failed"
    );
}
