//! Root rotation in the server and on the command line (`trust:` in the
//! configuration, `signet trust rotate`, `signet trust status`); the phases
//! themselves are [`signet_core::rotation`]'s.
//!
//! With `trust.state_file` set, every backend becomes a
//! [`Rotating`] slot under its own name: authorities, `istio_cacerts` and
//! everything else that names a backend follows that slot's rotation entry.
//! Servers re-read the file every `trust.poll`; the CLI writes it, and moves
//! a phase on only when `signet doctor`'s consumer checks find every
//! consumer holding the phase's roots and the phase's timers have run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use signet_core::clock::{rfc3339, unix_seconds};
use signet_core::duration::HumanDuration;
use signet_core::rotation::{Phase, Rotating, Rotation, RotationFile, Step};
use signet_core::worker::{Backoff, Next, Worker};
use signet_core::{Clock, Signer};

use crate::config::{Config, Mode};

fn default_poll() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// `trust`: where root rotations are recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// The rotation file (YAML; `signet trust rotate` writes it, a missing
    /// file holds no rotation). Every replica must read the same file.
    pub state_file: PathBuf,
    /// How often servers re-read it.
    #[serde(default = "default_poll")]
    pub poll: HumanDuration,
}

impl TrustConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.poll.get() < Duration::from_secs(1) {
            return Err(format!("poll {} is below 1s", self.poll));
        }
        Ok(())
    }
}

/// Backends by name, as their users see them.
pub type Backends = BTreeMap<String, Arc<dyn Signer>>;

/// The backends as their users see them: each a [`Rotating`] slot when
/// `trust` is configured (with the rotation file applied once), else as
/// built.
pub fn slots(
    config: &Config,
    backends: BTreeMap<String, Arc<dyn Signer>>,
) -> anyhow::Result<(Backends, Vec<Arc<Rotating>>)> {
    let Some(trust) = &config.trust else {
        return Ok((backends, Vec::new()));
    };
    let slots: Vec<Arc<Rotating>> = backends
        .iter()
        .map(|(name, b)| Arc::new(Rotating::new(name.clone(), b.clone(), backends.clone())))
        .collect();
    // At start-up an entry that cannot be applied stops the start: issuing
    // from the configured (old) backend instead would be the wrong root.
    let errors = apply(&RotationFile::read(&trust.state_file)?, &slots);
    anyhow::ensure!(
        errors.is_empty(),
        "{}: {}",
        trust.state_file.display(),
        errors.join("; ")
    );
    let map = slots
        .iter()
        .map(|s| (s.slot().to_owned(), s.clone() as Arc<dyn Signer>))
        .collect();
    Ok((map, slots))
}

/// Applies each slot's entry; an entry that cannot be applied leaves that
/// slot as it was. Returns what could not be applied.
fn apply(file: &RotationFile, slots: &[Arc<Rotating>]) -> Vec<String> {
    let mut errors = Vec::new();
    for s in slots {
        if let Err(e) = s.apply(file.rotations.get(s.slot())) {
            tracing::error!(backend = %s.slot(), error = %e, "rotation entry not applied");
            errors.push(e);
        }
    }
    for name in file.rotations.keys() {
        if !slots.iter().any(|s| s.slot() == name) {
            tracing::error!(backend = %name, "the rotation file names a backend that is not configured");
            errors.push(format!("no backend named {name} to rotate"));
        }
    }
    errors
}

