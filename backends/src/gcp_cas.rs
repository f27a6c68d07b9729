//! The `gcp_cas` backend: Google Cloud Certificate Authority Service (v1),
//! through the official `google-cloud-security-privateca-v1` client.
//!
//! Leaves: CreateCertificate with the PEM CSR, the decided `lifetime`, the
//! configured template and issuing CA. Intermediates: CreateCertificate with
//! a `config` (subject, SANs, the CSR's public key, `caOptions {isCa: true,
//! maxIssuerPathLength: 0}`, cert sign + CRL sign), since a CSR cannot ask CAS
//! for CA options. Every call carries a `requestId` (a UUID derived from the
//! request, so retries reuse it; CAS de-duplicates for at least an hour) and
//! a `certificateId` (required by the Enterprise tier): when CAS says it
//! already exists, the existing certificate is fetched instead of issuing
//! another. Chains are parsed leniently: an element of
//! `pemCertificateChain` may hold several PEMs and CRLF line ends
//! (google-cas-issuer#148). The trust bundle is every root of every CA in
//! the pool (FetchCaCerts), so a root rotation inside the pool is seamless
//! (google-cas-issuer#412). RESOURCE_EXHAUSTED is `rate_limited`.
//!
//! Credentials: Application Default Credentials (workload identity, a
//! service-account key named by GOOGLE_APPLICATION_CREDENTIALS, gcloud's
//! user credentials).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use google_cloud_gax::error::rpc::Code;
use google_cloud_security_privateca_v1::client::CertificateAuthorityService;
use google_cloud_security_privateca_v1::model::{
    self, Certificate, CertificateConfig, KeyUsage, PublicKey, Subject, SubjectAltNames,
    X509Parameters,
};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use signet_core::chain::{IssuedChain, TrustBundle, order_path};
use signet_core::duration::HumanDuration;
use signet_core::names::San;
use signet_core::policy::{ExtKeyUsage, KeyUsage as Ku};
use signet_core::refresh::Refreshed;
use signet_core::resilience::{RateLimitConfig, ResilienceConfig};
use signet_core::signer::Capabilities;
use signet_core::{BackendInfo, Clock, IssuanceDecision, SignError, Signer, VerifiedCsr, pem};

fn default_refresh() -> HumanDuration {
    HumanDuration::from_secs(300)
}

/// CreateCertificate allows 25 calls per second per CA on the DevOps tier
/// and 7 on Enterprise; signet stays under the latter unless told otherwise.
fn default_resilience() -> ResilienceConfig {
    ResilienceConfig {
        rate_limit: Some(RateLimitConfig {
            per_second: 6.0,
            burst: 6,
            max_wait: HumanDuration::from_secs(2),
        }),
        ..ResilienceConfig::default()
    }
}

/// `backends.<name>` with `type: gcp_cas`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpCasConfig {
    pub project: String,
    /// e.g. `europe-west1`.
    pub location: String,
    pub ca_pool: String,
    /// Issue from this CA of the pool (default: CAS picks one).
    #[serde(default)]
    pub certificate_authority: Option<String>,
    /// Full resource name of a certificate template for leaves.
    #[serde(default)]
    pub certificate_template: Option<String>,
    /// Another endpoint (a private endpoint, or a test server).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A service-account key (JSON) instead of Application Default Credentials.
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    /// How often the pool's roots are re-read.
    #[serde(default = "default_refresh")]
    pub trust_bundle_refresh: HumanDuration,
    #[serde(default = "default_resilience")]
    pub resilience: ResilienceConfig,
}

impl GcpCasConfig {
    /// `projects/<p>/locations/<l>/caPools/<pool>`.
    pub fn pool_name(&self) -> String {
        format!(
            "projects/{}/locations/{}/caPools/{}",
            self.project, self.location, self.ca_pool
        )
    }

