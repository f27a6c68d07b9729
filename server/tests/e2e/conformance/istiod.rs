//! Real istiod (pilot-discovery from istio.io/istio) on the real API server,
//! with signet as its external CA, and istio-agent's CA client code asking
//! istiod for workload certificates:
//!
//! - plug-in CA: istiod reads the `cacerts` Secret signet keeps (mounted as a
//!   kubelet would: the Secret's files in istiod's `./etc/cacerts`), issues
//!   workload certificates that chain to signet's root, takes a rotated
//!   intermediate while certificates from the old one stay valid, and
//!   distributes `istio-ca-root-cert` with signet's root;
//! - RA mode (`EXTERNAL_CA=ISTIOD_RA_KUBERNETES_API`, `K8S_SIGNER`): istiod
//!   files and approves CSRs, signet signs them, istiod serves the result;
//!   istiod's own serving certificate is the one signet's `istiod_tls`
//!   writer keeps, and the agent's TLS check accepts it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::DeleteParams;
use kube::{Api, Client};
use serde_json::json;
use signet_tests::control_plane::ControlPlane;
use signet_tests::eventually;
use signet_tests::openssl;
use signet_tests::process::Signet;

use super::support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running istiod; killed when dropped.
pub(crate) struct Istiod {
    child: Child,
    pub(crate) secure_grpc: String,
    log: PathBuf,
}

