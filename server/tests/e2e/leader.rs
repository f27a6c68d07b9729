//! Leader election: one leader at a time, prompt hand-over on release,
//! take-over after a crash; on the API fake and on a real kube-apiserver's
//! Lease API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use signet_core::SystemClock;
use signet_core::duration::HumanDuration;
use signet_kubernetes::leader::{Elector, LeaderConfig};
use signet_tests::cluster::Cluster;

signet_tests::cluster_tests!(both:
    one_leader_hand_over_and_take_over,
);

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: "signet".into(),
        lease_name: "signet-leader".into(),
        identity: Some(identity.into()),
        lease_duration: HumanDuration(Duration::from_millis(2000)),
        renew_deadline: HumanDuration(Duration::from_millis(1500)),
        retry_period: HumanDuration(Duration::from_millis(200)),
    }
}

async fn wait_for(
    rx: &tokio::sync::watch::Receiver<bool>,
    want: bool,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    while *rx.borrow() != want {
        assert!(start.elapsed() < within, "not {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn one_leader_hand_over_and_take_over(cluster: Cluster) {
    cluster.add_namespace("signet", json!({})).await;
    let c = cluster.client().await;
    let a = Elector::start(c.clone(), config("a"), Arc::new(SystemClock));
    let a_rx = a.subscribe();
    wait_for(&a_rx, true, Duration::from_secs(5)).await;
    let b = Elector::start(c.clone(), config("b"), Arc::new(SystemClock));
    let b_rx = b.subscribe();
    // For a while, never both.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert!(!(*a_rx.borrow() && *b_rx.borrow()), "two leaders");
        assert!(*a_rx.borrow(), "the first leader keeps renewing");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A clean release hands over without waiting for the lease to expire.
    a.release().await;
    let took = wait_for(&b_rx, true, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_millis(1500),
        "hand-over took {took:?}"
    );
    let lease = cluster
        .get(
            "coordination.k8s.io/v1",
            "leases",
            "signet",
            "signet-leader",
        )
        .await
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1);

    // A crash (no release): the next candidate waits out the lease.
    let c2 = Elector::start(c.clone(), config("c"), Arc::new(SystemClock));
    let c_rx = c2.subscribe();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*c_rx.borrow());
    b.abort();
    let took = wait_for(&c_rx, true, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(1000),
        "took over only after the lease ran out ({took:?})"
    );
    assert_eq!(
        cluster
            .get(
                "coordination.k8s.io/v1",
                "leases",
                "signet",
                "signet-leader"
            )
            .await
            .unwrap()["spec"]["holderIdentity"],
        "c"
    );
    let _ = b_rx;
    c2.release().await;
}
