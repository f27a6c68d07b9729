//! The Kubernetes API fake, exercised through the real `kube` client and
//! kube-runtime's watcher: the semantics controllers rely on.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use signet_tests::kube_fake::KubeFake;

async fn client(fake: &KubeFake) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let kc = Kubeconfig::read_from(fake.kubeconfig(dir.path(), "t")).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

fn cm(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(json!({ "metadata": { "name": name, "labels": { "app": "signet" } }, "data": { "k": data } })).unwrap()
}

#[tokio::test]
async fn crud_with_resource_versions_and_conflicts() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": "a" } })).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "a");
    let created = cms
        .create(&PostParams::default(), &cm("one", "1"))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("one", "1"))
                .await
                .unwrap_err()
        ),
        409,
        "AlreadyExists"
    );
    // Objects in a namespace that does not exist are refused.
    let missing: Api<ConfigMap> = Api::namespaced(c.clone(), "nope");
    assert_eq!(
        code(
            missing
                .create(&PostParams::default(), &cm("x", "1"))
                .await
                .unwrap_err()
        ),
        404
    );

    let mut updated = created.clone();
    updated.data = Some([("k".to_owned(), "2".to_owned())].into());
    let after = cms
        .replace("one", &PostParams::default(), &updated)
        .await
        .unwrap();
    assert_ne!(
        after.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    // The same stale object again: 409.
    assert_eq!(
        code(
            cms.replace("one", &PostParams::default(), &updated)
                .await
                .unwrap_err()
        ),
        409
    );

    // Merge patch, label selector, generateName.
    cms.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "tier": "x" } } })),
    )
    .await
    .unwrap();
    let mut generated = cm("", "g");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = cms
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));
    assert_eq!(
        cms.list(&ListParams::default().labels("tier=x"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        cms.list(&ListParams::default().labels("app=signet,tier!=x"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        cms.list(&ListParams::default().fields("metadata.name=one"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Injected conflicts, then deletion.
    fake.inject_conflicts(2);
    assert_eq!(
        code(
            cms.patch("one", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        ),
        409
    );
    assert_eq!(
        code(
            cms.patch("one", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        ),
        409
    );
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(cms.get("one").await.unwrap_err()), 404);
}

#[tokio::test]
async fn status_and_approval_subresources_of_csrs() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let csrs: Api<CertificateSigningRequest> = Api::all(c);
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": { "name": "r1" },
        "spec": { "request": "cmVxdWVzdA==", "signerName": "signet.dev/mesh", "usages": ["digital signature"] }
    }))
    .unwrap();
    csrs.create(&PostParams::default(), &csr).await.unwrap();
    // /status may not approve; /approval may.
    let approve = json!({ "status": { "conditions": [{ "type": "Approved", "status": "True", "reason": "Test", "message": "ok" }] } });
    assert_eq!(
        code(
            csrs.patch_status(
                "r1",
                &PatchParams::default(),
                &Patch::Merge(approve.clone())
            )
            .await
            .unwrap_err()
        ),
        422
    );
    csrs.patch_approval("r1", &PatchParams::default(), &Patch::Merge(approve))
        .await
        .unwrap();
    // Writing the certificate through /status leaves the spec alone.
    let signed = csrs
        .patch_status(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "certificate": "Y2VydA==" } })),
        )
        .await
        .unwrap();
    assert!(signed.status.unwrap().certificate.is_some());
    // The main resource ignores status and refuses spec changes.
    let mut got = csrs.get("r1").await.unwrap();
    got.spec.signer_name = "other/signer".into();
    assert_eq!(
        code(
            csrs.replace("r1", &PostParams::default(), &got)
                .await
                .unwrap_err()
        ),
        422
    );
}

#[tokio::test]
async fn server_side_apply_conflicts_unless_forced() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let leases: Api<Lease> = Api::namespaced(c, "default");
    let apply = |holder: &str| {
        Patch::Apply(
            json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": { "holderIdentity": holder } }),
        )
    };
    leases
        .patch("l", &PatchParams::apply("a"), &apply("a"))
        .await
        .unwrap();
    leases
        .patch("l", &PatchParams::apply("a"), &apply("a"))
        .await
        .unwrap();
    assert_eq!(
        code(
            leases
                .patch("l", &PatchParams::apply("b"), &apply("b"))
                .await
                .unwrap_err()
        ),
        409
    );
    leases
        .patch("l", &PatchParams::apply("b").force(), &apply("b"))
        .await
        .unwrap();
    assert_eq!(
        leases
            .get("l")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let secrets: Api<Secret> = Api::namespaced(c, "default");
    let s: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "s", "finalizers": ["signet.dev/keep"] } }),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    secrets.delete("s", &DeleteParams::default()).await.unwrap();
    let held = secrets.get("s").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    assert_eq!(code(secrets.get("s").await.unwrap_err()), 404);
}

#[tokio::test]
async fn crds_register_their_resources() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(c.clone());
    let crd = serde_json::from_value(json!({
        "metadata": { "name": "widgets.example.com" },
        "spec": { "group": "example.com", "scope": "Namespaced",
                  "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
                  "versions": [{ "name": "v1", "served": true, "storage": true, "subresources": { "status": {} },
                                 "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } }] }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(c, "default", &ar);
    let w = kube::api::DynamicObject::new("w1", &ar).data(json!({ "spec": { "size": 3 } }));
    widgets.create(&PostParams::default(), &w).await.unwrap();
    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "ready": true } })),
        )
        .await
        .unwrap();
    let got = widgets.get("w1").await.unwrap();
    assert_eq!(got.data["spec"]["size"], 3);
    assert_eq!(got.data["status"]["ready"], true);
}

type Seen = (&'static str, String, String);

async fn next_event(
    stream: &mut futures::stream::BoxStream<
        'static,
        Result<watcher::Event<ConfigMap>, watcher::Error>,
    >,
) -> Seen {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
        {
            Some(Ok(watcher::Event::Apply(o))) => {
                return (
                    "apply",
                    o.metadata.name.unwrap(),
                    o.data.and_then(|d| d.get("k").cloned()).unwrap_or_default(),
                );
            }
            Some(Ok(watcher::Event::Delete(o))) => {
                return ("delete", o.metadata.name.unwrap(), String::new());
            }
            Some(Ok(watcher::Event::InitApply(o))) => {
                return ("init", o.metadata.name.unwrap(), String::new());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
            None => panic!("watch ended"),
        }
    }
}

#[tokio::test]
async fn watchers_see_changes_and_recover_from_dropped_watches() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "w");
    let mut stream = watcher(cms.clone(), watcher::Config::default().timeout(5)).boxed();
    let mut seen = Vec::new();
    cms.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    seen.push(next_event(&mut stream).await);
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "k": "2" } })),
    )
    .await
    .unwrap();
    seen.push(next_event(&mut stream).await);
    fake.drop_watches();
    // Changes made while the watch is being re-established are not lost.
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "k": "3" } })),
    )
    .await
    .unwrap();
    let mut after = next_event(&mut stream).await;
    while after.2 != "3" {
        after = next_event(&mut stream).await;
    }
    seen.push(after);
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    seen.push(next_event(&mut stream).await);
    let kinds: Vec<&str> = seen.iter().map(|s| s.0).collect();
    // The watcher lists lazily: the create shows up in the initial list or as an event.
    assert!(
        matches!(kinds.first(), Some(&"apply" | &"init")),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"delete"));
}
