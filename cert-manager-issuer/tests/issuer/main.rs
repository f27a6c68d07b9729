//! One test binary for the crate's integration tests: every test binary
//! links the whole dependency tree, so one binary instead of many keeps a
//! fresh CI build small and fast. nextest still runs each test in its own
//! process.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
mod controller;
mod crds;
