//! Decorators that make any [`Signer`] safe to lean on: timeout, retry with
//! jittered exponential backoff, token-bucket rate limit, circuit breaker,
//! concurrency limit, and coalescing of identical in-flight requests. Each
//! wraps an `Arc<dyn Signer>` and is itself a signer.
//!
//! What is worth retrying is decided once, by [`ErrorKind::is_retryable`]:
//! an unreachable, slow or throttling backend is; a refusal, a bad CSR or a
//! bad chain is not. [`ResilienceConfig::wrap`] stacks them in the order that
//! makes sense: the breaker outermost (fail fast without queueing), then the
//! retry loop, then per-attempt rate limit, concurrency limit and timeout.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::chain::{IssuedChain, TrustBundle};
use crate::csr::VerifiedCsr;
use crate::duration::HumanDuration;
use crate::error::SignError;
use crate::policy::IssuanceDecision;
use crate::signer::{BackendInfo, Signer};

/// A random duration in `[d/2, d]` ("equal jitter"), so that many replicas
/// retrying the same outage do not retry in step.
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 8];
    crate::crypto::random_bytes(&mut b);
    let frac = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    d / 2 + d.mul_f64(frac / 2.0)
}

/// Exponential backoff: `base * 2^attempt`, capped, jittered.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    jitter(exp.min(max))
}

// === Timeout ===

/// Fails an attempt that takes longer than `limit` with `backend_unavailable`.
#[derive(Debug)]
pub struct Timeout {
    inner: Arc<dyn Signer>,
    limit: Duration,
}

impl Timeout {
    pub fn new(inner: Arc<dyn Signer>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn run<T>(&self, f: impl Future<Output = Result<T, SignError>>) -> Result<T, SignError> {
        tokio::time::timeout(self.limit, f)
            .await
            .unwrap_or_else(|_| {
                Err(SignError::BackendUnavailable(format!(
                    "no answer within {}",
                    HumanDuration(self.limit)
                )))
            })
    }
}

/// How long a backend that missed the deadline may still answer: whatever
/// it signs meanwhile gets an audit record, though no caller receives it.
/// (Backends' own HTTP timeouts are at least this; see the Vault backend.)
pub const LATE_ANSWER_FACTOR: u32 = 2;

type Answer = Result<IssuedChain, SignError>;

/// Audits a certificate that was issued but reached no caller.
fn audit_undelivered(chain: &IssuedChain, sans: &[String], backend: &str) {
    tracing::warn!(
        target: "signet::audit",
        serial = chain.serial_hex(),
        sans = %sans.join(","),
        not_after = %crate::clock::rfc3339(chain.not_after()),
        backend = %backend,
        delivered = false,
        "certificate issued but not delivered (deadline passed or caller gone)"
    );
}

/// The caller's end of a signing task. However the caller stops waiting
/// (the deadline, or its own future dropped), an answer already sent is
/// taken out and audited; one sent later bounces back to the task, which
/// audits it.
struct Pending {
    rx: tokio::sync::oneshot::Receiver<Answer>,
    sans: Arc<Vec<String>>,
    backend: Arc<str>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Ok(chain)) = self.rx.try_recv() {
            audit_undelivered(&chain, &self.sans, &self.backend);
        }
    }
}

#[async_trait]
impl Signer for Timeout {
    /// The call runs as its own task, so that a certificate the backend
    /// issues after the deadline (or after the caller gave up) is still
    /// received and audited as not delivered, instead of vanishing with a
    /// dropped future. The task itself stops at [`LATE_ANSWER_FACTOR`] times
    /// the deadline.
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let sans: Arc<Vec<String>> = Arc::new(d.sans().iter().map(ToString::to_string).collect());
        let backend: Arc<str> = self.inner.describe().name.into();
        let (tx, rx) = tokio::sync::oneshot::channel::<Answer>();
        let mut pending = Pending {
            rx,
            sans: sans.clone(),
            backend: backend.clone(),
        };
        let inner = self.inner.clone();
        let (decision, request) = (d.clone(), csr.clone());
        let cap = self.limit * LATE_ANSWER_FACTOR;
        tokio::spawn(async move {
            let answer = tokio::time::timeout(cap, inner.sign(&decision, &request))
                .await
                .unwrap_or_else(|_| {
                    Err(SignError::BackendUnavailable(format!(
                        "no answer within {}",
                        HumanDuration(cap)
                    )))
                });
            if let Err(Ok(chain)) = tx.send(answer) {
                audit_undelivered(&chain, &sans, &backend);
            }
        });
        match tokio::time::timeout(self.limit, &mut pending.rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(SignError::Internal(
                "the signing task ended without an answer".into(),
            )),
            Err(_) => Err(SignError::BackendUnavailable(format!(
                "no answer within {}",
                HumanDuration(self.limit)
            ))),
        }
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.run(self.inner.trust_bundle()).await
    }
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.inner.holds_ca_key(spki_der)
    }
    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        self.inner.layout().await
    }
    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.inner.issuing_ca()
    }
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.issuer_changes()
    }
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        self.inner.revoke(serial_hex, reason).await
    }
}

