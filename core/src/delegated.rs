//! A delegated authority: signet holds an intermediate CA issued by an
//! upstream backend and signs leaves itself.
//!
//! [`Delegated`] has a key made (in memory, or inside a key store through a
//! [`KeyFactory`]), asks the upstream for an intermediate (CA:TRUE, pathLen
//! 0, the trust domain's SPIFFE ID) with a CSR signed by that key, checks
//! what comes back, and signs every leaf with it. A rotation task renews the intermediate at
//! `renew_at` of its lifetime with jittered backoff; while renewal fails the
//! current intermediate keeps signing. Until the first intermediate is held the
//! authority reports not ready. Leaves never outlive the intermediate (the
//! in-process CA clamps NotAfter).
//!
//! A key is used for one intermediate. One made for a request the upstream
//! did not answer is tried again (for up to [`PENDING_KEY_REUSE`]) rather
//! than a key being made per attempt; a replaced or withdrawn one is
//! retired (destroyed in its store) once no signature still uses it. Keys a
//! stopped process left in a store are swept after each installation: by
//! their name's time, those made over `ttl` + [`PENDING_KEY_REUSE`] + the
//! clock tolerance ago can certify nothing valid, on any replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::chain::{BACKEND_CLOCK_TOLERANCE, IssuedChain, TrustBundle};
use crate::clock::{Clock, rfc3339};
use crate::csr::VerifiedCsr;
use crate::duration::HumanDuration;
use crate::error::SignError;
use crate::issuer::LocalCa;
use crate::key::{CaKey, GeneratedKey, InMemoryKeys, KeyAlgorithm, KeyFactory, KeyStoreError};
use crate::mint::{IntermediateSpec, certify_intermediate};
use crate::policy::IssuanceDecision;
use crate::signer::{BackendInfo, Capabilities, Signer};
use crate::spiffe::TrustDomain;
use crate::worker::{Next, Worker};

fn default_ttl() -> HumanDuration {
    HumanDuration::from_secs(30 * 86_400)
}
fn default_renew_at() -> f64 {
    crate::clock::RENEW_AT
}

/// How long a key made for an intermediate the upstream has not certified
/// yet is offered again before a new one is made.
pub const PENDING_KEY_REUSE: Duration = Duration::from_secs(6 * 3600);

/// `authorities.<name>.intermediate`. `K` is what `key:` says: the
/// algorithm of a key made in memory, or (in the server's configuration) a
/// key store and the algorithm it makes keys of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateConfig<K = KeyAlgorithm> {
    /// Lifetime asked of the upstream.
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// The intermediate's key.
    #[serde(default)]
    pub key: K,
    /// Fraction of the lifetime after which a new intermediate is requested.
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
    /// Subject CN; default `signet <authority> intermediate`.
    #[serde(default)]
    pub common_name: Option<String>,
}

impl<K: Default> Default for IntermediateConfig<K> {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            key: K::default(),
            renew_at: default_renew_at(),
            common_name: None,
        }
    }
}

impl<K> IntermediateConfig<K> {
    /// The same settings with `key` in place of this one's.
    pub fn with_key<L>(self, key: L) -> IntermediateConfig<L> {
        IntermediateConfig {
            ttl: self.ttl,
            key,
            renew_at: self.renew_at,
            common_name: self.common_name,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.renew_at > 0.05 && self.renew_at < 0.95) {
            return Err(format!(
                "renew_at must be between 0.05 and 0.95, not {}",
                self.renew_at
            ));
        }
        if self.ttl.get() < Duration::from_secs(600) {
            return Err(format!("ttl {} is below the minimum of 10m", self.ttl));
        }
        Ok(())
    }
}

/// Signs leaves with an intermediate obtained from `upstream`.
#[derive(Debug)]
pub struct Delegated {
    name: String,
    upstream: Arc<dyn Signer>,
    config: IntermediateConfig,
    trust_domain: TrustDomain,
    clock: Arc<dyn Clock>,
    /// Where the intermediates' keys are made.
    keys: Arc<dyn KeyFactory>,
    /// A key made for an intermediate not yet certified, and when.
    pending: tokio::sync::Mutex<Option<(GeneratedKey, SystemTime)>>,
    /// The current intermediate's key, retired when it is replaced. Its
    /// lock is held while `current` changes, so the two change together.
    held: std::sync::Mutex<Option<GeneratedKey>>,
    current: ArcSwapOption<LocalCa>,
    /// When the current intermediate was installed.
    installed_at: std::sync::Mutex<Option<SystemTime>>,
    /// Woken whenever an intermediate is installed.
    installed: Notify,
    /// Set by [`Delegated::retire_keys`]: no new intermediate is installed.
    stopped: std::sync::atomic::AtomicBool,
    /// Bumped by [`Delegated::rekey`]: the rotation task mints at once.
    rekeys: tokio::sync::watch::Sender<u64>,
}

