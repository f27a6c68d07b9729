//! Test doubles for signet's own tests (feature `testing`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use std::sync::Mutex;

use crate::chain::{IssuedChain, TrustBundle};
use crate::csr::VerifiedCsr;
use crate::error::SignError;
use crate::issuer::LocalCa;
use crate::key::{KeyAlgorithm, PrivateKey};
use crate::policy::IssuanceDecision;
use crate::signer::{BackendInfo, Capabilities, Signer};

/// What the next calls of a [`CaSigner`] do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Fail with `backend_unavailable` (retryable).
    Unavailable,
    /// Fail with `backend_rejected` (permanent).
    Rejected,
    /// Sleep this long first.
    Slow(Duration),
}

/// An in-memory CA as a remote-looking [`Signer`], counting calls, with
/// injectable faults.
#[derive(Debug)]
pub struct CaSigner {
    ca: LocalCa,
    fault: Mutex<(Fault, u32)>,
    calls: AtomicU32,
    issued: AtomicU32,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    /// Like AWS PCA's IdempotencyToken: the same request ID returns the same certificate.
    by_request_id: Mutex<std::collections::HashMap<String, IssuedChain>>,
    /// Whether request IDs are honoured (Vault's API has no such token).
    idempotent: bool,
}

impl CaSigner {
    /// A fresh self-signed root valid for `ttl` from `now`.
    pub fn root(now: SystemTime, ttl: Duration) -> Arc<Self> {
        let ca = LocalCa::self_signed_root(
            "test upstream root",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
            now,
            ttl,
        )
        .expect("root");
        Arc::new(Self::new(ca))
    }

    /// Like [`root`](Self::root), but ignoring request IDs (as Vault does):
    /// every call signs anew.
    pub fn forgetful_root(now: SystemTime, ttl: Duration) -> Arc<Self> {
        let mut s = Arc::into_inner(Self::root(now, ttl)).expect("fresh");
        s.idempotent = false;
        Arc::new(s)
    }

    pub fn new(ca: LocalCa) -> Self {
        Self {
            ca,
            fault: Mutex::new((Fault::None, 0)),
            calls: AtomicU32::new(0),
            issued: AtomicU32::new(0),
            by_request_id: Mutex::new(std::collections::HashMap::new()),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
            idempotent: true,
        }
    }