/// Re-reads the rotation file every `poll` while the slots live: applies
/// each slot's rotation, and each delegated authority's re-key request.
pub fn spawn_poll(
    trust: &TrustConfig,
    slots: Vec<Arc<Rotating>>,
    delegated: crate::app::DelegatedMap,
) -> tokio::task::JoinHandle<()> {
    let (path, poll) = (trust.state_file.clone(), trust.poll.get());
    let slots: Vec<std::sync::Weak<Rotating>> = slots.iter().map(Arc::downgrade).collect();
    let delegated: BTreeMap<String, std::sync::Weak<signet_core::delegated::Delegated>> = delegated
        .iter()
        .map(|(n, d)| (n.clone(), Arc::downgrade(d)))
        .collect();
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(
        trust.state_file.exists(),
    ));
    Worker::new("rotation file")
        .backoff(Backoff::constant(poll))
        .first(Next::In(poll))
        .spawn(move || {
            let path = path.clone();
            let live: Vec<Arc<Rotating>> =
                slots.iter().filter_map(std::sync::Weak::upgrade).collect();
            let authorities: Vec<(String, Arc<signet_core::delegated::Delegated>)> = delegated
                .iter()
                .filter_map(|(n, d)| Some((n.clone(), d.upgrade()?)))
                .collect();
            let seen = seen.clone();
            async move {
                if live.is_empty() && authorities.is_empty() {
                    return Ok(Next::Stop);
                }
                // A file that was there and is gone (a volume not mounted, a
                // tidy-up) is an error, not "no rotation": reverting to the
                // configured backends could mean issuing from a dropped root.
                let file = match RotationFile::read_if_present(&path)? {
                    Some(f) => f,
                    None if seen.load(std::sync::atomic::Ordering::Relaxed) => {
                        return Err(signet_core::rotation::RotationFileError::new(
                            &path,
                            "the rotation file disappeared; keeping the phases applied",
                        ));
                    }
                    None => RotationFile::default(),
                };
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
                apply(&file, &live);
                for (name, d) in &authorities {
                    if let Some(r) = file.rekeys.get(name) {
                        d.rekey(r.at, r.reason).await;
                    }
                }
                Ok::<_, signet_core::rotation::RotationFileError>(Next::In(poll))
            }
        })
}

/// The longest lifetime of a certificate issued from `backend`: its
/// authorities' `max_ttl` and istiod's workload TTL when `istio_cacerts`
/// uses it.
pub fn leaf_lifetime(config: &Config, backend: &str) -> Duration {
    let authorities = config
        .authorities
        .values()
        .filter(|a| a.backend == backend)
        .map(|a| a.policy.max_ttl.get());
    let istiod = config
        .frontends
        .istio_cacerts
        .iter()
        .filter(|c| c.backend == backend)
        .map(|c| c.workload_ttl.get());
    authorities.chain(istiod).max().unwrap_or_default()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    backend: String,
    from: String,
    to: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    backend: String,
}

/// `signet_trust_rotation_phase` (1 for the phase each rotating backend is
/// in, 0 for the others) and `signet_trust_rotation_phase_started_seconds`.
#[derive(Debug)]
pub struct RotationCollector {
    slots: Vec<Arc<Rotating>>,
}

impl RotationCollector {
    pub fn new(slots: Vec<Arc<Rotating>>) -> Self {
        Self { slots }
    }
}

impl Collector for RotationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let phase: Family<PhaseLabels, Gauge> = Family::default();
        let started: Family<SlotLabels, Gauge> = Family::default();
        for s in &self.slots {
            let Some(r) = s.rotation() else { continue };
            for p in Phase::ALL {
                phase
                    .get_or_create(&PhaseLabels {
                        backend: s.slot().to_owned(),
                        from: r.from_backend(s.slot()).to_owned(),
                        to: r.to.clone(),
                        phase: p.as_str().to_owned(),
                    })
                    .set(i64::from(p == r.phase));
            }
            started
                .get_or_create(&SlotLabels {
                    backend: s.slot().to_owned(),
                })
                .set(unix_seconds(r.since));
        }
        let m = encoder.encode_descriptor(
            "trust_rotation_phase",
            "1 for the root-rotation phase each backend is in (publish, issue, done)",
            None,
            phase.metric_type(),
        )?;
        phase.encode(m)?;
        let m = encoder.encode_descriptor(
            "trust_rotation_phase_started_seconds",
            "When each backend's current root-rotation phase began (Unix seconds)",
            None,
            started.metric_type(),
        )?;
        started.encode(m)
    }
}

