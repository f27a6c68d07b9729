//! Root rotation: a backend slot moves from one root to another through
//! publish, issue and done, and a delegated authority on it follows.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_core::caller::Caller;
use signet_core::chain::RootRole;
use signet_core::clock::ManualClock;
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::policy::{AuthorityPolicy, PolicyConfig, Profile};
use signet_core::rotation::{Phase, Rotating, Rotation};
use signet_core::testing::{self, CaSigner};
use signet_core::{Authority, IssuedChain, Signer};

mod common;
use common::td;

/// webpki checks the chain (see [`common::webpki_verify`]).
fn webpki_ok(chain: &IssuedChain, now: SystemTime) {
    common::webpki_verify(chain, now, webpki::KeyUsage::client_auth()).unwrap();
}

const DAY: Duration = Duration::from_secs(86_400);

fn roles(bundle: &signet_core::TrustBundle) -> Vec<(Vec<u8>, RootRole)> {
    bundle
        .with_roles()
        .map(|(d, r)| (d.as_ref().to_vec(), r))
        .collect()
}

fn root_of(s: &CaSigner) -> Vec<u8> {
    s.ca().certificate().as_ref().to_vec()
}

fn phase(p: Phase, now: SystemTime) -> Rotation {
    let mut r = Rotation::new(
        None,
        "next".into(),
        Duration::from_secs(60),
        DAY,
        Duration::from_secs(1),
        now,
        String::new(),
    );
    r.phase = p;
    r
}

#[tokio::test]
async fn a_slot_publishes_then_issues_from_then_keeps_only_the_next_root() {
    let now = SystemTime::now();
    let clock = Arc::new(ManualClock::new(now));
    let old = CaSigner::root(now, 30 * DAY);
    let new = CaSigner::root(now, 30 * DAY);
    let backends: BTreeMap<String, Arc<dyn Signer>> =
        [("next".to_owned(), new.clone() as Arc<dyn Signer>)].into();
    let slot = Arc::new(Rotating::new("root", old.clone(), backends));
    let cfg = IntermediateConfig::default();
    let delegated = Delegated::start("mesh", slot.clone(), cfg, td(), clock.clone());
    delegated.ready().await;
    let policy = PolicyConfig::default();
    let authority = Authority::new(
        "mesh",
        delegated.clone(),
        AuthorityPolicy::new(td(), policy).unwrap(),
        clock.clone(),
    );
    let issue = async || {
        let csr = testing::spiffe_csr("spiffe://cluster.local/ns/a/sa/w");
        let grant = testing::grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
        authority
            .issue(
                &Caller::internal("t"),
                &grant,
                &csr,
                &testing::request(Profile::Workload),
            )
            .await
            .unwrap()
    };
    let mut changes = slot.issuer_changes().expect("a slot reports changes");
    let first = delegated.current().unwrap();

    // No entry: the slot is its own backend.
    assert_eq!(
        roles(&slot.trust_bundle().await.unwrap()),
        [(root_of(&old), RootRole::Current)]
    );

    // publish: the old root issues, the next one is in every answer.
    slot.apply(Some(&phase(Phase::Publish, now))).unwrap();
    changes.changed().await.unwrap();
    assert_eq!(
        roles(&slot.trust_bundle().await.unwrap()),
        [
            (root_of(&old), RootRole::Current),
            (root_of(&new), RootRole::Next)
        ]
    );
    let minted = testing::eventually_changes(|| delegated.current().unwrap(), &first).await;
    let leaf = issue().await;
    webpki_ok(&leaf, now);
    assert_eq!(
        leaf.trust_bundle().roots().len(),
        2,
        "the answer carries the next root"
    );
    assert!(signet_core::chain::anchored_by(
        minted.certificate(),
        old.ca().certificate()
    ));

    // issue: the intermediate is re-minted under the next root at once.
    slot.apply(Some(&phase(Phase::Issue, now))).unwrap();
    let under_new = testing::eventually_changes(|| delegated.current().unwrap(), &minted).await;
    assert!(signet_core::chain::anchored_by(
        under_new.certificate(),
        new.ca().certificate()
    ));
    assert_eq!(
        roles(&slot.trust_bundle().await.unwrap()),
        [
            (root_of(&new), RootRole::Current),
            (root_of(&old), RootRole::Retiring)
        ]
    );
    let leaf2 = issue().await;
    webpki_ok(&leaf2, now);
    // A leaf from before still verifies under the bundle handed out now.
    let old_leaf = leaf.clone().with_trust_bundle(leaf2.trust_bundle().clone());
    webpki_ok(&old_leaf, now);

    // done: only the next root, and the old one marked dropped.
    slot.apply(Some(&phase(Phase::Done, now))).unwrap();
    let last = testing::eventually_changes(|| delegated.current().unwrap(), &under_new).await;
    let bundle = slot.trust_bundle().await.unwrap();
    assert_eq!(roles(&bundle), [(root_of(&new), RootRole::Current)]);
    assert_eq!(bundle.dropped(), [old.ca().certificate().clone()]);
    assert_eq!(
        last.trust_bundle().roots(),
        [new.ca().certificate().clone()]
    );
    webpki_ok(&issue().await, now);
}

