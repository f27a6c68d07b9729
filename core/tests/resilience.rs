//! The resilience decorators, with paused time.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_core::caller::Caller;
use signet_core::error::{ErrorKind, SignError};
use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig, Profile};
use signet_core::resilience::{
    CircuitBreaker, Coalesce, ConcurrencyLimit, RateLimit, ResilienceConfig, Retry, Timeout,
};
use signet_core::spiffe::TrustDomain;
use signet_core::testing::{self, CaSigner, Fault};
use signet_core::{Signer, VerifiedCsr};

const DAY: Duration = Duration::from_secs(86_400);

fn request() -> (IssuanceDecision, VerifiedCsr) {
    let csr = testing::spiffe_csr("spiffe://cluster.local/ns/a/sa/b");
    let policy = AuthorityPolicy::new(
        TrustDomain::new("cluster.local").unwrap(),
        PolicyConfig::default(),
    )
    .unwrap();
    let d = policy
        .decide(
            &Caller::internal("t"),
            &testing::grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
            &csr,
            &testing::request(Profile::Workload),
            SystemTime::now(),
        )
        .unwrap();
    (d, csr)
}

#[tokio::test(start_paused = true)]
async fn retry_only_retries_what_is_retryable() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    let retry = Retry::new(
        up.clone(),
        3,
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    let (d, csr) = request();

    up.set_fault(Fault::Unavailable, 2);
    retry.sign(&d, &csr).await.expect("third attempt succeeds");
    assert_eq!(up.calls(), 3);

    up.set_fault(Fault::Unavailable, 5);
    let err = retry.sign(&d, &csr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendUnavailable);
    assert_eq!(up.calls(), 6, "gives up after 3 attempts");

    up.set_fault(Fault::Rejected, 5);
    let err = retry.sign(&d, &csr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected);
    assert_eq!(up.calls(), 7, "a refusal is not retried");
}

#[tokio::test(start_paused = true)]
async fn timeout_turns_a_hang_into_backend_unavailable() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    up.set_fault(Fault::Slow(Duration::from_secs(60)), 1);
    let t = Timeout::new(up.clone(), Duration::from_secs(2));
    let (d, csr) = request();
    let started = tokio::time::Instant::now();
    let err = t.sign(&d, &csr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendUnavailable);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    t.sign(&d, &csr).await.expect("next call is fine");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_fails_fast_then_probes_and_closes() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    let cb = CircuitBreaker::new(up.clone(), 3, Duration::from_secs(5));
    let (d, csr) = request();
    up.set_fault(Fault::Unavailable, u32::MAX);
    for _ in 0..3 {
        assert_eq!(
            cb.sign(&d, &csr).await.unwrap_err().kind(),
            ErrorKind::BackendUnavailable
        );
    }
    assert!(cb.is_open());
    assert!(cb.describe().ready.is_err());
    let err = cb.sign(&d, &csr).await.unwrap_err();
    assert!(err.to_string().contains("circuit open"), "{err}");
    assert_eq!(up.calls(), 3, "no call while open");

    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(
        cb.sign(&d, &csr).await.unwrap_err().kind(),
        ErrorKind::BackendUnavailable
    );
    assert_eq!(up.calls(), 4, "one probe");
    assert!(cb.is_open(), "a failed probe reopens");

    up.set_fault(Fault::None, 0);
    tokio::time::advance(Duration::from_secs(6)).await;
    cb.sign(&d, &csr).await.expect("probe succeeds");
    assert!(!cb.is_open());
    cb.sign(&d, &csr).await.expect("closed again");

    // Permanent errors do not count towards opening.
    up.set_fault(Fault::Rejected, u32::MAX);
    for _ in 0..10 {
        let _ = cb.sign(&d, &csr).await;
    }
    assert!(!cb.is_open());
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_smooths_and_refuses_what_would_wait_too_long() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    let (d, csr) = request();
    let rl = RateLimit::new(up.clone(), 10.0, 2, Duration::ZERO);
    rl.sign(&d, &csr).await.unwrap();
    rl.sign(&d, &csr).await.unwrap();
    let err = rl.sign(&d, &csr).await.unwrap_err();
    assert!(
        matches!(
            err,
            SignError::RateLimited {
                retry_after: Some(_)
            }
        ),
        "{err}"
    );
    tokio::time::advance(Duration::from_millis(110)).await;
    rl.sign(&d, &csr).await.expect("a token came back");

    // With room to wait, calls are spaced at the rate instead of refused.
    let patient = RateLimit::new(up.clone(), 10.0, 1, Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        patient.sign(&d, &csr).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(390),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_queues() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    up.set_fault(Fault::Slow(Duration::from_millis(100)), u32::MAX);
    let limited = Arc::new(ConcurrencyLimit::new(up.clone(), 2));
    let (d, csr) = request();
    let (d, csr) = (Arc::new(d), Arc::new(csr));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (l, d, c) = (limited.clone(), d.clone(), csr.clone());
            tokio::spawn(async move { l.sign(&d, &c).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(up.max_in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_configured_stack_recovers_from_a_short_outage() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    let stack = ResilienceConfig::default().wrap(up.clone());
    let (d, csr) = request();
    up.set_fault(Fault::Unavailable, 2);
    stack.sign(&d, &csr).await.expect("retries hide a blip");
    up.set_fault(Fault::Slow(Duration::from_secs(30)), 1);
    stack
        .sign(&d, &csr)
        .await
        .expect("a hung attempt times out and the retry succeeds");
}

/// Identical requests in flight cost the upstream one call and all get its
/// certificate; another key is its own call; after the answer, the same
/// request is a new call; a failure reaches every joined caller.
#[tokio::test(start_paused = true)]
async fn identical_requests_in_flight_make_one_upstream_call() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    let co = Arc::new(Coalesce::new(up.clone()));
    let (d, csr) = request();
    let (d2, csr2) = request();
    up.set_fault(Fault::Slow(Duration::from_millis(500)), 2);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (co, d, csr, d2, csr2) = (co.clone(), d.clone(), csr.clone(), d2.clone(), csr2.clone());
        tasks.push(tokio::spawn(async move {
            if i == 19 {
                co.sign(&d2, &csr2).await
            } else {
                co.sign(&d, &csr).await
            }
        }));
    }
    let mut serials = std::collections::BTreeSet::new();
    for t in tasks {
        serials.insert(t.await.unwrap().unwrap().serial_hex().to_owned());
    }
    assert_eq!(up.calls(), 2, "one call per distinct request");
    assert_eq!(serials.len(), 2);
    assert_eq!(co.joined(), 18);
    co.sign(&d, &csr).await.unwrap();
    assert_eq!(up.calls(), 3, "answered requests are not remembered");

    // A slow upstream cut by the timeout: one call, both callers fail retryably.
    let timed = Coalesce::new(Arc::new(Timeout::new(
        up.clone(),
        Duration::from_millis(100),
    )));
    up.set_fault(Fault::Slow(Duration::from_secs(1)), 1);
    let (a, b) = tokio::join!(timed.sign(&d, &csr), timed.sign(&d, &csr));
    let kinds = [a.unwrap_err().kind(), b.unwrap_err().kind()];
    assert_eq!(
        kinds,
        [ErrorKind::BackendUnavailable; 2],
        "both see the failure"
    );
    assert_eq!(up.calls(), 4);
}
