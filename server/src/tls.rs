//! TLS for signet's listeners: a serving certificate that can be swapped
//! under live connections, and the rustls server configuration around it.
//!
//! A serving certificate either comes from files (re-read when they change)
//! or is issued by the front-end's own authority for its names and renewed
//! in process at two thirds of its lifetime. Either way the handshake asks
//! [`SwappableCert`], so renewal never restarts the listener.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use signet_core::clock::rfc3339;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San};
use signet_core::pem;
use signet_core::worker::{Backoff, Next, Worker};
use signet_core::{Authority, IssuedChain};

/// The crypto provider used by every TLS endpoint and client in signet.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A serving certificate that can be replaced while connections use it.
pub struct SwappableCert {
    current: ArcSwap<CertifiedKey>,
    not_after: ArcSwap<SystemTime>,
    /// A self-signed stand-in until the authority can issue the real one.
    provisional: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwappableCert")
            .field("not_after", &rfc3339(**self.not_after.load()))
            .finish()
    }
}

impl SwappableCert {
    fn new(key: CertifiedKey, not_after: SystemTime) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
            not_after: ArcSwap::from_pointee(not_after),
            provisional: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn replace(&self, key: CertifiedKey, not_after: SystemTime) {
        self.current.store(Arc::new(key));
        self.not_after.store(Arc::new(not_after));
        self.provisional
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this is still the self-signed stand-in.
    pub fn is_provisional(&self) -> bool {
        self.provisional.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn not_after(&self) -> SystemTime {
        **self.not_after.load()
    }

    /// The current leaf certificate (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: &[u8],
) -> anyhow::Result<CertifiedKey> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| anyhow::anyhow!("loading serving key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Names a serving certificate is issued for.
#[derive(Debug, Clone)]
pub struct ServingNames {
    pub dns: Vec<DnsName>,
    pub ips: Vec<IpAddr>,
}

impl ServingNames {
    /// The listen address (unless unspecified) plus the configured names; a
    /// loopback listener also gets `localhost`.
    pub fn for_listener(listen: IpAddr, server_names: &[String]) -> anyhow::Result<Self> {
        let mut dns = Vec::new();
        for n in server_names {
            dns.push(DnsName::new(n)?);
        }
        let mut ips = Vec::new();
        if !listen.is_unspecified() {
            ips.push(listen);
        }
        if listen.is_loopback() && !dns.iter().any(|d| d.as_str() == "localhost") {
            dns.push(DnsName::new("localhost")?);
        }
        Ok(Self { dns, ips })
    }

    fn sans(&self) -> Vec<San> {
        self.dns
            .iter()
            .cloned()
            .map(San::Dns)
            .chain(self.ips.iter().copied().map(San::Ip))
            .collect()
    }
}

/// Issues a serving certificate from `authority` for `names`.
async fn issue_serving(
    authority: &Authority,
    names: &ServingNames,
    purpose: &str,
) -> anyhow::Result<(CertifiedKey, IssuedChain)> {
    let (key, chain) =
        signet_core::mint::issue_own_server_cert(authority, purpose, &names.sans()).await?;
    let mut certs = vec![chain.leaf().clone()];
    certs.extend(chain.intermediates().iter().cloned());
    let ck = certified_key(certs, &key.to_pkcs8_der())?;
    Ok((ck, chain))
}

/// A serving certificate issued by an authority and renewed in process. If
/// the authority cannot issue yet (a delegated authority still waiting for its
/// intermediate, an unreachable backend), the listener starts with a
/// self-signed stand-in and the real certificate replaces it as soon as it
/// can be issued; `/readyz` reports not ready until then.
pub async fn issued_by_authority(
    authority: Arc<Authority>,
    names: ServingNames,
    purpose: &'static str,
) -> anyhow::Result<Arc<SwappableCert>> {
    let (cert, nb, na) = match issue_serving(&authority, &names, purpose).await {
        Ok((ck, chain)) => {
            tracing::info!(purpose, not_after = %rfc3339(chain.not_after()), "serving certificate issued");
            (
                Arc::new(SwappableCert::new(ck, chain.not_after())),
                chain.not_before(),
                chain.not_after(),
            )
        }
        Err(e) => {
            tracing::warn!(purpose, error = %e, "cannot issue the serving certificate yet; serving a self-signed stand-in until it can");
            let now = authority.clock().now();
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
            let der = signet_core::issuer::self_signed_server(
                &names.sans(),
                &key,
                now,
                Duration::from_secs(86_400),
            )?;
            let cert = SwappableCert::new(
                certified_key(vec![der], &key.to_pkcs8_der())?,
                now + Duration::from_secs(86_400),
            );
            cert.provisional
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // Due at once: the renewal loop retries with backoff.
            (Arc::new(cert), now, now)
        }
    };
    spawn_renewal(&cert, authority, names, purpose, nb, na);
    Ok(cert)
}

/// Renews the serving certificate at two thirds of its life until it is
/// dropped; while renewal fails the current one keeps serving.
fn spawn_renewal(
    cert: &Arc<SwappableCert>,
    authority: Arc<Authority>,
    names: ServingNames,
    purpose: &'static str,
    not_before: SystemTime,
    not_after: SystemTime,
) {
    let renew_at = |nb, na| signet_core::clock::renew_time(nb, na, signet_core::clock::RENEW_AT);
    let names = Arc::new(names);
    Worker::new(format!("{purpose} serving certificate"))
        .clock(authority.clock().clone())
        .first(Next::At(renew_at(not_before, not_after)))
        .spawn_for(cert, move |cert| {
            let (authority, names) = (authority.clone(), names.clone());
            async move {
                match issue_serving(&authority, &names, purpose).await {
                    Ok((ck, chain)) => {
                        cert.replace(ck, chain.not_after());
                        tracing::info!(purpose, not_after = %rfc3339(chain.not_after()), "serving certificate renewed");
                        Ok(Next::At(renew_at(chain.not_before(), chain.not_after())))
                    }
                    Err(e) => Err(format!(
                        "{e}; still serving the current certificate (expires {})",
                        rfc3339(cert.not_after())
                    )),
                }
            }
        });
}

/// A serving certificate from PEM files, re-read every 10 seconds.
pub fn from_files(cert_file: PathBuf, key_file: PathBuf) -> anyhow::Result<Arc<SwappableCert>> {
    const PERIOD: Duration = Duration::from_secs(10);
    let (ck, not_after, fp) = load_files(&cert_file, &key_file)?;
    let cert = Arc::new(SwappableCert::new(ck, not_after));
    let last = Arc::new(std::sync::Mutex::new(fp));
    Worker::new(format!("serving certificate files {}", cert_file.display()))
        .backoff(Backoff::constant(PERIOD))
        .first(Next::In(PERIOD))
        .spawn_for(&cert, move |cert| {
            let loaded = load_files(&cert_file, &key_file);
            let (file, last) = (cert_file.clone(), last.clone());
            async move {
                let (ck, not_after, fp) =
                    loaded.map_err(|e| format!("{e}; keeping the current certificate"))?;
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != fp {
                    cert.replace(ck, not_after);
                    *last = fp;
                    tracing::info!(file = %file.display(), "serving certificate reloaded");
                }
                Ok::<_, String>(Next::In(PERIOD))
            }
        });
    Ok(cert)
}

fn load_files(
    cert_file: &PathBuf,
    key_file: &PathBuf,
) -> anyhow::Result<(CertifiedKey, SystemTime, [u8; 32])> {
    let cert_pem =
        std::fs::read(cert_file).map_err(|e| anyhow::anyhow!("{}: {e}", cert_file.display()))?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(key_file).map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?,
    );
    let fp = signet_core::crypto::sha256(
        &[
            signet_core::crypto::sha256(&cert_pem),
            signet_core::crypto::sha256(&key_pem),
        ]
        .concat(),
    );
    let chain: Vec<CertificateDer<'static>> = pem::certificates(&cert_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_file.display()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    anyhow::ensure!(!chain.is_empty(), "{}: no certificate", cert_file.display());
    let key = PrivateKey::from_pem(&key_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    let not_after = leaf_not_after(&chain[0])?;
    let ck = certified_key(chain, &key.to_pkcs8_der())?;
    ck.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "{}: key does not match certificate: {e}",
            key_file.display()
        )
    })?;
    Ok((ck, not_after, fp))
}

