//! charts/signet: linted and rendered by Helm's own library for the default
//! values and every values file under `charts/signet/ci/` and `examples/`;
//! every rendered object parsed into its Kubernetes type; the rendered
//! configuration passes `signet check --offline`; ports, probes, mounts and
//! RBAC follow from that configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;

const RELEASE: &str = "signet";
const NAMESPACE: &str = "signet";

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn yaml_files(dir: &Path, name: Option<&str>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .flat_map(|p| {
            if p.is_dir() {
                name.map(|n| p.join(n))
                    .into_iter()
                    .filter(|p| p.exists())
                    .collect::<Vec<_>>()
            } else if name.is_none() && p.extension().is_some_and(|e| e == "yaml") {
                vec![p]
            } else {
                vec![]
            }
        })
        .collect();
    out.sort();
    out
}

/// One rendering: the objects by kind and name.
#[derive(Default)]
struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }
    fn one<T: serde::de::DeserializeOwned>(&self, kind: &str) -> T {
        let all = self.of_kind(kind);
        assert_eq!(all.len(), 1, "exactly one {kind}");
        serde_json::from_value(all[0].clone()).unwrap()
    }
    fn rules(&self, kind: &str) -> Vec<(Option<String>, PolicyRule)> {
        self.of_kind(kind)
            .into_iter()
            .flat_map(|o| {
                let ns = o["metadata"]["namespace"].as_str().map(str::to_owned);
                let rules: Vec<PolicyRule> =
                    serde_json::from_value(o["rules"].clone()).unwrap_or_default();
                rules.into_iter().map(move |r| (ns.clone(), r))
            })
            .collect()
    }
}

/// Every object of the manifests, each parsed into its Kubernetes type.
fn parse(label: &str, manifests: &serde_json::Map<String, Value>) -> Rendered {
    let mut r = Rendered::default();
    for (template, text) in manifests {
        if template.ends_with("NOTES.txt") {
            assert!(!text.as_str().unwrap().trim().is_empty(), "{label}: NOTES");
            continue;
        }
        for doc in text.as_str().unwrap().split("\n---") {
            if doc
                .lines()
                .all(|l| l.trim().is_empty() || l.starts_with('#'))
            {
                continue;
            }
            let v: Value = serde_yaml_ng::from_str(doc)
                .unwrap_or_else(|e| panic!("{label}: {template}: not YAML: {e}\n{doc}"));
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let where_ = format!("{label}: {template}");
            match kind.as_str() {
                "Deployment" => typed::<Deployment>(&where_, &v),
                "Service" => typed::<Service>(&where_, &v),
                "ServiceAccount" => typed::<ServiceAccount>(&where_, &v),
                "ConfigMap" => typed::<ConfigMap>(&where_, &v),
                "PodDisruptionBudget" => typed::<PodDisruptionBudget>(&where_, &v),
                "ClusterRole" => typed::<ClusterRole>(&where_, &v),
                "ClusterRoleBinding" => typed::<ClusterRoleBinding>(&where_, &v),
                "Role" => typed::<Role>(&where_, &v),
                "RoleBinding" => typed::<RoleBinding>(&where_, &v),
                "ServiceMonitor" => {
                    assert_eq!(v["apiVersion"], "monitoring.coreos.com/v1");
                    assert_eq!(v["spec"]["endpoints"][0]["port"], "http-admin");
                }
                other => panic!("{label}: {template}: unexpected kind {other:?}"),
            }
            assert!(
                v["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "{label}: {template}: unnamed object"
            );
            r.objects.push(v);
        }
    }
    r
}

/// Parses `v` as `T` and serializes it back: any field the type does not
/// know (a misspelt key, a key at the wrong level) is lost on the way and
/// shows as a difference.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(what: &str, v: &Value) {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid {}: {e}", v["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(path) = first_difference(v, &back, String::new()) {
        panic!("{what}: `{path}` is not part of {}", v["kind"]);
    }
}

fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, va)| match y.get(k) {
            Some(vb) => first_difference(va, vb, format!("{path}.{k}")),
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, format!("{path}[{i}]"))),
        _ if a == b => None,
        // Quantities and int-or-strings may change form, not meaning.
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n))
            if n.to_string() == *s =>
        {
            None
        }
        _ => Some(path),
    }
}