/// What `signet trust rotate` was asked.
#[derive(Debug, Clone)]
pub struct RotateArgs {
    pub backend: String,
    pub to: Option<String>,
    pub soak: Option<Duration>,
    pub wait: bool,
}

fn trust_of(config: &Config) -> anyhow::Result<&TrustConfig> {
    config
        .trust
        .as_ref()
        .context("the configuration has no `trust:` section (trust.state_file records rotations)")
}

/// `signet trust rotate`: begins a rotation (with `--to`), then moves it
/// on as far as it may; with `--wait`, until it is done.
pub async fn rotate(path: &Path, args: RotateArgs) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let trust = trust_of(&config)?.clone();
    let clock: Arc<dyn Clock> = Arc::new(signet_core::SystemClock);
    anyhow::ensure!(
        config.backends.contains_key(&args.backend),
        "no backend {:?} in the configuration",
        args.backend
    );
    if let Some(to) = &args.to {
        begin(&config, &trust, &args, to, clock.now())?;
    }
    let built = crate::app::build_backends(&config, &clock).await?;
    let (backends, slots) = slots(&config, built)?;
    // With --wait, what is waited for is printed when it changes, not at
    // every poll (the countdown aside).
    let mut last_waiting: Option<(Vec<String>, bool)> = None;
    loop {
        let file = RotationFile::read(&trust.state_file)?;
        let errors = apply(&file, &slots);
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
        let rotation = file.rotations.get(&args.backend).with_context(|| {
            format!(
                "backend {} has no rotation; begin one with --to <backend>",
                args.backend
            )
        })?;
        if rotation.phase == Phase::Done {
            println!("{}", describe(&args.backend, rotation));
            return Ok(());
        }
        let mut waiting = consumers_waiting(&config, &backends, &clock).await?;
        if let Some(w) = cacerts_wait(&config, &args.backend, rotation, clock.now()).await? {
            waiting.push(w);
        }
        let timer_running = rotation.earliest_end().is_some_and(|end| clock.now() < end);
        let reasons = Some((waiting.clone(), timer_running));
        let step = RotationFile::update(&trust.state_file, |f| {
            let r = f
                .rotations
                .get_mut(&args.backend)
                .context("the rotation entry disappeared")?;
            Ok::<_, anyhow::Error>(r.advance(clock.now(), waiting))
        })?;
        match step {
            Step::Advanced(phase) => {
                tracing::info!(
                    target: "signet::audit",
                    backend = %args.backend,
                    to = %rotation.to,
                    phase = %phase,
                    "trust rotation advanced"
                );
                println!(
                    "backend {}: phase {phase} begun at {}",
                    args.backend,
                    rfc3339(clock.now())
                );
            }
            Step::Waiting(lines) => {
                if reasons != last_waiting {
                    println!(
                        "backend {}: phase {} waiting at {} for:",
                        args.backend,
                        rotation.phase,
                        rfc3339(clock.now())
                    );
                    for l in &lines {
                        println!("  - {l}");
                    }
                    last_waiting = reasons;
                }
                if !args.wait {
                    return Ok(());
                }
                tokio::time::sleep(trust.poll.get()).await;
            }
            Step::Finished => return Ok(()),
        }
    }
}

