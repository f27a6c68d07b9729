//! `signet serve --dev`: a self-contained development setup.
//!
//! Creates (once) an EC P-256 root and an intermediate under the data
//! directory, reuses them on restart, re-issues the intermediate when it
//! nears expiry, and describes a loopback-only configuration around them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use signet_backends::BackendConfig;
use signet_backends::local::LocalConfig;
use signet_core::caller::{Principal, PrincipalSelector};
use signet_core::clock::rfc3339;
use signet_core::duration::HumanDuration;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::mint::{IntermediateRequest, IntermediateSpec};
use signet_core::names::SanPattern;
use signet_core::pem;
use signet_core::policy::{PolicyConfig, Profile};
use signet_core::spiffe::TrustDomain;

use crate::config::{
    AuthorityConfig, Config, FrontendsConfig, Mode, PrincipalConfig, RestAuthConfig, RestConfig,
    RestLimits,
};

const DAY: Duration = Duration::from_secs(86_400);
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);
const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Re-issue the intermediate when less than this is left.
const INTERMEDIATE_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Paths of the development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub root: PathBuf,
    pub root_key: PathBuf,
    pub intermediate: PathBuf,
    pub intermediate_key: PathBuf,
}

impl DevPki {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            root: dir.join("root.pem"),
            root_key: dir.join("root-key.pem"),
            intermediate: dir.join("intermediate.pem"),
            intermediate_key: dir.join("intermediate-key.pem"),
        }
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    signet_core::fsutil::write_atomic(path, contents, mode)
        .with_context(|| format!("writing {}", path.display()))
}

fn load_ca(
    cert: &Path,
    key: &Path,
    roots: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
    now: SystemTime,
) -> anyhow::Result<LocalCa> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
    );
    let der = pem::certificates(&cert_pem)?
        .into_iter()
        .next()
        .with_context(|| format!("{}: no certificate", cert.display()))?;
    let key = PrivateKey::from_pem(&key_pem).with_context(|| key.display().to_string())?;
    LocalCa::new(der.into(), key, vec![], roots, now).with_context(|| cert.display().to_string())
}

/// Creates or reuses the development root and intermediate in `dir`.
pub async fn ensure_pki(dir: &Path, now: SystemTime) -> anyhow::Result<DevPki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let pki = DevPki::in_dir(dir);
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    let root = if pki.root.exists() {
        load_ca(&pki.root, &pki.root_key, None, now).context(
            "the existing development root is unusable; remove the data directory to start over",
        )?
    } else {
        let root = LocalCa::self_signed_root(
            "signet development root (not for production)",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256)?,
            now,
            ROOT_TTL,
        )?;
        write_file(
            &pki.root_key,
            root.private_key()
                .expect("a generated root")
                .to_pem()
                .as_bytes(),
            0o600,
        )?;
        write_file(
            &pki.root,
            pem::encode_certificate(root.certificate()).as_bytes(),
            0o644,
        )?;
        // A new root invalidates any intermediate left from before.
        let _ = std::fs::remove_file(&pki.intermediate);
        tracing::info!(path = %pki.root.display(), "created development root");
        root
    };
    let roots = Some(root.trust_bundle().roots().to_vec());
    let usable = pki.intermediate.exists()
        && match load_ca(&pki.intermediate, &pki.intermediate_key, roots.clone(), now) {
            Ok(ca) => ca.not_after() > now + INTERMEDIATE_RENEW_BEFORE,
            Err(e) => {
                tracing::warn!(error = %e, "development intermediate unusable; issuing a new one");
                false
            }
        };
    if !usable {
        let spec = IntermediateSpec {
            common_name: "signet development intermediate (not for production)",
            trust_domain: &td,
            key: KeyAlgorithm::EcdsaP256,
            ttl: INTERMEDIATE_TTL,
            requested_by: "signet:dev",
        };
        let IntermediateRequest { key, csr, decision } =
            IntermediateRequest::new(&spec, now, true)?;
        let chain = root.sign(&decision, csr.public_key()).await?;
        chain.check(&decision, &csr, now, Duration::ZERO)?;
        write_file(&pki.intermediate_key, key.to_pem().as_bytes(), 0o600)?;
        write_file(&pki.intermediate, chain.leaf_pem().as_bytes(), 0o644)?;
        tracing::info!(path = %pki.intermediate.display(), not_after = %rfc3339(chain.not_after()), "issued development intermediate");
    }
    Ok(pki)
}

