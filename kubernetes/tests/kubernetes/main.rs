//! One test binary for the crate's integration tests (see istio-plugin's
//! tests for why one binary).

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
mod trust_bundles;
