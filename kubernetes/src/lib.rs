//! signet-kubernetes: what signet does with Kubernetes that is not Istio's
//! or cert-manager's — leader election on a Lease ([`leader`]), the
//! certificates.k8s.io CSR signer ([`csr_signer`]), and the helpers every
//! Kubernetes writer shares (errors, conflicts, leadership streams). The
//! Istio writers (`signet-istio`) and the cert-manager issuer
//! (`signet-cert-manager`) build on it.

pub mod csr_signer;
pub mod leader;

/// The longest a controller (the CSR signer, the cert-manager issuer,
/// istiod's TLS keeper) waits for one signing before counting it a
/// `timeout` and trying again later.
pub const CONTROLLER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

use futures::StreamExt as _;
use tokio::sync::watch;

/// Why a reconcile did not finish (the controller retries it).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes: {0}")]
    Kube(String),
    #[error("signing: {0}")]
    Sign(signet_core::SignError),
    #[error("conflict; re-reading")]
    Conflict,
}

/// An API error as one line: the server's message and code.
pub fn kube_err(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Whether the write lost an optimistic-concurrency race (409): read again
/// and re-decide.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A stream that yields each time `value` changes (a published bundle).
pub fn on_change<T: Clone + Send + Sync + 'static>(
    value: watch::Receiver<T>,
) -> impl futures::Stream<Item = ()> + Send {
    tokio_stream::wrappers::WatchStream::from_changes(value).map(|_| ())
}

/// A stream that yields each time `leader` turns true (to re-examine
/// everything the previous leader may have left undone).
pub fn on_leadership(leader: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send {
    tokio_stream::wrappers::WatchStream::new(leader)
        .filter(|l| std::future::ready(*l))
        .map(|_| ())
}
