//! Root rotation: moving what a backend name issues under from one root to
//! another without a failed handshake.
//!
//! A rotation is recorded per *slot* (a name under `backends`, as the
//! authorities and `istio_cacerts` refer to it) in the rotation file
//! (`trust.state_file`): it moves the slot from the backend it issues from
//! now to another configured backend that holds the next root (a new
//! `local` CA, another Vault/OpenBao issuer, another AWS Private CA or CAS
//! CA). Three phases:
//!
//! 1. **publish**: the slot still issues from the old backend; every trust
//!    bundle carries the old roots as *current* and the new ones as *next*.
//! 2. **issue**: the slot issues from the new backend (delegated
//!    intermediates and `cacerts` are re-minted at once); bundles carry the
//!    new roots as current and the old ones as *retiring*.
//! 3. **done**: the old roots are dropped from every bundle.
//!
//! Servers only read the file ([`Rotating`] applies each slot's entry);
//! `signet trust rotate` is the only writer and moves a phase on only when
//! [`Rotation::advance`] allows it: publish → issue once every observed
//! consumer holds the next roots and the soak has passed; issue → done once
//! every certificate issued under the old roots has expired (the longest
//! leaf lifetime since the phase began, plus the servers' poll).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::chain::{IssuedChain, RootRole, TrustBundle};
use crate::clock::rfc3339;
use crate::csr::VerifiedCsr;
use crate::duration::HumanDuration;
use crate::error::SignError;
use crate::policy::IssuanceDecision;
use crate::signer::{BackendInfo, Signer};

/// A rotation's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Publish,
    Issue,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Publish, Phase::Issue, Phase::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Publish => "publish",
            Phase::Issue => "issue",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a rotation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEntry {
    pub phase: Phase,
    #[serde(with = "crate::clock::rfc3339_serde")]
    pub at: SystemTime,
    /// What was observed when the phase began.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One slot's rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// The backend issuing before the rotation; absent: the slot's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The backend holding the next root.
    pub to: String,
    pub phase: Phase,
    /// When the phase began.
    #[serde(with = "crate::clock::rfc3339_serde")]
    pub since: SystemTime,
    /// Least time in `publish` (consumers that learn roots only with their
    /// next certificate, such as ztunnel, need one renewal).
    pub soak: HumanDuration,
    /// The longest lifetime of a certificate issued under the old roots
    /// (the authorities' `max_ttl`, istiod's workload TTL); `issue` lasts
    /// at least this long, plus `poll`.
    pub leaf_lifetime: HumanDuration,
    /// How often the servers re-read the file.
    pub poll: HumanDuration,
    #[serde(default)]
    pub log: Vec<PhaseEntry>,
}

/// What [`Rotation::advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The rotation moved to this phase.
    Advanced(Phase),
    /// It stays; each line says what it waits for.
    Waiting(Vec<String>),
    /// It is done.
    Finished,
}

impl Rotation {
    pub fn new(
        from: Option<String>,
        to: String,
        soak: Duration,
        leaf_lifetime: Duration,
        poll: Duration,
        now: SystemTime,
        note: String,
    ) -> Self {
        Self {
            from,
            to,
            phase: Phase::Publish,
            since: now,
            soak: HumanDuration(soak),
            leaf_lifetime: HumanDuration(leaf_lifetime),
            poll: HumanDuration(poll),
            log: vec![PhaseEntry {
                phase: Phase::Publish,
                at: now,
                note,
            }],
        }
    }

    /// The backend the slot issued from before this rotation.
    pub fn from_backend<'a>(&'a self, slot: &'a str) -> &'a str {
        self.from.as_deref().unwrap_or(slot)
    }

    /// The earliest time the current phase may end, by its timers alone.
    /// Servers pick a phase up within `poll`, so both waits include two of
    /// them (one for the phase before, one for this one).
    pub fn earliest_end(&self) -> Option<SystemTime> {
        let slack = self.poll.get() * 2;
        match self.phase {
            Phase::Publish => Some(self.since + self.soak.get().max(slack)),
            Phase::Issue => Some(self.since + self.leaf_lifetime.get() + slack),
            Phase::Done => None,
        }
    }

