//! The CRDs: what `signet crds` prints is what the chart ships, with the
//! right group, scopes and an OpenAPI schema for `spec`.

use serde_json::Value;

fn docs(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .filter(|d| d.contains("kind:"))
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect()
}

#[test]
fn the_chart_ships_exactly_what_signet_crds_prints() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/signet/crds/signet.dev.yaml"
    );
    let shipped = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        shipped,
        signet_cert_manager::crds_yaml(),
        "charts/signet/crds/signet.dev.yaml is stale: regenerate it with `signet crds > {path}`"
    );
}

#[test]
fn both_kinds_are_in_signet_dev_with_a_spec_schema() {
    let crds = docs(&signet_cert_manager::crds_yaml());
    assert_eq!(crds.len(), 2);
    for (crd, kind, scope) in [
        (&crds[0], "SignetIssuer", "Namespaced"),
        (&crds[1], "SignetClusterIssuer", "Cluster"),
    ] {
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["spec"]["group"], "signet.dev");
        assert_eq!(crd["spec"]["names"]["kind"], kind);
        assert_eq!(crd["spec"]["scope"], scope);
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert!(v["subresources"]["status"].is_object());
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["type"], "object");
        for field in ["backend", "mode", "policy", "intermediate", "trustDomain"] {
            assert!(spec["properties"][field].is_object(), "{kind}: {field}");
        }
        assert_eq!(spec["required"], serde_json::json!(["backend"]));
        let backend = &spec["properties"]["backend"];
        assert_eq!(backend["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(backend["required"], serde_json::json!(["type"]));
        let policy = &spec["properties"]["policy"]["properties"];
        for field in [
            "maxDuration",
            "allowedUsages",
            "allowCa",
            "allowedSans",
            "rateLimit",
        ] {
            assert!(policy[field].is_object(), "{kind}: policy.{field}");
        }
        assert_eq!(
            spec["properties"]["mode"]["enum"],
            serde_json::json!(["direct", "delegated"])
        );
    }
}
