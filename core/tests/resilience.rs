//! The resilience decorators, with paused time.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_core::caller::Caller;
use signet_core::duration::HumanDuration;
use signet_core::error::{ErrorKind, SignError};
use signet_core::metrics::UpstreamMetrics;
use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig, Profile};
use signet_core::resilience::{
    BreakerConfig, CircuitBreaker, Coalesce, FairQueue, RateLimit, RateLimitConfig,
    ResilienceConfig, Retry, Timeout,
};
use signet_core::spiffe::TrustDomain;
use signet_core::testing::{self, CaSigner, Fault};
use signet_core::{Signer, VerifiedCsr};

const DAY: Duration = Duration::from_secs(86_400);

fn request() -> (IssuanceDecision, VerifiedCsr) {
    request_for("spiffe://cluster.local/ns/a/sa/b")
}

fn request_for(id: &str) -> (IssuanceDecision, VerifiedCsr) {
    let csr = testing::spiffe_csr(id);
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
            SignError::Overloaded {
                retry_after: Some(_)
            }
        ),
        "shed at once, with the time until a token: {err}"
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
async fn the_fair_queue_limits_calls_in_flight() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    up.set_fault(Fault::Slow(Duration::from_millis(100)), u32::MAX);
    let limited = Arc::new(FairQueue::new(up.clone(), 2, 100, true));
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

/// Completion order of requests queued behind one slot, from `ids` in the
/// order they arrive.
async fn completion_order(fair: bool, ids: &[&'static str]) -> Vec<&'static str> {
    let up = CaSigner::root(SystemTime::now(), DAY);
    up.set_fault(Fault::Slow(Duration::from_millis(100)), u32::MAX);
    let q = Arc::new(FairQueue::new(up.clone(), 1, 1000, fair));
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().copied().enumerate() {
        let (d, csr) = request_for(id);
        let (q2, done) = (q.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            q2.sign(&d, &csr).await.unwrap();
            done.lock().unwrap().push(id);
        }));
        // Each arrives (and queues) before the next.
        while q.queued() < i {
            tokio::task::yield_now().await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.max_in_flight(), 1);
    Arc::try_unwrap(done).unwrap().into_inner().unwrap()
}

/// A namespace restarting many pods queues ahead of a quiet one; with the
/// fair queue the quiet namespace (and a quiet identity inside the noisy
/// one) is served within the first rounds instead of after the storm.
#[tokio::test(start_paused = true)]
async fn a_noisy_namespace_does_not_starve_a_quiet_one() {
    const NOISY: &str = "spiffe://cluster.local/ns/noisy/sa/web";
    const OTHER_SA: &str = "spiffe://cluster.local/ns/noisy/sa/batch";
    const QUIET: &str = "spiffe://cluster.local/ns/quiet/sa/api";
    let mut ids = vec![NOISY; 20];
    ids.extend([OTHER_SA, QUIET, QUIET]);

    let fair = completion_order(true, &ids).await;
    let pos = |order: &[&str], id| order.iter().position(|x| *x == id).unwrap();
    let last = |order: &[&str], id| order.iter().rposition(|x| *x == id).unwrap();
    // Rounds: noisy(web) | noisy(batch), quiet | noisy(web), quiet ...
    assert!(last(&fair, QUIET) <= 4, "{fair:?}");
    assert!(pos(&fair, OTHER_SA) <= 3, "{fair:?}");

    let fifo = completion_order(false, &ids).await;
    assert_eq!(pos(&fifo, QUIET), 21, "first come, first served: {fifo:?}");
}

/// Past `max_queued`, the namespace with the most waiting gives up its
/// newest request for a quiet namespace's, and a request that would
/// unbalance the queue further is shed itself; every shed is `overloaded`,
/// which the caller retries.
#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_the_namespace_with_the_most_waiting() {
    const NOISY: &str = "spiffe://cluster.local/ns/noisy/sa/web";
    const QUIET: &str = "spiffe://cluster.local/ns/quiet/sa/api";
    let up = CaSigner::root(SystemTime::now(), DAY);
    up.set_fault(Fault::Slow(Duration::from_secs(1)), u32::MAX);
    let m = UpstreamMetrics::default();
    let q = Arc::new(FairQueue::new(up.clone(), 1, 3, true).with_metrics(&m));
    let spawn = |id: &'static str| {
        let (d, csr) = request_for(id);
        let q = q.clone();
        tokio::spawn(async move { q.sign(&d, &csr).await.map(|_| ()) })
    };
    let settle = |n: usize| {
        let q = q.clone();
        async move {
            for _ in 0..100 {
                if q.queued() == n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("queued {} instead of {n}", q.queued());
        }
    };
    let mut noisy = vec![spawn(NOISY)];
    settle(0).await; // the first holds the slot
    for i in 1..4 {
        noisy.push(spawn(NOISY));
        settle(i).await;
    }
    let quiet = spawn(QUIET);
    settle(3).await;
    let evicted = noisy.pop().unwrap().await.unwrap().unwrap_err();
    assert_eq!(evicted.kind(), ErrorKind::Overloaded, "{evicted}");
    let own = spawn(NOISY).await.unwrap().unwrap_err();
    assert_eq!(own.kind(), ErrorKind::Overloaded, "{own}");
    assert_eq!(m.shed_count("test-ca", "queue_full"), 2);

    quiet.await.unwrap().expect("the quiet namespace is served");
    for t in noisy {
        t.await
            .unwrap()
            .expect("the rest of the noisy namespace is served");
    }
    assert_eq!(up.calls(), 4);
}

