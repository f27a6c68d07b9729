//! Test support shared by signet's crates.
//!
//! - [`openssl`]: CSRs made by, and chains verified by, the `openssl` CLI —
//!   someone else's code, so our parser is never the only judge.
//! - [`process`]: runs the real `signet` binary on ephemeral ports and
//!   stops it when dropped.
//! - [`http`]: an HTTPS client that trusts only a given root.
//! - [`cluster`]: one test body against the fake or a real kube-apiserver.
//! - [`kube_fake`]: a fake Kubernetes API server for the real `kube` client.
//! - [`openbao`]: a real OpenBao server (dev or persistent) with PKI helpers.
//! - [`moto`]: moto's server mode as AWS Private CA, with a PCA under an
//!   external root.
//! - [`json_proxy`]: a recording, fault-injecting proxy for JSON APIs.
//! - [`latency_proxy`]: a TCP proxy that adds latency to a server's answers.
//! - [`helm`]: the chart linted and rendered by Helm's own library.
//! - [`hostile`]: hostile CSRs and what signet must answer to each.
//! - [`secrets`]: finds keys and tokens in logs (every launched process is scanned).
//! - [`softhsm`]: SoftHSM2 tokens with keys made by `pkcs11-tool`.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
pub mod cluster;
pub mod control_plane;
pub mod helm;
pub mod hostile;
pub mod http;
pub mod json_proxy;
pub mod kube_fake;
pub mod latency_proxy;
pub mod moto;
pub mod openbao;
pub mod openssl;
pub mod process;
pub mod secrets;
pub mod softhsm;

/// Polls `f` every 50 ms until it yields a value; panics naming `what`
/// when `within` has passed (what a controller converges to, not how fast).
pub async fn eventually<T>(
    what: &str,
    within: std::time::Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An independent Istio CA client, generated from the test suite's own proto.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
pub mod istio_client {
    tonic::include_proto!("istio.v1.auth");
}
