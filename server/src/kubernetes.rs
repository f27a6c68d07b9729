//! Wiring of the Kubernetes writers: one client for the local cluster, one
//! leader election, and the configured controllers gated on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use signet_core::routing::NamespaceLabels;
use signet_core::{Authority, Clock, Signer};
use signet_istio::cacerts::Cacerts;
use signet_istio::k8s::{CacertsKeeper, IstiodTlsKeeper, RootDistributor};
use signet_kubernetes::csr_signer::CsrSigner;
use signet_kubernetes::pod_certificates::PodCertificateSigner;
use signet_kubernetes::trust_bundles::TrustBundlePublisher;

use crate::config::{Config, KubernetesConfig};
use signet_kubernetes::leader::Elector;

/// A client for the cluster signet runs in (or the configured kubeconfig).
pub async fn client(config: &KubernetesConfig) -> anyhow::Result<Client> {
    let cfg = match &config.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| path.display().to_string())?;
            let opts = KubeConfigOptions {
                context: config.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts).await?
        }
        None => kube::Config::incluster().context(
            "in-cluster Kubernetes configuration (set kubernetes.kubeconfig outside a cluster)",
        )?,
    };
    Ok(Client::try_from(cfg)?)
}

/// Starts leader election and every configured writer.
pub async fn start(
    config: &Config,
    authorities: &BTreeMap<String, Arc<Authority>>,
    labels: Option<Arc<dyn NamespaceLabels>>,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
    clock: Arc<dyn Clock>,
    metrics: &signet_core::metrics::Metrics,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Elector> {
    let client = client(&config.kubernetes).await?;
    let elector = Elector::start(
        client.clone(),
        config.leader_election.clone(),
        clock.clone(),
    );
    tracing::info!(identity = elector.identity(), lease = %config.leader_election.lease_name, "campaigning for leadership of the Kubernetes writers");
    let f = &config.frontends;
    if let Some(c) = &f.kubernetes_csr {
        let routes = crate::app::routes(&c.authority, &c.routes, authorities, labels.clone())
            .context("frontends.kubernetes_csr.routes")?;
        let signer = Arc::new(
            CsrSigner::routed(client.clone(), c.clone(), routes, elector.subscribe())
                .with_metrics(metrics.clone()),
        );
        tasks.push(tokio::spawn(signer.run()));
        tracing::info!(signers = ?c.signer_names, "Kubernetes CSR signer started");
    }
    if let Some(c) = &f.pod_certificates {
        let routes = crate::app::routes(&c.authority, &c.routes, authorities, labels.clone())
            .context("frontends.pod_certificates.routes")?;
        let signer = Arc::new(PodCertificateSigner::new(
            client.clone(),
            c.clone(),
            routes,
            elector.subscribe(),
            metrics.clone(),
        ));
        tasks.push(tokio::spawn(signer.run()));
        tracing::info!(signers = ?c.signer_names, "PodCertificateRequest signer started");
        // Pods verify with the signer's ClusterTrustBundles: say which
        // authority's roots no bundle publishes for a signer name.
        let published: Vec<(&str, &str)> = f
            .cluster_trust_bundles
            .iter()
            .flat_map(|b| &b.bundles)
            .filter_map(|b| Some((b.signer_name.as_deref()?, b.authority.as_str())))
            .collect();
        let used = std::iter::once(&c.authority).chain(c.routes.iter().map(|r| &r.authority));
        for authority in used {
            for signer in &c.signer_names {
                if !published.contains(&(signer.as_str(), authority.as_str())) {
                    tracing::warn!(signer = %signer, authority = %authority, "no frontends.cluster_trust_bundles entry publishes this authority's roots for this signer name; pods selecting the signer's ClusterTrustBundles will not trust its certificates");
                }
            }
        }
    }
    start_istio_writers(
        config,
        &client,
        authorities,
        backends,
        &clock,
        &elector,
        tasks,
    );
    if let Some(c) = &f.istiod_tls {
        let keeper = IstiodTlsKeeper::new(
            client.clone(),
            c.clone(),
            authorities[&c.authority].clone(),
            elector.subscribe(),
        )
        .with_metrics(metrics.clone());
        tasks.push(tokio::spawn(keeper.run()));
        tracing::info!(secret = %c.secret, names = ?c.dns_names(), "istiod serving certificate keeper started");
    }
    if let Some(c) = &f.cluster_trust_bundles {
        let publisher = TrustBundlePublisher::new(
            client.clone(),
            c,
            |name| authorities[name].clone(),
            instance_label(&config.leader_election),
            elector.subscribe(),
        );
        tasks.push(tokio::spawn(publisher.run()));
        tracing::info!(names = ?c.bundles.iter().map(|b| b.object_name()).collect::<Vec<_>>(), "ClusterTrustBundle publisher started");
    }
    if let Some(c) = &f.cert_manager {
        let controller = Arc::new(
            signet_cert_manager::IssuerController::new(
                client.clone(),
                c.clone(),
                config.trust_domain.clone(),
                clock.clone(),
                elector.subscribe(),
            )
            .with_metrics(metrics.clone()),
        );
        tasks.push(tokio::spawn(controller.run()));
        tracing::info!(cluster_resource_namespace = %c.cluster_resource_namespace, "cert-manager issuer controller started");
    }
    Ok(elector)
}

/// istiod's plug-in CA Secret and the root ConfigMaps, each where configured.
fn start_istio_writers(
    config: &Config,
    client: &Client,
    authorities: &BTreeMap<String, Arc<Authority>>,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
    clock: &Arc<dyn Clock>,
    elector: &Elector,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let f = &config.frontends;
    if let Some(c) = &f.istio_cacerts {
        let cacerts = Cacerts::new(
            backends[&c.backend].clone(),
            c.clone(),
            config.trust_domain.clone(),
            clock.clone(),
        );
        tasks.push(tokio::spawn(
            CacertsKeeper::new(client.clone(), cacerts, elector.subscribe()).run(),
        ));
        tracing::info!(namespace = %c.namespace, secret = %c.secret, "cacerts keeper started");
    }
    if let Some(c) = &f.istio_root_cert {
        let dist = Arc::new(RootDistributor::new(
            client.clone(),
            c.clone(),
            authorities[&c.authority].clone(),
            elector.subscribe(),
        ));
        tasks.push(tokio::spawn(dist.run()));
        tracing::info!(configmap = %c.configmap, selector = %c.namespace_selector, "root distribution started");
    }
}

/// This installation as a label value: the Lease's `<namespace>.<name>`, or
/// a digest of it when that is longer than a label value may be.
fn instance_label(le: &signet_kubernetes::leader::LeaderConfig) -> String {
    let full = format!("{}.{}", le.namespace, le.lease_name);
    if full.len() <= 63 {
        return full;
    }
    let digest = signet_core::crypto::sha256(full.as_bytes());
    format!("signet-{}", hex::encode(&digest[..12]))
}