#[tokio::test]
async fn an_entry_naming_an_unknown_backend_is_refused_and_changes_nothing() {
    let now = SystemTime::now();
    let old = CaSigner::root(now, 30 * DAY);
    let slot = Rotating::new("root", old.clone(), BTreeMap::new());
    let mut bad = phase(Phase::Issue, now);
    bad.to = "missing".into();
    let e = slot.apply(Some(&bad)).unwrap_err();
    assert!(e.contains("no backend named missing"), "{e}");
    assert!(slot.rotation().is_none());
    assert_eq!(
        roles(&slot.trust_bundle().await.unwrap()),
        [(root_of(&old), RootRole::Current)]
    );
}

/// A `to` backend that holds the next root but refuses to sign.
#[derive(Debug)]
struct Refusing(Arc<CaSigner>);

#[async_trait::async_trait]
impl Signer for Refusing {
    async fn sign(
        &self,
        _: &signet_core::IssuanceDecision,
        _: &signet_core::VerifiedCsr,
    ) -> Result<IssuedChain, signet_core::SignError> {
        Err(signet_core::SignError::BackendRejected("refused".into()))
    }
    async fn trust_bundle(&self) -> Result<signet_core::TrustBundle, signet_core::SignError> {
        self.0.trust_bundle().await
    }
    fn describe(&self) -> signet_core::BackendInfo {
        self.0.describe()
    }
}

/// When the next root's backend will not issue, a delegated authority keeps
/// signing under the old root while that root is still trusted (issue), and
/// stops — not ready — once the rotation dropped it (done).
#[tokio::test]
async fn an_intermediate_under_a_dropped_root_stops_signing() {
    let now = SystemTime::now();
    let clock = Arc::new(ManualClock::new(now));
    let old = CaSigner::root(now, 30 * DAY);
    let new = CaSigner::root(now, 30 * DAY);
    let backends: BTreeMap<String, Arc<dyn Signer>> = [(
        "next".to_owned(),
        Arc::new(Refusing(new)) as Arc<dyn Signer>,
    )]
    .into();
    let slot = Arc::new(Rotating::new("root", old.clone(), backends));
    let delegated = Delegated::start(
        "mesh",
        slot.clone(),
        IntermediateConfig::default(),
        td(),
        clock,
    );
    delegated.ready().await;
    let held = delegated.current().unwrap();
    slot.apply(Some(&phase(Phase::Issue, now))).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        delegated.current().is_some_and(|c| Arc::ptr_eq(&c, &held)),
        "issue: the old root is still trusted, the intermediate keeps signing"
    );
    slot.apply(Some(&phase(Phase::Done, now))).unwrap();
    for _ in 0..100 {
        if delegated.current().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delegated.current().is_none(), "done: withdrawn");
    assert!(delegated.describe().ready.is_err());
}
