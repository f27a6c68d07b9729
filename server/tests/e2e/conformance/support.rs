//! Shared set-up for the conformance tests: an admin client, namespaces,
//! service accounts and their tokens, RBAC, and a local CA for signet.

use signet_core::testing::Ready as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;
use signet_core::VerifiedCsr;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::policy::IssuanceDecision;
use signet_core::spiffe::TrustDomain;
use signet_tests::control_plane::ControlPlane;

pub const DAY: Duration = Duration::from_secs(86_400);

/// The signet binary under test: `SIGNET_BIN` (scripts/conformance and
/// scripts/test set it to the release build), else this build's.
pub fn bin() -> PathBuf {
    std::env::var_os("SIGNET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_signet")))
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

pub async fn admin(cp: &ControlPlane) -> Client {
    client_from(&cp.admin_kubeconfig()).await
}

/// A client acting as `user` in `groups` only (impersonated by the admin),
/// so the API server authorizes and admits its requests as that user's:
/// `system:node:<name>` in `system:nodes` is a kubelet.
pub async fn client_as(cp: &ControlPlane, user: &str, groups: &[&str]) -> Client {
    let kc = Kubeconfig::read_from(cp.admin_kubeconfig()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.auth_info.impersonate = Some(user.to_owned());
    cfg.auth_info.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
    Client::try_from(cfg).unwrap()
}

pub async fn namespace(c: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(c.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    if api.get_opt(name).await.unwrap().is_none() {
        api.create(&PostParams::default(), &ns).await.unwrap();
    }
}

/// Creates a service account (and its namespace); returns its UID.
pub async fn service_account(c: &Client, ns: &str, name: &str) -> String {
    namespace(c, ns).await;
    let api: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    let sa = match api.get_opt(name).await.unwrap() {
        Some(s) => s,
        None => api.create(&PostParams::default(), &sa).await.unwrap(),
    };
    sa.metadata.uid.unwrap()
}

/// A TokenRequest token for `ns/sa` (audiences, lifetime, optionally bound
/// to a pod `(name, uid)`).
pub async fn token(
    c: &Client,
    ns: &str,
    sa: &str,
    audiences: &[&str],
    pod: Option<(&str, &str)>,
) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
    let mut spec = json!({ "audiences": audiences, "expirationSeconds": 3600 });
    if let Some((name, uid)) = pod {
        spec["boundObjectRef"] =
            json!({ "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid });
    }
    let req: TokenRequest = serde_json::from_value(json!({ "spec": spec })).unwrap();
    let out = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest {ns}/{sa}: {e}"));
    out.status.unwrap().token.expect("token")
}

/// A ClusterRole with `rules`, bound to `ns/sa`.
pub async fn grant_cluster(c: &Client, name: &str, rules: Vec<PolicyRule>, ns: &str, sa: &str) {
    let roles: Api<ClusterRole> = Api::all(c.clone());
    roles
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                rules: Some(rules),
                ..ClusterRole::default()
            },
        )
        .await
        .unwrap();
    bind_cluster_role(c, name, name, ns, sa).await;
}

pub async fn bind_cluster_role(c: &Client, binding: &str, role: &str, ns: &str, sa: &str) {
    let api: Api<ClusterRoleBinding> = Api::all(c.clone());
    let b: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": binding },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "ServiceAccount", "name": sa, "namespace": ns }]
    }))
    .unwrap();
    api.create(&PostParams::default(), &b).await.unwrap();
}

pub fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        verbs: v(verbs),
        ..PolicyRule::default()
    }
}

/// A self-signed root (a year) and its key in `dir`, as `<name>.pem` and
/// `<name>-key.pem`; returns the certificate's path.
pub fn self_signed_root(dir: &Path, name: &str) -> PathBuf {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ca = LocalCa::self_signed_root(name, key, SystemTime::now(), 365 * DAY).unwrap();
    std::fs::write(
        dir.join(format!("{name}-key.pem")),
        ca.private_key().unwrap().to_pem().as_bytes(),
    )
    .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, ca.trust_bundle().to_pem()).unwrap();
    cert
}

/// A root and an intermediate for a `local` backend, in `dir`:
/// (intermediate cert, its key, root); the root's key is `root-key.pem`.
pub fn local_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let now = SystemTime::now();
    let td = TrustDomain::new("cluster.local").unwrap();
    let root = LocalCa::self_signed_root(
        "conformance root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        365 * DAY,
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(Some("conformance intermediate"), &[]).unwrap())
        .unwrap();
    let d = IssuanceDecision::intermediate(
        "conformance intermediate",
        &td,
        0,
        now,
        90 * DAY,
        Duration::from_secs(60),
        "test",
    );
    let inter = root.sign(&d, csr.public_key()).ready().unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("ca-key.pem"),
        dir.join("root.pem"),
    );
    std::fs::write(&paths.0, inter.leaf_pem()).unwrap();
    std::fs::write(&paths.1, key.to_pem().as_bytes()).unwrap();
    std::fs::write(&paths.2, root.trust_bundle().to_pem()).unwrap();
    std::fs::write(
        dir.join("root-key.pem"),
        root.private_key().unwrap().to_pem().as_bytes(),
    )
    .unwrap();
    paths
}