impl Delegated {
    /// Creates the authority's signer, its intermediates' keys made in
    /// memory, and starts its rotation task (which stops when the signer is
    /// dropped).
    pub fn start(
        name: &str,
        upstream: Arc<dyn Signer>,
        config: IntermediateConfig,
        trust_domain: TrustDomain,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Self::start_with_keys(
            name,
            upstream,
            config,
            trust_domain,
            clock,
            Arc::new(InMemoryKeys),
        )
    }

    /// [`Delegated::start`] with the intermediates' keys made by `keys`.
    pub fn start_with_keys(
        name: &str,
        upstream: Arc<dyn Signer>,
        config: IntermediateConfig,
        trust_domain: TrustDomain,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyFactory>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            name: name.to_owned(),
            upstream,
            config,
            trust_domain,
            clock,
            keys,
            pending: tokio::sync::Mutex::new(None),
            held: std::sync::Mutex::new(None),
            stopped: std::sync::atomic::AtomicBool::new(false),
            current: ArcSwapOption::empty(),
            installed_at: std::sync::Mutex::new(None),
            installed: Notify::new(),
            rekeys: tokio::sync::watch::channel(0).0,
        });
        spawn_rotation(&this);
        this
    }

    /// The intermediate currently signing, if any.
    pub fn current(&self) -> Option<Arc<LocalCa>> {
        self.current.load_full()
    }

    /// Waits until an intermediate is held.
    pub async fn ready(&self) {
        loop {
            let notified = self.installed.notified();
            if self.current.load().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Asks the upstream for a new intermediate and installs it.
    pub async fn renew(&self) -> Result<Arc<LocalCa>, SignError> {
        let cn = self
            .config
            .common_name
            .clone()
            .unwrap_or_else(|| format!("signet {} intermediate", self.name));
        let requested_by = format!("signet:delegated:{}", self.name);
        let spec = IntermediateSpec {
            common_name: &cn,
            trust_domain: &self.trust_domain,
            key: self.config.key,
            ttl: self.config.ttl.get(),
            requested_by: &requested_by,
        };
        let mut pending = self.pending.lock().await;
        if self.stopping() {
            return Err(SignError::NotReady("stopping".into()));
        }
        let key = self.next_key(&mut pending).await?;
        let (chain, decision) = certify_intermediate(
            self.upstream.as_ref(),
            &spec,
            &CaKey::new(key.handle.clone()),
            self.clock.now(),
        )
        .await?;
        let ca = LocalCa::new(
            chain.leaf().clone(),
            CaKey::new(key.handle.clone()),
            chain.intermediates().to_vec(),
            Some(chain.trust_bundle().roots().to_vec()),
            chain.installable_at(self.clock.now()),
        )
        .map_err(|e| SignError::Internal(format!("installing the intermediate: {e}")))?;
        if self.stopping() {
            // Certified too late: nothing will sign with it.
            *pending = None;
            self.retire_when_unused(None, key);
            return Err(SignError::NotReady("stopping".into()));
        }
        let ca = Arc::new(ca);
        tracing::info!(
            target: "signet::audit",
            serial = chain.serial_hex(),
            principal = decision.requested_by(),
            profile = "intermediate",
            sans = %self.trust_domain.id(),
            not_after = %rfc3339(chain.not_after()),
            authority = %self.name,
            backend = %self.upstream.describe().name,
            key = %key.handle.describe(),
            "intermediate installed"
        );
        *pending = None;
        drop(pending);
        let (replaced, old_key) = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            (
                self.current.swap(Some(ca.clone())),
                held.replace(key.clone()),
            )
        };
        *self.installed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.clock.now());
        self.installed.notify_waiters();
        if let Some(old) = old_key {
            self.retire_when_unused(replaced, old);
        }
        self.sweep(&key.name).await;
        Ok(ca)
    }

    fn stopping(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// At a graceful stop, once requests have drained: stops signing,
    /// installs no new intermediate, and retires the keys this authority
    /// holds in a store, so that a restart leaves none behind (a crash
    /// leaves them to the sweep).
    pub async fn retire_keys(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let held = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            self.current.store(None);
            held.take()
        };
        // Waits for a renewal in progress (which then installs nothing).
        let pending = self.pending.lock().await.take().map(|(key, _)| key);
        for key in held.into_iter().chain(pending) {
            if key.handle.in_memory().is_some() {
                continue;
            }
            match self.keys.retire(&key).await {
                Ok(()) => tracing::info!(
                    authority = %self.name,
                    key = %key.handle.describe(),
                    "retired the intermediate's key at shutdown"
                ),
                Err(e) => tracing::warn!(
                    authority = %self.name,
                    key = %key.handle.describe(),
                    error = %e,
                    "could not retire the intermediate's key at shutdown; it is swept later"
                ),
            }
        }
    }

    /// The key to certify next: the one made for an earlier attempt the
    /// upstream did not answer (while younger than [`PENDING_KEY_REUSE`]),
    /// or a new one.
    async fn next_key(
        &self,
        pending: &mut Option<(GeneratedKey, SystemTime)>,
    ) -> Result<GeneratedKey, SignError> {
        let now = self.clock.now();
        match pending.take() {
            Some((key, made))
                if now.duration_since(made).unwrap_or_default() < PENDING_KEY_REUSE =>
            {
                *pending = Some((key.clone(), made));
                return Ok(key);
            }
            Some((stale, _)) => self.retire_when_unused(None, stale),
            None => {}
        }
        let key = self
            .keys
            .generate(self.config.key, &self.name, now)
            .await
            .map_err(|e| {
                let why = |m| format!("making the intermediate's key: {m}");
                SignError::from(match e {
                    KeyStoreError::Unavailable(m) => KeyStoreError::Unavailable(why(m)),
                    KeyStoreError::Refused(m) => KeyStoreError::Refused(why(m)),
                })
            })?;
        if key.handle.in_memory().is_none() {
            tracing::info!(
                authority = %self.name,
                key = %key.handle.describe(),
                "key made for the next intermediate"
            );
        }
        *pending = Some((key.clone(), now));
        Ok(key)
    }

    /// Retires `key` in its store once no signature still uses `ca` (the
    /// intermediate it certified), waiting at most five minutes. A key in
    /// memory is wiped when the last user drops it.
    fn retire_when_unused(&self, ca: Option<Arc<LocalCa>>, key: GeneratedKey) {
        if key.handle.in_memory().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keys = self.keys.clone();
        let authority = self.name.clone();
        runtime.spawn(async move {
            if let Some(ca) = ca {
                let mut waited = Duration::ZERO;
                while Arc::strong_count(&ca) > 1 && waited < Duration::from_secs(300) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    waited += Duration::from_millis(100);
                }
            }
            match keys.retire(&key).await {
                Ok(()) => tracing::info!(
                    authority = %authority,
                    key = %key.handle.describe(),
                    "retired the key of a replaced intermediate"
                ),
                Err(e) => tracing::warn!(
                    authority = %authority,
                    key = %key.handle.describe(),
                    error = %e,
                    "could not retire the key of a replaced intermediate; it is swept later"
                ),
            }
        });
    }

    /// Destroys this authority's keys that no intermediate of any replica
    /// can still use (see the module documentation), except `keep`.
    async fn sweep(&self, keep: &str) {
        let horizon = self.config.ttl.get() + PENDING_KEY_REUSE + BACKEND_CLOCK_TOLERANCE;
        let Some(before) = self.clock.now().checked_sub(horizon) else {
            return;
        };
        match self.keys.sweep(&self.name, before, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                authority = %self.name,
                store = %self.keys.describe(),
                destroyed = n,
                "swept keys of intermediates that have expired"
            ),
            Err(e) => tracing::warn!(
                authority = %self.name,
                store = %self.keys.describe(),
                error = %e,
                "could not sweep old intermediates' keys"
            ),
        }
    }

    /// An emergency re-key requested at `requested_at` (`signet revoke
    /// --intermediate --rekey`): unless the intermediate held now was
    /// installed after that, it stops signing at once (the authority is not
    /// ready until the next one is held), the rotation task mints a fresh
    /// one on a new key, and the old one is revoked upstream where the
    /// backend can. Returns the serial withdrawn, if any.
    pub async fn rekey(
        &self,
        requested_at: SystemTime,
        reason: crate::revocation::Reason,
    ) -> Option<String> {
        let installed_at = *self.installed_at.lock().unwrap_or_else(|e| e.into_inner());
        if installed_at.is_some_and(|t| t >= requested_at) {
            return None;
        }
        let (old, withdrawn_key) = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let old = self.current.swap(None)?;
            (old, held.take())
        };
        let serial = serial_of(old.certificate());
        self.rekeys.send_modify(|n| *n += 1);
        if let Some(key) = withdrawn_key {
            self.retire_when_unused(Some(old.clone()), key);
        }
        tracing::warn!(
            target: "signet::audit",
            serial = %serial,
            authority = %self.name,
            reason = reason.name(),
            "intermediate withdrawn for a re-key; not signing until the next one is held"
        );
        match self.upstream.revoke(&serial, reason).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                authority = %self.name,
                serial = %serial,
                backend = %self.upstream.describe().name,
                "the backend cannot revoke; the withdrawn intermediate stays valid upstream until it expires"
            ),
            Err(e) => tracing::error!(
                authority = %self.name,
                serial = %serial,
                error = %e,
                "revoking the withdrawn intermediate upstream failed; revoke it there by hand"
            ),
        }
        Some(serial)
    }

    /// Stops signing with the held intermediate when the upstream no longer
    /// trusts the root it is under (a root rotation dropped it) and no new
    /// one could be had: its leaves would be refused by everyone holding the
    /// current bundle, and a root retired for compromise must not keep
    /// anchoring new certificates. The authority is then not ready.
    async fn withdraw_if_unanchored(&self) {
        let Some(ca) = self.current() else { return };
        let Ok(bundle) = self.upstream.trust_bundle().await else {
            return;
        };
        let top = ca.chain().last().unwrap_or(ca.certificate());
        if bundle
            .roots()
            .iter()
            .any(|r| crate::chain::anchored_by(top, r) || r == top)
        {
            return;
        }
        self.current.store(None);
        tracing::error!(
            target: "signet::audit",
            serial = %serial_of(ca.certificate()),
            authority = %self.name,
            "the held intermediate is under a root the upstream no longer trusts and no new one could be had; not signing"
        );
    }

    /// When the intermediate `ca` should be replaced.
    fn renew_time(&self, ca: &LocalCa) -> SystemTime {
        crate::clock::renew_time(ca.not_before(), ca.not_after(), self.config.renew_at)
    }
}