impl Drop for Istiod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Istiod {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts pilot-discovery in `dir` (its relative `./etc/...` paths live
/// there) as istio-system/istiod, and waits for `/ready`.
pub(crate) fn start_istiod(
    cwd: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
    args: &[String],
) -> Istiod {
    // Polling uses a blocking HTTP client: keep it off the async runtime.
    tokio::task::block_in_place(|| start_istiod_blocking(cwd, kubeconfig, env, args))
}

fn start_istiod_blocking(
    cwd: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
    args: &[String],
) -> Istiod {
    let (grpc, secure, http, monitoring, https) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let log = cwd.join("istiod.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(built("SIGNET_PILOT_DISCOVERY"))
        .arg("discovery")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", "istio-system", "--clusterID", "Kubernetes"])
        .arg(format!("--grpcAddr=127.0.0.1:{grpc}"))
        .arg(format!("--secureGRPCAddr=127.0.0.1:{secure}"))
        .arg(format!("--httpAddr=127.0.0.1:{http}"))
        .arg(format!("--monitoringAddr=127.0.0.1:{monitoring}"))
        .arg(format!("--httpsAddr=127.0.0.1:{https}"))
        .args(args)
        .current_dir(cwd)
        .env("POD_NAMESPACE", "istio-system")
        .env("POD_NAME", "istiod-conformance")
        .env("KUBECONFIG", kubeconfig)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("istiod starts");
    let istiod = Istiod {
        child,
        secure_grpc: format!("127.0.0.1:{secure}"),
        log,
    };
    let start = Instant::now();
    loop {
        let ready = reqwest::blocking::get(format!("http://127.0.0.1:{http}/ready"))
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return istiod;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "istiod did not become ready:\n{}",
            istiod.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How long a controller has to converge in these tests.
const WITHIN: Duration = Duration::from_secs(60);

/// What a kubelet does with a Secret volume: its keys as files in `dir`.
fn mount_secret(s: &Secret, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in s.data.clone().unwrap_or_default() {
        std::fs::write(dir.join(&k), &v.0).unwrap();
    }
}

/// Istio's CRDs (istiod watches them) and the namespaces, and istiod's
/// service account bound to cluster-admin (istiod's own RBAC is not under test).
pub(crate) async fn cluster_for_istio(cp: &ControlPlane, admin: &Client) -> PathBuf {
    let crds = std::fs::read_to_string(built("SIGNET_ISTIO_CRDS")).unwrap();
    apply_manifests(admin, &json!({ "istio crds": crds }), "default", false).await;
    for ns in ["istio-system", "default", "signet"] {
        namespace(admin, ns).await;
    }
    service_account(admin, "istio-system", "istiod").await;
    bind_cluster_role(
        admin,
        "istiod-admin",
        "cluster-admin",
        "istio-system",
        "istiod",
    )
    .await;
    let t = token(admin, "istio-system", "istiod", &[], None).await;
    cp.kubeconfig_with_token("istiod", &t)
}

fn signet_config(d: &Path, kubeconfig: &Path, frontends: &str) -> PathBuf {
    let dd = d.display();
    let text = format!(
        r#"trust_domain: cluster.local
backends:
  int: {{ type: local, cert_file: {dd}/ca.pem, key_file: {dd}/ca-key.pem, chain_file: {dd}/root.pem }}
  root: {{ type: local, cert_file: {dd}/root.pem, key_file: {dd}/root-key.pem }}
authorities:
  mesh: {{ backend: int }}
kubernetes: {{ kubeconfig: {kc} }}
leader_election: {{ namespace: signet, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
{frontends}"#,
        kc = kubeconfig.display()
    );
    let p = d.join("signet.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The intermediate (first certificate after the leaf) of a chain file.
fn issuer_of(chain: &Path) -> Vec<u8> {
    let certs = signet_core::pem::certificates(&std::fs::read(chain).unwrap()).unwrap();
    certs[1].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_plug_in_ca_reads_the_cacerts_signet_keeps_and_takes_a_rotation() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    let istiod_kc = cluster_for_istio(&cp, &admin).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, root) = local_ca(d);
    let config = signet_config(
        d,
        &cp.admin_kubeconfig(),
        &format!(
            "  istio_cacerts: {{ backend: root, ttl: 720h, revocation_file: {}/revoked.yaml }}\n  istio_root_cert: {{ authority: mesh, namespace_selector: \"signet-roots=enabled\", poll: 1s }}\n",
            d.display()
        ),
    );
    // A workload certificate revoked before istiod starts: its serial goes
    // into the CRL signet writes beside the plug-in CA.
    let revoked = Command::new(bin())
        .args([
            "revoke",
            "--config",
            config.to_str().unwrap(),
            "--cacerts",
            "--serial",
            "0a:1b",
        ])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    // A namespace both istiod and signet distribute the root to.
    let shared: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
        json!({ "metadata": { "name": "shared", "labels": { "signet-roots": "enabled" } } }),
    )
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&kube::api::PostParams::default(), &shared)
        .await
        .unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", config.to_str().unwrap()])
        .expect("signet starts");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "istio-system");
    let cacerts = eventually("cacerts", WITHIN, async || {
        secrets.get_opt("cacerts").await.unwrap()
    })
    .await;
    let istiod_dir = d.join("istiod");
    mount_secret(&cacerts, &istiod_dir.join("etc/cacerts"));
    let istiod = start_istiod(&istiod_dir, &istiod_kc, &[], &[]);

    // A workload certificate from istiod, through istio-agent's client code.
    service_account(&admin, "default", "demo").await;
    let t = token(&admin, "default", "demo", &["istio-ca"], None).await;
    let first = d.join("first");
    agent_client(&istiod.secure_grpc, &root, &t, "default", "demo", &first)
        .unwrap_or_else(|e| panic!("{e}\n{}", istiod.log()));
    let first_chain = first.join("cert-chain.pem");
    openssl::verify(&root, Some(&first_chain), &first_chain, None).unwrap();
    assert!(openssl::text(&first_chain).contains("URI:spiffe://cluster.local/ns/default/sa/demo"));
    assert_eq!(
        std::fs::read_to_string(first.join("root-cert.pem"))
            .unwrap()
            .trim(),
        std::fs::read_to_string(&root).unwrap().trim(),
        "the agent's root is signet's"
    );

    // istiod distributes signet's root as istio-ca-root-cert.
    let cm = eventually("istio-ca-root-cert", WITHIN, async || {
        Api::<ConfigMap>::namespaced(admin.clone(), "default")
            .get_opt("istio-ca-root-cert")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        cm.data.unwrap()["root-cert.pem"].trim(),
        std::fs::read_to_string(&root).unwrap().trim()
    );

    // istiod takes the CRL beside the plug-in CA and publishes it for
    // proxies as istio-ca-crl, exactly as signet wrote it.
    let crl = eventually("istio-ca-crl", WITHIN, async || {
        Api::<ConfigMap>::namespaced(admin.clone(), "default")
            .get_opt("istio-ca-crl")
            .await
            .unwrap()
    })
    .await;
    let written = &cacerts.data.as_ref().unwrap()["ca-crl.pem"].0;
    assert_eq!(
        crl.data.unwrap()["ca-crl.pem"].as_bytes(),
        written.as_slice(),
        "istiod publishes signet's CRL"
    );
    let crl_file = d.join("ca-crl.pem");
    std::fs::write(&crl_file, written).unwrap();
    let text = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl_file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("Serial Number: 0A1B"));

    // signet's istio-ca-root-cert is istiod's: the two writers agree on one
    // object (it stops changing) with the same data.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "shared");
    eventually("istio-ca-root-cert in shared", WITHIN, async || {
        cms.get_opt("istio-ca-root-cert").await.unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = cms.get("istio-ca-root-cert").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cms.get("istio-ca-root-cert").await.unwrap();
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "istiod and signet fight over istio-ca-root-cert"
    );
    assert_eq!(
        after.data,
        Api::<ConfigMap>::namespaced(admin.clone(), "default")
            .get("istio-ca-root-cert")
            .await
            .unwrap()
            .data
    );

    // Rotation: signet mints a new intermediate (the Secret is gone, so it
    // writes a fresh one), the kubelet updates the files, istiod takes it.
    let old_intermediate = issuer_of(&first_chain);
    secrets
        .delete("cacerts", &DeleteParams::default())
        .await
        .unwrap();
    let rotated = eventually("new cacerts", WITHIN, async || {
        let s = secrets.get_opt("cacerts").await.unwrap()?;
        let ca = s.data.as_ref()?.get("ca-cert.pem")?.0.clone();
        (signet_core::pem::certificates(&ca).ok()?[0] != old_intermediate).then_some(s)
    })
    .await;
    mount_secret(&rotated, &istiod_dir.join("etc/cacerts"));
    let second = d.join("second");
    let new_intermediate = eventually(
        "istiod issues from the new intermediate",
        WITHIN,
        async || {
            agent_client(&istiod.secure_grpc, &root, &t, "default", "demo", &second).ok()?;
            let i = issuer_of(&second.join("cert-chain.pem"));
            (i != old_intermediate).then_some(i)
        },
    )
    .await;
    assert_ne!(new_intermediate, old_intermediate);
    let second_chain = second.join("cert-chain.pem");
    openssl::verify(&root, Some(&second_chain), &second_chain, None).unwrap();
    // Certificates from the old intermediate stay valid under the same root.
    openssl::verify(&root, Some(&first_chain), &first_chain, None).unwrap();
    drop(istiod);
    drop(signet);
    println!(
        "proved: istiod (plug-in CA) reads the cacerts signet writes (with the ca-crl.pem of `signet revoke --cacerts`, which istiod publishes as istio-ca-crl), issues workload certificates to istio-agent's client that chain to signet's root, distributes that root as istio-ca-root-cert exactly as signet writes it (no fight between the two writers), and takes a rotated intermediate while the old one's certificates stay valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_ra_mode_has_signet_sign_its_csrs_and_serves_with_signets_certificate() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    let istiod_kc = cluster_for_istio(&cp, &admin).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, root) = local_ca(d);
    let config = signet_config(
        d,
        &cp.admin_kubeconfig(),
        "  kubernetes_csr: { authority: mesh, signer_names: [signet.dev/mesh], allowed_requesters: [\"system:serviceaccount:istio-system:istiod\"] }\n  istiod_tls: { authority: mesh, revisions: [default] }\n",
    );
    let signet = Signet::start(&bin(), &["serve", "--config", config.to_str().unwrap()])
        .expect("signet starts");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "istio-system");
    let tls = eventually("istiod-tls", WITHIN, async || {
        secrets.get_opt("istiod-tls").await.unwrap()
    })
    .await;
    let istiod_dir = d.join("istiod");
    let tls_dir = istiod_dir.join("signet-tls");
    mount_secret(&tls, &tls_dir);
    // The chain istiod checks CSR answers against (its external-ca-cert mount).
    std::fs::create_dir_all(istiod_dir.join("etc/external-ca-cert")).unwrap();
    std::fs::copy(&root, istiod_dir.join("etc/external-ca-cert/root-cert.pem")).unwrap();
    let istiod = start_istiod(
        &istiod_dir,
        &istiod_kc,
        &[
            ("EXTERNAL_CA", "ISTIOD_RA_KUBERNETES_API"),
            ("K8S_SIGNER", "signet.dev/mesh"),
        ],
        &[
            format!("--tlsCertFile={}", tls_dir.join("tls.crt").display()),
            format!("--tlsKeyFile={}", tls_dir.join("tls.key").display()),
            format!("--caCertFile={}", tls_dir.join("ca.crt").display()),
        ],
    );
    service_account(&admin, "default", "demo").await;
    let t = token(&admin, "default", "demo", &["istio-ca"], None).await;
    let out = d.join("ra");
    let got = agent_client(&istiod.secure_grpc, &root, &t, "default", "demo", &out)
        .unwrap_or_else(|e| panic!("{e}\n{}\nsignet: {:#?}", istiod.log(), signet.logs()));
    let chain = out.join("cert-chain.pem");
    openssl::verify(&root, Some(&chain), &chain, None).unwrap();
    assert!(
        openssl::text(&chain).contains("URI:spiffe://cluster.local/ns/default/sa/demo"),
        "{got}"
    );
    // signet signed it: its audit names the CSR signer and istiod.
    let audit = signet.logs_containing("kubernetes CSR signed", 1);
    assert!(!audit.is_empty(), "{:#?}", signet.logs());
    drop(istiod);
    drop(signet);
    println!(
        "proved: istiod in RA mode files and approves CSRs for signet.dev/mesh, signet signs them, istiod serves the result to istio-agent's client; istiod's serving certificate is signet's istiod-tls and passes the agent's TLS check"
    );
}
