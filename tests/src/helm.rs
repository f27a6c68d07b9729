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