/// An authority dropped (a reload replaced it) retires its keys: in-memory
/// ones are wiped, a store's are destroyed once no signature uses them.
impl Drop for Delegated {
    fn drop(&mut self) {
        let current = self.current.swap(None);
        if let Some(key) = self
            .held
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.retire_when_unused(current, key);
        }
        if let Some((key, _)) = self.pending.get_mut().take() {
            self.retire_when_unused(None, key);
        }
    }
}

/// Renews the intermediate at `renew_at` of its life, and whenever the
/// upstream's issuer changes, until the authority is dropped; while renewal
/// fails the current one keeps signing.
fn spawn_rotation(this: &Arc<Delegated>) {
    let mut worker =
        Worker::new(format!("intermediate of {}", this.name)).clock(this.clock.clone());
    // A root rotation's phase change re-mints at once: the new intermediate
    // carries the phase's bundle, and from the `issue` phase on it is
    // issued under the new root.
    if let Some(changes) = this.upstream.issuer_changes() {
        worker = worker.wake_on(changes);
    }
    worker = worker.wake_on(this.rekeys.subscribe());
    worker.spawn_for(this, |this| async move {
        match this.renew().await {
            Ok(ca) => Ok(Next::At(this.renew_time(&ca))),
            Err(e) => {
                this.withdraw_if_unanchored().await;
                Err(match this.current() {
                    Some(ca) => format!(
                        "{e}; still signing with the current intermediate (expires {})",
                        rfc3339(ca.not_after())
                    ),
                    None => format!("{e}; no intermediate, not ready"),
                })
            }
        }
    });
}

