//! Distributes the trust bundle as the `istio-ca-root-cert` ConfigMap in
//! every selected namespace, as istiod does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize;
use signet_core::Authority;
use signet_core::duration::HumanDuration;
use signet_core::worker::{self, Backoff, Worker};
use signet_kubernetes::{
    ReconcileError, is_conflict, kube_err, on_change, on_leadership, run_controller, upsert,
};
use tokio::sync::watch;

fn default_configmap() -> String {
    "istio-ca-root-cert".to_owned()
}

/// `frontends.istio_root_cert`: the trust bundle as a ConfigMap in every
/// selected namespace (what istiod publishes when its CA serves).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDistributionConfig {
    pub authority: String,
    #[serde(default = "default_configmap")]
    pub configmap: String,
    /// Label selector for namespaces; empty means all.
    #[serde(default)]
    pub namespace_selector: String,
    /// How often the trust bundle is re-read.
    #[serde(default = "default_bundle_poll")]
    pub poll: HumanDuration,
}

fn default_bundle_poll() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Keeps `istio-ca-root-cert` in sync in every selected namespace (leader only).
pub struct RootDistributor {
    client: Client,
    config: RootDistributionConfig,
    authority: Arc<Authority>,
    leader: watch::Receiver<bool>,
    bundle: Mutex<Option<String>>,
}

impl RootDistributor {
    pub fn new(
        client: Client,
        config: RootDistributionConfig,
        authority: Arc<Authority>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            config,
            authority,
            leader,
            bundle: Mutex::new(None),
        }
    }

    async fn current_bundle(&self) -> Result<String, String> {
        let b = self
            .authority
            .trust_bundle()
            .await
            .map_err(|e| e.to_string())?
            .to_pem();
        *self.bundle.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
        Ok(b)
    }

    async fn reconcile(&self, ns: Arc<Namespace>) -> Result<Action, ReconcileError> {
        if !*self.leader.borrow() || ns.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let bundle = self.current_bundle().await.map_err(ReconcileError::Kube)?;
        let ns_name = ns.name_any();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns_name);
        let data: BTreeMap<String, String> = [("root-cert.pem".to_owned(), bundle)].into();
        let labels: BTreeMap<String, String> =
            [("istio.io/config".to_owned(), "true".to_owned())].into();
        let existing = api
            .get_opt(&self.config.configmap)
            .await
            .map_err(|e| ReconcileError::Kube(kube_err(e)))?;
        let result = match existing {
            Some(cm)
                if cm.data.as_ref() == Some(&data)
                    && cm
                        .labels()
                        .get("istio.io/config")
                        .is_some_and(|v| v == "true") =>
            {
                return Ok(Action::await_change());
            }
            current => {
                upsert(&api, &self.config.configmap, current, |cm, _| {
                    cm.data = Some(data);
                    cm.labels_mut().extend(labels);
                })
                .await
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(namespace = %ns_name, configmap = %self.config.configmap, "root certificate published");
                Ok(Action::await_change())
            }
            Err(e) if is_conflict(&e) => Err(ReconcileError::Conflict),
            Err(e) => Err(ReconcileError::Kube(kube_err(e))),
        }
    }

    /// Watches namespaces; re-publishes everywhere when the bundle changes
    /// or leadership is gained.
    pub async fn run(self: Arc<Self>) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let wc = watcher::Config::default().labels(&self.config.namespace_selector);
        let authority = self.authority.clone();
        let poll = self.config.poll.get();
        // Stops by itself once the controller (holding the receiver) ends.
        let (bundles, _poller) = worker::publish(
            Worker::new("root certificate poll").backoff(Backoff::constant(poll)),
            poll,
            move || {
                let authority = authority.clone();
                async move { authority.trust_bundle().await.map(|b| b.to_pem()) }
            },
        );
        let triggers =
            futures::stream::select(on_leadership(self.leader.clone()), on_change(bundles));
        run_controller(
            "root certificate configmaps",
            api,
            wc,
            triggers,
            self,
            |ns, ctx| async move { ctx.reconcile(ns).await },
        )
        .await;
    }

    /// Namespaces currently selected (for tests and `signet check`).
    pub async fn selected(&self) -> Result<Vec<String>, String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(&self.config.namespace_selector))
            .await
            .map_err(kube_err)?;
        Ok(list.items.iter().map(|n| n.name_any()).collect())
    }
}

impl std::fmt::Debug for RootDistributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootDistributor").finish_non_exhaustive()
    }
}