    /// Moves to the next phase when its timer has run and nothing else is
    /// waited for (`consumers_waiting`: what observed consumers still lack,
    /// one line each).
    pub fn advance(&mut self, now: SystemTime, consumers_waiting: Vec<String>) -> Step {
        let Some(end) = self.earliest_end() else {
            return Step::Finished;
        };
        let mut waiting = consumers_waiting;
        if now < end {
            let left = end.duration_since(now).unwrap_or_default();
            let what = match self.phase {
                Phase::Publish => "the soak (and the servers' poll)",
                _ => "certificates under the old roots to expire",
            };
            waiting.push(format!(
                "{what}: {} more, until {}",
                HumanDuration(Duration::from_secs(left.as_secs().max(1))),
                rfc3339(end)
            ));
        }
        if !waiting.is_empty() {
            return Step::Waiting(waiting);
        }
        let next = match self.phase {
            Phase::Publish => Phase::Issue,
            _ => Phase::Done,
        };
        self.phase = next;
        self.since = now;
        self.log.push(PhaseEntry {
            phase: next,
            at: now,
            note: String::new(),
        });
        Step::Advanced(next)
    }
}

/// The rotation file: each slot's rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationFile {
    #[serde(default)]
    pub rotations: BTreeMap<String, Rotation>,
    /// Emergency re-keys of delegated authorities, by authority
    /// (`signet revoke --intermediate --rekey`): every replica withdraws an
    /// intermediate installed before `at` ([`crate::delegated::Delegated::rekey`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rekeys: BTreeMap<String, Rekey>,
}

/// One authority's latest re-key request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rekey {
    #[serde(with = "crate::clock::rfc3339_nanos_serde")]
    pub at: SystemTime,
    pub reason: crate::revocation::Reason,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct RotationFileError {
    path: String,
    detail: String,
}

impl RotationFileError {
    pub fn new(path: &Path, detail: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            detail: detail.into(),
        }
    }
}

impl From<RotationFileError> for String {
    fn from(e: RotationFileError) -> Self {
        e.to_string()
    }
}

impl RotationFile {
    /// Reads `path`; a missing file holds no rotation.
    pub fn read(path: &Path) -> Result<Self, RotationFileError> {
        Ok(Self::read_if_present(path)?.unwrap_or_default())
    }

