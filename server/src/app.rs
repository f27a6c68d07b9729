//! Wiring: configuration in, running backends, authorities and listeners out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use signet_core::delegated::Delegated;
use signet_core::layout::{Layout, Needs};
use signet_core::metrics::{AuthorityCollector, Metrics};
use signet_core::policy::AuthorityPolicy;
use signet_core::routing::{NamespaceLabels, RouteConfig, Routes};
use signet_core::{Authority, Clock, Signer, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Mode, RestConfig};
use crate::listener::{self, ListenerLimits};
use crate::rest::Rest;
use crate::tls::{self, ServingNames};

/// How long start-up waits for a delegated authority's first intermediate.
const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// A running signet: what `serve` starts.
#[derive(Debug)]
pub struct App {
    pub authorities: BTreeMap<String, Arc<Authority>>,
    pub rest_addr: Option<SocketAddr>,
    pub istio_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    elector: Option<signet_kubernetes::leader::Elector>,
    /// Kubernetes controllers and the rotation file's poll; they run until
    /// aborted.
    writers: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// Their keys in a store are retired once requests have drained.
    delegated: DelegatedMap,
}

/// Starts every backend of `config` (used by `serve` and `check`).
pub async fn build_backends(
    config: &Config,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<BTreeMap<String, Arc<dyn Signer>>> {
    let mut out = BTreeMap::new();
    for (name, b) in &config.backends {
        let signer = signet_backends::build(name, b, clock.clone())
            .await
            .with_context(|| format!("backends.{name} ({})", b.kind().as_str()))?;
        out.insert(name.clone(), signer);
    }
    Ok(out)
}

/// What each user of a backend needs of it: the authorities (direct or
/// delegated) and `istio_cacerts` (which mints intermediates).
pub fn layout_needs(config: &Config) -> BTreeMap<String, Vec<Needs>> {
    let mut out: BTreeMap<String, Vec<Needs>> = BTreeMap::new();
    for (name, a) in &config.authorities {
        let intermediate_ttl = match a.mode {
            Mode::Direct => None,
            Mode::Delegated => Some(a.intermediate.clone().unwrap_or_default().ttl.get()),
        };
        out.entry(a.backend.clone()).or_default().push(Needs {
            authority: name.clone(),
            intermediate_ttl,
            max_ttl: a.policy.max_ttl.get(),
        });
    }
    if let Some(c) = &config.frontends.istio_cacerts {
        out.entry(c.backend.clone()).or_default().push(Needs {
            authority: "frontends.istio_cacerts".to_owned(),
            intermediate_ttl: Some(c.ttl.get()),
            max_ttl: c.ttl.get(),
        });
    }
    out
}

/// Checks each authority against its backend's layout (an error stops the
/// start) and logs what each backend's upstream looks like.
async fn log_layouts(
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
) -> anyhow::Result<()> {
    for (backend, layout) in check_layouts(config, backends).await? {
        match layout {
            Ok(l) => {
                tracing::info!(backend = %backend, position = ?l.position(), anchors = l.anchors.len(), "upstream layout")
            }
            Err(e) => {
                tracing::warn!(backend = %backend, error = %e, "could not read the upstream layout yet; starting without checking it")
            }
        }
    }
    Ok(())
}

/// Reads each used backend's layout and checks it against its users. A
/// layout that cannot serve a user is an error that says what to change; a
/// backend that cannot be reached is reported in the result (its layout is
/// checked when `signet check` runs, or by the refusals it then gives).
pub async fn check_layouts(
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
) -> anyhow::Result<BTreeMap<String, Result<Layout, String>>> {
    let mut out = BTreeMap::new();
    for (backend, needs) in layout_needs(config) {
        let Some(b) = backends.get(&backend) else {
            continue;
        };
        let layout = match tokio::time::timeout(LAYOUT_WAIT, b.layout()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                out.insert(backend, Err(e.to_string()));
                continue;
            }
            Err(_) => {
                out.insert(backend, Err(format!("no answer within {LAYOUT_WAIT:?}")));
                continue;
            }
        };
        for need in &needs {
            layout
                .check(need)
                .map_err(|e| anyhow::anyhow!("backends.{backend}: {e}"))?;
        }
        out.insert(backend, Ok(layout));
    }
    Ok(out)
}

/// How long start-up waits for a backend to describe itself.
const LAYOUT_WAIT: Duration = Duration::from_secs(10);

impl App {
    /// Builds everything and starts listening. Returns once listeners are bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let backends = build_backends(&config, &clock).await?;
        let (backends, slots) = crate::trust::slots(&config, backends)?;
        log_layouts(&config, &backends).await?;
        let (authorities, delegated) = build_authorities(&config, &backends, &clock).await?;