fn leaf_not_after(der: &CertificateDer<'_>) -> anyhow::Result<SystemTime> {
    Ok(signet_core::chain::validity(der)?.1)
}

/// Verifies client certificates against fixed roots; clients without one may
/// still connect (and authenticate otherwise).
pub fn static_client_verifier(
    roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r)?;
    }
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
            .allow_unauthenticated()
            .build()?,
    )
}

/// Verifies client certificates against an authority's current trust
/// bundle, re-read every minute, so that workloads keep renewing with their
/// live certificates across root rotations. Until the bundle can be read (a
/// delegated authority still waiting for its intermediate), client
/// certificates are refused; clients may still authenticate otherwise.
#[derive(Debug)]
pub struct BundleClientVerifier {
    inner: ArcSwapOption<Arc<dyn ClientCertVerifier>>,
}

impl BundleClientVerifier {
    /// Trusts the roots of every authority in `authorities`, kept current.
    /// An authority whose bundle cannot be read keeps the roots last read
    /// for it (one tenant's outage does not stop the others' renewals);
    /// the loop then retries sooner.
    pub fn start(authorities: Vec<Arc<Authority>>) -> Arc<Self> {
        let this = Arc::new(Self {
            inner: ArcSwapOption::empty(),
        });
        type Held = (
            Vec<Vec<CertificateDer<'static>>>,
            Vec<CertificateDer<'static>>,
        );
        let held: Arc<std::sync::Mutex<Held>> = Arc::new(std::sync::Mutex::new((
            vec![Vec::new(); authorities.len()],
            Vec::new(),
        )));
        Worker::new("client certificate roots")
            .backoff(Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(60),
            ))
            .spawn_for(&this, move |this| {
                let (authorities, held) = (authorities.clone(), held.clone());
                async move {
                    let mut failed = Vec::new();
                    let mut read = Vec::with_capacity(authorities.len());
                    for authority in &authorities {
                        match authority.trust_bundle().await {
                            Ok(b) => read.push(Some(b.roots().to_vec())),
                            Err(e) => {
                                failed.push(format!("{}: {e}", authority.name()));
                                read.push(None);
                            }
                        }
                    }
                    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                    for (slot, fresh) in held.0.iter_mut().zip(read) {
                        if let Some(r) = fresh {
                            *slot = r;
                        }
                    }
                    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
                    for r in held.0.iter().flatten() {
                        if !roots.contains(r) {
                            roots.push(r.clone());
                        }
                    }
                    if !roots.is_empty() && roots != held.1 {
                        let verifier = static_client_verifier(roots.clone()).map_err(|e| {
                            format!("trust bundle unusable for client certificates: {e}")
                        })?;
                        this.inner.store(Some(Arc::new(verifier)));
                        tracing::info!(roots = roots.len(), "client certificate roots loaded");
                        held.1 = roots;
                    }
                    drop(held);
                    if failed.is_empty() {
                        Ok::<_, String>(Next::In(Duration::from_secs(60)))
                    } else {
                        Err(format!(
                            "trust bundle for client certificates not available: {}",
                            failed.join("; ")
                        ))
                    }
                }
            });
        this
    }

    fn with_inner<T>(
        &self,
        f: impl FnOnce(&dyn ClientCertVerifier) -> Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        match self.inner.load_full() {
            Some(v) => f(v.as_ref().as_ref()),
            None => Err(rustls::Error::General(
                "no trust bundle for client certificates yet".into(),
            )),
        }
    }
}

