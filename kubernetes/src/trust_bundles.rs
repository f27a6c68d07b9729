//! ClusterTrustBundles: each configured authority's roots published as a
//! certificates.k8s.io/v1 ClusterTrustBundle, so that any pod can mount
//! them with a `clusterTrustBundle` projected volume (by name, or by signer
//! name and label selector).
//!
//! The leader keeps every configured object equal to its authority's bundle
//! (all roots, in the bundle's order) and deletes the ClusterTrustBundles
//! its installation labelled earlier that the configuration no longer names
//! (an authority removed, a signer name changed). ClusterTrustBundles are
//! cluster-wide, so each object carries its installation
//! ([`INSTANCE_LABEL`]: the leader-election Lease's namespace and name):
//! another installation's objects are neither deleted nor overwritten, and
//! an object of the same name that is not this installation's is an error.
//! Followers write nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize;
use signet_core::Authority;
use signet_core::duration::HumanDuration;
use signet_core::worker::{Backoff, Next, Worker};
use tokio::sync::watch;

use crate::{is_conflict, kube_err, upsert};

/// The label on every ClusterTrustBundle signet writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "signet");
/// The label naming the authority whose roots an object holds.
pub const AUTHORITY_LABEL: &str = "signet.dev/authority";
/// The label naming the installation that wrote an object.
pub const INSTANCE_LABEL: &str = "signet.dev/instance";

fn default_poll() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// `frontends.cluster_trust_bundles`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTrustBundlesConfig {
    /// One object per entry.
    pub bundles: Vec<TrustBundleConfig>,
    /// How often the authorities' bundles are read again (a rotation adds a
    /// root; leadership changes wake the publisher at once).
    #[serde(default = "default_poll")]
    pub poll: HumanDuration,
}

/// One ClusterTrustBundle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleConfig {
    /// Name of an entry under `authorities`.
    pub authority: String,
    /// Links the bundle to this signer (`<domain>/<path>`), so pods can
    /// select it by `signerName`; signet then needs the `attest` verb on the
    /// signer. Without it the object is signer-less.
    #[serde(default)]
    pub signer_name: Option<String>,
}

impl TrustBundleConfig {
    /// The object's name: `<signer name with / as :>:<authority>` when
    /// linked to a signer (the API server requires that prefix), else
    /// `signet-<authority>`.
    pub fn object_name(&self) -> String {
        match &self.signer_name {
            Some(s) => format!("{}:{}", s.replace('/', ":"), self.authority),
            None => format!("signet-{}", self.authority),
        }
    }

    /// What makes an entry unusable, before anything is written.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.signer_name {
            let (domain, path) = s
                .split_once('/')
                .ok_or_else(|| format!("signer_name {s:?} must be <domain>/<path>"))?;
            if !signet_core::spiffe::is_dns1123_subdomain(domain)
                || path.is_empty()
                || path.contains(':')
            {
                return Err(format!(
                    "signer_name {s:?} must be <domain>/<path> with a DNS domain and a path without ':'"
                ));
            }
        }
        let name = self.object_name();
        let ok = name.len() <= 253
            && name
                .split(':')
                .all(signet_core::spiffe::is_dns1123_subdomain);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "authority {:?} gives ClusterTrustBundle name {name:?}, which Kubernetes refuses",
                self.authority
            ))
        }
    }
}

/// Keeps the configured ClusterTrustBundles in sync while leading.
pub struct TrustBundlePublisher {
    client: Client,
    bundles: Vec<(TrustBundleConfig, Arc<Authority>)>,
    poll: Duration,
    /// This installation ([`INSTANCE_LABEL`]'s value).
    instance: String,
    leader: watch::Receiver<bool>,
}

