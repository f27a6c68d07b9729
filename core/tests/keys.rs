//! A CA key behind a handle that signs like a key store: leaves, CRLs and
//! CSRs are signed by one call each, verify with webpki, and what the store
//! gets wrong (another key, an outage, a refusal) is caught and named.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_core::clock::{Clock as _, ManualClock};
use signet_core::csr::VerifiedCsr;
use signet_core::delegated::{Delegated, IntermediateConfig, PENDING_KEY_REUSE};
use signet_core::duration::HumanDuration;
use signet_core::error::{ErrorKind, SignError};
use signet_core::issuer::LocalCa;
use signet_core::key::{CaKey, KeyAlgorithm, KeyHandle, KeyStoreError, PrivateKey};
use signet_core::names::San;
use signet_core::policy::IssuanceDecision;
use signet_core::revocation::RevocationList;
use signet_core::testing::{CaSigner, Fault, Ready as _, StoreKey, StoreKeys};

mod common;
use common::{td, webpki_verify};

const DAY: Duration = Duration::from_secs(86_400);
const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";

/// An intermediate whose key is `store`, under a fresh in-memory root.
fn ca_with(store: Arc<StoreKey>, now: SystemTime) -> LocalCa {
    let root = LocalCa::self_signed_root(
        "root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        3650 * DAY,
    )
    .unwrap();
    let key = CaKey::new(store);
    let d =
        IssuanceDecision::intermediate("store CA", &td(), 0, now, 365 * DAY, Duration::ZERO, "t");
    let chain = root.sign(&d, &key).ready().unwrap();
    LocalCa::new(
        chain.leaf().clone(),
        key,
        vec![],
        Some(root.trust_bundle().roots().to_vec()),
        now,
    )
    .unwrap()
}

fn leaf_decision(now: SystemTime) -> (IssuanceDecision, VerifiedCsr) {
    let csr = signet_core::testing::spiffe_csr(DEMO);
    let d = signet_core::testing::upstream_decision(
        &csr,
        signet_core::policy::Profile::Workload,
        DAY,
        Duration::ZERO,
        now,
        "t",
    );
    (d, csr)
}

#[tokio::test]
async fn every_certificate_crl_and_csr_is_one_call_to_the_store() {
    let now = SystemTime::now();
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let store = StoreKey::new(alg);
        let ca = ca_with(store.clone(), now);
        assert!(ca.key().is_remote());
        assert!(ca.private_key().is_none(), "no key to write anywhere");
        let before = store.calls();
        let (d, csr) = leaf_decision(now);
        let chain = ca.sign(&d, csr.public_key()).await.unwrap();
        assert_eq!(store.calls(), before + 1, "{alg:?}");
        chain.check(&d, &csr, now, Duration::ZERO).unwrap();
        webpki_verify(&chain, now, webpki::KeyUsage::client_auth()).unwrap();

        let crl = RevocationList::default().crl(&ca, now).await.unwrap();
        assert_eq!(store.calls(), before + 2);
        assert!(RevocationList::default().crl_matches(ca.certificate(), &crl, now));

        let csr = ca
            .key()
            .csr_der(Some("renewal"), &[San::Uri(td().id())])
            .await
            .unwrap();
        VerifiedCsr::from_der(&csr).expect("the CSR's self-signature verifies");
        assert_eq!(store.calls(), before + 3);
    }
}

