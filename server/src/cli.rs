//! Command line: `signet serve`, `signet sign`, `signet check`, `signet trust`, ...

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{self, App};
use crate::client::{self, SignArgs};
use crate::config::Config;
use crate::dev;

/// signet: an external-CA bridge. It signs workload and serving certificates
/// through an authority rooted in your PKI and serves them to Istio,
/// cert-manager and plain HTTPS clients.
#[derive(Debug, Parser)]
#[command(name = "signet", version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SIGNET_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` or `signet=debug`.
    #[arg(long, global = true, default_value = "info", env = "SIGNET_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// A CSR for a `local` backend's key, signed where the key is, for your
    /// root CA to certify (PEM on standard output). The certificate it
    /// returns becomes the backend's `cert_file`.
    Csr {
        #[arg(long)]
        config: PathBuf,
        /// The `local` backend whose `key` to use.
        #[arg(long)]
        backend: String,
        /// The CA's subject common name.
        #[arg(long)]
        common_name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the signing service.
    Serve {
        /// Configuration file (YAML). Required unless --dev.
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Development mode: a self-signed root and intermediate in --data-dir,
        /// REST on a loopback address, no authentication. Never for production.
        #[arg(long)]
        dev: bool,
        /// Where --dev keeps its root and intermediate (root at <DIR>/root.pem).
        #[arg(long, default_value = "./signet-data", requires = "dev")]
        data_dir: PathBuf,
        /// REST listen address in --dev (must be loopback).
        #[arg(long, default_value = "127.0.0.1:8443", requires = "dev")]
        rest_addr: SocketAddr,
        /// Istio CA gRPC listen address in --dev (must be loopback); callers
        /// authenticate with a token from `signet dev token`.
        #[arg(long, default_value = "127.0.0.1:15012", requires = "dev")]
        grpc_addr: SocketAddr,
        /// Shut down when standard input closes (for supervisors and tests, so
        /// that signet never outlives the process that started it).
        #[arg(long, hide = true)]
        exit_with_stdin: bool,
    },
    /// Send a CSR to a signet REST endpoint.
    Sign(SignArgs),
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Istio helpers.
    #[command(subcommand)]
    Istio(IstioCommand),
    /// Print the CustomResourceDefinitions of SignetIssuer and
    /// SignetClusterIssuer (YAML, for `kubectl apply -f -`).
    Crds,
    /// Revoke a certificate an authority issued: adds its serial to the
    /// authority's `revocation_file`, which the CRL at
    /// `GET /v1/crl/<authority>` lists from then on.
    #[command(group(clap::ArgGroup::new("issuer").required(true).args(["authority", "cacerts"])))]
    Revoke {
        #[arg(long)]
        config: PathBuf,
        /// Name of an entry under `authorities`.
        #[arg(long)]
        authority: Option<String>,
        /// A workload certificate istiod issued from the plug-in CA
        /// (`frontends.istio_cacerts.revocation_file`; signet writes it into
        /// `cacerts` as `ca-crl.pem`).
        #[arg(long)]
        cacerts: bool,
        /// The certificate's serial number in hex (`4f:1c:0a`, `0x4f1c0a`
        /// and `4F1C0A` are the same).
        #[arg(long, required_unless_present = "intermediate")]
        serial: Option<String>,
        /// Emergency re-key of a delegated authority (with --rekey): every
        /// replica withdraws its intermediate within `trust.poll`, mints one
        /// on a fresh key, and revokes the old one upstream where the backend
        /// can (Vault/OpenBao, AWS Private CA, Google CAS). Recorded in
        /// `trust.state_file`.
        #[arg(
            long,
            requires = "rekey",
            requires = "authority",
            conflicts_with = "serial"
        )]
        intermediate: bool,
        /// See --intermediate.
        #[arg(long, requires = "intermediate")]
        rekey: bool,
        /// unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded or cessation-of-operation.
        #[arg(long)]
        reason: Option<signet_core::revocation::Reason>,
    },
    /// Examine a live setup: the configured backends' roots and CAs, and the
    /// Kubernetes objects signet keeps (cacerts, root ConfigMaps,
    /// istiod-tls, ClusterTrustBundles). One line per finding; exits 1 when
    /// anything failed.
    Doctor {
        #[arg(long)]
        config: PathBuf,
        /// Warn about CAs and certificates that expire within this long.
        #[arg(long, default_value = "7d")]
        warn_within: signet_core::duration::HumanDuration,
    },
    /// Policy helpers.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// CA keys held in key stores (PKCS#11, AWS KMS, Vault Transit).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Root rotation: `rotate` begins one and moves it through its phases
    /// (publish, issue, done), `status` shows where each stands.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Validate a configuration file and (without --offline) reach every backend.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Only parse and validate; do not contact backends.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// What a front-end would decide for a caller and a CSR — the
    /// certificate it would issue (names, lifetime, usages) or the exact
    /// refusal — through the server's own decision code, without contacting
    /// any backend. Exits 1 on a refusal.
    Test(crate::policy_test::PolicyTestArgs),
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Begin a root rotation of a backend (with --to), or move the one in
    /// progress on as far as it may: publish → issue once every consumer
    /// holds the next root and the soak has passed, issue → done once every
    /// certificate under the old root has expired. Prints what it waits for.
    Rotate {
        #[arg(long)]
        config: PathBuf,
        /// The backend (as authorities and istio_cacerts name it) to rotate.
        #[arg(long)]
        backend: String,
        /// The backend that holds the next root; begins the rotation.
        #[arg(long)]
        to: Option<String>,
        /// Least time in the publish phase; default the longest certificate
        /// lifetime of the backend's users (every workload renews once and
        /// so receives the next root).
        #[arg(long, requires = "to")]
        soak: Option<signet_core::duration::HumanDuration>,
        /// Keep going until the rotation is done.
        #[arg(long)]
        wait: bool,
    },
    /// Each rotation's phase, history, roots with their roles, and what it waits for.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum IstioCommand {
    /// Write istiod's plug-in CA files (ca-cert.pem, ca-key.pem, cert-chain.pem,
    /// root-cert.pem) with an intermediate from `frontends.istio_cacerts.backend`,
    /// for `kubectl create secret generic cacerts -n istio-system --from-file=DIR`.
    Cacerts {
        #[arg(long)]
        config: PathBuf,
        /// Output directory (the key is written 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Print a service-account token for the Istio API of `signet serve --dev`.
    Token {
        /// The data directory of the dev server.
        #[arg(long, default_value = "./signet-data")]
        data_dir: PathBuf,
        /// Namespace of the service account.
        #[arg(long)]
        ns: String,
        /// Name of the service account.
        #[arg(long)]
        sa: String,
        /// Token lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: signet_core::duration::HumanDuration,
    },
    /// Ask an Istio CA service for a certificate the way istio-agent does
    /// (gRPC over TLS, bearer token, `clusterid` header) and check the answer.
    IstioSign(crate::istio_client::IstioSignArgs),
}