impl TrustBundlePublisher {
    /// `instance` names this installation (a label value: the Lease's
    /// `<namespace>.<name>`).
    pub fn new(
        client: Client,
        config: &ClusterTrustBundlesConfig,
        authorities: impl Fn(&str) -> Arc<Authority>,
        instance: impl Into<String>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            bundles: config
                .bundles
                .iter()
                .map(|b| (b.clone(), authorities(&b.authority)))
                .collect(),
            poll: config.poll.get(),
            instance: instance.into(),
            leader,
        }
    }

    /// One pass: writes what differs, deletes what is no longer named.
    /// Returns how many objects it changed; one entry failing does not stop
    /// the others (the errors are returned together).
    pub async fn reconcile_once(&self) -> Result<usize, String> {
        if !*self.leader.borrow() {
            return Ok(0);
        }
        let api: Api<ClusterTrustBundle> = Api::all(self.client.clone());
        let mut changed = 0;
        let mut errors = Vec::new();
        let mut wanted = BTreeSet::new();
        for (config, authority) in &self.bundles {
            let name = config.object_name();
            wanted.insert(name.clone());
            let written = match authority.trust_bundle().await {
                Ok(b) => self.publish(&api, config, &name, b.to_pem()).await,
                Err(e) => Err(format!("the roots of authority {}: {e}", config.authority)),
            };
            match written {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        match self.remove_unnamed(&api, &wanted).await {
            Ok(n) => changed += n,
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            Ok(changed)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Writes one object unless it already says exactly this.
    async fn publish(
        &self,
        api: &Api<ClusterTrustBundle>,
        config: &TrustBundleConfig,
        name: &str,
        pem: String,
    ) -> Result<bool, String> {
        let current = api.get_opt(name).await.map_err(kube_err)?;
        if let Some(o) = &current
            && o.labels().get(INSTANCE_LABEL) != Some(&self.instance)
        {
            return Err(format!(
                "ClusterTrustBundle {name} exists and is not this installation's ({INSTANCE_LABEL}={}): not overwritten",
                self.instance
            ));
        }
        let labels_ok = |o: &ClusterTrustBundle| {
            o.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
                && o.labels().get(AUTHORITY_LABEL) == Some(&config.authority)
        };
        if current
            .as_ref()
            .is_some_and(|o| o.spec.trust_bundle == pem && labels_ok(o))
        {
            return Ok(false);
        }
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let written = upsert(api, name, current, |o, _| {
            o.spec.trust_bundle = pem;
            o.spec.signer_name = config.signer_name.clone();
            let labels = o.labels_mut();
            labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
            labels.insert(AUTHORITY_LABEL.into(), config.authority.clone());
            labels.insert(INSTANCE_LABEL.into(), self.instance.clone());
        })
        .await;
        match written {
            Ok(_) => {
                tracing::info!(clustertrustbundle = %name, authority = %config.authority, "cluster trust bundle published");
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Err(format!("conflict writing {name}; will re-read")),
            Err(e) => Err(format!(
                "writing ClusterTrustBundle {name}: {}",
                kube_err(e)
            )),
        }
    }

    /// Deletes the objects signet labelled that no entry names any more.
    async fn remove_unnamed(
        &self,
        api: &Api<ClusterTrustBundle>,
        wanted: &BTreeSet<String>,
    ) -> Result<usize, String> {
        let selector = format!(
            "{}={},{INSTANCE_LABEL}={}",
            MANAGED_BY.0, MANAGED_BY.1, self.instance
        );
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_err)?;
        let mut removed = 0;
        for stale in list
            .items
            .iter()
            .filter(|o| !wanted.contains(&o.name_any()))
        {
            if !*self.leader.borrow() {
                break;
            }
            let name = stale.name_any();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(clustertrustbundle = %name, "cluster trust bundle no longer configured: deleted");
                    removed += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(format!(
                        "deleting ClusterTrustBundle {name}: {}",
                        kube_err(e)
                    ));
                }
            }
        }
        Ok(removed)
    }

    /// Runs every `poll`, and whenever leadership changes, until the
    /// leadership channel closes.
    pub async fn run(self) {
        let poll = self.poll;
        Worker::new("cluster trust bundles")
            .backoff(Backoff::new(Duration::from_secs(1).min(poll), poll))
            .wake_on(self.leader.clone())
            .run(|| async { self.reconcile_once().await.map(|_| Next::In(poll)) })
            .await;
    }
}

impl std::fmt::Debug for TrustBundlePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundlePublisher")
            .field("bundles", &self.bundles.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(authority: &str, signer: Option<&str>) -> TrustBundleConfig {
        TrustBundleConfig {
            authority: authority.into(),
            signer_name: signer.map(Into::into),
        }
    }

    #[test]
    fn names_follow_the_api_servers_rule() {
        assert_eq!(
            entry("mesh", Some("signet.dev/mesh")).object_name(),
            "signet.dev:mesh:mesh"
        );
        assert_eq!(entry("mesh", None).object_name(), "signet-mesh");
        assert!(entry("mesh", Some("signet.dev/mesh")).validate().is_ok());
        for bad in ["no-path", "Upper.dev/x", "signet.dev/", "signet.dev/a:b"] {
            assert!(entry("mesh", Some(bad)).validate().is_err(), "{bad}");
        }
        assert!(entry("Mesh_1", None).validate().is_err());
    }
}