    fn validate(&self) -> Result<(), GcpCasError> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        for (what, v) in [
            ("project", &self.project),
            ("location", &self.location),
            ("ca_pool", &self.ca_pool),
        ] {
            if !ok(v) {
                return Err(GcpCasError::Name(what, v.clone()));
            }
        }
        if let Some(ca) = &self.certificate_authority
            && !ok(ca)
        {
            return Err(GcpCasError::Name("certificate_authority", ca.clone()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcpCasError {
    #[error("{0} {1:?} is not a valid resource ID")]
    Name(&'static str, String),
    #[error("Google Cloud credentials: {0}")]
    Credentials(String),
    #[error("CAS client: {0}")]
    Client(String),
}

/// Google CAS as a signer.
pub struct GcpCasBackend {
    name: String,
    config: GcpCasConfig,
    client: CertificateAuthorityService,
    bundle: Refreshed<TrustBundle>,
    clock: Arc<dyn Clock>,
    /// Resource names of the CA certificates (delegated intermediates) this
    /// process had issued, by serial: CAS revokes by name, not serial.
    issued_cas: std::sync::Mutex<std::collections::VecDeque<(String, String)>>,
}

/// How many issued CA certificates are remembered for revocation.
const REMEMBERED_CAS: usize = 64;

impl fmt::Debug for GcpCasBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpCasBackend")
            .field("name", &self.name)
            .field("pool", &self.config.pool_name())
            .finish_non_exhaustive()
    }
}

/// Every certificate in some PEM text, CRLF or several per string included.
fn certs(texts: &[String]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for t in texts {
        let normalised = t.replace("\r\n", "\n");
        out.extend(
            pem::certificates(normalised.as_bytes())
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(CertificateDer::from),
        );
    }
    Ok(out)
}

fn map_err(what: &str, e: google_cloud_gax::error::Error) -> SignError {
    let detail = format!("{what}: {e}");
    if let Some(status) = e.status() {
        return match status.code {
            Code::ResourceExhausted => {
                tracing::debug!(error = %detail, "Google CAS quota");
                SignError::RateLimited { retry_after: None }
            }
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled => SignError::BackendUnavailable(detail),
            Code::FailedPrecondition => SignError::NotReady(detail),
            _ => SignError::BackendRejected(detail),
        };
    }
    match e.http_status_code() {
        Some(429) => SignError::RateLimited { retry_after: None },
        Some(c) if (400..500).contains(&c) => SignError::BackendRejected(detail),
        _ => SignError::BackendUnavailable(detail),
    }
}

impl GcpCasBackend {
    /// Builds the client with the service-account key of `credentials_file`,
    /// else Application Default Credentials.
    pub async fn new(
        name: &str,
        config: GcpCasConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, GcpCasError> {
        config.validate()?;
        let credentials = match &config.credentials_file {
            Some(path) => {
                let text =
                    zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                        GcpCasError::Credentials(format!("{}: {e}", path.display()))
                    })?);
                let key: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    GcpCasError::Credentials(format!("{}: not JSON: {e}", path.display()))
                })?;
                google_cloud_auth::credentials::service_account::Builder::new(key).build()
            }
            None => google_cloud_auth::credentials::Builder::default().build(),
        }
        .map_err(|e| GcpCasError::Credentials(e.to_string()))?;
        Self::with_credentials(name, config, credentials, clock).await
    }

    /// With credentials built elsewhere (tests use anonymous ones).
    pub async fn with_credentials(
        name: &str,
        config: GcpCasConfig,
        credentials: google_cloud_auth::credentials::Credentials,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, GcpCasError> {
        config.validate()?;
        let mut builder = CertificateAuthorityService::builder()
            .with_credentials(credentials)
            // Retries belong to signet's resilience layer.
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let client = builder
            .build()
            .await
            .map_err(|e| GcpCasError::Client(e.to_string()))?;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            config,
            client,
            bundle: Refreshed::default(),
            clock,
            issued_cas: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }))
    }

    /// The pool's CAs: with one enabled CA its chain is the layout; with
    /// several (CAS picks one per request unless `certificate_authority` is
    /// set), their anchors.
    pub async fn read_layout(&self) -> Result<signet_core::layout::Layout, SignError> {
        // One read serves both: the chains for the layout and their roots,
        // which also refresh the cached bundle.
        let mut chains = Vec::new();
        let bundle = self
            .bundle
            .refresh(async {
                chains = self.fetch_chains().await?;
                self.roots_of(&chains)
            })
            .await?;
        let layout = match chains.as_slice() {
            [one] if !one.is_empty() => {
                signet_core::layout::Layout::from_certs(Some(&one[0]), &one[1..], &bundle)
            }
            _ => signet_core::layout::Layout::from_certs(None, &[], &bundle),
        };
        Ok(layout
            .fact("pool", self.config.pool_name())
            .fact("enabled CAs in the pool", chains.len().to_string())
            .fact(
                "issuing CA",
                self.config
                    .certificate_authority
                    .clone()
                    .unwrap_or_else(|| "chosen by CAS per request".to_owned()),
            ))
    }

    /// Re-reads every CA certificate chain of the pool; the self-signed ones
    /// (or each chain's last) are the roots.
    pub async fn refresh_trust_bundle(&self) -> Result<TrustBundle, SignError> {
        let b = self.bundle.refresh(self.read_bundle()).await?;
        Ok((*b).clone())
    }

    async fn read_bundle(&self) -> Result<TrustBundle, SignError> {
        let chains = self.fetch_chains().await?;
        self.roots_of(&chains)
    }

    /// Every enabled CA's certificate chain in the pool (FetchCaCerts).
    async fn fetch_chains(&self) -> Result<Vec<Vec<CertificateDer<'static>>>, SignError> {
        let out = self
            .client
            .fetch_ca_certs()
            .set_ca_pool(self.config.pool_name())
            .send()
            .await
            .map_err(|e| map_err("FetchCaCerts", e))?;
        out.ca_certs
            .iter()
            .map(|c| certs(&c.certificates))
            .collect::<Result<_, _>>()
            .map_err(|e| SignError::BackendRejected(format!("FetchCaCerts: {e}")))
    }

    /// The roots of the pool's chains: the self-signed certificates, or
    /// each chain's last one where none is (a CA under an outside root).
    fn roots_of(&self, chains: &[Vec<CertificateDer<'static>>]) -> Result<TrustBundle, SignError> {
        let mut roots = Vec::new();
        for certs in chains {
            let selfsigned: Vec<_> = certs
                .iter()
                .filter(|c| signet_core::chain::is_self_signed(c))
                .cloned()
                .collect();
            if selfsigned.is_empty() {
                roots.extend(certs.last().cloned());
            } else {
                roots.extend(selfsigned);
            }
        }
        if roots.is_empty() {
            return Err(SignError::NotReady(format!(
                "CA pool {} has no enabled CA",
                self.config.pool_name()
            )));
        }
        TrustBundle::new(roots).map_err(SignError::BadChain)
    }

    /// The cached bundle while fresh; else re-read (falling back to the
    /// cached one if CAS cannot be reached).
    async fn current_bundle(&self) -> Result<TrustBundle, SignError> {
        let what = format!("Google CAS {} trust bundle", self.name);
        let max_age = self.config.trust_bundle_refresh.get();
        let b = self
            .bundle
            .get(max_age, &what, || self.read_bundle())
            .await?;
        Ok((*b).clone())
    }

    /// The request's identity: a request ID (UUID form) and a certificate ID,
    /// the same for every retry of the same request.
    pub fn request_ids(decision: &IssuanceDecision, csr: &VerifiedCsr) -> (String, String) {
        let mut input = Vec::new();
        input.extend_from_slice(csr.der());
        match decision.request_id() {
            Some(id) => {
                input.extend_from_slice(b"request-id:");
                input.extend_from_slice(id.as_bytes());
            }
            None => {
                let secs = |t: SystemTime| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                };
                input.extend_from_slice(&secs(decision.not_before()).to_be_bytes());
                input.extend_from_slice(&secs(decision.not_after()).to_be_bytes());
                input.push(u8::from(decision.is_ca()));
            }
        }
        let d = signet_core::crypto::sha256(&input);
        let mut u = [0u8; 16];
        u.copy_from_slice(&d[..16]);
        // A version-4-shaped UUID, as CAS asks for.
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let certificate_id = format!(
            "signet-{}",
            d[16..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        (uuid, certificate_id)
    }

    /// What to ask CAS for.
    fn certificate(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<Certificate, SignError> {
        // CAS starts certificates now: ask for what remains to NotAfter.
        let remaining = decision
            .not_after()
            .duration_since(self.clock.now())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let lifetime = google_cloud_wkt::Duration::try_from(remaining)
            .map_err(|e| SignError::Internal(format!("lifetime: {e}")))?;
        let cert = Certificate::new().set_lifetime(lifetime);
        if !decision.is_ca() {
            let cert = cert.set_pem_csr(csr.to_pem());
            return Ok(match &self.config.certificate_template {
                Some(t) => cert.set_certificate_template(t.clone()),
                None => cert,
            });
        }
        let mut sans = SubjectAltNames::new();
        for san in decision.sans() {
            match san {
                San::Uri(id) => sans.uris.push(id.to_string()),
                San::Dns(d) => sans.dns_names.push(d.to_string()),
                San::Ip(ip) => sans.ip_addresses.push(ip.to_string()),
            }
        }
        let base = model::key_usage::KeyUsageOptions::new()
            .set_digital_signature(decision.key_usage().contains(&Ku::DigitalSignature))
            .set_key_encipherment(decision.key_usage().contains(&Ku::KeyEncipherment))
            .set_cert_sign(decision.key_usage().contains(&Ku::KeyCertSign))
            .set_crl_sign(decision.key_usage().contains(&Ku::CrlSign));
        let extended = model::key_usage::ExtendedKeyUsageOptions::new()
            .set_server_auth(
                decision
                    .extended_key_usage()
                    .contains(&ExtKeyUsage::ServerAuth),
            )
            .set_client_auth(
                decision
                    .extended_key_usage()
                    .contains(&ExtKeyUsage::ClientAuth),
            );
        let mut ca = model::x_509_parameters::CaOptions::new().set_is_ca(true);
        if let Some(n) = decision.ca().and_then(|c| c.path_len) {
            ca = ca.set_max_issuer_path_length(i32::from(n));
        }
        let spki_pem = pem::encode("PUBLIC KEY", csr.spki_der());
        let config = CertificateConfig::new()
            .set_subject_config(
                model::certificate_config::SubjectConfig::new()
                    .set_subject(
                        Subject::new()
                            .set_common_name(decision.common_name().unwrap_or("").to_owned()),
                    )
                    .set_subject_alt_name(sans),
            )
            .set_x509_config(
                X509Parameters::new()
                    .set_key_usage(
                        KeyUsage::new()
                            .set_base_key_usage(base)
                            .set_extended_key_usage(extended),
                    )
                    .set_ca_options(ca),
            )
            .set_public_key(
                PublicKey::new()
                    .set_key(bytes::Bytes::from(spki_pem.into_bytes()))
                    .set_format(model::public_key::KeyFormat::Pem),
            );
        Ok(cert.set_config(config))
    }
}

#[async_trait]
impl Signer for GcpCasBackend {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let (request_id, certificate_id) = Self::request_ids(decision, csr);
        let pool = self.config.pool_name();
        let mut call = self
            .client
            .create_certificate()
            .set_parent(pool.clone())
            .set_certificate_id(certificate_id.clone())
            .set_request_id(request_id.clone())
            .set_certificate(self.certificate(decision, csr)?);
        if let Some(ca) = &self.config.certificate_authority {
            call = call.set_issuing_certificate_authority_id(ca.clone());
        }
        let issued = match call.send().await {
            Ok(c) => c,
            Err(e) if e.status().is_some_and(|s| s.code == Code::AlreadyExists) => {
                // Issued by an earlier attempt of this very request.
                tracing::info!(certificate = %certificate_id, "Google CAS certificate exists; fetching it");
                self.client
                    .get_certificate()
                    .set_name(format!("{pool}/certificates/{certificate_id}"))
                    .send()
                    .await
                    .map_err(|e| map_err("GetCertificate", e))?
            }
            Err(e) => return Err(map_err("CreateCertificate", e)),
        };
        let bad = |what: &str, e: String| {
            SignError::BackendRejected(format!("CreateCertificate {what}: {e}"))
        };
        let mut leaf = certs(std::slice::from_ref(&issued.pem_certificate))
            .map_err(|e| bad("pemCertificate", e))?;
        if leaf.len() != 1 {
            return Err(bad(
                "pemCertificate",
                format!("{} certificates, expected 1", leaf.len()),
            ));
        }
        let leaf = leaf.remove(0);
        let chain =
            certs(&issued.pem_certificate_chain).map_err(|e| bad("pemCertificateChain", e))?;
        let bundle = self.current_bundle().await?;
        let path = order_path(&leaf, chain);
        let chain = IssuedChain::new(leaf, path, bundle).map_err(SignError::BadChain)?;
        if decision.ca().is_some() {
            let serial = signet_core::revocation::normalise_serial(chain.serial_hex())
                .unwrap_or_else(|_| chain.serial_hex().to_owned());
            let mut cas = self.issued_cas.lock().unwrap_or_else(|e| e.into_inner());
            if cas.len() >= REMEMBERED_CAS {
                cas.pop_front();
            }
            cas.push_back((serial, issued.name.clone()));
        }
        Ok(chain)
    }

    /// CAS revokes a certificate by resource name: only CA certificates
    /// this process issued (a delegated intermediate) are known by serial.
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: signet_core::revocation::Reason,
    ) -> Result<bool, SignError> {
        use google_cloud_security_privateca_v1::model::RevocationReason as R;
        use signet_core::revocation::Reason;
        let wanted = signet_core::revocation::normalise_serial(serial_hex)
            .unwrap_or_else(|_| serial_hex.to_owned());
        let name = self
            .issued_cas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(s, _)| *s == wanted)
            .map(|(_, n)| n.clone());
        let Some(name) = name else {
            return Ok(false);
        };
        let reason_code = match reason {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CertificateAuthorityCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
        };
        self.client
            .revoke_certificate()
            .set_name(name.clone())
            .set_reason(reason_code)
            .send()
            .await
            .map_err(|e| map_err("RevokeCertificate", e))?;
        tracing::info!(
            target: "signet::audit",
            serial = serial_hex,
            certificate = %name,
            backend = %self.name,
            reason = reason.name(),
            "certificate revoked upstream (Google CAS)"
        );
        Ok(true)
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.current_bundle().await
    }

    async fn layout(&self) -> Result<signet_core::layout::Layout, SignError> {
        self.read_layout().await
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        // The roots last read (no network call on the signing path).
        self.bundle.latest().is_some_and(|b| b.holds_key(spki_der))
    }

    fn describe(&self) -> BackendInfo {
        let bundle = self.bundle.latest();
        let ready = match (&bundle, self.bundle.last_error()) {
            (Some(_), _) => Ok(()),
            (None, Some(e)) => Err(format!("Google CAS: {e}")),
            (None, None) => Err("CA certificates not read from Google CAS yet".to_owned()),
        };
        BackendInfo {
            name: self.name.clone(),
            kind: "gcp_cas",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: false,
                // CAS keeps a requestId for at least 60 minutes.
                idempotent_for: Some(Duration::from_secs(3600)),
                constrains_path_len: true,
            },
            ca_not_after: bundle.and_then(|b| b.earliest_expiry()),
            ready,
        }
    }
}
