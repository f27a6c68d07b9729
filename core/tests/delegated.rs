//! Delegated authorities: one intermediate from upstream, leaves signed
//! locally, rotation, outages.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_core::caller::Caller;
use signet_core::clock::{Clock, ManualClock};
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::duration::HumanDuration;
use signet_core::error::ErrorKind;
use signet_core::key::KeyAlgorithm;
use signet_core::names::San;
use signet_core::policy::{AuthorityPolicy, PolicyConfig, Profile};
use signet_core::testing::{self, CaSigner, Fault};
use signet_core::{Authority, IssuedChain, VerifiedCsr};

mod common;
use common::td;

/// webpki checks the chain (see [`common::webpki_verify`]).
fn webpki_ok(chain: &IssuedChain, now: SystemTime) {
    common::webpki_verify(chain, now, webpki::KeyUsage::server_auth()).unwrap();
}

const DAY: Duration = Duration::from_secs(86_400);

async fn issue(a: &Authority, n: usize) -> Result<IssuedChain, signet_core::SignError> {
    let id = format!("spiffe://cluster.local/ns/a/sa/w{n}");
    let csr = testing::spiffe_csr(&id);
    let grant = testing::grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
    let req = testing::request(Profile::Workload);
    a.issue(&Caller::internal("t"), &grant, &csr, &req).await
}

fn setup(clock: Arc<ManualClock>, up: Arc<CaSigner>, ttl: Duration) -> (Arc<Delegated>, Authority) {
    let cfg = IntermediateConfig {
        ttl: HumanDuration(ttl),
        key: KeyAlgorithm::EcdsaP256,
        renew_at: 2.0 / 3.0,
        common_name: None,
    };
    let delegated = Delegated::start("mesh", up, cfg, td(), clock.clone());
    let policy = PolicyConfig {
        max_ttl: HumanDuration(DAY),
        ..PolicyConfig::default()
    };
    let authority = Authority::new(
        "mesh",
        delegated.clone(),
        AuthorityPolicy::new(td(), policy).unwrap(),
        clock,
    );
    (delegated, authority)
}

#[tokio::test(start_paused = true)]
async fn fifty_leaves_cost_one_upstream_certificate() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = CaSigner::root(clock.now(), 365 * DAY);
    let (delegated, authority) = setup(clock.clone(), up.clone(), 30 * DAY);
    delegated.ready().await;
    for n in 0..50 {
        let chain = issue(&authority, n).await.unwrap();
        assert_eq!(chain.intermediates().len(), 1);
        webpki_ok(&chain, clock.now());
    }
    assert_eq!(up.calls(), 1, "only the intermediate was signed upstream");
    let ca = delegated.current().unwrap();
    assert!(ca.subject().contains("signet mesh intermediate"));
    assert!(authority.backend().ready.is_ok());
}

/// An upstream that takes a few seconds and does not back-date: the
/// intermediate's NotBefore is when it signed, after the request began
/// (cert-manager's CA issuer on a real API server, found by the
/// conformance suite).
#[derive(Debug)]
struct SlowNoBackdate {
    root: Arc<CaSigner>,
    clock: Arc<ManualClock>,
}

#[async_trait::async_trait]
impl signet_core::Signer for SlowNoBackdate {
    async fn sign(
        &self,
        d: &signet_core::policy::IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, signet_core::SignError> {
        self.clock.advance(Duration::from_secs(3));
        let now = self.clock.now();
        let at_sign_time = signet_core::policy::IssuanceDecision::intermediate(
            "signet mesh intermediate",
            &td(),
            0,
            now,
            d.not_after().duration_since(now).unwrap(),
            Duration::ZERO,
            "t",
        );
        self.root.ca().sign(&at_sign_time, csr.public_key()).await
    }
    async fn trust_bundle(&self) -> Result<signet_core::TrustBundle, signet_core::SignError> {
        self.root.trust_bundle().await
    }
    fn describe(&self) -> signet_core::BackendInfo {
        self.root.describe()
    }
}

#[tokio::test(start_paused = true)]
async fn an_intermediate_valid_from_after_the_request_began_is_installed() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = Arc::new(SlowNoBackdate {
        root: CaSigner::root(clock.now(), 365 * DAY),
        clock: clock.clone(),
    });
    let cfg = IntermediateConfig {
        ttl: HumanDuration(30 * DAY),
        key: KeyAlgorithm::EcdsaP256,
        renew_at: 2.0 / 3.0,
        common_name: None,
    };
    let delegated = Delegated::start("mesh", up, cfg, td(), clock.clone());
    tokio::time::timeout(Duration::from_secs(1), delegated.ready())
        .await
        .expect("installed at the first answer, not after a retry");
    let authority = Authority::new(
        "mesh",
        delegated,
        AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap(),
        clock.clone(),
    );
    let chain = issue(&authority, 0).await.unwrap();
    webpki_ok(&chain, clock.now());
}

