//! istiod's serving certificate (`istiod-tls`), issued by signet and renewed
//! at two thirds of its life.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde::Deserialize;
use signet_core::Authority;
use signet_core::envelope::{Envelope, Handled};
use signet_core::metrics::Metrics;
use tokio::sync::watch;

use signet_core::worker::{Backoff, Next, Worker};
use signet_kubernetes::{CONTROLLER_DEADLINE, kube_err, upsert};

fn default_istiod_secret() -> String {
    "istiod-tls".to_owned()
}
fn default_revisions() -> Vec<String> {
    vec!["default".to_owned()]
}

/// `frontends.istiod_tls`: a `kubernetes.io/tls` Secret with istiod's
/// serving certificate (what istio-csr calls istiod-tls), renewed at two
/// thirds of its life. Mount it at `/var/run/secrets/istiod/tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstiodTlsConfig {
    pub authority: String,
    #[serde(default = "default_namespace_istio")]
    pub namespace: String,
    #[serde(default = "default_istiod_secret")]
    pub secret: String,
    /// Istio revisions: `default` gives `istiod.<ns>.svc`, others `istiod-<rev>.<ns>.svc`.
    #[serde(default = "default_revisions")]
    pub revisions: Vec<String>,
}

fn default_namespace_istio() -> String {
    "istio-system".to_owned()
}

impl IstiodTlsConfig {
    pub fn dns_names(&self) -> Vec<String> {
        self.revisions
            .iter()
            .map(|r| {
                if r == "default" {
                    format!("istiod.{}.svc", self.namespace)
                } else {
                    format!("istiod-{r}.{}.svc", self.namespace)
                }
            })
            .collect()
    }
}

/// Keeps istiod's serving certificate Secret fresh (leader only).
pub struct IstiodTlsKeeper {
    client: Client,
    config: IstiodTlsConfig,
    authority: Arc<Authority>,
    leader: watch::Receiver<bool>,
    envelope: Envelope,
}

impl IstiodTlsKeeper {
    pub fn new(
        client: Client,
        config: IstiodTlsConfig,
        authority: Arc<Authority>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            config,
            envelope: Self::envelope(&authority, Metrics::default()),
            authority,
            leader,
        }
    }

    fn envelope(authority: &Authority, metrics: Metrics) -> Envelope {
        Envelope::new(
            "istiod_tls",
            authority.name(),
            None,
            CONTROLLER_DEADLINE,
            metrics,
        )
    }

    /// Records request metrics (`frontend="istiod_tls"`) in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.envelope = Self::envelope(&self.authority, metrics);
        self
    }

    fn due(&self, secret: &Secret) -> bool {
        let Some(crt) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else {
            return true;
        };
        let Some(leaf) = signet_core::pem::certificates(&crt.0)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            return true;
        };
        match signet_core::chain::validity(&leaf) {
            Ok((nb, na)) => {
                self.authority.clock().now()
                    >= signet_core::clock::renew_time(nb, na, signet_core::clock::RENEW_AT)
            }
            Err(_) => true,
        }
    }

    /// Issues and writes the certificate when missing or due. Returns whether it wrote.
    pub async fn reconcile_once(&self) -> Result<bool, String> {
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let current = api.get_opt(&self.config.secret).await.map_err(kube_err)?;
        if current.as_ref().is_some_and(|s| !self.due(s)) {
            return Ok(false);
        }
        let names: Vec<signet_core::names::San> = self
            .config
            .dns_names()
            .iter()
            .map(|n| signet_core::names::DnsName::new(n).map(signet_core::names::San::Dns))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let (key, chain) = self
            .envelope
            .serve(&self.config.secret, async {
                Handled::by(
                    "istiod-tls",
                    signet_core::mint::issue_own_server_cert(&self.authority, "istiod-tls", &names)
                        .await,
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let mut crt = chain.leaf_pem();
        crt.extend(chain.intermediate_pems());
        let data: BTreeMap<String, ByteString> = [
            ("tls.crt".to_owned(), ByteString(crt.into_bytes())),
            (
                "tls.key".to_owned(),
                ByteString(key.to_pem().as_bytes().to_vec()),
            ),
            (
                "ca.crt".to_owned(),
                ByteString(chain.trust_bundle().to_pem().into_bytes()),
            ),
        ]
        .into();
        let result = upsert(&api, &self.config.secret, current, |s, new| {
            s.data = Some(data);
            if new {
                s.type_ = Some("kubernetes.io/tls".into());
            }
        })
        .await;
        result.map(|_| true).map_err(kube_err)
    }

    /// Looks at the Secret every minute, and whenever leadership changes,
    /// until the leadership channel closes.
    pub async fn run(self) {
        const PERIOD: Duration = Duration::from_secs(60);
        Worker::new("istiod serving certificate keeper")
            .backoff(Backoff::new(Duration::from_secs(5), PERIOD))
            .wake_on(self.leader.clone())
            .run(|| async { self.reconcile_once().await.map(|_| Next::In(PERIOD)) })
            .await;
    }
}

impl std::fmt::Debug for IstiodTlsKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstiodTlsKeeper")
            .field("secret", &self.config.secret)
            .finish_non_exhaustive()
    }
}
