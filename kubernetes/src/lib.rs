//! signet-kubernetes: what signet does with Kubernetes that is not Istio's
//! or cert-manager's — leader election on a Lease ([`leader`]), the
//! certificates.k8s.io CSR signer ([`csr_signer`]), ClusterTrustBundles
//! ([`trust_bundles`]), and the helpers every Kubernetes writer shares
//! (errors, conflicts, leadership streams, controllers, upserts). The
//! Istio writers (`signet-istio`) and the cert-manager issuer
//! (`signet-cert-manager`) build on it.

pub mod csr_signer;
pub mod leader;
pub mod namespaces;
pub mod pod_certificates;
pub mod trust_bundles;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// The longest a controller (the CSR signer, the cert-manager issuer,
/// istiod's TLS keeper) waits for one signing before counting it a
/// `timeout` and trying again later.
pub const CONTROLLER_DEADLINE: Duration = Duration::from_secs(120);

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

/// Runs a kube-runtime controller for `K`, the one way signet does: every
/// object is reconciled again each time `triggers` yields (leadership
/// gained, a bundle changed); a lost write race is retried in 100 ms,
/// any other failure in 5 s; failed reconciles are debug lines under
/// `what` (the reconciler logs what matters).
pub async fn run_controller<K, C, F, Fut>(
    what: &'static str,
    api: Api<K>,
    watch: watcher::Config,
    triggers: impl futures::Stream<Item = ()> + Send + 'static,
    ctx: Arc<C>,
    reconcile: F,
) where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Debug + Unpin,
    C: Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    Controller::new(api, watch)
        .reconcile_all_on(triggers)
        .run(
            reconcile,
            |_obj, e: &ReconcileError, _ctx| match e {
                ReconcileError::Conflict => Action::requeue(Duration::from_millis(100)),
                _ => Action::requeue(Duration::from_secs(5)),
            },
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = what, error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Writes what signet owns into object `name`: replaces `current` (the copy
/// read before deciding, so a concurrent writer makes this a 409 conflict to
/// re-read, never a lost update) or, when there was none, creates it in the
/// API's namespace. `apply` sets signet's fields; its flag says the object
/// is new (fields signet sets only on objects it creates, like a type).
pub async fn upsert<K>(
    api: &Api<K>,
    name: &str,
    current: Option<K>,
    apply: impl FnOnce(&mut K, bool),
) -> Result<K, kube::Error>
where
    K: Resource + Clone + Default + Serialize + DeserializeOwned + Debug,
{
    match current {
        Some(mut obj) => {
            apply(&mut obj, false);
            api.replace(name, &PostParams::default(), &obj).await
        }
        None => {
            let mut obj = K::default();
            obj.meta_mut().name = Some(name.to_owned());
            obj.meta_mut().namespace = api.namespace().map(str::to_owned);
            apply(&mut obj, true);
            api.create(&PostParams::default(), &obj).await
        }
    }
}
