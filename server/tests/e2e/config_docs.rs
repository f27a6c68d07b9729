//! docs/configuration.md against the configuration types: every key the
//! types accept is documented, and every documented key is accepted.
//!
//! The types are asked, not mirrored: the loader refuses unknown keys and
//! names the ones it expects, so a probe with a made-up key at a path lists
//! that path's real fields.

use std::collections::BTreeSet;

use serde_json::{Value, json};

const PROBE: &str = "zz_not_a_key";

/// The fields the configuration types accept at `base(<object>)`.
fn fields(base: &dyn Fn(Value) -> Value, path: &[&str]) -> BTreeSet<String> {
    let mut inner = json!({ PROBE: 1 });
    for seg in path.iter().rev() {
        inner = json!({ *seg: inner });
    }
    let mut config = base(inner);
    config["trust_domain"] = json!("cluster.local");
    let text = serde_json::to_string(&config).unwrap();
    let err = match signet::config::Config::parse(&text, "probe") {
        Ok(_) => panic!("{text}: accepted an unknown key"),
        Err(e) => e.to_string(),
    };
    let at = err
        .find(&format!("unknown field `{PROBE}`"))
        .unwrap_or_else(|| panic!("{text}: {err}"));
    let tail = &err[at..];
    if tail.contains("there are no fields") {
        return BTreeSet::new();
    }
    tail.split('`')
        .skip(3)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// A section of the document: its lines up to the next heading of the same
/// or a higher level (code fences skipped).
fn section(doc: &str, heading: &str) -> String {
    let level = heading.split(' ').next().unwrap().len();
    let mut lines = doc.lines().skip_while(|l| *l != heading);
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has no `{heading}`"
    );
    let mut fenced = false;
    let mut out = String::new();
    for l in lines {
        if l.starts_with("```") {
            fenced = !fenced;
        }
        let hashes = l.chars().take_while(|c| *c == '#').count();
        if !fenced && hashes > 0 && hashes <= level && l[hashes..].starts_with(' ') {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The key paths in the first column of the section's key tables (those
/// headed `| key |`): `` `a` ``, `` `a.b`, `a.c` ``, `` `a[]` ``, `` `a.<id>` ``.
fn documented(section: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_table = false;
    for l in section.lines() {
        if !l.starts_with('|') {
            in_table = false;
            continue;
        }
        if l.starts_with("| key |") {
            in_table = true;
            continue;
        }
        if !in_table || !l.starts_with("| `") {
            continue;
        }
        let cell = l.split('|').nth(1).unwrap();
        keys.extend(
            cell.split('`')
                .skip(1)
                .step_by(2)
                // `auth.jwt[]` is the list, `clusters.<id>` the map.
                .map(|k| k.split(".<").next().unwrap().trim_end_matches("[]"))
                .filter(|k| {
                    k.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                })
                .map(str::to_owned),
        );
    }
    keys
}

type Base = Box<dyn Fn(Value) -> Value>;

fn sections() -> Vec<(&'static str, Base)> {
    let backend = |kind: &'static str| -> Base {
        Box::new(move |mut inner: Value| {
            inner["type"] = json!(kind);
            json!({ "backends": { "x": inner } })
        })
    };
    let local_key = |kind: &'static str| -> Base {
        Box::new(move |mut inner: Value| {
            inner["type"] = json!(kind);
            json!({ "backends": { "x": { "type": "local", "cert_file": "c", "key": inner } } })
        })
    };
    vec![
        ("## Top level", Box::new(|inner| inner)),
        ("## `admin`", Box::new(|inner| json!({ "admin": inner }))),
        ("## `trust`", Box::new(|inner| json!({ "trust": inner }))),
        ("### `type: local`", backend("local")),
        ("### `key: { type: file }`", local_key("file")),
        ("### `key: { type: pkcs11 }`", local_key("pkcs11")),
        ("### `key: { type: aws_kms }`", local_key("aws_kms")),
        (
            "### `key: { type: vault_transit }`",
            local_key("vault_transit"),
        ),
        ("### `type: vault`", backend("vault")),
        ("### `type: aws_pca`", backend("aws_pca")),
        ("### `type: gcp_cas`", backend("gcp_cas")),
        ("### `type: cert_manager`", backend("cert_manager")),
        (
            "### `resilience` (remote backends)",
            Box::new(
                |inner| json!({ "backends": { "x": { "type": "vault", "resilience": inner } } }),
            ),
        ),
        (
            "## `authorities.<name>`",
            Box::new(|inner| json!({ "authorities": { "x": inner } })),
        ),
        (
            "## `frontends.rest`",
            Box::new(|inner| json!({ "frontends": { "rest": inner } })),
        ),
        (
            "### `principals[]`",
            Box::new(|inner| json!({ "frontends": { "rest": { "principals": [inner] } } })),
        ),
        (
            "## `frontends.istio`",
            Box::new(|inner| json!({ "frontends": { "istio": inner } })),
        ),
        (
            "## `routes[]`",
            Box::new(|inner| json!({ "frontends": { "istio": { "routes": [inner] } } })),
        ),
        (
            "### `frontends.pod_certificates`",
            Box::new(|inner| json!({ "frontends": { "pod_certificates": inner } })),
        ),
        (
            "### `kubernetes`",
            Box::new(|inner| json!({ "kubernetes": inner })),
        ),
        (
            "### `leader_election`",
            Box::new(|inner| json!({ "leader_election": inner })),
        ),
        (
            "### `frontends.kubernetes_csr`",
            Box::new(|inner| json!({ "frontends": { "kubernetes_csr": inner } })),
        ),
        (
            "### `frontends.istio_cacerts`",
            Box::new(|inner| json!({ "frontends": { "istio_cacerts": inner } })),
        ),
        (
            "### `frontends.istio_root_cert`",
            Box::new(|inner| json!({ "frontends": { "istio_root_cert": inner } })),
        ),
        (
            "### `frontends.istiod_tls`",
            Box::new(|inner| json!({ "frontends": { "istiod_tls": inner } })),
        ),
        (
            "### `frontends.cluster_trust_bundles`",
            Box::new(|inner| json!({ "frontends": { "cluster_trust_bundles": inner } })),
        ),
        (
            "### `frontends.cluster_trust_bundles.bundles[]`",
            Box::new(
                |inner| json!({ "frontends": { "cluster_trust_bundles": { "bundles": [inner] } } }),
            ),
        ),
        (
            "### `frontends.cert_manager`",
            Box::new(|inner| json!({ "frontends": { "cert_manager": inner } })),
        ),
    ]
}

#[test]
fn configuration_reference_matches_the_types() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let mut problems = Vec::new();
    for (heading, base) in sections() {
        let keys = documented(&section(&doc, heading));
        assert!(!keys.is_empty(), "{heading}: no keys documented");
        // Documented → accepted: the parent of each key path lists it.
        for key in &keys {
            let segs: Vec<&str> = key.split('.').collect();
            let (last, parent) = segs.split_last().unwrap();
            if !fields(&*base, parent).contains(*last) {
                problems.push(format!("{heading}: `{key}` is documented but not accepted"));
            }
        }
        // Accepted → documented: every field at the section's root, and
        // every field of an object the section documents key by key
        // (`limits.request_timeout` means all of `limits` is listed).
        let mut objects: BTreeSet<Vec<&str>> = BTreeSet::from([vec![]]);
        for key in &keys {
            let segs: Vec<&str> = key.split('.').collect();
            for n in 1..segs.len() {
                objects.insert(segs[..n].to_vec());
            }
        }
        for object in objects {
            for field in fields(&*base, &object) {
                let mut path = object.clone();
                path.push(&field);
                let path = path.join(".");
                let covered = keys
                    .iter()
                    .any(|k| *k == path || k.starts_with(&format!("{path}.")));
                if !covered {
                    problems.push(format!(
                        "{heading}: `{path}` is accepted but not documented"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