/// The configuration `--dev` runs: REST on a loopback address, callers
/// unauthenticated, any SPIFFE ID in the trust domain and local names; the
/// Istio CA API on another loopback address, authenticating JWTs from the
/// development issuer (`signet dev token`) and client certificates.
pub fn config(
    pki: &DevPki,
    data_dir: &Path,
    rest_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> anyhow::Result<Config> {
    for addr in [rest_addr, grpc_addr] {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "--dev serves only on loopback addresses; {addr} is not one"
        );
    }
    let istio = dev_istio(data_dir, grpc_addr)?;
    let mut backends = BTreeMap::new();
    backends.insert(
        "dev".to_owned(),
        BackendConfig::Local(Box::new(LocalConfig {
            cert_file: pki.intermediate.clone(),
            key_file: Some(pki.intermediate_key.clone()),
            key: None,
            chain_file: Some(pki.root.clone()),
            roots_file: None,
            reload_interval: HumanDuration::from_secs(10),
            resilience: Default::default(),
        })),
    );
    let mut authorities = BTreeMap::new();
    authorities.insert(
        "dev".to_owned(),
        AuthorityConfig {
            backend: "dev".into(),
            mode: Mode::Direct,
            intermediate: None,
            policy: PolicyConfig {
                max_ttl: HumanDuration(7 * DAY),
                ..PolicyConfig::default()
            },
            // GET /v1/crl/dev lists what is revoked here (empty until then).
            revocation_file: Some(data_dir.join("revoked.yaml")),
        },
    );
    let rest = dev_rest(rest_addr)?;
    let config = Config {
        trust_domain: TrustDomain::new(TRUST_DOMAIN)?,
        backends,
        authorities,
        frontends: FrontendsConfig {
            rest: Some(rest),
            istio: Some(istio),
            ..FrontendsConfig::default()
        },
        kubernetes: Default::default(),
        leader_election: Default::default(),
        admin: None,
        trust: None,
    };
    config.validate("--dev")?;
    Ok(config)
}

/// The Istio CA front-end of `--dev`: client certificates and JWTs from the
/// development issuer (`signet dev token`).
fn dev_istio(
    data_dir: &Path,
    grpc_addr: SocketAddr,
) -> anyhow::Result<signet_istio::config::IstioConfig> {
    let issuer = signet_istio::dev::DevIssuer::ensure(data_dir).map_err(|e| anyhow::anyhow!(e))?;
    let istio = signet_istio::config::IstioConfig {
        listen: grpc_addr,
        authority: "dev".into(),
        routes: Vec::new(),
        namespace: "signet".into(),
        server_names: None,
        auth: signet_istio::config::IstioAuthConfig {
            mtls: true,
            token_review: None,
            jwt: vec![signet_istio::config::JwtIssuerConfig {
                issuer: signet_istio::dev::DEV_ISSUER.into(),
                cluster: signet_istio::service::DEFAULT_CLUSTER_ID.into(),
                jwks_file: Some(issuer.jwks),
                jwks_url: None,
                audiences: vec![signet_istio::dev::DEV_AUDIENCE.into()],
                jwks_refresh: HumanDuration::from_secs(300),
                leeway: HumanDuration::from_secs(60),
            }],
        },
        impersonation: None,
        limits: signet_istio::config::IstioLimits::default(),
    };
    Ok(istio)
}

/// The REST front-end of `--dev`: unauthenticated on loopback, any SPIFFE ID
/// in the trust domain and local names.
fn dev_rest(rest_addr: SocketAddr) -> anyhow::Result<RestConfig> {
    let patterns = [
        format!("spiffe://{TRUST_DOMAIN}/**"),
        format!("**.{TRUST_DOMAIN}"),
        "localhost".into(),
        "**.localhost".into(),
        "127.0.0.0/8".into(),
        "::1".into(),
    ];
    let rest = RestConfig {
        listen: rest_addr,
        authority: "dev".into(),
        server_names: vec![],
        tls: None,
        auth: RestAuthConfig {
            mtls: None,
            tokens_file: None,
            loopback_unauthenticated: true,
        },
        principals: vec![PrincipalConfig {
            name: PrincipalSelector::Exact(Principal::Anonymous),
            allowed_sans: patterns
                .iter()
                .map(|p| SanPattern::parse(p))
                .collect::<Result<_, _>>()?,
            max_ttl: None,
            profiles: Profile::ALL.to_vec(),
            allow_wildcards: false,
        }],
        limits: RestLimits::default(),
        spiffe_refresh_hint: crate::config::default_spiffe_refresh_hint(),
    };
    Ok(rest)
}
