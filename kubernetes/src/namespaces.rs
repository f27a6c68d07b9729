//! Namespace labels for routing ([`signet_core::routing`]): a watched cache
//! of the cluster's Namespaces. Until the first list arrives every
//! namespace is unknown, and routes that match on labels refuse as
//! retryable instead of guessing.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use signet_core::routing::NamespaceLabels;

/// The cluster's Namespaces, watched (needs `list` and `watch` on
/// namespaces).
#[derive(Clone)]
pub struct WatchedNamespaces {
    store: Store<Namespace>,
}

impl std::fmt::Debug for WatchedNamespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedNamespaces")
            .field("known", &self.store.len())
            .finish()
    }
}

impl WatchedNamespaces {
    /// Starts the watch; it runs (re-listing after errors, with backoff)
    /// until the returned task is aborted.
    pub fn start(client: Client) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (store, writer) = reflector::store();
        let api: Api<Namespace> = Api::all(client);
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching namespaces (for routes by label)");
                }
            }
        });
        (Arc::new(Self { store }), task)
    }
}

impl NamespaceLabels for WatchedNamespaces {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.store
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }
}