/// Creates every object of a chart rendering (`{template: YAML}`) through the
/// API server, which validates each against its real schema; with `dry_run`
/// nothing is stored. Returns the kinds created.
pub async fn apply_manifests(
    c: &Client,
    manifests: &serde_json::Value,
    namespace: &str,
    dry_run: bool,
) -> Vec<String> {
    use kube::api::{DynamicObject, GroupVersionKind};
    use kube::discovery::{self, Scope};
    let mut kinds = Vec::new();
    for (template, text) in manifests.as_object().expect("manifests") {
        for doc in text.as_str().unwrap_or_default().split("\n---") {
            let Ok(v) = serde_yaml_ng::from_str::<serde_json::Value>(doc) else {
                continue;
            };
            if !v.is_object() {
                continue;
            }
            let (Some(api_version), Some(kind)) = (v["apiVersion"].as_str(), v["kind"].as_str())
            else {
                continue;
            };
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let Ok((ar, caps)) = discovery::pinned_kind(c, &gvk).await else {
                // A kind this cluster does not serve (ServiceMonitor without
                // the Prometheus operator's CRDs).
                eprintln!("{template}: {api_version} {kind} not served; skipped");
                continue;
            };
            let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
                let ns = v["metadata"]["namespace"].as_str().unwrap_or(namespace);
                Api::namespaced_with(c.clone(), ns, &ar)
            } else {
                Api::all_with(c.clone(), &ar)
            };
            let obj: DynamicObject = serde_json::from_value(v.clone()).unwrap();
            let pp = PostParams {
                dry_run,
                ..PostParams::default()
            };
            api.create(&pp, &obj)
                .await
                .unwrap_or_else(|e| panic!("{template}: the API server refused {kind}: {e}"));
            kinds.push(kind.to_owned());
        }
    }
    kinds
}

/// A program built by scripts/conformance-build, by its environment variable.
pub fn built(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the suite with scripts/test or scripts/conformance")
    }))
}

/// istio-agent's CA client code (tests/conformance/istio/cmd/agentclient)
/// asking `ca_addr` for a workload certificate; Ok(out dir) or the error it printed.
pub fn agent_client(
    ca_addr: &str,
    root: &Path,
    token: &str,
    ns: &str,
    sa: &str,
    out: &Path,
) -> Result<serde_json::Value, String> {
    let token_file = out.with_extension("token");
    std::fs::write(&token_file, token).unwrap();
    let o = std::process::Command::new(built("SIGNET_AGENT_CLIENT"))
        .args(["--ca-addr", ca_addr, "--root-cert"])
        .arg(root)
        .arg("--token-file")
        .arg(&token_file)
        .args(["--namespace", ns, "--service-account", sa, "--out"])
        .arg(out)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(serde_json::from_slice(&o.stdout).unwrap_or_default())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// The namespaces the writer tests use: `signet` (the Lease),
/// `istio-system`, and `mesh-apps` labelled for root distribution.
pub async fn mesh_namespaces(c: &Client) {
    for (ns, labels) in [
        ("signet", json!({})),
        ("istio-system", json!({})),
        ("mesh-apps", json!({ "istio-injection": "enabled" })),
    ] {
        let n: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": ns, "labels": labels } }))
                .unwrap();
        Api::<Namespace>::all(c.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }
}

/// signet's identity on `cp`: a service account allowed TokenReview (and
/// nothing else); returns a kubeconfig with its token.
pub async fn reviewer_kubeconfig(cp: &ControlPlane, name: &str) -> PathBuf {
    let c = admin(cp).await;
    service_account(&c, "signet", "signet").await;
    bind_cluster_role(
        &c,
        "signet-auth-delegator",
        "system:auth-delegator",
        "signet",
        "signet",
    )
    .await;
    let own = token(&c, "signet", "signet", &[], None).await;
    cp.kubeconfig_with_token(name, &own)
}

/// A channel to signet's Istio gRPC service, trusting `root`, presenting
/// `identity` (a client certificate) when given.
pub async fn istio_channel(
    signet: &signet_tests::process::Signet,
    root: &Path,
    identity: Option<tonic::transport::Identity>,
) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(root).unwrap()))
        .domain_name("istiod.istio-system.svc");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Channel::from_shared(format!("https://{}", signet.grpc_addr.unwrap()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// What signet's admin listener serves at `/metrics`.
pub async fn admin_metrics(signet: &signet_tests::process::Signet) -> String {
    reqwest::get(format!("http://{}/metrics", signet.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