fn port_of(listen: &str) -> i32 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// Every `*_file` path in a configuration.
fn file_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(s) if k.ends_with("_file") || k == "kubeconfig" => {
                        out.push(s.clone())
                    }
                    _ => file_paths(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| file_paths(v, out)),
        _ => {}
    }
}

fn has_rule(rules: &[(Option<String>, PolicyRule)], resource: &str, verb: &str) -> bool {
    rules.iter().any(|(_, r)| {
        r.resources
            .as_ref()
            .is_some_and(|rs| rs.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

/// What one rendering must show, given the configuration it carries.
fn check(label: &str, values: &Value, r: &Rendered, bin: &Path, tmp: &Path) {
    // The configuration: signet itself accepts it.
    let cm: ConfigMap = r.one("ConfigMap");
    let text = cm.data.as_ref().unwrap()["signet.yaml"].clone();
    let path = tmp.join(format!("{}.yaml", label.replace(['/', '.'], "_")));
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: signet check --offline: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_yaml_ng::from_str(&text).unwrap();
    let frontends = &config["frontends"];

    // The pod: ports from the listen addresses, probes on the admin port,
    // non-root, read-only, credentials mounted where the config reads them.
    let dep: Deployment = r.one("Deployment");
    let pod = dep.spec.template.spec.clone().unwrap();
    let c = &pod.containers[0];
    let ports: BTreeMap<String, i32> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports.get("admin"),
        Some(&port_of(config["admin"]["listen"].as_str().unwrap())),
        "{label}"
    );
    for (frontend, port) in [("rest", "rest"), ("istio", "grpc")] {
        match frontends[frontend]["listen"].as_str() {
            Some(l) => assert_eq!(ports.get(port), Some(&port_of(l)), "{label}: {port}"),
            None => assert!(!ports.contains_key(port), "{label}: stray {port} port"),
        }
    }
    for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            "admin",
            "{label}: probe port"
        );
    }
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{label}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{label}");
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true),
        "{label}"
    );
    let mounts: Vec<String> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    let mut files = Vec::new();
    file_paths(&config, &mut files);
    for f in files {
        let served = f.starts_with("/var/run/secrets/kubernetes.io/serviceaccount/")
            || mounts.iter().any(|m| f.starts_with(&format!("{m}/")));
        assert!(served, "{label}: {f} is not in any mounted volume");
    }
    // The Service exposes exactly the container's named ports.
    let svc: Service = r.one("Service");
    for p in svc.spec.unwrap().ports.unwrap() {
        let target = serde_json::to_value(p.target_port.unwrap()).unwrap();
        assert!(
            ports.contains_key(target.as_str().unwrap()),
            "{label}: service port {target} has no container port"
        );
    }
    // A PodDisruptionBudget when there is more than one replica.
    let replicas = dep.spec.replicas.unwrap_or(1);
    let pdb = values["podDisruptionBudget"]["enabled"].as_bool() != Some(false);
    assert_eq!(
        r.of_kind("PodDisruptionBudget").len(),
        usize::from(pdb && replicas > 1),
        "{label}: PDB"
    );
    let sa = &values["serviceAccount"];
    assert_eq!(
        r.of_kind("ServiceAccount").len(),
        usize::from(sa["create"].as_bool() != Some(false)),
        "{label}"
    );
    if let Some(name) = sa["name"].as_str() {
        assert_eq!(pod.service_account_name.as_deref(), Some(name), "{label}");
    }
    if values["rbac"]["create"].as_bool() == Some(false) {
        for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
            assert!(
                r.of_kind(kind).is_empty(),
                "{label}: {kind} without rbac.create"
            );
        }
        return;
    }

    // RBAC: nothing wildcarded, and each permission only with its front-end.
    let cluster = r.rules("ClusterRole");
    let namespaced = r.rules("Role");
    for (_, rule) in cluster.iter().chain(&namespaced) {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "{label}: verb *");
        assert!(
            !rule.resources.iter().flatten().any(|v| v == "*"),
            "{label}: resource *"
        );
    }
    let present = |k: &str| !frontends[k].is_null();
    let csr = present("kubernetes_csr");
    assert_eq!(
        has_rule(&cluster, "certificatesigningrequests", "watch"),
        csr,
        "{label}"
    );
    assert_eq!(
        has_rule(&cluster, "certificatesigningrequests/status", "update"),
        csr,
        "{label}"
    );
    if csr {
        let sign = cluster
            .iter()
            .find(|(_, r)| r.verbs.contains(&"sign".to_owned()))
            .unwrap();
        let names: BTreeSet<&str> = sign
            .1
            .resource_names
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let wanted: BTreeSet<&str> = frontends["kubernetes_csr"]["signer_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            names, wanted,
            "{label}: sign only for the configured signers"
        );
    }
    let pods = present("pod_certificates");
    assert_eq!(
        has_rule(&cluster, "podcertificaterequests", "watch"),
        pods,
        "{label}"
    );
    assert_eq!(
        has_rule(&cluster, "podcertificaterequests/status", "patch"),
        pods,
        "{label}"
    );
    if pods {
        let signs: BTreeSet<&str> = cluster
            .iter()
            .filter(|(_, r)| r.verbs.contains(&"sign".to_owned()))
            .flat_map(|(_, r)| r.resource_names.iter().flatten().map(String::as_str))
            .collect();
        for s in frontends["pod_certificates"]["signer_names"]
            .as_array()
            .unwrap()
        {
            assert!(signs.contains(s.as_str().unwrap()), "{label}: sign {s}");
        }
        assert!(has_rule(&cluster, "nodes", "get"), "{label}: nodes");
    }
    let by_labels = ["istio", "kubernetes_csr", "pod_certificates"]
        .iter()
        .any(|k| {
            frontends[*k]["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["namespace_labels"].is_object()))
        });
    if by_labels {
        assert!(
            has_rule(&cluster, "namespaces", "watch"),
            "{label}: namespaces"
        );
    }
    assert_eq!(
        has_rule(&cluster, "configmaps", "create"),
        present("istio_root_cert"),
        "{label}"
    );
    assert_eq!(
        has_rule(&cluster, "certificaterequests", "watch"),
        present("cert_manager"),
        "{label}"
    );
    let in_cluster_review = frontends["istio"]["auth"]["token_review"]["clusters"]
        .as_object()
        .is_some_and(|c| c.values().any(|c| c["kubeconfig"].is_null()));
    assert_eq!(
        has_rule(&cluster, "tokenreviews", "create"),
        in_cluster_review,
        "{label}"
    );
    // Secrets: only where a writer or issuer needs them.
    let secret_namespaces: BTreeSet<String> = namespaced
        .iter()
        .filter(|(_, r)| r.resources.iter().flatten().any(|x| x == "secrets"))
        .map(|(ns, _)| ns.clone().unwrap())
        .collect();
    let mut wanted = BTreeSet::new();
    for k in ["istio_cacerts", "istiod_tls"] {
        if present(k) {
            wanted.insert(
                frontends[k]["namespace"]
                    .as_str()
                    .unwrap_or("istio-system")
                    .to_owned(),
            );
        }
    }
    // The issuer reads Secrets cluster-wide, unless the values list the
    // namespaces: then a Role in each, plus the cluster resource namespace.
    let issuer_namespaces: Vec<&str> = values["rbac"]["issuerSecretNamespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if present("cert_manager") {
        assert_eq!(
            has_rule(&cluster, "secrets", "get"),
            issuer_namespaces.is_empty(),
            "{label}: cluster-wide Secret reads"
        );
        if !issuer_namespaces.is_empty() {
            wanted.extend(issuer_namespaces.iter().map(|n| n.to_string()));
            wanted.insert(
                frontends["cert_manager"]["cluster_resource_namespace"]
                    .as_str()
                    .unwrap_or(NAMESPACE)
                    .to_owned(),
            );
        }
    } else {
        assert!(
            !has_rule(&cluster, "secrets", "get"),
            "{label}: stray Secret reads"
        );
    }
    assert_eq!(secret_namespaces, wanted, "{label}: secrets");
    let writes = [
        "kubernetes_csr",
        "istio_cacerts",
        "istio_root_cert",
        "istiod_tls",
        "cert_manager",
        "cluster_trust_bundles",
        "pod_certificates",
    ]
    .iter()
    .any(|k| present(k));
    assert_eq!(
        has_rule(&namespaced, "leases", "update"),
        writes,
        "{label}: leases"
    );
    // A cert_manager backend may read its issuer (the layout check), by name only.
    let mut issuers = (false, false);
    if let Some(backends) = config["backends"].as_object() {
        for b in backends.values().filter(|b| b["type"] == "cert_manager") {
            if b["issuer"]["kind"] == "ClusterIssuer" {
                issuers.0 = true;
            } else {
                issuers.1 = true;
            }
        }
    }
    assert_eq!(
        has_rule(&cluster, "clusterissuers", "get"),
        issuers.0,
        "{label}: clusterissuers"
    );
    assert_eq!(
        has_rule(&namespaced, "issuers", "get"),
        issuers.1,
        "{label}: issuers"
    );
    // Every binding names a role of the release and its service account.
    for b in r
        .of_kind("ClusterRoleBinding")
        .into_iter()
        .chain(r.of_kind("RoleBinding"))
    {
        assert_eq!(b["subjects"][0]["namespace"], NAMESPACE, "{label}");
        assert_eq!(b["roleRef"]["name"], b["metadata"]["name"], "{label}");
    }
}

