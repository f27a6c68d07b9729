//! One test body, two API servers: [`Cluster`] is either the in-process
//! [`KubeFake`] or a real kube-apiserver ([`ControlPlane`]).
//!
//! Tests of signet's Kubernetes writers take a `Cluster` and only use what
//! both can do (a kube [`Client`], objects applied, read and listed), so the
//! same body runs on the fake (fast, and able to inject conflicts and drop
//! watches) and on the real server (whose validation, RBAC and watch
//! semantics are what users get). [`cluster_tests!`](crate::cluster_tests)
//! declares the two runs. Where the two disagree, the real one is right.

use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::kube_fake::KubeFake;

/// The API server a test runs against.
#[derive(Debug)]
pub enum Cluster {
    /// The in-process fake.
    Fake(KubeFake),
    /// A real kube-apiserver with etcd, started for this test.
    Real(Box<ControlPlane>),
}

impl Cluster {
    /// A fresh fake API server.
    pub async fn fake() -> Self {
        Self::Fake(KubeFake::start().await)
    }

    /// A fresh real control plane (a few seconds; `SIGNET_CONTROLPLANE`
    /// must name the binary scripts/conformance-build made).
    pub async fn real() -> Self {
        let cp = tokio::task::spawn_blocking(ControlPlane::start)
            .await
            .expect("control plane start-up");
        Self::Real(Box::new(cp))
    }

    /// The fake, for what only it can do (inject conflicts, drop watches).
    pub fn as_fake(&self) -> Option<&KubeFake> {
        match self {
            Self::Fake(f) => Some(f),
            Self::Real(_) => None,
        }
    }

    /// "fake" or "kube-apiserver vX.Y.Z", for messages.
    pub async fn describe(&self) -> String {
        match self {
            Self::Fake(_) => "the API fake".into(),
            Self::Real(_) => match self.client().await.apiserver_version().await {
                Ok(v) => format!("kube-apiserver {}", v.git_version),
                Err(e) => format!("kube-apiserver (version unknown: {e})"),
            },
        }
    }