/// A restart storm against a budget of 10 calls a second (bursts of 5):
/// requests past what the budget can serve within `max_wait` are shed at
/// once (not retried inside, not counted against the backend's health),
/// the callers retry after the time they were given as agents do, every
/// one is served, and no one-second window ever holds more than
/// burst + rate calls.
#[tokio::test(start_paused = true)]
async fn a_storm_against_a_call_budget_is_served_without_overspending_it() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    up.set_fault(Fault::Slow(Duration::from_millis(20)), u32::MAX);
    let m = UpstreamMetrics::default();
    let config = ResilienceConfig {
        rate_limit: Some(RateLimitConfig {
            per_second: 10.0,
            burst: 5,
            max_wait: HumanDuration::from_secs(1),
        }),
        circuit_breaker: Some(BreakerConfig {
            failures: 3,
            open_for: HumanDuration::from_secs(5),
        }),
        ..ResilienceConfig::default()
    };
    let stack = config.wrap_with(up.clone(), &m);
    let upstream = up.clone();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            samples.push(upstream.calls());
            if upstream.calls() >= 60 {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let clients: Vec<_> = (0..60)
        .map(|i| {
            let (d, csr) = request_for(&format!("spiffe://cluster.local/ns/n{}/sa/s{i}", i % 3));
            let stack = stack.clone();
            tokio::spawn(async move {
                let mut tries = 0;
                loop {
                    tries += 1;
                    match stack.sign(&d, &csr).await {
                        Ok(_) => return tries,
                        Err(SignError::Overloaded { retry_after }) => {
                            tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
                        }
                        Err(e) => panic!("only sheds: {e}"),
                    }
                }
            })
        })
        .collect();
    let mut retried = 0;
    for c in clients {
        retried += usize::from(c.await.unwrap() > 1);
    }
    assert!(retried > 0, "the storm outran the budget");
    assert_eq!(up.calls(), 60, "a shed request never reached the backend");
    assert_eq!(m.calls("test-ca", "ok"), 60);
    assert!(m.shed_count("test-ca", "budget") > 0);
    assert_eq!(
        m.shed_count("test-ca", "circuit_open"),
        0,
        "sheds are not failures"
    );
    let samples = sampler.await.unwrap();
    for w in samples.windows(11) {
        let in_window = w[10] - w[0];
        assert!(
            in_window <= 15,
            "{in_window} calls in one second: {samples:?}"
        );
    }
}

/// Each attempt is an upstream call, counted with its outcome; a request
/// answered by an identical one in flight is counted as coalesced.
#[tokio::test(start_paused = true)]
async fn upstream_calls_and_coalesced_requests_are_counted() {
    let up = CaSigner::root(SystemTime::now(), DAY);
    let m = UpstreamMetrics::default();
    let stack = ResilienceConfig::default().wrap_with(up.clone(), &m);
    let (d, csr) = request();
    up.set_fault(Fault::Unavailable, 2);
    stack.sign(&d, &csr).await.unwrap();
    assert_eq!(m.calls("test-ca", "backend_unavailable"), 2);
    assert_eq!(m.calls("test-ca", "ok"), 1);

    up.set_fault(Fault::Slow(Duration::from_millis(200)), 1);
    let (a, b) = tokio::join!(stack.sign(&d, &csr), stack.sign(&d, &csr));
    a.unwrap();
    b.unwrap();
    assert_eq!(m.calls("test-ca", "ok"), 2);
    assert_eq!(m.coalesced_count("test-ca"), 1);

    // A call whose caller stopped waiting still cost the upstream a call,
    // counted with what the backend finally answered.
    let hurried = Timeout::new(up.clone(), Duration::from_millis(100)).with_metrics(&m);
    up.set_fault(Fault::Slow(Duration::from_millis(150)), 1);
    let (d2, csr2) = request();
    let e = hurried.sign(&d2, &csr2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendUnavailable);
    assert_eq!(m.calls("test-ca", "ok"), 2, "not answered yet");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.calls("test-ca", "ok"), 3, "the late answer is counted");
}