#[test]
fn the_chart_lints_and_renders_with_every_values_file() {
    let root = root();
    let chart = root.join("charts/signet");
    let mut files = yaml_files(&chart.join("ci"), None);
    let examples = yaml_files(&root.join("examples"), Some("values.yaml"));
    assert!(files.len() >= 4, "charts/signet/ci has values files");
    assert!(examples.len() >= 5, "examples have values files");
    files.extend(examples);
    let result = signet_tests::helm::render(&chart, RELEASE, NAMESPACE, &files);
    let tmp = tempfile::tempdir().unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_signet"));
    let results = result.as_object().unwrap();
    assert_eq!(results.len(), files.len() + 1);
    for (file, out) in results {
        let label = if file.is_empty() {
            "default values".to_owned()
        } else {
            Path::new(file)
                .strip_prefix(&root)
                .unwrap_or(Path::new(file))
                .display()
                .to_string()
        };
        // `helm lint --strict`: no errors, no warnings (info is allowed).
        let lint = &out["lint"];
        assert!(
            lint["errors"].as_array().unwrap().is_empty(),
            "{label}: lint: {lint}"
        );
        for m in lint["messages"].as_array().unwrap() {
            assert!(m["severity"].as_i64().unwrap() <= 1, "{label}: lint: {m}");
        }
        assert!(
            out["schema_error"].is_null(),
            "{label}: {}",
            out["schema_error"]
        );
        assert!(
            out["render_error"].is_null(),
            "{label}: {}",
            out["render_error"]
        );
        let rendered = parse(&label, out["manifests"].as_object().unwrap());
        let values: Value = if file.is_empty() {
            Value::Null
        } else {
            serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
        };
        check(&label, &values, &rendered, &bin, tmp.path());
    }
}