        let mut registry = Registry::with_prefix("signet");
        let metrics = Metrics::register(&mut registry);
        signet_core::metrics::UpstreamMetrics::global().register(&mut registry);
        registry.register_collector(Box::new(AuthorityCollector::new(
            authorities.values().cloned().collect(),
        )));
        registry.register_collector(Box::new(crate::trust::RotationCollector::new(
            slots.clone(),
        )));
        let registry = Arc::new(registry);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        // Background loops that end by being aborted at shutdown.
        let mut writers = Vec::new();
        if let Some(trust) = &config.trust {
            writers.push(crate::trust::spawn_poll(trust, slots, delegated.clone()));
        }
        let mut rest_addr = None;
        if let Some(rc) = &config.frontends.rest {
            let authority = authorities[&rc.authority].clone();
            let revocations = config.authorities[&rc.authority].revocation_file.clone();
            let (addr, task) = start_rest(
                rc,
                authority,
                revocations,
                &metrics,
                &registry,
                &shutdown_rx,
            )
            .await?;
            rest_addr = Some(addr);
            tasks.push(task);
        }
        let labels: Option<Arc<dyn NamespaceLabels>> = if config.routes_by_labels() {
            let client = crate::kubernetes::client(&config.kubernetes).await?;
            let (watched, task) = signet_kubernetes::namespaces::WatchedNamespaces::start(client);
            writers.push(task);
            Some(watched)
        } else {
            None
        };
        let mut istio_addr = None;
        if let Some(ic) = &config.frontends.istio {
            let routes = routes(&ic.authority, &ic.routes, &authorities, labels.clone())
                .context("frontends.istio.routes")?;
            let (addr, task) = start_istio(ic, routes, &metrics, &clock, &shutdown_rx).await?;
            istio_addr = Some(addr);
            tasks.push(task);
        }
        let mut admin_addr = None;
        if let Some(ac) = &config.admin {
            let (addr, task) =
                crate::admin::serve(ac, &authorities, registry.clone(), shutdown_rx.clone())
                    .await?;
            admin_addr = Some(addr);
            tasks.push(task);
        }
        let elector = if config.frontends.writes_to_kubernetes() {
            Some(
                crate::kubernetes::start(
                    &config,
                    &authorities,
                    labels,
                    &backends,
                    clock.clone(),
                    &metrics,
                    &mut writers,
                )
                .await?,
            )
        } else {
            None
        };
        Ok(Self {
            authorities,
            rest_addr,
            istio_addr,
            admin_addr,
            elector,
            writers,
            tasks,
            shutdown,
            delegated,
        })
    }

    /// Stops accepting, drains in-flight requests, and returns when done.
    pub async fn shutdown(self) {
        // Writers stop and the Lease is released first, so a successor can
        // take over while we drain.
        if let Some(e) = self.elector {
            e.release().await;
        }
        for w in &self.writers {
            w.abort();
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Nothing signs any more: a key a store made for this process is
        // destroyed now rather than swept a ttl later.
        for (name, d) in &self.delegated {
            if tokio::time::timeout(KEY_RETIRE_WAIT, d.retire_keys())
                .await
                .is_err()
            {
                tracing::warn!(authority = %name, "retiring the intermediate's key took over {KEY_RETIRE_WAIT:?}; it is swept later");
            }
        }
    }
}

/// How long a graceful stop waits for the store to retire a key.
const KEY_RETIRE_WAIT: Duration = Duration::from_secs(10);

/// The delegated authorities' signers, by authority (for re-keys).
pub type DelegatedMap = BTreeMap<String, Arc<Delegated>>;