/// The audit trail is not a log level: whatever the filter says, every
/// `signet::audit` record is written (a later directive for the same
/// target wins, so this one goes last).
const AUDIT_DIRECTIVE: &str = "signet::audit=info";

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{filter},{AUDIT_DIRECTIVE}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{AUDIT_DIRECTIVE}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signet: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // A blocked stdin reader (--exit-with-stdin) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("signet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            dev,
            data_dir,
            rest_addr,
            grpc_addr,
            exit_with_stdin,
        } => {
            let termination = app::Termination::install()?;
            let config = serve_config(config, dev, &data_dir, rest_addr, grpc_addr).await?;
            let app = App::start(config).await?;
            tracing::info!("ready");
            if exit_with_stdin {
                let mut stdin = tokio::io::stdin();
                let mut sink = tokio::io::sink();
                tokio::select! {
                    _ = termination.wait() => {}
                    _ = tokio::io::copy(&mut stdin, &mut sink) => tracing::info!("standard input closed; shutting down"),
                }
            } else {
                termination.wait().await;
            }
            app.shutdown().await;
            Ok(())
        }
        Command::Sign(args) => client::sign(args).await,
        Command::Check { config, offline } => check(&config, offline).await,
        Command::Doctor {
            config,
            warn_within,
        } => doctor(&config, warn_within.get()).await,
        Command::Revoke {
            config,
            authority,
            cacerts: _,
            serial,
            intermediate,
            rekey: _,
            reason,
        } => match (serial, authority) {
            (_, Some(authority)) if intermediate => {
                crate::trust::rekey(&config, &authority, reason)
            }
            (Some(serial), authority) => revoke(&config, authority.as_deref(), &serial, reason),
            (None, _) => anyhow::bail!("--serial is required"),
        },
        Command::Trust(TrustCommand::Rotate {
            config,
            backend,
            to,
            soak,
            wait,
        }) => {
            let args = crate::trust::RotateArgs {
                backend,
                to,
                soak: soak.map(|s| s.get()),
                wait,
            };
            crate::trust::rotate(&config, args).await
        }
        Command::Trust(TrustCommand::Status { config }) => crate::trust::status(&config).await,
        Command::Policy(PolicyCommand::Test(args)) => crate::policy_test::run(args),
        Command::Key(KeyCommand::Csr {
            config,
            backend,
            common_name,
        }) => key_csr(&config, &backend, &common_name).await,
        Command::Crds => {
            print!("{}", signet_cert_manager::crds_yaml());
            Ok(())
        }
        Command::Istio(IstioCommand::Cacerts { config, out }) => istio_cacerts(&config, &out).await,
        Command::Dev(DevCommand::IstioSign(args)) => crate::istio_client::sign(args).await,
        Command::Dev(DevCommand::Token {
            data_dir,
            ns,
            sa,
            ttl,
        }) => {
            signet_core::spiffe::TrustDomain::new(dev::TRUST_DOMAIN)?
                .service_account_id(&ns, &sa)?;
            let issuer = signet_istio::dev::DevIssuer::in_dir(&data_dir);
            anyhow::ensure!(
                issuer.key.exists(),
                "{} not found: start `signet serve --dev --data-dir {}` once first",
                issuer.key.display(),
                data_dir.display()
            );
            let token = issuer
                .mint(
                    &ns,
                    &sa,
                    ttl.get(),
                    signet_core::Clock::now(&signet_core::SystemClock),
                )
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn key_csr(path: &Path, backend: &str, common_name: &str) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let local = match config.backends.get(backend) {
        Some(signet_backends::BackendConfig::Local(c)) => c,
        Some(_) => anyhow::bail!("backends.{backend} is not a local backend"),
        None => anyhow::bail!("no backends.{backend}"),
    };
    let key = signet_backends::keys::open(&local.key()?, local.resilience.timeout.get())
        .await
        .with_context(|| format!("backends.{backend}.key"))?;
    let sans = [signet_core::names::San::Uri(config.trust_domain.id())];
    let csr = signet_core::key::CaKey::new(key)
        .csr_der(Some(common_name), &sans)
        .await?;
    print!("{}", signet_core::pem::encode("CERTIFICATE REQUEST", &csr));
    Ok(())
}

