//! Keeps Istio's plug-in CA Secret (`cacerts`): creates it, rotates the
//! intermediate before it expires, refuses to overwrite what it cannot
//! validate.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;

use signet_core::worker::{Backoff, Next, Worker};
use signet_kubernetes::{is_conflict, kube_err, upsert};

use crate::cacerts::{Cacerts, Files, Plan};

/// A Secret's data by key, as the plug-in CA files.
pub fn secret_files(secret: &Secret) -> Files {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Keeps the `cacerts` Secret filled and fresh (leader only).
pub struct CacertsKeeper {
    client: Client,
    cacerts: Cacerts,
    leader: watch::Receiver<bool>,
    period: Duration,
}

impl CacertsKeeper {
    pub fn new(client: Client, cacerts: Cacerts, leader: watch::Receiver<bool>) -> Self {
        Self {
            client,
            cacerts,
            leader,
            period: Duration::from_secs(30),
        }
    }

    /// How often the Secret is examined (default 30 s).
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Examines the Secret and writes what it needs, once. Returns whether
    /// it wrote.
    pub async fn reconcile_once(&self) -> Result<bool, String> {
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let cfg = self.cacerts.config();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &cfg.namespace);
        let current = api.get_opt(&cfg.secret).await.map_err(kube_err)?;
        let files = current.as_ref().map(secret_files);
        let new_files = match self.cacerts.plan(files.as_ref()).await {
            Plan::Keep => return Ok(false),
            Plan::Write(f) => f,
            Plan::Mint {
                previous_roots,
                previous,
            } => self
                .cacerts
                .mint(&previous_roots, previous.as_ref())
                .await
                .map_err(|e| e.to_string())?,
        };
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let data: BTreeMap<String, ByteString> = new_files
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        let result = upsert(&api, &cfg.secret, current, |secret, new| {
            secret.data = Some(data);
            secret.string_data = None;
            if new {
                secret
                    .labels_mut()
                    .insert("app.kubernetes.io/managed-by".into(), "signet".into());
                secret.type_ = Some("Opaque".into());
            }
        })
        .await;
        match result {
            Ok(_) => {
                tracing::info!(namespace = %cfg.namespace, secret = %cfg.secret, "cacerts written");
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Err("conflict writing cacerts; will re-read".into()),
            Err(e) => Err(kube_err(e)),
        }
    }

    /// Runs every period, whenever leadership changes and whenever the
    /// backend's root-rotation phase does, until the leadership channel
    /// closes.
    pub async fn run(self) {
        let mut worker = Worker::new("cacerts keeper")
            .backoff(Backoff::new(
                Duration::from_secs(1).min(self.period),
                self.period,
            ))
            .wake_on(self.leader.clone());
        if let Some(changes) = self.cacerts.issuer_changes() {
            worker = worker.wake_on(changes);
        }
        worker
            .run(|| async { self.reconcile_once().await.map(|_| Next::In(self.period)) })
            .await;
    }
}

impl std::fmt::Debug for CacertsKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsKeeper").finish_non_exhaustive()
    }
}
