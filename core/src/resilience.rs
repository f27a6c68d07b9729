//! Decorators that make any [`Signer`] safe to lean on, and keep the
//! upstream safe from signet: timeout, retry with jittered exponential
//! backoff, a token-bucket call budget, a fair queue in front of a
//! concurrency limit, a circuit breaker, and coalescing of identical
//! in-flight requests. Each wraps an `Arc<dyn Signer>` and is itself a
//! signer.
//!
//! What is worth retrying is decided once, by [`ErrorKind::is_retryable`]:
//! an unreachable, slow or throttling backend is; a refusal, a bad CSR or a
//! bad chain is not, and neither is signet's own shedding (`overloaded`),
//! which goes straight back to the caller to retry. [`ResilienceConfig::wrap`]
//! stacks them in the order that makes sense: coalescing outermost (a joined
//! request costs nothing below), the breaker (fail fast without queueing),
//! the retry loop, then per attempt the fair queue, the budget and the
//! timeout, where each upstream call is counted ([`UpstreamMetrics`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::chain::{IssuedChain, TrustBundle};
use crate::csr::VerifiedCsr;
use crate::duration::HumanDuration;
use crate::error::{ErrorKind, SignError};
use crate::metrics::UpstreamMetrics;
use crate::names::San;
use crate::policy::IssuanceDecision;
use crate::signer::{BackendInfo, Signer};

/// `ok`, or the error code: the outcome label of an upstream call.
fn outcome<T>(r: &Result<T, SignError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.kind().code(),
    }
}

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
/// Innermost of the stack, so each upstream call is counted here, with what
/// the backend finally answered (a call whose caller stopped waiting still
/// cost the upstream a call).
#[derive(Debug)]
pub struct Timeout {
    inner: Arc<dyn Signer>,
    limit: Duration,
    backend: Arc<str>,
    metrics: UpstreamMetrics,
}

impl Timeout {
    pub fn new(inner: Arc<dyn Signer>, limit: Duration) -> Self {
        let backend = inner.describe().name.into();
        Self {
            inner,
            limit,
            backend,
            metrics: UpstreamMetrics::global().clone(),
        }
    }

    /// Counts calls in `metrics` instead of the process's set.
    pub fn with_metrics(mut self, metrics: &UpstreamMetrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    fn count<T>(&self, r: &Result<T, SignError>, started: Instant) {
        self.metrics
            .call(&self.backend, outcome(r), crate::clock::elapsed(started));
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
        let started = crate::clock::monotonic();
        let sans: Arc<Vec<String>> = Arc::new(d.sans().iter().map(ToString::to_string).collect());
        let backend = self.backend.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<Answer>();
        let mut pending = Pending {
            rx,
            sans: sans.clone(),
            backend: backend.clone(),
        };
        let inner = self.inner.clone();
        let (decision, request) = (d.clone(), csr.clone());
        let cap = self.limit * LATE_ANSWER_FACTOR;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(cap, inner.sign(&decision, &request))
                .await
                .unwrap_or_else(|_| {
                    Err(SignError::BackendUnavailable(format!(
                        "no answer within {}",
                        HumanDuration(cap)
                    )))
                });
            metrics.call(&backend, outcome(&answer), crate::clock::elapsed(started));
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
        let started = crate::clock::monotonic();
        let r = self.run(self.inner.trust_bundle()).await;
        self.count(&r, started);
        r
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

/// Retries retryable failures with jittered exponential backoff. A request
/// signet itself shed (`overloaded`) is not retried here: waiting is the
/// caller's to do, and a shed request must not keep holding a caller.
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
                Err(e) if e.kind().is_retryable()
                    && e.kind() != ErrorKind::Overloaded
                    && attempt + 1 < $self.attempts =>
                {
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
    /// Callers waiting for a token.
    waiting: usize,
}

/// The upstream call budget, a token bucket: `rate` calls per second,
/// bursts of `burst`. A token is taken at the moment the call goes out, never
/// reserved ahead: a caller woken late cannot send a backlog of calls that
/// were due earlier, so in any window of T seconds at most burst + rate × T
/// calls start. A caller whose estimated wait (the callers ahead of it, at
/// `rate`) is longer than `max_wait` is shed at once with `overloaded` and
/// that estimate, which istio-agent, kubelet and HTTP clients retry; one that
/// has waited `max_wait` without a token is shed too. A shed call takes no
/// token, so the budget is never overspent.
#[derive(Debug)]
pub struct RateLimit {
    inner: Arc<dyn Signer>,
    rate: f64,
    burst: f64,
    max_wait: Duration,
    bucket: Mutex<Bucket>,
    backend: Arc<str>,
    metrics: UpstreamMetrics,
}

/// A caller waiting for a token (counted in [`Bucket::waiting`] until dropped).
struct TokenWait<'a>(&'a RateLimit);

impl Drop for TokenWait<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl RateLimit {
    pub fn new(inner: Arc<dyn Signer>, per_second: f64, burst: u32, max_wait: Duration) -> Self {
        let burst = f64::from(burst.max(1));
        let backend = inner.describe().name.into();
        Self {
            inner,
            rate: per_second.max(0.001),
            burst,
            max_wait,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: crate::clock::monotonic(),
                waiting: 0,
            }),
            backend,
            metrics: UpstreamMetrics::global().clone(),
        }
    }