    /// The next `times` calls behave as `fault` (`u32::MAX` for "until changed").
    pub fn set_fault(&self, fault: Fault, times: u32) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = (fault, times);
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Distinct certificates signed (idempotent repeats not counted).
    pub fn issued(&self) -> u32 {
        self.issued.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    async fn enter(&self) -> Result<(), SignError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = {
            let mut f = self.fault.lock().unwrap_or_else(|e| e.into_inner());
            if f.1 == 0 {
                Fault::None
            } else {
                f.1 = f.1.saturating_sub(if f.1 == u32::MAX { 0 } else { 1 });
                f.0
            }
        };
        match fault {
            Fault::None => Ok(()),
            Fault::Unavailable => Err(SignError::BackendUnavailable("injected outage".into())),
            Fault::Rejected => Err(SignError::BackendRejected("injected refusal".into())),
            Fault::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Signer for CaSigner {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let r = match self.enter().await {
            Ok(()) => {
                let cached = decision
                    .request_id()
                    .filter(|_| self.idempotent)
                    .and_then(|id| {
                        self.by_request_id
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(id)
                            .cloned()
                    });
                match cached {
                    Some(c) => Ok(c),
                    None => {
                        let r = self.ca.sign(decision, csr.public_key()).await;
                        if let Ok(c) = &r {
                            self.issued.fetch_add(1, Ordering::SeqCst);
                            if let Some(id) = decision.request_id() {
                                self.by_request_id
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(id.to_owned(), c.clone());
                            }
                        }
                        r
                    }
                }
            }
            Err(e) => Err(e),
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.enter().await?;
        Ok(self.ca.trust_bundle().clone())
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.ca.holds_key(spki_der)
    }

    fn describe(&self) -> BackendInfo {
        BackendInfo {
            name: "test-ca".into(),
            kind: "test",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: false,
                idempotent_for: self.idempotent.then_some(Duration::MAX),
                constrains_path_len: true,
            },
            ca_not_after: Some(self.ca.not_after()),
            ready: Ok(()),
        }
    }
}

/// Decisions made by hand, for tests of backends and chains. Production code
/// gets every decision from policy ([`crate::policy::AuthorityPolicy`]) or
/// [`crate::mint`]; these exist only with the `testing` feature.
impl IssuanceDecision {
    /// See [`crate::mint`] for what an intermediate is.
    pub fn intermediate(
        common_name: &str,
        trust_domain: &crate::spiffe::TrustDomain,
        path_len: u8,
        now: SystemTime,
        ttl: Duration,
        backdate: Duration,
        requested_by: &str,
    ) -> Self {
        Self::new_intermediate(
            common_name,
            trust_domain,
            path_len,
            now,
            ttl,
            backdate,
            requested_by,
        )
    }

    /// A CA certificate with these names (what policy decides for
    /// cert-manager's `isCA`).
    pub fn ca_certificate(
        common_name: &str,
        sans: Vec<crate::names::San>,
        path_len: Option<u8>,
        now: SystemTime,
        ttl: Duration,
        backdate: Duration,
        requested_by: &str,
    ) -> Self {
        Self::new_ca_certificate(
            common_name,
            sans,
            path_len,
            now,
            ttl,
            backdate,
            requested_by,
        )
    }

    /// The same decision under an idempotency key.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// A grant for names matching `patterns` (policy pattern syntax) in
/// `profiles`, without wildcards.
pub fn grant(patterns: &[&str], profiles: &[crate::policy::Profile]) -> crate::policy::Grant {
    crate::policy::Grant {
        allowed_sans: patterns
            .iter()
            .map(|p| crate::names::SanPattern::parse(p).expect("a valid pattern"))
            .collect(),
        max_ttl: None,
        profiles: profiles.to_vec(),
        allow_wildcards: false,
    }
}

/// A request in `profile` for the policy's default TTL, refused above the
/// maximum, not renewable, without a request ID.
pub fn request(profile: crate::policy::Profile) -> crate::policy::IssuanceRequest {
    crate::policy::IssuanceRequest {
        profile,
        ttl: None,
        ttl_overflow: crate::policy::TtlOverflow::Refuse,
        renewable: false,
        request_id: None,
    }
}

/// A CSR for one URI SAN (a SPIFFE ID) on a fresh P-256 key.
pub fn spiffe_csr(id: &str) -> VerifiedCsr {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("a key");
    let uri = crate::names::San::Uri(id.parse().expect("a valid URI"));
    VerifiedCsr::from_der(&key.csr_der(None, &[uri]).expect("a CSR")).expect("a valid CSR")
}

/// The output of a future that needs no waiting: signing with an in-memory
/// key ([`LocalCa::sign`], [`crate::revocation::RevocationList::crl`]) from
/// a test that is not async. Panics if it would wait.
pub trait Ready: Future + Sized {
    fn ready(self) -> Self::Output {
        let mut future = std::pin::pin!(self);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("the future waits (a remote key?)"),
        }
    }
}

impl<F: Future> Ready for F {}

/// An intermediate CA on a fresh P-256 key, signed by `root` and held in
/// process (what a fake upstream issues from).
pub fn intermediate_under(
    root: &LocalCa,
    common_name: &str,
    trust_domain: &crate::spiffe::TrustDomain,
    path_len: u8,
    now: SystemTime,
    ttl: Duration,
    backdate: Duration,
) -> LocalCa {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("a key");
    let decision = IssuanceDecision::intermediate(
        common_name,
        trust_domain,
        path_len,
        now,
        ttl,
        backdate,
        "test",
    );
    let chain = root.sign(&decision, &key).ready().expect("the root signs");
    LocalCa::new(
        chain.leaf().clone(),
        key,
        vec![],
        Some(root.trust_bundle().roots().to_vec()),
        now,
    )
    .expect("a usable intermediate")
}

/// What an upstream CA that signs whatever it is asked decides for a leaf
/// (cert-manager's CA issuer, a CA pool): the CSR's names in `profile`,
/// for `ttl` (at most ten years), back-dated by `backdate`.
pub fn upstream_decision(
    csr: &VerifiedCsr,
    profile: crate::policy::Profile,
    ttl: Duration,
    backdate: Duration,
    now: SystemTime,
    by: &str,
) -> IssuanceDecision {
    use crate::duration::HumanDuration;
    use crate::policy::{AuthorityPolicy, Grant, IssuanceRequest, PolicyConfig, TtlOverflow};
    let policy = AuthorityPolicy::new(
        crate::spiffe::TrustDomain::new("cluster.local").expect("a trust domain"),
        PolicyConfig {
            max_ttl: HumanDuration(Duration::from_secs(3650 * 86_400)),
            backdate: HumanDuration(backdate),
            ..PolicyConfig::default()
        },
    )
    .expect("a policy");
    let grant = Grant {
        allowed_sans: vec![
            "**".parse().expect("a pattern"),
            "spiffe://cluster.local/**".parse().expect("a pattern"),
        ],
        max_ttl: None,
        profiles: crate::policy::Profile::ALL.to_vec(),
        allow_wildcards: true,
    };
    let request = IssuanceRequest {
        profile,
        ttl: Some(ttl),
        ttl_overflow: TtlOverflow::Clamp,
        ..request(profile)
    };
    policy
        .decide(
            &crate::caller::Caller::internal(by),
            &grant,
            csr,
            &request,
            now,
        )
        .expect("an upstream signs what it is asked")
}

/// Waits (real time, up to 5 s) until `get` returns another value than
/// `from` (by pointer), and returns it: for what a background task swaps.
pub async fn eventually_changes<T>(get: impl Fn() -> Arc<T>, from: &Arc<T>) -> Arc<T> {
    for _ in 0..500 {
        let now = get();
        if !Arc::ptr_eq(&now, from) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the value did not change within 5 s");
}

/// A key that signs the way a key store does: rcgen does not see it in
/// memory, so every signature is an async call; calls are counted and
/// faults injected. `impostor` signs with another key (a store that answers
/// for the wrong key).
#[derive(Debug)]
pub struct StoreKey {
    key: PrivateKey,
    impostor: Option<PrivateKey>,
    fault: Mutex<Option<crate::key::KeyStoreError>>,
    calls: AtomicU32,
}

impl StoreKey {
    pub fn new(alg: KeyAlgorithm) -> Arc<Self> {
        Arc::new(Self {
            key: PrivateKey::generate(alg).expect("a key"),
            impostor: None,
            fault: Mutex::new(None),
            calls: AtomicU32::new(0),
        })
    }

    /// A store that signs with another key than the one it reports.
    pub fn impostor(alg: KeyAlgorithm) -> Arc<Self> {
        Arc::new(Self {
            key: PrivateKey::generate(alg).expect("a key"),
            impostor: Some(PrivateKey::generate(alg).expect("a key")),
            fault: Mutex::new(None),
            calls: AtomicU32::new(0),
        })
    }

    /// Every call fails with `fault` from now on (`None`: none do).
    pub fn set_fault(&self, fault: Option<crate::key::KeyStoreError>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl crate::key::KeyHandle for StoreKey {
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        crate::key::KeyHandle::algorithm(&self.key)
    }
    fn public_key(&self) -> &[u8] {
        crate::key::KeyHandle::public_key(&self.key)
    }
    fn describe(&self) -> crate::key::KeyDescription {
        crate::key::KeyDescription {
            store: "test",
            id: "store-key".into(),
        }
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, crate::key::KeyStoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(f) = self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(f);
        }
        tokio::task::yield_now().await;
        let key = self.impostor.as_ref().unwrap_or(&self.key);
        crate::key::KeyHandle::sign(key, message).await
    }
}

/// A key factory that behaves as a store's: it makes [`StoreKey`]s and
/// records what it made, retired and swept.
#[derive(Debug, Default)]
pub struct StoreKeys {
    made: Mutex<Vec<(String, Arc<StoreKey>)>>,
    retired: Mutex<Vec<String>>,
    sweeps: Mutex<Vec<(SystemTime, String)>>,
    fault: Mutex<Option<crate::key::KeyStoreError>>,
}

impl StoreKeys {
    /// The names of the keys made, in order.
    pub fn made(&self) -> Vec<String> {
        lock(&self.made).iter().map(|(n, _)| n.clone()).collect()
    }
    /// The key made under `name`.
    pub fn key(&self, name: &str) -> Arc<StoreKey> {
        lock(&self.made)
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.clone())
            .expect("a key made so")
    }
    pub fn retired(&self) -> Vec<String> {
        lock(&self.retired).clone()
    }
    /// Each sweep's `before` and `keep`.
    pub fn sweeps(&self) -> Vec<(SystemTime, String)> {
        lock(&self.sweeps).clone()
    }
    /// Making keys fails with `fault` from now on (`None`: it does not).
    pub fn set_fault(&self, fault: Option<crate::key::KeyStoreError>) {
        *lock(&self.fault) = fault;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl crate::key::KeyFactory for StoreKeys {
    fn describe(&self) -> crate::key::KeyDescription {
        crate::key::KeyDescription {
            store: "test",
            id: String::new(),
        }
    }
    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        owner: &str,
        now: SystemTime,
    ) -> Result<crate::key::GeneratedKey, crate::key::KeyStoreError> {
        if let Some(f) = lock(&self.fault).clone() {
            return Err(f);
        }
        let name = crate::key::generated_key_name(owner, now);
        let key = StoreKey::new(algorithm);
        lock(&self.made).push((name.clone(), key.clone()));
        Ok(crate::key::GeneratedKey { handle: key, name })
    }
    async fn retire(
        &self,
        key: &crate::key::GeneratedKey,
    ) -> Result<(), crate::key::KeyStoreError> {
        lock(&self.retired).push(key.name.clone());
        Ok(())
    }
    async fn sweep(
        &self,
        _owner: &str,
        before: SystemTime,
        keep: &str,
    ) -> Result<usize, crate::key::KeyStoreError> {
        lock(&self.sweeps).push((before, keep.to_owned()));
        Ok(0)
    }
}