// === Retry ===

/// Retries retryable failures with jittered exponential backoff.
#[derive(Debug)]
pub struct Retry {
    inner: Arc<dyn Signer>,
    attempts: u32,
    base: Duration,
    max: Duration,
}

impl Retry {
    /// `attempts` counts the first try (1 = no retry).
    pub fn new(inner: Arc<dyn Signer>, attempts: u32, base: Duration, max: Duration) -> Self {
        Self {
            inner,
            attempts: attempts.max(1),
            base,
            max,
        }
    }
}

macro_rules! retrying {
    ($self:ident, $call:expr) => {{
        let mut attempt = 0;
        loop {
            match $call.await {
                Err(e) if e.kind().is_retryable() && attempt + 1 < $self.attempts => {
                    let wait = match &e {
                        SignError::RateLimited { retry_after: Some(d) } => (*d).min($self.max),
                        _ => backoff($self.base, $self.max, attempt),
                    };
                    tracing::debug!(backend = %$self.inner.describe().name, attempt, error = %e, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}

#[async_trait]
impl Signer for Retry {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        retrying!(self, self.inner.sign(d, csr))
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        retrying!(self, self.inner.trust_bundle())
    }
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.inner.holds_ca_key(spki_der)
    }
    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        self.inner.layout().await
    }
    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.inner.issuing_ca()
    }
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.issuer_changes()
    }
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        self.inner.revoke(serial_hex, reason).await
    }
}

// === RateLimit ===

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket: `rate` requests per second, bursts of `burst`. A caller
/// waits up to `max_wait` for a token, else gets `rate_limited`.
#[derive(Debug)]
pub struct RateLimit {
    inner: Arc<dyn Signer>,
    rate: f64,
    burst: f64,
    max_wait: Duration,
    bucket: Mutex<Bucket>,
}

impl RateLimit {
    pub fn new(inner: Arc<dyn Signer>, per_second: f64, burst: u32, max_wait: Duration) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            inner,
            rate: per_second.max(0.001),
            burst,
            max_wait,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: crate::clock::monotonic(),
            }),
        }
    }

    /// Takes a token now, or says how long until one is free (reserving it).
    fn reserve(&self) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::clock::monotonic();
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.rate)
        }
    }

    fn unreserve(&self) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.tokens = (b.tokens + 1.0).min(self.burst);
    }

    async fn admit(&self) -> Result<(), SignError> {
        let wait = self.reserve();
        if wait > self.max_wait {
            self.unreserve();
            return Err(SignError::RateLimited {
                retry_after: Some(wait),
            });
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Signer for RateLimit {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        self.admit().await?;
        self.inner.sign(d, csr).await
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.admit().await?;
        self.inner.trust_bundle().await
    }
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.inner.holds_ca_key(spki_der)
    }
    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        self.inner.layout().await
    }
    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.inner.issuing_ca()
    }
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.issuer_changes()
    }
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        self.inner.revoke(serial_hex, reason).await
    }
}

// === CircuitBreaker ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else fails fast.
    HalfOpen,
}

/// After `threshold` consecutive retryable failures, fails fast with
/// `backend_unavailable` for `open_for`, then lets one probe through.
#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Arc<dyn Signer>,
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

impl CircuitBreaker {
    pub fn new(inner: Arc<dyn Signer>, threshold: u32, open_for: Duration) -> Self {
        Self {
            inner,
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    fn admit(&self) -> Result<(), SignError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if crate::clock::monotonic() >= until => {
                *s = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open { until } => Err(SignError::BackendUnavailable(format!(
                "circuit open after repeated failures; next attempt in {}",
                HumanDuration(until.saturating_duration_since(crate::clock::monotonic()))
            ))),
            BreakerState::HalfOpen => Err(SignError::BackendUnavailable(
                "circuit half-open; waiting for a probe".into(),
            )),
        }
    }

    fn record<T>(&self, result: &Result<T, SignError>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failed = matches!(result, Err(e) if e.kind().is_retryable());
        let next = match (*s, failed) {
            (_, false) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, true) if failures + 1 < self.threshold => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            (_, true) => BreakerState::Open {
                until: crate::clock::monotonic() + self.open_for,
            },
        };
        if matches!(next, BreakerState::Open { .. }) && !matches!(*s, BreakerState::Open { .. }) {
            tracing::warn!(backend = %self.inner.describe().name, open_for = %HumanDuration(self.open_for), "circuit opened: backend failing");
        }
        if matches!(next, BreakerState::Closed { .. }) && matches!(*s, BreakerState::HalfOpen) {
            tracing::info!(backend = %self.inner.describe().name, "circuit closed: backend answering again");
        }
        *s = next;
    }