async fn check(path: &Path, offline: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let frontends = config.frontends.names();
    if !offline {
        let clock: std::sync::Arc<dyn signet_core::Clock> =
            std::sync::Arc::new(signet_core::SystemClock);
        let backends = app::build_backends(&config, &clock).await?;
        for (name, b) in &backends {
            let bundle = b
                .trust_bundle()
                .await
                .with_context(|| format!("backends.{name}: fetching the trust bundle"))?;
            let info = b.describe();
            if let Err(why) = &info.ready {
                anyhow::bail!("backends.{name}: not ready: {why}");
            }
            println!(
                "backend {name} ({}): ok, {} root(s)",
                info.kind,
                bundle.roots().len()
            );
            match b.layout().await {
                Ok(layout) => println!("{layout}"),
                Err(e) => println!("  layout: not read ({e})"),
            }
        }
        // Each authority against its backend's layout (an error says what to change).
        app::check_layouts(&config, &backends).await?;
    }
    println!(
        "{}: ok ({} backend(s), {} authorit{}, front-ends: {})",
        path.display(),
        config.backends.len(),
        config.authorities.len(),
        if config.authorities.len() == 1 {
            "y"
        } else {
            "ies"
        },
        if frontends.is_empty() {
            "none".to_owned()
        } else {
            frontends.join(", ")
        }
    );
    Ok(())
}