/// Each configured authority over its backend (delegated ones holding their
/// first intermediate, or started not ready after [`STARTUP_WAIT`]).
async fn build_authorities(
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(BTreeMap<String, Arc<Authority>>, DelegatedMap)> {
    let mut authorities = BTreeMap::new();
    let mut delegated = BTreeMap::new();
    for (name, a) in &config.authorities {
        let upstream = backends[&a.backend].clone();
        let signer: Arc<dyn Signer> = match a.mode {
            Mode::Direct => upstream,
            Mode::Delegated => {
                let intermediate = a.intermediate.clone().unwrap_or_default();
                let key = intermediate.key.clone();
                let intermediate = intermediate.with_key(key.algorithm());
                let d = match key.store() {
                    None => Delegated::start(
                        name,
                        upstream,
                        intermediate,
                        config.trust_domain.clone(),
                        clock.clone(),
                    ),
                    Some(store) => {
                        let keys = store.open().await.map_err(|e| {
                            anyhow::anyhow!("authorities.{name}.intermediate.key: {e}")
                        })?;
                        tracing::info!(authority = %name, store = %keys.describe(), algorithm = key.algorithm().as_str(), "intermediates' keys are made in a key store");
                        Delegated::start_with_keys(
                            name,
                            upstream,
                            intermediate,
                            config.trust_domain.clone(),
                            clock.clone(),
                            keys,
                        )
                    }
                };
                // Give the first intermediate a moment so that front-ends
                // start with real certificates; if the upstream is down,
                // start anyway and report not ready.
                if tokio::time::timeout(STARTUP_WAIT, d.ready()).await.is_err() {
                    tracing::warn!(authority = %name, "no intermediate yet; starting not ready");
                }
                delegated.insert(name.clone(), d.clone());
                match key.store() {
                    // Every leaf is a call to the store: protected as a
                    // remote backend is.
                    Some(store) => store.resilience.wrap(d),
                    None => d,
                }
            }
        };
        let policy = AuthorityPolicy::new(config.trust_domain.clone(), a.policy.clone())
            .map_err(|e| anyhow::anyhow!("authorities.{name}.policy: {e}"))?;
        authorities.insert(
            name.clone(),
            Arc::new(Authority::new(name.clone(), signer, policy, clock.clone())),
        );
    }
    Ok((authorities, delegated))
}

/// A front-end's routes over the running authorities (`default`: its own
/// `authority`).
pub fn routes(
    default: &str,
    routes: &[RouteConfig],
    authorities: &BTreeMap<String, Arc<Authority>>,
    labels: Option<Arc<dyn NamespaceLabels>>,
) -> anyhow::Result<Routes> {
    let resolved = routes
        .iter()
        .map(|r| (r.clone(), authorities[&r.authority].clone()))
        .collect();
    Routes::new(resolved, authorities[default].clone(), labels).map_err(anyhow::Error::msg)
}

/// The Istio CA gRPC service: its serving certificate, client verification,
/// and the listener.
async fn start_istio(
    ic: &signet_istio::config::IstioConfig,
    routes: Routes,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    shutdown_rx: &watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (router, tls_config) =
        crate::istio::build(ic, routes, metrics.clone(), clock.clone()).await?;
    bind_and_serve(
        ic.listen,
        tls_config,
        router,
        ListenerLimits::from(&ic.limits),
        shutdown_rx,
        "Istio CA gRPC service",
    )
    .await
}

async fn start_rest(
    rc: &RestConfig,
    authority: Arc<Authority>,
    revocation_file: Option<PathBuf>,
    metrics: &Metrics,
    registry: &Arc<Registry>,
    shutdown_rx: &watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let serving = match &rc.tls {
        Some(files) => tls::from_files(files.cert_file.clone(), files.key_file.clone())?,
        None => {
            let names = ServingNames::for_listener(rc.listen.ip(), &rc.server_names)?;
            tls::issued_by_authority(authority.clone(), names, "rest-serving").await?
        }
    };
    let client_verifier = match &rc.auth.mtls {
        Some(m) => {
            let pem = std::fs::read(&m.client_ca_file)
                .with_context(|| m.client_ca_file.display().to_string())?;
            let roots: Vec<_> = signet_core::pem::certificates(&pem)
                .with_context(|| m.client_ca_file.display().to_string())?
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from)
                .collect();
            anyhow::ensure!(
                !roots.is_empty(),
                "{}: no certificates",
                m.client_ca_file.display()
            );
            Some(tls::static_client_verifier(roots)?)
        }
        None => None,
    };
    let tls_config = tls::server_config(serving.clone(), client_verifier, &[b"h2", b"http/1.1"])?;
    let mut rest = Rest::from_config(
        rc,
        authority,
        metrics.clone(),
        registry.clone(),
        Some(serving),
    )?;
    rest.revocation_file = revocation_file;
    let rest = Arc::new(rest);
    bind_and_serve(
        rc.listen,
        tls_config,
        rest.router(),
        ListenerLimits::from(&rc.limits),
        shutdown_rx,
        "REST signing endpoint",
    )
    .await
}

/// Binds `addr` and serves `router` over TLS until shutdown.
async fn bind_and_serve(
    addr: SocketAddr,
    tls_config: rustls::ServerConfig,
    router: axum::Router,
    limits: ListenerLimits,
    shutdown: &watch::Receiver<bool>,
    what: &'static str,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "{what} listening");
    let task = tokio::spawn(listener::serve(
        listener,
        Arc::new(tls_config),
        router,
        limits,
        shutdown.clone(),
    ));
    Ok((bound, task))
}

/// SIGTERM / Ctrl-C, registered before anything listens so that a signal
/// arriving during start-up still means a graceful stop.
#[derive(Debug)]
pub struct Termination {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Termination {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGTERM or Ctrl-C.
    pub async fn wait(mut self) {
        #[cfg(unix)]
        let term = self.term.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
            _ = term => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}