/// Writes a new rotation of `args.backend` to `to` (after a finished one,
/// from where that one ended).
fn begin(
    config: &Config,
    trust: &TrustConfig,
    args: &RotateArgs,
    to: &str,
    now: std::time::SystemTime,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.backends.contains_key(to),
        "no backend {to:?} in the configuration"
    );
    let lifetime = leaf_lifetime(config, &args.backend);
    let soak = args.soak.unwrap_or(lifetime);
    RotationFile::update(&trust.state_file, |f| {
        let from = match f.rotations.get(&args.backend) {
            Some(r) if r.phase != Phase::Done && r.to == to => return Ok(()),
            Some(r) if r.phase != Phase::Done => anyhow::bail!(
                "backend {} is already rotating to {} (phase {}); finish it first",
                args.backend,
                r.to,
                r.phase
            ),
            Some(r) => Some(r.to.clone()),
            None => None,
        };
        let from_name = from.clone().unwrap_or_else(|| args.backend.clone());
        anyhow::ensure!(
            from_name.as_str() != to,
            "backend {} already issues from {to}",
            args.backend
        );
        let rotation = Rotation::new(
            from,
            to.to_owned(),
            soak,
            lifetime,
            trust.poll.get(),
            now,
            format!(
                "soak {}, longest leaf {}",
                HumanDuration(soak),
                HumanDuration(lifetime)
            ),
        );
        tracing::info!(
            target: "signet::audit",
            backend = %args.backend,
            from = %from_name,
            to = %to,
            phase = %Phase::Publish,
            "trust rotation begun"
        );
        println!(
            "backend {}: rotation from {from_name} to {to} begun (phase publish); it changes the roots of {}",
            args.backend,
            users(config, &args.backend).join(", ")
        );
        f.rotations.insert(args.backend.clone(), rotation);
        Ok(())
    })
}

/// What still keeps the phase: every failed `signet doctor` check (a
/// consumer without the phase's roots, a cacerts not re-minted, ...).
async fn consumers_waiting(
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Vec<String>> {
    let findings = crate::doctor::examine_with(config, backends, clock, Duration::ZERO).await?;
    Ok(findings
        .into_iter()
        .filter(|f| f.level == crate::doctor::Level::Fail)
        .map(|f| format!("{}: {}", f.what, f.detail))
        .collect())
}

/// In the issue phase, istiod keeps issuing from the previous plug-in CA
/// until `cacerts` is re-minted and it reloads: its certificates may live
/// `workload_ttl` past the new intermediate's NotBefore (plus the back-date
/// and two polls), however late in the phase that came.
async fn cacerts_wait(
    config: &Config,
    backend: &str,
    rotation: &Rotation,
    now: std::time::SystemTime,
) -> anyhow::Result<Option<String>> {
    let Some(c) = &config.frontends.istio_cacerts else {
        return Ok(None);
    };
    if rotation.phase != Phase::Issue || c.backend != backend {
        return Ok(None);
    }
    let client = crate::kubernetes::client(&config.kubernetes).await?;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, &c.namespace);
    let Some(secret) = api.get_opt(&c.secret).await? else {
        return Ok(Some(format!(
            "secret {}/{} is missing",
            c.namespace, c.secret
        )));
    };
    let files = signet_istio::k8s::secret_files(&secret);
    let v = match signet_istio::cacerts::validate(&files, c.layout, now) {
        Ok(v) => v,
        Err(e) => return Ok(Some(format!("secret {}/{}: {e}", c.namespace, c.secret))),
    };
    let until = v.ca.not_before()
        + signet_core::mint::INTERMEDIATE_BACKDATE
        + c.workload_ttl.get()
        + rotation.poll.get() * 2;
    Ok((now < until).then(|| {
        format!(
            "istiod's certificates from the previous plug-in CA to expire (the new one's NotBefore {} + workload_ttl {}): until {}",
            rfc3339(v.ca.not_before()),
            c.workload_ttl,
            rfc3339(until)
        )
    }))
}

/// One rotation as `signet trust status` prints it.
pub fn describe(backend: &str, r: &Rotation) -> String {
    let mut out = format!(
        "backend {backend}: {} -> {}, phase {} since {}",
        r.from_backend(backend),
        r.to,
        r.phase,
        rfc3339(r.since)
    );
    if let Some(end) = r.earliest_end() {
        out.push_str(&format!(" (may advance from {})", rfc3339(end)));
    }
    for e in &r.log {
        out.push_str(&format!("\n  {} {}", rfc3339(e.at), e.phase));
        if !e.note.is_empty() {
            out.push_str(&format!(" ({})", e.note));
        }
    }
    out
}

