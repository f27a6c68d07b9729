//! Helm's own library renders and lints the chart: PyPI `helm-python-sdk`
//! (Helm v4 through its C ABI, no `helm` binary), driven by
//! `tests/helm/render.py` in the Python of `$SIGNET_PYTHON` or the project's
//! `.tools/venv`, where `scripts/test` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The Python interpreter that has `helm_python`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SIGNET_PYTHON") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        local.exists(),
        "no Python with helm-python-sdk: run scripts/test, or set SIGNET_PYTHON"
    );
    local
}

/// Lints and renders `chart` as release `release` in `namespace`, once with
/// the default values and once per values file. The answer maps each file
/// (`""` for the defaults) to `{lint, schema_error, render_error, manifests}`.
pub fn render(chart: &Path, release: &str, namespace: &str, values: &[PathBuf]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/render.py");
    let out = Command::new(python())
        .arg(script)
        .arg(chart)
        .args([release, namespace])
        .args(values)
        .output()
        .expect("running tests/helm/render.py");
    assert!(
        out.status.success(),
        "render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("render.py prints JSON")
}

/// The RBAC rules a rendering grants its service account: ClusterRole rules
/// anywhere, Role rules in their namespace.
#[derive(Debug, Default)]
pub struct Rbac {
    rules: Vec<(Option<String>, Value)>,
}

impl Rbac {
    /// From one rendering's `manifests` (template → YAML text).
    pub fn from_manifests(manifests: &Value) -> Self {
        let mut rules = Vec::new();
        for text in manifests.as_object().expect("manifests").values() {
            for doc in text.as_str().unwrap_or_default().split("\n---") {
                let Ok(v) = serde_yaml_ng::from_str::<Value>(doc) else {
                    continue;
                };
                let ns = match v["kind"].as_str() {
                    Some("ClusterRole") => None,
                    Some("Role") => Some(v["metadata"]["namespace"].as_str().unwrap().to_owned()),
                    _ => continue,
                };
                for r in v["rules"].as_array().into_iter().flatten() {
                    rules.push((ns.clone(), r.clone()));
                }
            }
        }
        Self { rules }
    }

    /// Whether some rule allows `access` (names must match `resourceNames`
    /// when a rule has them; `create`, `list` and `watch` carry no name).
    pub fn allows(&self, a: &crate::kube_fake::Access) -> bool {
        let has = |v: &Value, x: &str| {
            v.as_array()
                .is_some_and(|l| l.iter().any(|e| e.as_str() == Some(x)))
        };
        self.rules.iter().any(|(ns, r)| {
            (ns.is_none() || *ns == a.namespace)
                && has(&r["apiGroups"], &a.group)
                && has(&r["resources"], &a.resource)
                && has(&r["verbs"], a.verb)
                && match r["resourceNames"].as_array() {
                    None => true,
                    Some(_) => a
                        .name
                        .as_deref()
                        .is_some_and(|n| has(&r["resourceNames"], n)),
                }
        })
    }
}

/// Renders the chart with `config` as its `config` value (release `signet`
/// in `namespace`) and returns the rules it grants.
pub fn rbac_for_config(config: &Value, namespace: &str) -> Rbac {
    // Tests listen on ephemeral ports; a pod needs fixed ones (the chart
    // refuses port 0), and RBAC does not depend on them.
    fn fix_ports(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    match x {
                        Value::String(s) if k == "listen" && s.ends_with(":0") => {
                            s.truncate(s.len() - 1);
                            s.push_str("18443");
                        }
                        _ => fix_ports(x),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(fix_ports),
            _ => {}
        }
    }
    let mut config = config.clone();
    fix_ports(&mut config);
    let config = &config;
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        serde_json::to_string(&serde_json::json!({ "config": config })).unwrap(),
    )
    .unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/signet");
    let out = render(&chart, "signet", namespace, std::slice::from_ref(&values));
    let one = &out[values.to_str().unwrap()];
    assert!(one["render_error"].is_null(), "{}", one["render_error"]);
    Rbac::from_manifests(&one["manifests"])
}