    /// Whether calls currently fail fast.
    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            BreakerState::Closed { .. }
        )
    }
}

#[async_trait]
impl Signer for CircuitBreaker {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        self.admit()?;
        let r = self.inner.sign(d, csr).await;
        self.record(&r);
        r
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.admit()?;
        let r = self.inner.trust_bundle().await;
        self.record(&r);
        r
    }
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.inner.holds_ca_key(spki_der)
    }
    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        self.inner.layout().await
    }
    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.inner.issuing_ca()
    }
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.issuer_changes()
    }
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        self.inner.revoke(serial_hex, reason).await
    }
    fn describe(&self) -> BackendInfo {
        let mut info = self.inner.describe();
        if info.ready.is_ok() && self.is_open() {
            info.ready = Err("circuit breaker open".into());
        }
        info
    }
}

// === ConcurrencyLimit ===

/// At most `limit` calls in flight to the backend; others wait their turn
/// (their wait is bounded by the front-end's request timeout).
#[derive(Debug)]
pub struct ConcurrencyLimit {
    inner: Arc<dyn Signer>,
    permits: Semaphore,
}

impl ConcurrencyLimit {
    pub fn new(inner: Arc<dyn Signer>, limit: usize) -> Self {
        Self {
            inner,
            permits: Semaphore::new(limit.max(1)),
        }
    }
}

#[async_trait]
impl Signer for ConcurrencyLimit {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let _p = self
            .permits
            .acquire()
            .await
            .map_err(|_| SignError::Internal("semaphore closed".into()))?;
        self.inner.sign(d, csr).await
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        let _p = self
            .permits
            .acquire()
            .await
            .map_err(|_| SignError::Internal("semaphore closed".into()))?;
        self.inner.trust_bundle().await
    }
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.inner.holds_ca_key(spki_der)
    }
    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        self.inner.layout().await
    }
    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.inner.issuing_ca()
    }
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.issuer_changes()
    }
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        self.inner.revoke(serial_hex, reason).await
    }
}

// === Coalesce ===

/// Joins identical requests in flight into one upstream call: the same
/// public key asking for the same certificate (names, profile, CA-ness,
/// lifetime to the second, renewal mark). A storm of agents retrying the
/// same CSR, or replicas of one workload restarting with one key, costs
/// the upstream one certificate; every caller gets it. Only requests in
/// flight are joined: a request after the answer is a new call.
///
/// A joined caller gets the leader's certificate, or its failure as
/// `backend_unavailable` when the same request may succeed later and
/// `backend_rejected` otherwise (the leader's own error keeps its exact
/// kind).
#[derive(Debug)]
pub struct Coalesce {
    inner: Arc<dyn Signer>,
    in_flight: InFlightMap,
    joined: std::sync::atomic::AtomicU64,
}

type Joined = tokio::sync::OnceCell<Result<IssuedChain, (bool, String)>>;
type InFlightMap = Mutex<std::collections::HashMap<[u8; 32], Arc<Joined>>>;

/// One caller's hold on an in-flight entry (see [`Coalesce::sign`]).
struct InFlight<'a> {
    map: &'a InFlightMap,
    key: [u8; 32],
    cell: Arc<Joined>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Held by the map and this guard only: nobody else waits on it.
        let last = Arc::strong_count(&self.cell) <= 2;
        if map
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
            && (self.cell.initialized() || last)
        {
            map.remove(&self.key);
        }
    }
}