    /// Reads `path`; `None` when it does not exist.
    pub fn read_if_present(path: &Path) -> Result<Option<Self>, RotationFileError> {
        let err = |detail: String| RotationFileError {
            path: path.display().to_string(),
            detail,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => serde_yaml_ng::from_str(&text)
                .map(Some)
                .map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Reads, changes and writes the file under an exclusive lock; nothing
    /// is written when `change` fails.
    pub fn update<T, E: From<RotationFileError>>(
        path: &Path,
        change: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        let err = |detail: String| RotationFileError {
            path: path.display().to_string(),
            detail,
        };
        let _lock = crate::fsutil::lock_beside(path)
            .map_err(|(p, e)| err(format!("locking {}: {e}", p.display())))?;
        let mut file = Self::read(path)?;
        let out = change(&mut file)?;
        let text = serde_yaml_ng::to_string(&file).map_err(|e| err(e.to_string()))?;
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
            .map_err(|e| err(e.to_string()))?;
        Ok(out)
    }
}

/// What a slot applies: the sides of its rotation, resolved.
#[derive(Debug)]
struct Applied {
    rotation: Option<Rotation>,
    from: Arc<dyn Signer>,
    to: Option<Arc<dyn Signer>>,
}

/// A backend slot that follows its rotation entry: it issues from the
/// phase's backend and answers with the phase's bundle. Without an entry it
/// is its own backend, at the cost of one pointer load.
#[derive(Debug)]
pub struct Rotating {
    slot: String,
    own: Arc<dyn Signer>,
    /// Every configured backend, for `from` and `to`.
    backends: BTreeMap<String, Arc<dyn Signer>>,
    applied: ArcSwap<Applied>,
    changes: watch::Sender<u64>,
    /// The old side's bundle as last read, so that `done` can name the
    /// roots it drops even when the old backend no longer answers.
    last_from: arc_swap::ArcSwapOption<TrustBundle>,
}

impl Rotating {
    pub fn new(
        slot: impl Into<String>,
        own: Arc<dyn Signer>,
        backends: BTreeMap<String, Arc<dyn Signer>>,
    ) -> Self {
        Self {
            slot: slot.into(),
            applied: ArcSwap::from_pointee(Applied {
                rotation: None,
                from: own.clone(),
                to: None,
            }),
            own,
            backends,
            changes: watch::channel(0).0,
            last_from: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The rotation being applied, if any.
    pub fn rotation(&self) -> Option<Rotation> {
        self.applied.load().rotation.clone()
    }

    /// Applies the slot's entry of the rotation file (or none). An entry
    /// naming an unknown backend is refused and the previous state kept.
    /// A change of phase or target wakes [`Signer::issuer_changes`] and is
    /// an audit line.
    pub fn apply(&self, rotation: Option<&Rotation>) -> Result<(), String> {
        let current = self.applied.load();
        let same =
            |a: &Rotation, b: &Rotation| a.phase == b.phase && a.to == b.to && a.from == b.from;
        match (&current.rotation, rotation) {
            (None, None) => return Ok(()),
            (Some(a), Some(b)) if same(a, b) => return Ok(()),
            _ => {}
        }
        let applied = match rotation {
            None => Applied {
                rotation: None,
                from: self.own.clone(),
                to: None,
            },
            Some(r) => {
                let resolve = |name: &str| {
                    if name == self.slot {
                        return Ok(self.own.clone());
                    }
                    self.backends.get(name).cloned().ok_or_else(|| {
                        format!("rotation of {}: no backend named {name}", self.slot)
                    })
                };
                let from = resolve(r.from_backend(&self.slot))?;
                let to = resolve(&r.to)?;
                Applied {
                    rotation: Some(r.clone()),
                    from,
                    to: Some(to),
                }
            }
        };
        match &applied.rotation {
            Some(r) => tracing::info!(
                target: "signet::audit",
                backend = %self.slot,
                from = %r.from_backend(&self.slot),
                to = %r.to,
                phase = %r.phase,
                since = %rfc3339(r.since),
                "trust rotation phase applied"
            ),
            None => tracing::info!(
                target: "signet::audit",
                backend = %self.slot,
                "trust rotation entry removed; issuing from the configured backend"
            ),
        }
        self.applied.store(Arc::new(applied));
        self.changes.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The backend that issues in the applied phase.
    fn active(applied: &Applied) -> &Arc<dyn Signer> {
        match (&applied.rotation, &applied.to) {
            (Some(r), Some(to)) if r.phase != Phase::Publish => to,
            _ => &applied.from,
        }
    }

    async fn bundle(&self, applied: &Applied) -> Result<TrustBundle, SignError> {
        let (Some(r), Some(to)) = (&applied.rotation, &applied.to) else {
            return applied.from.trust_bundle().await;
        };
        let (old, new) = (applied.from.trust_bundle().await, to.trust_bundle().await);
        if let Ok(old) = &old
            && self.last_from.load().as_deref() != Some(old)
        {
            self.last_from.store(Some(Arc::new(old.clone())));
        }
        Ok(match r.phase {
            Phase::Publish => TrustBundle::with_rotation(&old?, &new?, RootRole::Next),
            Phase::Issue => TrustBundle::with_rotation(&new?, &old?, RootRole::Retiring),
            // The old side may be gone by now: the roots it last had.
            Phase::Done => match old
                .ok()
                .or_else(|| self.last_from.load_full().map(|b| (*b).clone()))
            {
                Some(old) => new?.with_dropped(&old),
                None => new?,
            },
        })
    }
}

#[async_trait]
impl Signer for Rotating {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let applied = self.applied.load_full();
        let chain = Self::active(&applied).sign(decision, csr).await?;
        if applied.rotation.is_none() {
            return Ok(chain);
        }
        Ok(chain.with_trust_bundle(self.bundle(&applied).await?))
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.bundle(&self.applied.load_full()).await
    }

    fn describe(&self) -> BackendInfo {
        Self::active(&self.applied.load()).describe()
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        let applied = self.applied.load();
        applied.from.holds_ca_key(spki_der)
            || applied
                .to
                .as_ref()
                .is_some_and(|t| t.holds_ca_key(spki_der))
    }

    async fn layout(&self) -> Result<crate::layout::Layout, SignError> {
        let applied = self.applied.load_full();
        Self::active(&applied).layout().await
    }

    fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        Self::active(&self.applied.load()).issuing_ca()
    }

    fn issuer_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    /// The certificate may come from either side of a rotation: the side
    /// issuing now is asked first.
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        let applied = self.applied.load_full();
        let active = Self::active(&applied).clone();
        let others = std::iter::once(&applied.from)
            .chain(applied.to.iter())
            .filter(|s| !Arc::ptr_eq(s, &active));
        let mut failed = None;
        for side in std::iter::once(&active).chain(others) {
            match side.revoke(serial_hex, reason).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(false), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn rotation() -> Rotation {
        Rotation::new(
            None,
            "next".into(),
            Duration::from_secs(600),
            Duration::from_secs(3600),
            Duration::from_secs(10),
            at(0),
            String::new(),
        )
    }

    #[test]
    fn publish_waits_for_the_soak_and_every_consumer() {
        let mut r = rotation();
        let Step::Waiting(w) = r.advance(at(599), vec![]) else {
            panic!("advanced before the soak")
        };
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("the soak"), "{w:?}");
        let Step::Waiting(w) = r.advance(at(601), vec!["ConfigMap a/b lacks the next root".into()])
        else {
            panic!("advanced while a consumer lacks the root")
        };
        assert_eq!(w, ["ConfigMap a/b lacks the next root"]);
        assert_eq!(r.advance(at(601), vec![]), Step::Advanced(Phase::Issue));
        assert_eq!(r.since, at(601));
        assert_eq!(r.log.len(), 2);
    }

    #[test]
    fn issue_lasts_the_longest_leaf_lifetime_plus_two_polls() {
        let mut r = rotation();
        r.advance(at(600), vec![]);
        assert!(matches!(
            r.advance(at(600 + 3600 + 19), vec![]),
            Step::Waiting(_)
        ));
        assert_eq!(
            r.advance(at(600 + 3620), vec![]),
            Step::Advanced(Phase::Done)
        );
        assert_eq!(r.advance(at(10_000), vec![]), Step::Finished);
        let phases: Vec<Phase> = r.log.iter().map(|e| e.phase).collect();
        assert_eq!(phases, Phase::ALL);
    }

    #[test]
    fn the_soak_is_never_shorter_than_two_polls() {
        let mut r = rotation();
        r.soak = HumanDuration::from_secs(1);
        assert!(matches!(r.advance(at(19), vec![]), Step::Waiting(_)));
        assert_eq!(r.advance(at(20), vec![]), Step::Advanced(Phase::Issue));
    }

    #[test]
    fn the_file_round_trips_and_a_failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rotation.yaml");
        assert_eq!(RotationFile::read(&path).unwrap(), RotationFile::default());
        RotationFile::update(&path, |f| {
            f.rotations.insert("root".into(), rotation());
            Ok::<_, RotationFileError>(())
        })
        .unwrap();
        let read = RotationFile::read(&path).unwrap();
        assert_eq!(read.rotations["root"], rotation());
        let before = std::fs::read(&path).unwrap();
        let refused: Result<(), String> = RotationFile::update(&path, |f| {
            f.rotations.clear();
            Err("refused".to_owned())
        });
        assert!(refused.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