/// A certificate's serial as revocation files and upstreams write it:
/// lowercase hex without leading zeros.
fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer as _;
    let hex = x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, c)| hex::encode(c.raw_serial()))
        .unwrap_or_default();
    crate::revocation::normalise_serial(&hex).unwrap_or(hex)
}

#[async_trait]
impl Signer for Delegated {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let Some(ca) = self.current.load_full() else {
            return Err(SignError::NotReady("no intermediate yet".into()));
        };
        if self.clock.now() >= ca.not_after() {
            return Err(SignError::NotReady(format!(
                "the intermediate expired at {}",
                rfc3339(ca.not_after())
            )));
        }
        ca.sign(decision, csr.public_key()).await
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        match self.current.load_full() {
            Some(ca) => Ok(ca.trust_bundle().clone()),
            None => self.upstream.trust_bundle().await,
        }
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|ca| ca.holds_key(spki_der))
            || self.upstream.holds_ca_key(spki_der)
    }

    fn describe(&self) -> BackendInfo {
        let current = self.current.load_full();
        let now = self.clock.now();
        let ready = match &current {
            None => Err("no intermediate yet".to_owned()),
            Some(ca) if now >= ca.not_after() => Err(format!(
                "the intermediate expired at {}",
                rfc3339(ca.not_after())
            )),
            Some(_) => Ok(()),
        };
        BackendInfo {
            name: format!("{} (delegated)", self.upstream.describe().name),
            kind: "delegated",
            capabilities: Capabilities {
                issues_intermediates: false,
                honours_ttl: true,
                in_process: true,
                idempotent_for: None,
                constrains_path_len: true,
            },
            ca_not_after: current.map(|c| c.not_after()),
            ready,
        }
    }
}