impl Coalesce {
    pub fn new(inner: Arc<dyn Signer>) -> Self {
        Self {
            inner,
            in_flight: Mutex::new(std::collections::HashMap::new()),
            joined: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Requests answered by another request's upstream call so far.
    pub fn joined(&self) -> u64 {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries in flight (for tests: a cancelled request leaves none).
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// What makes two requests the same certificate request.
    fn key(d: &IssuanceDecision, csr: &VerifiedCsr) -> [u8; 32] {
        let mut b = Vec::with_capacity(512);
        let mut field = |x: &[u8]| {
            b.extend_from_slice(&(x.len() as u64).to_be_bytes());
            b.extend_from_slice(x);
        };
        field(csr.spki_der());
        for san in d.sans() {
            field(san.to_string().as_bytes());
        }
        field(d.profile().map_or("ca", |p| p.as_str()).as_bytes());
        field(d.common_name().unwrap_or_default().as_bytes());
        field(&d.ttl().as_secs().to_be_bytes());
        field(&[u8::from(d.renewable())]);
        field(
            &d.ca()
                .map_or([0, 0], |c| [1, c.path_len.map_or(255, |p| p)]),
        );
        for url in d.crl_distribution_points() {
            field(url.as_bytes());
        }
        crate::crypto::sha256(&b)
    }
}

#[async_trait]
impl Signer for Coalesce {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let key = Self::key(d, csr);
        let cell = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        // Removes the entry once answered, or when the last caller waiting
        // on it gives up (a cancelled request must not leave it behind).
        let guard = InFlight {
            map: &self.in_flight,
            key,
            cell,
        };
        let mut own = None;
        let shared = guard
            .cell
            .get_or_init(|| async {
                let r = self.inner.sign(d, csr).await;
                let shared = match &r {
                    Ok(c) => Ok(c.clone()),
                    Err(e) => Err((e.kind().may_succeed_later(), e.to_string())),
                };
                own = Some(r);
                shared
            })
            .await;
        if let Some(r) = own {
            // This call made the upstream call; its own error keeps its kind.
            return r;
        }
        self.joined
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match shared {
            Ok(c) => Ok(c.clone()),
            Err((true, m)) => Err(SignError::BackendUnavailable(format!(
                "an identical request in flight failed: {m}"
            ))),
            Err((false, m)) => Err(SignError::BackendRejected(format!(
                "an identical request in flight was refused: {m}"
            ))),
        }
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.inner.trust_bundle().await
    }
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.inner.holds_ca_key(spki_der)
    }
    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        self.inner.layout().await
    }
    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.inner.issuing_ca()
    }
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.issuer_changes()
    }
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        self.inner.revoke(serial_hex, reason).await
    }
}

// === config ===

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_attempts() -> u32 {
    3
}
fn default_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_concurrency() -> usize {
    64
}

/// Token-bucket settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
    /// How long a call may wait for a token before `rate_limited`.
    #[serde(default = "default_max_wait")]
    pub max_wait: HumanDuration,
}

fn one() -> u32 {
    1
}
fn default_max_wait() -> HumanDuration {
    HumanDuration::from_secs(2)
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive retryable failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before one probe.
    pub open_for: HumanDuration,
}

fn default_breaker() -> Option<BreakerConfig> {
    Some(BreakerConfig {
        failures: 5,
        open_for: HumanDuration::from_secs(5),
    })
}

/// `backends.<name>.resilience`: how calls to a remote backend are protected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResilienceConfig {
    /// Per attempt.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Tries per call, the first included (1 disables retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// Protects upstream quotas (e.g. AWS PCA ~25/s, GCP CAS 7–25/s per CA).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default = "default_breaker")]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Calls in flight to the backend at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            attempts: default_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            rate_limit: None,
            circuit_breaker: default_breaker(),
            max_concurrency: default_concurrency(),
        }
    }
}

impl ResilienceConfig {
    /// Wraps `backend` in the configured decorators.
    pub fn wrap(&self, backend: Arc<dyn Signer>) -> Arc<dyn Signer> {
        let mut s: Arc<dyn Signer> = Arc::new(Timeout::new(backend, self.timeout.get()));
        s = Arc::new(ConcurrencyLimit::new(s, self.max_concurrency));
        if let Some(rl) = &self.rate_limit {
            s = Arc::new(RateLimit::new(
                s,
                rl.per_second,
                rl.burst,
                rl.max_wait.get(),
            ));
        }
        if self.attempts > 1 {
            s = Arc::new(Retry::new(
                s,
                self.attempts,
                self.backoff.get(),
                self.max_backoff.get(),
            ));
        }
        if let Some(cb) = &self.circuit_breaker {
            s = Arc::new(CircuitBreaker::new(s, cb.failures, cb.open_for.get()));
        }
        // Outermost: joined requests take no retry, rate or breaker budget.
        Arc::new(Coalesce::new(s))
    }
}

impl fmt::Display for ResilienceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeout {} x{} attempts", self.timeout, self.attempts)
    }
}