#[tokio::test(start_paused = true)]
async fn not_ready_until_an_intermediate_is_held_then_recovers() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = CaSigner::root(clock.now(), 365 * DAY);
    up.set_fault(Fault::Unavailable, 3);
    let (delegated, authority) = setup(clock.clone(), up.clone(), 30 * DAY);
    tokio::task::yield_now().await;
    assert!(authority.backend().ready.is_err());
    assert_eq!(
        issue(&authority, 0).await.unwrap_err().kind(),
        ErrorKind::NotReady
    );
    // Backoff retries until the upstream answers.
    tokio::time::timeout(Duration::from_secs(600), delegated.ready())
        .await
        .expect("eventually ready");
    assert_eq!(up.calls(), 4);
    issue(&authority, 1).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn rotates_at_two_thirds_and_keeps_signing_through_an_outage() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = CaSigner::root(clock.now(), 365 * DAY);
    let (delegated, authority) = setup(clock.clone(), up.clone(), 3 * DAY);
    delegated.ready().await;
    let first = delegated.current().unwrap();

    let step = |d: Duration| {
        let clock = clock.clone();
        async move {
            clock.advance(d);
            tokio::time::advance(d).await;
            tokio::task::yield_now().await;
        }
    };

    // Nothing happens before two thirds of the lifetime...
    step(Duration::from_secs(86_400 * 19 / 10)).await;
    assert_eq!(up.calls(), 1, "no early renewal");
    // ... and from there the upstream is down.
    up.set_fault(Fault::Unavailable, u32::MAX);
    step(Duration::from_secs(86_400 / 10 + 120)).await;
    for _ in 0..20 {
        step(Duration::from_secs(60)).await;
    }
    assert!(up.calls() > 1, "renewal was attempted");
    assert!(
        Arc::ptr_eq(&first, &delegated.current().unwrap()),
        "still the first intermediate"
    );
    let chain = issue(&authority, 1)
        .await
        .expect("keeps signing while renewal fails");
    assert!(chain.not_after() <= first.not_after());

    // Upstream back: the next retry installs a new intermediate.
    up.set_fault(Fault::None, 0);
    for _ in 0..10 {
        step(Duration::from_secs(300)).await;
        if !Arc::ptr_eq(&first, &delegated.current().unwrap()) {
            break;
        }
    }
    let second = delegated.current().unwrap();
    assert!(!Arc::ptr_eq(&first, &second), "rotated");
    assert!(second.not_after() > first.not_after());
    let chain = issue(&authority, 2).await.unwrap();
    webpki_ok(&chain, clock.now());
}

#[tokio::test(start_paused = true)]
async fn leaves_near_the_end_are_clamped_to_the_intermediate() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = CaSigner::root(clock.now(), 365 * DAY);
    let (delegated, authority) = setup(clock.clone(), up.clone(), Duration::from_secs(3 * 3600));
    delegated.ready().await;
    let ca = delegated.current().unwrap();
    // Upstream down so the intermediate is not rotated.
    up.set_fault(Fault::Unavailable, u32::MAX);
    clock.advance(Duration::from_secs(2 * 3600 + 1800));
    let chain = issue(&authority, 3).await.unwrap();
    assert_eq!(
        chain.not_after(),
        ca.not_after(),
        "24h requested, clamped to the intermediate"
    );
    webpki_ok(&chain, clock.now());
}

#[tokio::test]
async fn a_csr_with_a_ca_key_is_refused_before_signing() {
    let now = SystemTime::now();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now));
    let upstream = CaSigner::root(now, 365 * DAY);
    let d = Delegated::start(
        "t",
        upstream.clone(),
        IntermediateConfig::default(),
        td(),
        clock.clone(),
    );
    d.ready().await;
    let policy = AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap();
    let a = Authority::new("t", d.clone(), policy, clock);
    let grant = testing::grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
    let req = testing::request(Profile::Workload);
    let id: San = San::Uri(DEMO_ID.parse().unwrap());
    let intermediate = d.current().unwrap();
    for (what, key) in [
        ("the intermediate's key", intermediate.key()),
        ("the root's key", upstream.ca().key()),
    ] {
        let csr =
            VerifiedCsr::from_der(&key.csr_der(None, std::slice::from_ref(&id)).await.unwrap())
                .unwrap();
        let before = upstream.issued();
        let err = a
            .issue(&Caller::internal("t"), &grant, &csr, &req)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Some("ca_key"), "{what}: {err}");
        assert_eq!(upstream.issued(), before, "{what}: nothing is signed");
    }
    // Any other key is served.
    issue(&a, 1).await.unwrap();
}

const DEMO_ID: &str = "spiffe://cluster.local/ns/default/sa/demo";
