//! A CA key behind a handle that signs like a key store: leaves, CRLs and
//! CSRs are signed by one call each, verify with webpki, and what the store
//! gets wrong (another key, an outage, a refusal) is caught and named.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_core::csr::VerifiedCsr;
use signet_core::error::{ErrorKind, SignError};
use signet_core::issuer::LocalCa;
use signet_core::key::{CaKey, KeyAlgorithm, KeyHandle, KeyStoreError, PrivateKey};
use signet_core::names::San;
use signet_core::policy::IssuanceDecision;
use signet_core::revocation::RevocationList;
use signet_core::testing::{Ready as _, StoreKey};

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

#[test]
fn a_key_store_entry_is_refused_where_the_key_must_be_in_memory() {
    let cfg: Result<signet_core::delegated::IntermediateConfig, _> =
        serde_yaml_ng::from_str("key: { type: pkcs11, module: /x.so }");
    let err = cfg.unwrap_err().to_string();
    assert!(err.contains("generated in memory"), "{err}");
    let ok: signet_core::delegated::IntermediateConfig =
        serde_yaml_ng::from_str("key: ecdsa-p384").unwrap();
    assert_eq!(ok.key, KeyAlgorithm::EcdsaP384);
    let bad: Result<signet_core::delegated::IntermediateConfig, _> =
        serde_yaml_ng::from_str("key: dsa-1024");
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("unknown key algorithm")
    );
}