/// `signet trust status`: each rotation, its history, each backend's
/// bundle with the role of every root, and what the current phase waits for.
pub async fn status(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let trust = trust_of(&config)?;
    let clock: Arc<dyn Clock> = Arc::new(signet_core::SystemClock);
    let file = RotationFile::read(&trust.state_file)?;
    if file.rotations.is_empty() {
        println!("no rotations recorded in {}", trust.state_file.display());
    }
    let built = crate::app::build_backends(&config, &clock).await?;
    let (backends, _slots) = slots(&config, built)?;
    for (backend, r) in &file.rotations {
        println!("{}", describe(backend, r));
        if let Some(slot) = backends.get(backend) {
            match slot.trust_bundle().await {
                Ok(bundle) => {
                    for (der, role) in bundle.with_roles() {
                        println!(
                            "  root {}: {}",
                            signet_core::chain::subject_name(der),
                            role.as_str()
                        );
                    }
                }
                Err(e) => println!("  roots: cannot be read: {e}"),
            }
        }
        if r.phase != Phase::Done {
            let mut probe = r.clone();
            let mut waiting = consumers_waiting(&config, &backends, &clock).await?;
            waiting.extend(cacerts_wait(&config, backend, r, clock.now()).await?);
            if let Step::Waiting(lines) = probe.advance(clock.now(), waiting) {
                println!("  waiting for:");
                for l in lines {
                    println!("  - {l}");
                }
            } else {
                println!("  ready to advance: run `signet trust rotate --backend {backend}`");
            }
        }
    }
    Ok(())
}

/// The authorities whose bundle a rotation of `backend` changes (for docs
/// and status lines).
pub fn users(config: &Config, backend: &str) -> Vec<String> {
    let mut out: Vec<String> = config
        .authorities
        .iter()
        .filter(|(_, a)| a.backend == backend)
        .map(|(n, a)| match a.mode {
            Mode::Direct => format!("authority {n}"),
            Mode::Delegated => format!("authority {n} (delegated)"),
        })
        .collect();
    if config
        .frontends
        .istio_cacerts
        .as_ref()
        .is_some_and(|c| c.backend == backend)
    {
        out.push("istio_cacerts".into());
    }
    out
}

/// `signet revoke --intermediate --rekey`: records the re-key request of a
/// delegated authority; each replica acts on it within `trust.poll`.
pub fn rekey(
    path: &Path,
    authority: &str,
    reason: Option<signet_core::revocation::Reason>,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let trust = trust_of(&config)?;
    let a = config
        .authorities
        .get(authority)
        .with_context(|| format!("no authority {authority:?} in the configuration"))?;
    anyhow::ensure!(
        a.mode == Mode::Delegated,
        "authority {authority:?} is not delegated: signet holds no intermediate of its own to re-key"
    );
    let reason = reason.unwrap_or(signet_core::revocation::Reason::KeyCompromise);
    let now = Clock::now(&signet_core::SystemClock);
    RotationFile::update(&trust.state_file, |f| {
        f.rekeys.insert(
            authority.to_owned(),
            signet_core::rotation::Rekey { at: now, reason },
        );
        Ok::<_, anyhow::Error>(())
    })?;
    tracing::warn!(
        target: "signet::audit",
        authority = %authority,
        reason = reason.name(),
        "re-key requested"
    );
    println!(
        "re-key of authority {authority} requested at {} ({}): every replica withdraws the intermediate it holds within {}, mints a new one, and revokes the old one upstream where {} can",
        rfc3339(now),
        reason.name(),
        trust.poll,
        a.backend
    );
    Ok(())
}
