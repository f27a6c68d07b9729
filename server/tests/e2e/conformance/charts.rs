//! Every values file the chart ships (charts/signet/ci) renders to objects
//! the real API server accepts (server-side dry run: its schema checks, its
//! RBAC validation of roles, nothing stored).

use std::path::Path;

use signet_tests::control_plane::ControlPlane;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chart_mode_is_accepted_by_the_real_api_server() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    namespace(&admin, "signet").await;
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/signet");
    let mut files: Vec<_> = std::fs::read_dir(chart.join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let out = signet_tests::helm::render(&chart, "signet", "signet", &files);
    // The namespaces the renderings name exist in a real cluster.
    for f in &files {
        for text in out[f.to_str().unwrap()]["manifests"]
            .as_object()
            .unwrap()
            .values()
        {
            for doc in text.as_str().unwrap_or_default().split("\n---") {
                if let Ok(v) = serde_yaml_ng::from_str::<serde_json::Value>(doc)
                    && let Some(ns) = v["metadata"]["namespace"].as_str()
                {
                    namespace(&admin, ns).await;
                }
            }
        }
    }
    let mut checked = Vec::new();
    for f in &files {
        let one = &out[f.to_str().unwrap()];
        assert!(
            one["render_error"].is_null(),
            "{}: {}",
            f.display(),
            one["render_error"]
        );
        let kinds = apply_manifests(&admin, &one["manifests"], "signet", true).await;
        assert!(
            kinds.iter().any(|k| k == "Deployment"),
            "{}: {kinds:?}",
            f.display()
        );
        checked.push(format!(
            "{} ({} objects)",
            f.file_name().unwrap().to_string_lossy(),
            kinds.len()
        ));
    }
    println!(
        "proved: every chart mode is accepted by kube-apiserver's own validation: {}",
        checked.join(", ")
    );
}
