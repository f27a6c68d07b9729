//! One test binary for the crate's integration tests: every test binary
//! links the whole dependency tree, so one binary instead of many keeps a
//! fresh CI build small and fast. nextest still runs each test in its own
//! process.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
mod aws_pca_e2e;
mod config_docs;
mod config_e2e;
mod conformance;
mod delegated_keys_e2e;
mod dev_e2e;
mod examples;
mod faults;
mod full_disk;
mod fuzz_corpus;
mod helm_chart;
mod hostile_bodies;
mod hostile_csrs;
mod istio_cacerts;
mod istio_e2e;
mod keys_e2e;
mod kubernetes_e2e;
mod leader;
mod readme;
mod rest_limits;
mod security_e2e;
mod slow_clients;
mod trust_rotation;
mod vault_e2e;