    /// Counts sheds in `metrics` instead of the process's set.
    pub fn with_metrics(mut self, metrics: &UpstreamMetrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token now, or says how long until the next one.
    fn take(&self) -> Option<Duration> {
        let mut b = self.lock();
        let now = crate::clock::monotonic();
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    fn shed(&self, retry_after: Duration) -> SignError {
        self.metrics.shed(&self.backend, "budget");
        SignError::Overloaded {
            retry_after: Some(retry_after),
        }
    }

    async fn admit(&self) -> Result<(), SignError> {
        if self.take().is_none() {
            return Ok(());
        }
        // The callers already waiting go first, one token each.
        let estimate = {
            let mut b = self.lock();
            b.waiting += 1;
            Duration::from_secs_f64(((b.waiting as f64) - b.tokens).max(0.0) / self.rate)
        };
        let _waiter = TokenWait(self);
        if estimate > self.max_wait {
            return Err(self.shed(estimate));
        }
        let started = crate::clock::monotonic();
        loop {
            let Some(next) = self.take() else {
                return Ok(());
            };
            let waited = crate::clock::elapsed(started);
            if waited >= self.max_wait {
                return Err(self.shed(next.max(Duration::from_millis(1))));
            }
            tokio::time::sleep(
                next.min(self.max_wait - waited)
                    .max(Duration::from_millis(1)),
            )
            .await;
        }
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
    backend: Arc<str>,
    metrics: UpstreamMetrics,
}

impl CircuitBreaker {
    pub fn new(inner: Arc<dyn Signer>, threshold: u32, open_for: Duration) -> Self {
        let backend = inner.describe().name.into();
        Self {
            inner,
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            backend,
            metrics: UpstreamMetrics::global().clone(),
        }
    }

    /// Counts sheds in `metrics` instead of the process's set.
    pub fn with_metrics(mut self, metrics: &UpstreamMetrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    fn admit(&self) -> Result<(), SignError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let refused = match *s {
            BreakerState::Closed { .. } => return Ok(()),
            BreakerState::Open { until } if crate::clock::monotonic() >= until => {
                *s = BreakerState::HalfOpen;
                return Ok(());
            }
            BreakerState::Open { until } => SignError::BackendUnavailable(format!(
                "circuit open after repeated failures; next attempt in {}",
                HumanDuration(until.saturating_duration_since(crate::clock::monotonic()))
            )),
            BreakerState::HalfOpen => {
                SignError::BackendUnavailable("circuit half-open; waiting for a probe".into())
            }
        };
        self.metrics.shed(&self.backend, "circuit_open");
        Err(refused)
    }

    fn record<T>(&self, result: &Result<T, SignError>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // signet's own shedding says nothing about the backend's health; a
        // probe that was shed lets the next call probe instead.
        if matches!(result, Err(e) if e.kind() == ErrorKind::Overloaded) {
            if *s == BreakerState::HalfOpen {
                *s = BreakerState::Open {
                    until: crate::clock::monotonic(),
                };
            }
            return;
        }
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

// === FairQueue ===

/// Whose request it is, for fair queueing: the namespace (or, for a name
/// outside a mesh namespace, the requesting principal) and the identity.
fn tenant(d: &IssuanceDecision) -> (String, String) {
    let uri = d.sans().iter().find_map(|s| match s {
        San::Uri(id) => Some(id),
        _ => None,
    });
    match uri {
        Some(id) => match id.mesh_identity() {
            Ok(Some((ns, _))) => (
                format!("{}/ns/{ns}", id.trust_domain()),
                id.as_str().to_owned(),
            ),
            _ => (d.requested_by().to_owned(), id.as_str().to_owned()),
        },
        None => (
            d.requested_by().to_owned(),
            d.sans()
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
    }
}

/// What a waiting request is told.
#[derive(Debug)]
enum Turn {
    /// A slot is yours.
    Go,
    /// The queue overflowed and your namespace had the most waiting.
    Shed,
}

type Waiter = tokio::sync::oneshot::Sender<Turn>;

/// Keyed queues served in turn: each key is visited once per round.
#[derive(Debug)]
struct RoundRobin<V> {
    order: std::collections::VecDeque<String>,
    queues: std::collections::HashMap<String, V>,
}

impl<V> Default for RoundRobin<V> {
    fn default() -> Self {
        Self {
            order: std::collections::VecDeque::new(),
            queues: std::collections::HashMap::new(),
        }
    }
}

impl<V: Default> RoundRobin<V> {
    fn entry(&mut self, key: &str) -> &mut V {
        if !self.queues.contains_key(key) {
            self.order.push_back(key.to_owned());
        }
        self.queues.entry(key.to_owned()).or_default()
    }

    /// Takes an item from the key whose turn it is; `take` says whether
    /// that key's queue is left empty.
    fn next<T>(&mut self, take: impl FnOnce(&mut V) -> (Option<T>, bool)) -> Option<T> {
        let key = self.order.pop_front()?;
        let q = self.queues.get_mut(&key)?;
        let (item, empty) = take(q);
        if empty {
            self.queues.remove(&key);
        } else {
            self.order.push_back(key);
        }
        item
    }
}

/// One namespace's waiting requests, by identity.
#[derive(Debug, Default)]
struct Namespace {
    identities: RoundRobin<std::collections::VecDeque<Waiter>>,
    len: usize,
}

impl Namespace {
    fn pop(&mut self) -> Option<Waiter> {
        let w = self.identities.next(|q| {
            let w = q.pop_front();
            (w, q.is_empty())
        });
        self.len -= usize::from(w.is_some());
        w
    }

    /// The newest request of the identity with the most waiting.
    fn pop_newest(&mut self) -> Option<Waiter> {
        let (id, _) = self.identities.queues.iter().max_by_key(|(_, q)| q.len())?;
        let id = id.clone();
        let q = self.identities.queues.get_mut(&id)?;
        let w = q.pop_back();
        if q.is_empty() {
            self.identities.queues.remove(&id);
            self.identities.order.retain(|k| *k != id);
        }
        self.len -= usize::from(w.is_some());
        w
    }

    /// Drops requests whose caller has gone.
    fn purge(&mut self) {
        for q in self.identities.queues.values_mut() {
            q.retain(|w| !w.is_closed());
        }
        self.identities.queues.retain(|_, q| !q.is_empty());
        let queues = &self.identities.queues;
        self.identities.order.retain(|k| queues.contains_key(k));
        self.len = queues.values().map(std::collections::VecDeque::len).sum();
    }
}

#[derive(Debug, Default)]
struct Slots {
    free: usize,
    waiting: RoundRobin<Namespace>,
    queued: usize,
}

impl Slots {
    fn pop(&mut self) -> Option<Waiter> {
        let w = self.waiting.next(|ns| {
            let w = ns.pop();
            (w, ns.len == 0)
        });
        self.queued -= usize::from(w.is_some());
        w
    }

    fn purge(&mut self) {
        for ns in self.waiting.queues.values_mut() {
            ns.purge();
        }
        self.waiting.queues.retain(|_, ns| ns.len > 0);
        let queues = &self.waiting.queues;
        self.waiting.order.retain(|k| queues.contains_key(k));
        self.queued = queues.values().map(|ns| ns.len).sum();
    }
}

/// At most `limit` calls in flight to the backend. The others wait in a
/// fair queue: namespaces take turns, and within a namespace identities
/// take turns, so one tenant restarting thousands of pods cannot starve
/// another. At most `max_queued` wait; past that the namespace with the
/// most waiting loses its newest request (`overloaded`, the caller
/// retries), so a quiet tenant's request still gets in.
#[derive(Debug)]
pub struct FairQueue {
    inner: Arc<dyn Signer>,
    max_queued: usize,
    fair: bool,
    slots: Mutex<Slots>,
    backend: Arc<str>,
    metrics: UpstreamMetrics,
}

/// A slot in use; handed to the next waiter when dropped.
struct Slot<'a>(&'a FairQueue);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A request waiting for a slot. If it is cancelled after its turn came,
/// the slot passes on.
struct Waiting<'a> {
    rx: tokio::sync::oneshot::Receiver<Turn>,
    queue: &'a FairQueue,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.rx.close();
        if let Ok(Turn::Go) = self.rx.try_recv() {
            self.queue.release();
        }
    }
}

impl FairQueue {
    /// `fair: false` serves one queue, first come first served.
    pub fn new(inner: Arc<dyn Signer>, limit: usize, max_queued: usize, fair: bool) -> Self {
        let backend = inner.describe().name.into();
        Self {
            inner,
            max_queued,
            fair,
            slots: Mutex::new(Slots {
                free: limit.max(1),
                ..Slots::default()
            }),
            backend,
            metrics: UpstreamMetrics::global().clone(),
        }
    }

    /// Counts sheds and the queue in `metrics` instead of the process's set.
    pub fn with_metrics(mut self, metrics: &UpstreamMetrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    fn release(&self) {
        let mut s = self.lock();
        while let Some(w) = s.pop() {
            if w.send(Turn::Go).is_ok() {
                self.metrics.set_queued(&self.backend, s.queued);
                return;
            }
        }
        s.free += 1;
        self.metrics.set_queued(&self.backend, s.queued);
    }

    fn shed(&self) -> SignError {
        self.metrics.shed(&self.backend, "queue_full");
        SignError::Overloaded {
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    /// A slot, at once when one is free; `tenant` is only asked when the
    /// request has to queue (no allocation on the uncontended path).
    async fn acquire(
        &self,
        tenant: impl FnOnce() -> (String, String),
    ) -> Result<Slot<'_>, SignError> {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 && s.queued == 0 {
                s.free -= 1;
                return Ok(Slot(self));
            }
            let (ns, id) = if self.fair {
                tenant()
            } else {
                (String::new(), String::new())
            };
            if s.queued >= self.max_queued {
                s.purge();
            }
            if s.queued >= self.max_queued {
                // The namespace with the most waiting pays for the overflow:
                // its newest request, or this one if it is that namespace.
                let longest = s
                    .waiting
                    .queues
                    .iter()
                    .max_by_key(|(_, n)| n.len)
                    .map(|(k, n)| (k.clone(), n.len));
                let own = s.waiting.queues.get(&ns).map_or(0, |n| n.len);
                match longest {
                    Some((k, len)) if len > own + 1 => {
                        let evicted = s.waiting.queues.get_mut(&k).and_then(Namespace::pop_newest);
                        if let Some(w) = evicted {
                            s.queued -= 1;
                            self.metrics.shed(&self.backend, "queue_full");
                            // Its caller may be gone already; either way it
                            // no longer waits.
                            let _ = w.send(Turn::Shed);
                        }
                    }
                    _ => return Err(self.shed()),
                }
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.waiting.entry(&ns).identities.entry(&id).push_back(tx);
            s.waiting.entry(&ns).len += 1;
            s.queued += 1;
            self.metrics.set_queued(&self.backend, s.queued);
            rx
        };
        let mut waiting = Waiting {
            rx,
            queue: self,
            done: false,
        };
        let turn = (&mut waiting.rx).await;
        waiting.done = true;
        match turn {
            Ok(Turn::Go) => Ok(Slot(self)),
            // Counted by whoever evicted it.
            Ok(Turn::Shed) => Err(SignError::Overloaded {
                retry_after: Some(Duration::from_secs(1)),
            }),
            Err(_) => Err(SignError::Internal(
                "the fair queue dropped a request".into(),
            )),
        }
    }
}

#[async_trait]
impl Signer for FairQueue {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let _slot = self.acquire(|| tenant(d)).await?;
        self.inner.sign(d, csr).await
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        let _slot = self.acquire(|| (String::new(), String::new())).await?;
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
    backend: Arc<str>,
    metrics: UpstreamMetrics,
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
        let backend = inner.describe().name.into();
        Self {
            inner,
            in_flight: Mutex::new(std::collections::HashMap::new()),
            joined: std::sync::atomic::AtomicU64::new(0),
            backend,
            metrics: UpstreamMetrics::global().clone(),
        }
    }

    /// Counts joined requests in `metrics` instead of the process's set.
    pub fn with_metrics(mut self, metrics: &UpstreamMetrics) -> Self {
        self.metrics = metrics.clone();
        self
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
        self.metrics.coalesced(&self.backend);
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
fn default_max_queued() -> usize {
    2048
}
fn yes() -> bool {
    true
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
    /// The upstream call budget: protects upstream quotas (e.g. AWS PCA
    /// ~25/s, GCP CAS 7–25/s per CA); past it requests are shed.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default = "default_breaker")]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Calls in flight to the backend at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Requests waiting for one of the `max_concurrency` slots; past it the
    /// namespace with the most waiting is shed.
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// Namespaces, then identities, take turns for the slots (`false`: one
    /// queue, first come first served).
    #[serde(default = "yes")]
    pub fair_queue: bool,
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
            max_queued: default_max_queued(),
            fair_queue: true,
        }
    }
}

impl ResilienceConfig {
    /// Wraps `backend` in the configured decorators, counting in the
    /// process's [`UpstreamMetrics`].
    pub fn wrap(&self, backend: Arc<dyn Signer>) -> Arc<dyn Signer> {
        self.wrap_with(backend, UpstreamMetrics::global())
    }

    /// [`Self::wrap`], counting in `metrics`.
    pub fn wrap_with(
        &self,
        backend: Arc<dyn Signer>,
        metrics: &UpstreamMetrics,
    ) -> Arc<dyn Signer> {
        let mut s: Arc<dyn Signer> =
            Arc::new(Timeout::new(backend, self.timeout.get()).with_metrics(metrics));
        if let Some(rl) = &self.rate_limit {
            s = Arc::new(
                RateLimit::new(s, rl.per_second, rl.burst, rl.max_wait.get()).with_metrics(metrics),
            );
        }
        // Slots are taken in turn before the budget's tokens, so the tokens
        // go out in the queue's fair order.
        s = Arc::new(
            FairQueue::new(s, self.max_concurrency, self.max_queued, self.fair_queue)
                .with_metrics(metrics),
        );
        if self.attempts > 1 {
            s = Arc::new(Retry::new(
                s,
                self.attempts,
                self.backoff.get(),
                self.max_backoff.get(),
            ));
        }
        if let Some(cb) = &self.circuit_breaker {
            s = Arc::new(
                CircuitBreaker::new(s, cb.failures, cb.open_for.get()).with_metrics(metrics),
            );
        }
        // Outermost: joined requests take no retry, budget or breaker share.
        Arc::new(Coalesce::new(s).with_metrics(metrics))
    }
}

impl fmt::Display for ResilienceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeout {} x{} attempts", self.timeout, self.attempts)
    }
}
