//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica signs; only the Lease holder writes to Kubernetes (CSR
//! status, cacerts, root ConfigMaps). The algorithm is client-go's: read the
//! Lease, renew it if ours, take it over if its holder let it expire, always
//! with the resourceVersion we read (a concurrent writer gets 409 and loses).
//! A holder that cannot renew within `renew_deadline` stops leading at once,
//! before anyone else may take over (`lease_duration` > `renew_deadline`).
//! On shutdown the Lease is released so a successor need not wait.
//!
//! Our own rather than kube-lease-manager: that crate stamps times with the
//! wall clock directly, and we want the lease arithmetic on the injectable
//! clock and resourceVersion-based (not apply-based) conflict detection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Deserialize;
use signet_core::Clock;
use signet_core::duration::HumanDuration;
use tokio::sync::watch;

fn default_lease_name() -> String {
    "signet-leader".to_owned()
}
fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "signet".to_owned())
}
fn default_lease_duration() -> HumanDuration {
    HumanDuration::from_secs(15)
}
fn default_renew_deadline() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_retry_period() -> HumanDuration {
    HumanDuration::from_secs(2)
}

/// `leader_election` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// This replica's identity; default `$POD_NAME`, else the host name plus a random suffix.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default = "default_lease_duration")]
    pub lease_duration: HumanDuration,
    #[serde(default = "default_renew_deadline")]
    pub renew_deadline: HumanDuration,
    #[serde(default = "default_retry_period")]
    pub retry_period: HumanDuration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            namespace: default_namespace(),
            lease_name: default_lease_name(),
            identity: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

impl LeaderConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return Err("need retry_period < renew_deadline < lease_duration".into());
        }
        Ok(())
    }

    fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 4];
                signet_core::crypto::random_bytes(&mut b);
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), hex::encode(b))
            })
    }
}

/// A running election. Drop or [`Elector::release`] to step down.
#[derive(Debug)]
pub struct Elector {
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    identity: String,
}

impl Elector {
    /// Starts campaigning.
    pub fn start(client: Client, config: LeaderConfig, clock: Arc<dyn Clock>) -> Self {
        let identity = config.identity();
        let (tx, leader) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let task = tokio::spawn(campaign(api, config, identity.clone(), clock, tx, stop_rx));
        Self {
            leader,
            stop,
            task,
            identity,
        }
    }

    /// Whether this replica currently leads, and changes to it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Stops campaigning without releasing the Lease, as a crashed process
    /// would: others take over once it expires.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Steps down and releases the Lease (if held), then returns.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn micro(t: SystemTime) -> MicroTime {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    MicroTime(ts)
}

/// What we last saw of the Lease and when (by our own monotonic clock): a
/// holder's lease is judged expired by how long *we* have seen it unchanged,
/// never by comparing its timestamps with our wall clock (client-go's rule).
#[derive(Debug, Default)]
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    at: Option<tokio::time::Instant>,
}

enum Outcome {
    Leading,
    Following,
    /// A transient error: keep the current state until the deadline.
    Error(String),
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaderConfig,
    identity: &str,
    now: SystemTime,
    observed: &mut Observed,
) -> Outcome {
    let duration_secs = config.lease_duration.get().as_secs() as i32;
    let current = match api.get_opt(&config.lease_name).await {
        Ok(l) => l,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.lease_name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(micro(now)),
                renew_time: Some(micro(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Outcome::Leading,
            Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Following,
            Err(e) => Outcome::Error(e.to_string()),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.at = Some(signet_core::clock::monotonic());
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let expired = observed
        .at
        .is_none_or(|at| signet_core::clock::elapsed(at) > duration);
    let ours = holder.as_deref() == Some(identity);
    if !ours && holder.is_some() && !expired {
        return Outcome::Following;
    }
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(identity.to_owned());
    new_spec.lease_duration_seconds = Some(duration_secs);
    new_spec.renew_time = Some(micro(now));
    if !ours {
        new_spec.acquire_time = Some(micro(now));
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(new_spec);
    match api
        .replace(&config.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Outcome::Leading,
        Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Following,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

async fn release(api: &Api<Lease>, config: &LeaderConfig, identity: &str, now: SystemTime) {
    let Ok(Some(mut lease)) = api.get_opt(&config.lease_name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro(now));
    match api
        .replace(&config.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %config.lease_name, "leadership released"),
        Err(e) => {
            tracing::warn!(lease = %config.lease_name, error = %e, "releasing the lease failed; it will expire")
        }
    }
}

async fn campaign(
    api: Api<Lease>,
    config: LeaderConfig,
    identity: String,
    clock: Arc<dyn Clock>,
    tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let mut observed = Observed::default();
    loop {
        let leading = *tx.borrow();
        let outcome =
            try_acquire_or_renew(&api, &config, &identity, clock.now(), &mut observed).await;
        let now_leading = match outcome {
            Outcome::Leading => {
                last_renewal = Some(signet_core::clock::monotonic());
                true
            }
            Outcome::Following => false,
            Outcome::Error(e) => {
                tracing::warn!(lease = %config.lease_name, error = %e, "lease check failed");
                // Keep leading only while within the renew deadline.
                leading
                    && last_renewal.is_some_and(|t| {
                        signet_core::clock::elapsed(t) < config.renew_deadline.get()
                    })
            }
        };
        if now_leading != leading {
            if now_leading {
                tracing::info!(lease = %config.lease_name, identity = %identity, "became leader");
            } else {
                tracing::warn!(lease = %config.lease_name, identity = %identity, "lost leadership; writers stop");
            }
            let _ = tx.send(now_leading);
        }
        let jitter = signet_core::resilience::jitter(config.retry_period.get());
        let wait = if now_leading {
            config.retry_period.get()
        } else {
            jitter
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                let _ = tx.send(false);
                if now_leading {
                    release(&api, &config, &identity, clock.now()).await;
                }
                return;
            }
        }
    }
}