/// Values a user could get wrong are refused by the schema or the chart.
#[test]
fn the_chart_refuses_bad_values() {
    let chart = root().join("charts/signet");
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("replicas.yaml", "replicaCount: two\n", "replicaCount"),
        (
            "affinity.yaml",
            "podAntiAffinity: maybe\n",
            "podAntiAffinity",
        ),
        ("typo.yaml", "replicaCont: 2\n", "replicaCont"),
        (
            "no-admin.yaml",
            "config:\n  trust_domain: cluster.local\n",
            "admin",
        ),
        (
            "mount.yaml",
            "secretMounts:\n  - name: ca\n    secretName: ca\n    mountPath: relative\n",
            "mountPath",
        ),
        (
            "port-zero.yaml",
            "config:\n  trust_domain: cluster.local\n  admin: { listen: \"127.0.0.1:0\" }\n",
            "needs a fixed port",
        ),
    ];
    let files: Vec<PathBuf> = cases
        .iter()
        .map(|(name, body, _)| {
            let p = tmp.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        })
        .collect();
    let result = signet_tests::helm::render(&chart, RELEASE, NAMESPACE, &files);
    for ((_, _, needle), file) in cases.iter().zip(&files) {
        let out = &result[file.to_str().unwrap()];
        let said = format!("{} {}", out["schema_error"], out["render_error"]);
        assert!(
            said.contains(needle),
            "{}: expected a refusal naming {needle}, got {said}",
            file.display()
        );
    }
}

/// Each example's values.yaml carries exactly its signet.yaml.
#[test]
fn example_values_carry_the_example_config() {
    let examples = yaml_files(&root().join("examples"), Some("values.yaml"));
    for values in examples {
        let v: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&values).unwrap()).unwrap();
        let config: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(values.with_file_name("signet.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["config"], config, "{}", values.display());
    }
}
