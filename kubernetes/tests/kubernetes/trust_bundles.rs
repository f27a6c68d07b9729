//! ClusterTrustBundles on the API fake and on a real kube-apiserver: every
//! configured authority's roots mirrored, unchanged objects left alone,
//! entries the configuration drops deleted, others' objects untouched,
//! followers silent.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use signet_core::duration::HumanDuration;
use signet_core::policy::{AuthorityPolicy, PolicyConfig};
use signet_core::spiffe::TrustDomain;
use signet_core::testing::CaSigner;
use signet_core::{Authority, SystemClock};
use signet_kubernetes::trust_bundles::{
    AUTHORITY_LABEL, ClusterTrustBundlesConfig, TrustBundleConfig, TrustBundlePublisher,
};
use signet_tests::cluster::Cluster;
use tokio::sync::watch;

signet_tests::cluster_tests!(both:
    every_bundle_is_mirrored_and_dropped_entries_are_deleted,
    a_follower_writes_nothing,
);

const DAY: Duration = Duration::from_secs(86_400);

fn authority(name: &str) -> Arc<Authority> {
    Arc::new(Authority::new(
        name,
        CaSigner::root(SystemTime::now(), 365 * DAY),
        AuthorityPolicy::new(
            TrustDomain::new("cluster.local").unwrap(),
            PolicyConfig::default(),
        )
        .unwrap(),
        Arc::new(SystemClock),
    ))
}

fn config(entries: &[(&str, Option<&str>)]) -> ClusterTrustBundlesConfig {
    ClusterTrustBundlesConfig {
        bundles: entries
            .iter()
            .map(|(authority, signer)| TrustBundleConfig {
                authority: (*authority).into(),
                signer_name: signer.map(Into::into),
            })
            .collect(),
        poll: HumanDuration::from_secs(30),
    }
}

fn publisher(
    cluster_client: kube::Client,
    entries: &[(&str, Option<&str>)],
    authorities: &[(&str, Arc<Authority>)],
    leader: bool,
) -> (TrustBundlePublisher, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(leader);
    let authorities: Vec<(String, Arc<Authority>)> = authorities
        .iter()
        .map(|(n, a)| ((*n).to_owned(), a.clone()))
        .collect();
    let p = TrustBundlePublisher::new(
        cluster_client,
        &config(entries),
        |name| {
            authorities
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a.clone())
                .unwrap()
        },
        "signet.signet-leader",
        rx,
    );
    (p, tx)
}

async fn pem_of(a: &Authority) -> String {
    a.trust_bundle().await.unwrap().to_pem()
}

async fn every_bundle_is_mirrored_and_dropped_entries_are_deleted(cluster: Cluster) {
    let client = cluster.client().await;
    let api: Api<ClusterTrustBundle> = Api::all(client.clone());
    // Somebody else's bundle, which signet must never touch.
    let foreign: ClusterTrustBundle = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "ClusterTrustBundle",
        "metadata": { "name": "someone-else" },
        "spec": { "trustBundle": pem_of(&authority("other")).await },
    }))
    .unwrap();
    api.create(&PostParams::default(), &foreign).await.unwrap();

    let (mesh, edge) = (authority("mesh"), authority("edge"));
    let entries = [("mesh", Some("signet.dev/mesh")), ("edge", None)];
    let both = [("mesh", mesh.clone()), ("edge", edge.clone())];
    let (p, _leader) = publisher(client.clone(), &entries, &both, true);
    assert_eq!(p.reconcile_once().await.unwrap(), 2);

    let linked = api.get("signet.dev:mesh:mesh").await.unwrap();
    assert_eq!(linked.spec.trust_bundle, pem_of(&mesh).await);
    assert_eq!(linked.spec.signer_name.as_deref(), Some("signet.dev/mesh"));
    let labels = linked.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(AUTHORITY_LABEL).map(String::as_str),
        Some("mesh")
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("signet")
    );
    let plain = api.get("signet-edge").await.unwrap();
    assert_eq!(plain.spec.trust_bundle, pem_of(&edge).await);
    assert_eq!(plain.spec.signer_name, None);

    // Nothing changed: nothing written (the resourceVersion stays).
    let version = linked.metadata.resource_version.clone();
    assert_eq!(p.reconcile_once().await.unwrap(), 0);
    let again = api.get("signet.dev:mesh:mesh").await.unwrap();
    assert_eq!(again.metadata.resource_version, version);

    // The authority's roots change (a new root): the object follows.
    let rotated = authority("mesh");
    let (p, _leader) = publisher(
        client.clone(),
        &entries,
        &[("mesh", rotated.clone()), ("edge", edge.clone())],
        true,
    );
    assert_eq!(p.reconcile_once().await.unwrap(), 1);
    let linked = api.get("signet.dev:mesh:mesh").await.unwrap();
    assert_eq!(linked.spec.trust_bundle, pem_of(&rotated).await);

    // Another installation's object of the same kind is neither adopted nor
    // deleted.
    let other: ClusterTrustBundle = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "ClusterTrustBundle",
        "metadata": {
            "name": "signet-staging",
            "labels": {
                "app.kubernetes.io/managed-by": "signet",
                "signet.dev/authority": "staging",
                "signet.dev/instance": "staging.signet-leader",
            },
        },
        "spec": { "trustBundle": pem_of(&authority("staging")).await },
    }))
    .unwrap();
    api.create(&PostParams::default(), &other).await.unwrap();
    let (p, _leader) = publisher(
        client.clone(),
        &[("staging", None)],
        &[("staging", authority("staging"))],
        true,
    );
    let refused = p.reconcile_once().await.unwrap_err();
    assert!(refused.contains("not this installation's"), "{refused}");

    // The configuration drops "edge": its object goes, the foreign ones stay.
    let (p, _leader) = publisher(
        client.clone(),
        &entries[..1],
        &[("mesh", rotated.clone())],
        true,
    );
    assert_eq!(p.reconcile_once().await.unwrap(), 1);
    assert!(api.get_opt("signet-edge").await.unwrap().is_none());
    assert!(api.get_opt("signet.dev:mesh:mesh").await.unwrap().is_some());
    assert_eq!(
        api.get("signet-staging").await.unwrap().spec.trust_bundle,
        other.spec.trust_bundle,
        "another installation's object is left alone"
    );
    assert_eq!(
        api.get("someone-else").await.unwrap().spec.trust_bundle,
        foreign.spec.trust_bundle
    );
}

async fn a_follower_writes_nothing(cluster: Cluster) {
    let client = cluster.client().await;
    let api: Api<ClusterTrustBundle> = Api::all(client.clone());
    let mesh = authority("mesh");
    let entries = [("mesh", Some("signet.dev/mesh"))];
    let (p, leader) = publisher(client.clone(), &entries, &[("mesh", mesh.clone())], false);
    assert_eq!(p.reconcile_once().await.unwrap(), 0);
    assert!(api.get_opt("signet.dev:mesh:mesh").await.unwrap().is_none());
    // Leadership gained: the next pass publishes.
    leader.send_replace(true);
    assert_eq!(p.reconcile_once().await.unwrap(), 1);
    assert_eq!(
        api.get("signet.dev:mesh:mesh")
            .await
            .unwrap()
            .spec
            .trust_bundle,
        pem_of(&mesh).await
    );
}