    /// A client with every right (the fake's admin token; the real
    /// server's system:masters certificate).
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).expect("client")
    }

    /// A client acting as `user` with every right: on the real server by
    /// impersonation (groups `system:masters`), so the server records `user`
    /// as the author (a CSR's `spec.username`); the fake takes what the
    /// object says.
    pub async fn client_as(&self, user: &str) -> Client {
        let mut cfg = self.config().await;
        if let Self::Real(_) = self {
            cfg.auth_info.impersonate = Some(user.to_owned());
            cfg.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
        }
        Client::try_from(cfg).expect("client")
    }

    /// A kubeconfig with every right, for a program the test starts (the
    /// fake's is written into `dir`; the real server's is its own).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        match self {
            Self::Fake(f) => f.kubeconfig(dir, "admin"),
            Self::Real(cp) => cp.admin_kubeconfig(),
        }
    }

    async fn config(&self) -> kube::Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = self.kubeconfig(dir.path());
        let kc = Kubeconfig::read_from(path).expect("kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kube config")
    }

    /// Creates or replaces an object as test set-up, `status` included.
    pub async fn apply(&self, object: Value) -> Value {
        match self {
            Self::Fake(f) => f.apply(object),
            Self::Real(_) => {
                let c = self.client().await;
                let (api, name) = dynamic_for(&c, &object).await;
                let mut object = object;
                if let Some(meta) = object["metadata"].as_object_mut() {
                    // An apply names what it wants, not what was read.
                    meta.remove("managedFields");
                    meta.remove("resourceVersion");
                }
                let pp = PatchParams::apply("signet-tests").force();
                let mut stored = api
                    .patch(&name, &pp, &Patch::Apply(&object))
                    .await
                    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
                if let Some(status) = object.get("status").filter(|s| !s.is_null()) {
                    // Pods, CertificateRequests and the like keep status in a
                    // subresource that an apply of the object ignores.
                    if let Ok(s) = api
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "status": status })),
                        )
                        .await
                    {
                        stored = s;
                    }
                }
                serde_json::to_value(stored).expect("json")
            }
        }
    }

    /// Creates a namespace with `labels`, or sets its labels to those.
    pub async fn add_namespace(&self, name: &str, labels: Value) {
        self.apply(json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": labels } }))
            .await;
    }

    /// The stored object, if any (`namespace` empty for cluster-scoped).
    pub async fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        match self {
            Self::Fake(f) => f.get(api_version, plural, namespace, name),
            Self::Real(_) => {
                let api = by_plural(&self.client().await, api_version, plural, namespace);
                api.get_opt(name)
                    .await
                    .unwrap_or_else(|e| panic!("get {plural} {namespace}/{name}: {e}"))
                    .map(|o| serde_json::to_value(o).expect("json"))
            }
        }
    }

    /// Every stored object of a kind, in all namespaces.
    pub async fn list(&self, api_version: &str, plural: &str) -> Vec<Value> {
        match self {
            Self::Fake(f) => f.list(api_version, plural),
            Self::Real(_) => {
                let api = by_plural(&self.client().await, api_version, plural, "");
                api.list(&ListParams::default())
                    .await
                    .unwrap_or_else(|e| panic!("list {plural}: {e}"))
                    .items
                    .into_iter()
                    .map(|o| serde_json::to_value(o).expect("json"))
                    .collect()
            }
        }
    }

    /// Installs CustomResourceDefinitions and waits until the server
    /// serves them.
    pub async fn install_crds(&self, crds: &[Value]) {
        let c = self.client().await;
        let api: Api<DynamicObject> = Api::all_with(
            c.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        for crd in crds {
            let obj: DynamicObject = serde_json::from_value(crd.clone()).expect("a CRD");
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("CRD {}: {e}", crd["metadata"]["name"]));
        }
        if let Self::Fake(_) = self {
            return;
        }
        for crd in crds {
            let name = crd["metadata"]["name"].as_str().expect("CRD name");
            let start = std::time::Instant::now();
            loop {
                let got = api.get(name).await.expect("CRD");
                let established = got.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Established" && c["status"] == "True")
                    });
                if established {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "CRD {name} never became Established"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// cert-manager's own CRDs, from the Go module scripts/conformance-build
/// fetched (`SIGNET_CERT_MANAGER_CRDS`, its `deploy/crds`).
pub fn cert_manager_crds() -> Vec<Value> {
    let dir = std::env::var_os("SIGNET_CERT_MANAGER_CRDS").expect(
        "SIGNET_CERT_MANAGER_CRDS is not set: run the suite with scripts/test or scripts/conformance",
    );
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(dir).expect("SIGNET_CERT_MANAGER_CRDS") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("CRD file");
            for doc in text.split("\n---") {
                if let Ok(v) = serde_yaml_ng::from_str::<Value>(doc)
                    && v["kind"] == "CustomResourceDefinition"
                {
                    crds.push(v);
                }
            }
        }
    }
    assert!(!crds.is_empty(), "no CRDs in SIGNET_CERT_MANAGER_CRDS");
    crds
}

/// The dynamic API for `object`'s kind (found by discovery) and its name.
async fn dynamic_for(c: &Client, object: &Value) -> (Api<DynamicObject>, String) {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let name = object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_owned();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (ar, caps) = discovery::pinned_kind(c, &GroupVersionKind::gvk(group, version, kind))
        .await
        .unwrap_or_else(|e| panic!("{api_version} {kind} is not served: {e}"));
    let api = match (caps.scope, object["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(c.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(c.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(c.clone(), &ar),
    };
    (api, name)
}

fn by_plural(c: &Client, api_version: &str, plural: &str, namespace: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: String::new(),
        plural: plural.into(),
    };
    if namespace.is_empty() {
        Api::all_with(c.clone(), &ar)
    } else {
        Api::namespaced_with(c.clone(), namespace, &ar)
    }
}

/// Declares one `#[tokio::test]` per named body `async fn(Cluster)` of the
/// enclosing module, on the fake (`fake: a, b`) or on a real API server
/// (`real: a, b`), or both (`both: a, b`: modules `fake` and
/// `conformance`). Put the real ones in a module named `conformance`:
/// scripts/conformance selects tests by that path segment. The real run
/// prints the `proved:` line every conformance test ends with.
#[macro_export]
macro_rules! cluster_tests {
    (both: $($name:ident),+ $(,)?) => {
        mod fake {
            $crate::cluster_tests!(fake: $($name),+);
        }
        mod conformance {
            $crate::cluster_tests!(real: $($name),+);
        }
    };
    (fake: $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::$name($crate::cluster::Cluster::fake().await).await;
            }
        )+
    };
    (real: $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let cluster = $crate::cluster::Cluster::real().await;
                let on = cluster.describe().await;
                super::$name(cluster).await;
                println!(
                    "proved: {} {} (the same test as on the API fake), on {on}",
                    module_path!().rsplit("::").nth(1).unwrap_or_default(),
                    stringify!($name).replace('_', " "),
                );
            }
        )+
    };
}
