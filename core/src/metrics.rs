//! Prometheus metrics shared by every front-end.
//!
//! Request outcomes are labelled with [`crate::ErrorKind::code`] (or
//! `issued`), so a dashboard reads the same words as the API. CA expiry is a
//! collector that asks each authority's backend at scrape time, so it never
//! goes stale across reloads or rotations.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::authority::Authority;
use crate::clock::unix_seconds;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub frontend: &'static str,
    /// The route the request took (`default`: the front-end's authority).
    pub route: String,
    pub authority: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub frontend: &'static str,
    pub route: String,
    pub authority: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    authority: String,
    backend: String,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~16 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// Request metrics, cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them (prefix `signet_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "requests",
            "Signing requests by front-end, route, authority and outcome (issued or an error code)",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a signing request",
            m.latency.clone(),
        );
        m
    }

    /// Records one answered request.
    pub fn observe(
        &self,
        frontend: &'static str,
        route: &str,
        authority: &str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                frontend,
                route: route.to_owned(),
                authority: authority.to_owned(),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                frontend,
                route: route.to_owned(),
                authority: authority.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Total requests so far with this outcome on the default route (for
    /// tests and self-checks).
    pub fn count(&self, frontend: &'static str, authority: &str, outcome: &'static str) -> u64 {
        self.count_routed(frontend, crate::routing::DEFAULT_ROUTE, authority, outcome)
    }

    /// Total requests so far with this outcome on `route`.
    pub fn count_routed(
        &self,
        frontend: &'static str,
        route: &str,
        authority: &str,
        outcome: &'static str,
    ) -> u64 {
        self.requests
            .get(&RequestLabels {
                frontend,
                route: route.to_owned(),
                authority: authority.to_owned(),
                outcome,
            })
            .map_or(0, |c| c.get())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    backend: String,
    /// `ok`, or the error code of the failed call.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    /// `pkcs11`, `aws_kms`, `vault_transit`.
    store: &'static str,
    /// The key in the store (token and label, key ID, mount/name and version).
    key: String,
    /// `ok`, `unavailable` or `refused`.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    store: &'static str,
    key: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    backend: String,
    /// `budget` (the upstream call budget), `queue_full` (the fair queue)
    /// or `circuit_open`.
    reason: &'static str,
}

/// What reaches each upstream backend and what signet keeps from it: every
/// call made (each retry attempt is a call), requests answered by another
/// request's call (coalesced), requests shed before any call, and requests
/// waiting in the fair queue. `upstream_calls_total{outcome="ok"}` over
/// `requests_total{outcome="issued"}` is the upstream calls per issued
/// certificate.
///
/// One set per process ([`UpstreamMetrics::global`]): backends are rebuilt on
/// reload and the counters must survive that. Tests that count give each
/// stack its own set ([`crate::resilience::ResilienceConfig::wrap_with`]).
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<BackendLabel, Histogram, fn() -> Histogram>,
    coalesced: Family<BackendLabel, Counter>,
    shed: Family<ShedLabels, Counter>,
    queued: Family<BackendLabel, Gauge>,
    key_signatures: Family<KeyLabels, Counter>,
    key_duration: Family<KeyLabel, Histogram, fn() -> Histogram>,
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            coalesced: Family::default(),
            shed: Family::default(),
            queued: Family::default(),
            key_signatures: Family::default(),
            key_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl UpstreamMetrics {
    /// The process's set.
    pub fn global() -> &'static UpstreamMetrics {
        static GLOBAL: std::sync::OnceLock<UpstreamMetrics> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(UpstreamMetrics::default)
    }

    /// Registers this set (prefix `signet_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_calls",
            "Calls made to each upstream backend (each retry attempt is one), by outcome (ok or an error code)",
            self.calls.clone(),
        );
        registry.register(
            "upstream_call_duration_seconds",
            "Time each upstream call took",
            self.duration.clone(),
        );
        registry.register(
            "upstream_coalesced",
            "Requests answered by an identical request's upstream call instead of their own",
            self.coalesced.clone(),
        );
        registry.register(
            "upstream_shed",
            "Requests refused before any upstream call to protect the backend (budget, queue_full, circuit_open)",
            self.shed.clone(),
        );
        registry.register(
            "upstream_queued",
            "Requests waiting in the backend's fair queue",
            self.queued.clone(),
        );
        registry.register(
            "key_signatures",
            "Signatures asked of a CA key in a key store (PKCS#11, AWS KMS, Vault Transit), by outcome (ok, unavailable, refused)",
            self.key_signatures.clone(),
        );
        registry.register(
            "key_signature_duration_seconds",
            "Time each signature by a CA key in a key store took",
            self.key_duration.clone(),
        );
    }

    /// One signature asked of a key in a store.
    pub(crate) fn key_signature(
        &self,
        key: &crate::key::KeyDescription,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.key_signatures
            .get_or_create(&KeyLabels {
                store: key.store,
                key: key.id.clone(),
                outcome,
            })
            .inc();
        self.key_duration
            .get_or_create(&KeyLabel {
                store: key.store,
                key: key.id.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Signatures asked of `key` so far with this outcome.
    pub fn key_signatures(&self, key: &crate::key::KeyDescription, outcome: &'static str) -> u64 {
        self.key_signatures
            .get(&KeyLabels {
                store: key.store,
                key: key.id.clone(),
                outcome,
            })
            .map_or(0, |c| c.get())
    }

    pub(crate) fn call(&self, backend: &str, outcome: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                backend: backend.to_owned(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&BackendLabel {
                backend: backend.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn coalesced(&self, backend: &str) {
        self.coalesced
            .get_or_create(&BackendLabel {
                backend: backend.to_owned(),
            })
            .inc();
    }

    pub(crate) fn shed(&self, backend: &str, reason: &'static str) {
        self.shed
            .get_or_create(&ShedLabels {
                backend: backend.to_owned(),
                reason,
            })
            .inc();
    }

    pub(crate) fn set_queued(&self, backend: &str, n: usize) {
        self.queued
            .get_or_create(&BackendLabel {
                backend: backend.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Calls to `backend` so far with this outcome (`ok` or an error code).
    pub fn calls(&self, backend: &str, outcome: &'static str) -> u64 {
        self.calls
            .get(&CallLabels {
                backend: backend.to_owned(),
                outcome,
            })
            .map_or(0, |c| c.get())
    }

    /// Requests to `backend` shed so far for `reason`.
    pub fn shed_count(&self, backend: &str, reason: &'static str) -> u64 {
        self.shed
            .get(&ShedLabels {
                backend: backend.to_owned(),
                reason,
            })
            .map_or(0, |c| c.get())
    }

    /// Requests to `backend` answered by another request's call so far.
    pub fn coalesced_count(&self, backend: &str) -> u64 {
        self.coalesced
            .get(&BackendLabel {
                backend: backend.to_owned(),
            })
            .map_or(0, |c| c.get())
    }
}

/// Exposes each authority's CA expiry and readiness at scrape time.
#[derive(Debug)]
pub struct AuthorityCollector {
    authorities: Vec<Arc<Authority>>,
}

impl AuthorityCollector {
    pub fn new(authorities: Vec<Arc<Authority>>) -> Self {
        Self { authorities }
    }
}

impl Collector for AuthorityCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let expiry: Family<CaLabels, Gauge> = Family::default();
        let ready: Family<CaLabels, Gauge> = Family::default();
        for a in &self.authorities {
            let info = a.backend();
            let labels = CaLabels {
                authority: a.name().to_owned(),
                backend: info.name.clone(),
            };
            if let Some(t) = info.ca_not_after {
                expiry.get_or_create(&labels).set(unix_seconds(t));
            }
            ready
                .get_or_create(&labels)
                .set(i64::from(info.ready.is_ok()));
        }
        let m = encoder.encode_descriptor(
            "ca_expiry_timestamp_seconds",
            "NotAfter of the CA certificate each authority signs with (Unix seconds)",
            None,
            expiry.metric_type(),
        )?;
        expiry.encode(m)?;
        let m = encoder.encode_descriptor(
            "authority_ready",
            "1 when the authority holds a usable CA and can sign",
            None,
            ready.metric_type(),
        )?;
        ready.encode(m)
    }
}