#[tokio::test]
async fn a_store_that_signs_with_another_key_is_caught() {
    let now = SystemTime::now();
    let store = StoreKey::impostor(KeyAlgorithm::EcdsaP256);
    // The CA certificate names the key the store reports.
    let ca = ca_with(store, now);
    let (d, csr) = leaf_decision(now);
    let err = ca.sign(&d, csr.public_key()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected, "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[tokio::test]
async fn an_outage_is_retryable_and_a_refusal_is_not() {
    let now = SystemTime::now();
    let store = StoreKey::new(KeyAlgorithm::EcdsaP256);
    let ca = ca_with(store.clone(), now);
    let (d, csr) = leaf_decision(now);

    store.set_fault(Some(KeyStoreError::Unavailable(
        "connection refused".into(),
    )));
    let err = ca.sign(&d, csr.public_key()).await.unwrap_err();
    assert!(err.kind().is_retryable(), "{err}");
    assert!(matches!(err, SignError::BackendUnavailable(ref m) if m.contains("CA key")));

    store.set_fault(Some(KeyStoreError::Refused("AccessDeniedException".into())));
    let err = ca.sign(&d, csr.public_key()).await.unwrap_err();
    assert!(!err.kind().is_retryable(), "{err}");

    store.set_fault(None);
    ca.sign(&d, csr.public_key()).await.expect("signs again");
    // Each signature asked of the store is counted, by outcome.
    let metrics = signet_core::metrics::UpstreamMetrics::global();
    let key = KeyHandle::describe(store.as_ref());
    assert_eq!(metrics.key_signatures(&key, "unavailable"), 1);
    assert_eq!(metrics.key_signatures(&key, "refused"), 1);
    assert!(metrics.key_signatures(&key, "ok") >= 1);
}

#[tokio::test]
async fn an_open_crl_endpoint_costs_the_store_one_signature_per_list_and_hour() {
    let now = SystemTime::now();
    let store = StoreKey::new(KeyAlgorithm::EcdsaP256);
    let ca = ca_with(store.clone(), now);
    let cache = signet_core::revocation::CrlCache::default();
    let mut list = RevocationList::default();
    let before = store.calls();
    let first = cache.crl(&list, &ca, now).await.unwrap();
    for _ in 0..5 {
        assert_eq!(cache.crl(&list, &ca, now).await.unwrap(), first);
    }
    assert_eq!(store.calls(), before + 1, "one signature for six requests");
    list.revoke("0a1b", now, None).unwrap();
    let revoked = cache.crl(&list, &ca, now).await.unwrap();
    assert_ne!(revoked, first);
    assert!(list.crl_matches(ca.certificate(), &revoked, now));
    assert_eq!(store.calls(), before + 2, "a changed list is signed again");
    cache
        .crl(&list, &ca, now + Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(store.calls(), before + 3, "so is the next hour's");
}

#[tokio::test]
async fn a_probe_finds_a_store_that_signs_with_another_key() {
    CaKey::new(StoreKey::new(KeyAlgorithm::EcdsaP384))
        .probe()
        .await
        .unwrap();
    let err = CaKey::new(StoreKey::impostor(KeyAlgorithm::EcdsaP256))
        .probe()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn the_in_memory_key_is_one_handle_among_others() {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(KeyHandle::describe(&key).store, "memory");
    let ca = CaKey::from(key);
    assert!(!ca.is_remote());
}

/// A delegated authority whose intermediates' keys a store makes: the
/// CSR is signed there, a key is tried again while the upstream does not
/// answer (a new one only after [`PENDING_KEY_REUSE`]), a replaced key is
/// retired once nothing signs with it, the store is swept past every
/// replica's horizon, and dropping the authority retires its key.
#[tokio::test(start_paused = true)]
async fn a_delegated_intermediates_key_is_made_in_the_store_and_retired_when_replaced() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = CaSigner::root(clock.now(), 365 * DAY);
    let keys = Arc::new(StoreKeys::default());
    let settle = || tokio::time::sleep(Duration::from_millis(500));

    // The upstream does not answer twice: one key serves every attempt.
    up.set_fault(Fault::Unavailable, 2);
    let config = IntermediateConfig {
        ttl: HumanDuration(30 * DAY),
        key: KeyAlgorithm::EcdsaP384,
        renew_at: 2.0 / 3.0,
        common_name: None,
    };
    let d = Delegated::start_with_keys(
        "mesh",
        up.clone(),
        config,
        td(),
        clock.clone(),
        keys.clone(),
    );
    d.ready().await;
    assert_eq!(up.calls(), 3);
    let first = keys.made();
    assert_eq!(first.len(), 1, "one key for the three attempts");
    assert!(first[0].starts_with("signet-mesh-"), "{first:?}");
    let ca = d.current().unwrap();
    assert!(ca.key().is_remote());
    assert_eq!(
        ca.key().handle().public_key(),
        KeyHandle::public_key(&*keys.key(&first[0]))
    );
    assert_eq!(
        keys.key(&first[0]).calls(),
        3,
        "each attempt's CSR signed in the store"
    );
    // Swept past any replica's horizon, the held key kept.
    let horizon = 30 * DAY + PENDING_KEY_REUSE + Duration::from_secs(300);
    assert_eq!(
        keys.sweeps(),
        vec![(clock.now() - horizon, first[0].clone())]
    );

    // Replaced: retired only once a signature in flight is done.
    let in_flight = d.current().unwrap();
    drop(ca);
    d.renew().await.unwrap();
    settle().await;
    assert!(keys.retired().is_empty(), "still in use");
    drop(in_flight);
    settle().await;
    assert_eq!(keys.retired(), first);
    assert_eq!(keys.made().len(), 2);

    // A pending key is offered again only for PENDING_KEY_REUSE.
    up.set_fault(Fault::Unavailable, u32::MAX);
    d.renew().await.unwrap_err();
    d.renew().await.unwrap_err();
    assert_eq!(keys.made().len(), 3);
    clock.advance(PENDING_KEY_REUSE + Duration::from_secs(1));
    d.renew().await.unwrap_err();
    settle().await;
    assert_eq!(keys.made().len(), 4);
    assert_eq!(keys.retired().len(), 2, "the stale pending key retired");

    // A store that cannot make keys: retryable, named, and the current
    // intermediate keeps signing.
    up.set_fault(Fault::None, 0);
    let pending_made = keys.made().len();
    d.renew().await.unwrap();
    assert_eq!(
        keys.made().len(),
        pending_made,
        "the pending key was certified"
    );
    settle().await;
    keys.set_fault(Some(KeyStoreError::Unavailable("token removed".into())));
    d.rekey(
        clock.now() + Duration::from_secs(1),
        signet_core::revocation::Reason::KeyCompromise,
    )
    .await
    .unwrap();
    let err = d.renew().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendUnavailable, "{err}");
    assert!(
        err.to_string().contains("making the intermediate's key"),
        "{err}"
    );
    settle().await;
    assert_eq!(keys.retired().len(), 4, "the withdrawn key retired");

    // A graceful stop retires the held key, and nothing is installed after.
    keys.set_fault(None);
    d.renew().await.unwrap();
    let retired = keys.retired().len();
    d.retire_keys().await;
    assert_eq!(keys.retired().len(), retired + 1);
    assert!(d.current().is_none());
    let err = d.renew().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReady, "{err}");
    let made = keys.made().len();
    drop(d);
    settle().await;
    assert_eq!(keys.retired().len(), retired + 1, "nothing left to retire");
    assert_eq!(keys.made().len(), made);
}

/// Dropped without a graceful stop (an embedder's reload): the key held
/// is retired once nothing signs with it.
#[tokio::test(start_paused = true)]
async fn a_dropped_delegated_authority_retires_its_key() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let up = CaSigner::root(clock.now(), 365 * DAY);
    let keys = Arc::new(StoreKeys::default());
    let d = Delegated::start_with_keys(
        "mesh",
        up,
        IntermediateConfig::default(),
        td(),
        clock,
        keys.clone(),
    );
    d.ready().await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keys.retired(), keys.made());
}
