//! One test binary for the crate's integration tests: every test binary
//! links the whole dependency tree, so one binary instead of many keeps a
//! fresh CI build small and fast. nextest still runs each test in its own
//! process.

mod jwks_url;
mod k8s;
mod service;