impl ClientCertVerifier for BundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints would have to outlive a swap; clients pick their certificate anyway.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.with_inner(|v| v.verify_client_cert(end_entity, intermediates, now))
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.with_inner(|v| v.verify_tls12_signature(message, cert, dss))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.with_inner(|v| v.verify_tls13_signature(message, cert, dss))
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls server configuration: TLS 1.2/1.3, the given ALPN protocols,
/// and optionally client certificates checked by `client_verifier`.
pub fn server_config(
    cert: Arc<SwappableCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use signet_core::chain::TrustBundle;
    use signet_core::clock::{Clock, ManualClock};
    use signet_core::issuer::LocalCa;
    use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig};
    use signet_core::signer::Capabilities;
    use signet_core::spiffe::TrustDomain;
    use signet_core::{BackendInfo, SignError, Signer};

    use super::*;

    #[derive(Debug)]
    struct CaSigner(LocalCa);

    #[async_trait]
    impl Signer for CaSigner {
        async fn sign(
            &self,
            d: &IssuanceDecision,
            csr: &signet_core::VerifiedCsr,
        ) -> Result<IssuedChain, SignError> {
            self.0.sign(d, csr.public_key()).await
        }
        async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
            Ok(self.0.trust_bundle().clone())
        }
        fn describe(&self) -> BackendInfo {
            BackendInfo {
                name: "ca".into(),
                kind: "test",
                capabilities: Capabilities {
                    issues_intermediates: true,
                    honours_ttl: true,
                    in_process: true,
                    idempotent_for: None,
                    constrains_path_len: true,
                },
                ca_not_after: Some(self.0.not_after()),
                ready: Ok(()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_serving_certificate_is_renewed_at_two_thirds_of_its_life() {
        let clock = Arc::new(ManualClock::new(signet_core::SystemClock.now()));
        let root = LocalCa::self_signed_root(
            "root",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            clock.now(),
            Duration::from_secs(30 * 86_400),
        )
        .unwrap();
        let policy = PolicyConfig {
            max_ttl: Duration::from_secs(3600).into(),
            default_ttl: Duration::from_secs(3600).into(),
            ..PolicyConfig::default()
        };
        let authority = Arc::new(Authority::new(
            "a",
            Arc::new(CaSigner(root)),
            AuthorityPolicy::new(TrustDomain::new("cluster.local").unwrap(), policy).unwrap(),
            clock.clone(),
        ));
        let names =
            ServingNames::for_listener("127.0.0.1".parse().unwrap(), &["signet.test".into()])
                .unwrap();
        let cert = issued_by_authority(authority, names, "test").await.unwrap();
        let first = cert.leaf();
        let first_not_after = cert.not_after();

        // Lifetime is 1h + 1m of back-dating; renewal is due ~40m40s after NotBefore.
        for minutes in [30, 9] {
            clock.advance(Duration::from_secs(minutes * 60));
            tokio::time::advance(Duration::from_secs(minutes * 60)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cert.leaf(), first, "not renewed early");
        clock.advance(Duration::from_secs(120));
        tokio::time::advance(Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_ne!(cert.leaf(), first, "renewed");
        assert!(cert.not_after() > first_not_after);
    }
}