async fn istio_cacerts(path: &Path, out: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let c = config
        .frontends
        .istio_cacerts
        .clone()
        .context("the configuration has no frontends.istio_cacerts")?;
    let clock: std::sync::Arc<dyn signet_core::Clock> =
        std::sync::Arc::new(signet_core::SystemClock);
    // As the servers see it: with `trust`, the rotation phase's backend
    // (every backend is built, since a rotation may name any); else just
    // the one named.
    let backend = if config.trust.is_some() {
        let built = app::build_backends(&config, &clock).await?;
        let (mut backends, _slots) = crate::trust::slots(&config, built)?;
        backends.remove(&c.backend).context("no such backend")?
    } else {
        let spec = config.backends.get(&c.backend).context("no such backend")?;
        signet_backends::build(&c.backend, spec, clock.clone()).await?
    };
    let cacerts =
        signet_istio::cacerts::Cacerts::new(backend, c.clone(), config.trust_domain.clone(), clock);
    let files = cacerts.mint(&[], None).await?;
    signet_istio::cacerts::write_dir(&files, out)?;
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    println!("wrote {} to {}", names.join(", "), out.display());
    Ok(())
}

/// `signet revoke`: one serial into the revocation file of an authority
/// (or, with `None`, of `istio_cacerts`); nothing is written when anything
/// is wrong.
fn revoke(
    config: &Path,
    authority: Option<&str>,
    serial: &str,
    reason: Option<signet_core::revocation::Reason>,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let (issuer, file) = match authority {
        Some(name) => {
            let a = config
                .authorities
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no authority {name:?} in the configuration"))?;
            let file = a.revocation_file.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "authority {name:?} has no revocation_file to record revocations in"
                )
            })?;
            (format!("authority {name}"), file)
        }
        None => {
            let c = config
                .frontends
                .istio_cacerts
                .as_ref()
                .context("the configuration has no frontends.istio_cacerts")?;
            let file = c.revocation_file.clone().context(
                "frontends.istio_cacerts has no revocation_file to record revocations in",
            )?;
            ("the istio plug-in CA".to_owned(), file)
        }
    };
    let now = signet_core::Clock::now(&signet_core::SystemClock);
    let (entry, count) =
        signet_core::revocation::RevocationList::revoke_in_file(&file, serial, now, reason)?;
    println!(
        "revoked serial {} of {issuer} at {} ({count} in {})",
        entry.serial,
        signet_core::clock::rfc3339(entry.revoked_at),
        file.display()
    );
    Ok(())
}

/// `signet doctor`: prints each finding; fails when any check failed.
async fn doctor(config: &Path, warn_within: std::time::Duration) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let clock: std::sync::Arc<dyn signet_core::Clock> =
        std::sync::Arc::new(signet_core::SystemClock);
    let findings = crate::doctor::examine(&config, &clock, warn_within).await?;
    for f in &findings {
        println!("{f}");
    }
    let failed = findings
        .iter()
        .filter(|f| f.level == crate::doctor::Level::Fail)
        .count();
    let warned = findings
        .iter()
        .filter(|f| f.level == crate::doctor::Level::Warn)
        .count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed, {warned} warning(s)");
    println!("no failures, {warned} warning(s)");
    Ok(())
}

/// The configuration `serve` runs: the file, or dev mode's (creating its
/// PKI in `data_dir` the first time).
async fn serve_config(
    config: Option<PathBuf>,
    dev: bool,
    data_dir: &Path,
    rest_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> anyhow::Result<Config> {
    if dev {
        let pki =
            dev::ensure_pki(data_dir, signet_core::Clock::now(&signet_core::SystemClock)).await?;
        tracing::warn!(
            root = %pki.root.display(),
            "DEVELOPMENT MODE: signing with a self-signed development root, unauthenticated, on loopback only. \
             For trying signet; never use it in production."
        );
        dev::config(&pki, data_dir, rest_addr, grpc_addr)
    } else {
        let path = config.context("--config is required")?;
        Ok(Config::load(&path)?)
    }
}
