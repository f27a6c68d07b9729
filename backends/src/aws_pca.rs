//! The `aws_pca` backend: AWS Private CA (ACM PCA).
//!
//! Leaves are issued with `EndEntityCertificate/V1`, intermediates with
//! `SubordinateCACertificate_PathLen0/V1` (both overridable), the decided
//! NotBefore/NotAfter as absolute `Validity`, the CA's own signing algorithm
//! (from DescribeCertificateAuthority) unless configured, and an
//! IdempotencyToken derived from the request: a retried call inside PCA's
//! five-minute idempotency window gets the certificate it already issued.
//! The certificate is then fetched with GetCertificate, waiting out
//! `RequestInProgressException`. Throttling is `rate_limited` (retried with
//! backoff by the resilience layer; a rate limiter is on by default). The
//! trust bundle is the CA's chain from GetCertificateAuthorityCertificate
//! (its root) plus `supplemental_roots_file`, for root rotation.
//!
//! Layouts: a ROOT CA used directly (GetCertificateAuthorityCertificate has
//! no `CertificateChain`, the CA's own certificate is the anchor), a
//! SUBORDINATE under another PCA or under an external root; RSA or EC CA
//! keys (the signing algorithm follows the key). A CA in
//! `SHORT_LIVED_CERTIFICATE` mode signs for at most seven days and must be
//! the last CA of its hierarchy: it serves direct mode with `max_ttl` ≤ 7d,
//! never a delegated authority (refused at start-up, see [`Layout`]).
//!
//! Credentials come from the standard AWS chain: environment, shared
//! profile, web identity (IRSA / EKS Pod Identity), ECS, IMDS.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use aws_sdk_acmpca::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{SigningAlgorithm, Validity, ValidityPeriodType};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use signet_core::chain::{IssuedChain, TrustBundle, order_path};
use signet_core::duration::HumanDuration;
use signet_core::layout::Layout;
use signet_core::refresh::Refreshed;
use signet_core::resilience::{RateLimitConfig, ResilienceConfig};
use signet_core::signer::Capabilities;
use signet_core::worker::Backoff;
use signet_core::{BackendInfo, IssuanceDecision, SignError, Signer, VerifiedCsr, pem};

/// PCA's template for end-entity certificates.
pub const END_ENTITY_TEMPLATE: &str = "arn:aws:acm-pca:::template/EndEntityCertificate/V1";
/// PCA's template for subordinate CAs that may not have CAs under them.
pub const SUBORDINATE_PATHLEN0_TEMPLATE: &str =
    "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1";

fn default_refresh() -> HumanDuration {
    HumanDuration::from_secs(300)
}

/// IssueCertificate is limited to about 25 calls per second per account and
/// region; signet stays under it unless told otherwise.
fn default_resilience() -> ResilienceConfig {
    ResilienceConfig {
        rate_limit: Some(RateLimitConfig {
            per_second: 20.0,
            burst: 20,
            max_wait: HumanDuration::from_secs(2),
        }),
        ..ResilienceConfig::default()
    }
}

/// `backends.<name>` with `type: aws_pca`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsPcaConfig {
    /// e.g. `eu-west-1`.
    pub region: String,
    pub certificate_authority_arn: String,
    /// Another endpoint (a VPC endpoint, or a test server).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// e.g. `SHA256WITHECDSA`; default: the CA's own.
    #[serde(default)]
    pub signing_algorithm: Option<String>,
    #[serde(default)]
    pub leaf_template_arn: Option<String>,
    #[serde(default)]
    pub intermediate_template_arn: Option<String>,
    /// Extra trust anchors (PEM): the next root during a root rotation.
    #[serde(default)]
    pub supplemental_roots_file: Option<PathBuf>,
    /// Static credentials (read at start) instead of the AWS default chain:
    /// both or neither of these, optionally a session token.
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub session_token_file: Option<PathBuf>,
    /// How often the CA's chain is re-read.
    #[serde(default = "default_refresh")]
    pub trust_bundle_refresh: HumanDuration,
    #[serde(default = "default_resilience")]
    pub resilience: ResilienceConfig,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsPcaError {
    #[error("certificate_authority_arn {0:?} is not an ACM PCA certificate authority ARN")]
    Arn(String),
    #[error("signing_algorithm {0:?} is not one PCA knows")]
    Algorithm(String),
    #[error("{path}: {detail}")]
    Roots { path: PathBuf, detail: String },
    #[error("{0}")]
    Credentials(String),
}

#[derive(Debug, Clone)]
struct Bundle {
    bundle: TrustBundle,
    /// The CA's certificate and what GetCertificateAuthorityCertificate
    /// returned above it.
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    ca_not_after: Option<SystemTime>,
}

/// What DescribeCertificateAuthority says.
#[derive(Debug, Clone)]
struct CaInfo {
    signing_algorithm: SigningAlgorithm,
    ca_type: String,
    usage_mode: String,
    key_algorithm: String,
}

impl CaInfo {
    fn short_lived(&self) -> bool {
        self.usage_mode == "SHORT_LIVED_CERTIFICATE"
    }
}

/// The longest validity of a certificate a short-lived-certificate CA signs.
pub const SHORT_LIVED_MAX: Duration = Duration::from_secs(7 * 86_400);

/// AWS Private CA as a signer.
pub struct AwsPcaBackend {
    name: String,
    config: AwsPcaConfig,
    client: aws_sdk_acmpca::Client,
    supplemental: Vec<CertificateDer<'static>>,
    signing_algorithm: ArcSwapOption<SigningAlgorithm>,
    ca_info: ArcSwapOption<CaInfo>,
    bundle: Refreshed<Bundle>,
}

impl fmt::Debug for AwsPcaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsPcaBackend")
            .field("name", &self.name)
            .field("ca", &self.config.certificate_authority_arn)
            .finish_non_exhaustive()
    }
}

/// Certificates of a field PCA may leave out (a root CA's chain): absent or
/// blank is none.
fn optional_certs(field: Option<&str>) -> Result<Vec<CertificateDer<'static>>, String> {
    match field {
        Some(text) if !text.trim().is_empty() => certs(text.as_bytes()),
        _ => Ok(Vec::new()),
    }
}

fn certs(pem_text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    Ok(pem::certificates(pem_text)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Maps an SDK error to signet's vocabulary by PCA's error code.
fn map_err<E: ProvideErrorMetadata + fmt::Debug>(what: &str, e: SdkError<E>) -> SignError {
    let (code, detail) = crate::aws::describe(what, &e);
    match (&e, code.as_deref()) {
        (_, Some(c)) if crate::aws::THROTTLED.contains(&c) => {
            tracing::debug!(error = %detail, "AWS PCA throttled");
            SignError::RateLimited { retry_after: None }
        }
        (_, Some("InvalidStateException")) => SignError::NotReady(detail),
        (_, Some(c)) if crate::aws::UNAVAILABLE.contains(&c) => {
            SignError::BackendUnavailable(detail)
        }
        (SdkError::ServiceError(_), _) => SignError::BackendRejected(detail),
        // Timeouts, connection failures, unreadable responses.
        _ => SignError::BackendUnavailable(detail),
    }
}

impl AwsPcaBackend {
    /// Loads AWS credentials (lazily resolved by the SDK) and the supplemental roots.
    pub async fn new(name: &str, config: AwsPcaConfig) -> Result<Arc<Self>, AwsPcaError> {
        let arn = &config.certificate_authority_arn;
        if !(arn.starts_with("arn:")
            && arn.contains(":acm-pca:")
            && arn.contains(":certificate-authority/"))
        {
            return Err(AwsPcaError::Arn(arn.clone()));
        }
        if let Some(alg) = &config.signing_algorithm
            && !SigningAlgorithm::values().contains(&alg.as_str())
        {
            return Err(AwsPcaError::Algorithm(alg.clone()));
        }
        let supplemental = match &config.supplemental_roots_file {
            Some(path) => {
                let err = |detail: String| AwsPcaError::Roots {
                    path: path.clone(),
                    detail,
                };
                let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                let roots = certs(&bytes).map_err(err)?;
                TrustBundle::new(roots.clone()).map_err(|e| err(e.to_string()))?;
                roots
            }
            None => Vec::new(),
        };
        let sdk = crate::aws::AwsAccess {
            region: &config.region,
            endpoint_url: config.endpoint_url.as_deref(),
            access_key_id_file: config.access_key_id_file.as_ref(),
            secret_access_key_file: config.secret_access_key_file.as_ref(),
            session_token_file: config.session_token_file.as_ref(),
        }
        .sdk_config()
        .await
        .map_err(AwsPcaError::Credentials)?;
        Ok(Self::with_sdk_config(name, config, &sdk, supplemental))
    }

    /// With an SDK configuration built elsewhere (tests use static
    /// credentials); `supplemental` are the extra roots.
    pub fn with_sdk_config(
        name: &str,
        config: AwsPcaConfig,
        sdk: &aws_config::SdkConfig,
        supplemental: Vec<CertificateDer<'static>>,
    ) -> Arc<Self> {
        // Retries belong to signet's resilience layer (one policy, one place).
        let pca = aws_sdk_acmpca::config::Builder::from(sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        Arc::new(Self {
            name: name.to_owned(),
            client: aws_sdk_acmpca::Client::from_conf(pca),
            supplemental,
            signing_algorithm: ArcSwapOption::new(
                config
                    .signing_algorithm
                    .as_deref()
                    .map(|a| Arc::new(SigningAlgorithm::from(a))),
            ),
            config,
            ca_info: ArcSwapOption::empty(),
            bundle: Refreshed::default(),
        })
    }

    fn arn(&self) -> &str {
        &self.config.certificate_authority_arn
    }

    /// The configured algorithm, or the CA's own.
    async fn signing_algorithm(&self) -> Result<SigningAlgorithm, SignError> {
        if let Some(a) = self.signing_algorithm.load_full() {
            return Ok((*a).clone());
        }
        Ok(self.ca_info(false).await?.signing_algorithm.clone())
    }

    /// DescribeCertificateAuthority, cached (`fresh` re-reads it).
    async fn ca_info(&self, fresh: bool) -> Result<Arc<CaInfo>, SignError> {
        if !fresh && let Some(i) = self.ca_info.load_full() {
            return Ok(i);
        }
        let out = self
            .client
            .describe_certificate_authority()
            .certificate_authority_arn(self.arn())
            .send()
            .await
            .map_err(|e| map_err("DescribeCertificateAuthority", e))?;
        let ca = out.certificate_authority().ok_or_else(|| {
            SignError::BackendRejected(
                "DescribeCertificateAuthority: no certificate authority".into(),
            )
        })?;
        if let Some(status) = ca.status()
            && status.as_str() != "ACTIVE"
        {
            return Err(SignError::NotReady(format!(
                "certificate authority is {}, not ACTIVE",
                status.as_str()
            )));
        }
        let config = ca.certificate_authority_configuration().ok_or_else(|| {
            SignError::BackendRejected("DescribeCertificateAuthority: no configuration".into())
        })?;
        let info = Arc::new(CaInfo {
            signing_algorithm: config.signing_algorithm().clone(),
            ca_type: ca.r#type().map_or("unknown", |t| t.as_str()).to_owned(),
            // AWS's default when unset.
            usage_mode: ca
                .usage_mode()
                .map_or("GENERAL_PURPOSE", |m| m.as_str())
                .to_owned(),
            key_algorithm: config.key_algorithm().as_str().to_owned(),
        });
        self.ca_info.store(Some(info.clone()));
        Ok(info)
    }

    /// The CA's place in its hierarchy and what PCA lets it sign.
    pub async fn read_layout(&self) -> Result<Layout, SignError> {
        let info = self.ca_info(true).await?;
        let b = self.bundle.refresh(self.read_bundle()).await?;
        let mut layout = Layout::from_certs(Some(&b.ca), &b.chain, &b.bundle)
            .fact("type", info.ca_type.clone())
            .fact("usage mode", info.usage_mode.clone())
            .fact("key algorithm", info.key_algorithm.clone())
            .fact("signing algorithm", info.signing_algorithm.as_str());
        if info.short_lived() {
            layout.issues_ca_certificates = false;
            layout.max_validity = Some(SHORT_LIVED_MAX);
            layout = layout.fact(
                "ca_certificates",
                "a SHORT_LIVED_CERTIFICATE CA must be the last CA of its hierarchy, so it cannot sign a delegated authority's intermediate",
            );
        }
        Ok(layout)
    }

    /// Reads the CA's certificate and chain; the self-signed certificates in
    /// it (or the top of the chain) and the supplemental roots are trusted.
    pub async fn refresh_trust_bundle(&self) -> Result<TrustBundle, SignError> {
        let b = self.bundle.refresh(self.read_bundle()).await?;
        Ok(b.bundle.clone())
    }

    async fn read_bundle(&self) -> Result<Bundle, SignError> {
        let out = self
            .client
            .get_certificate_authority_certificate()
            .certificate_authority_arn(self.arn())
            .send()
            .await
            .map_err(|e| map_err("GetCertificateAuthorityCertificate", e))?;
        let bad = |e: String| {
            SignError::BackendRejected(format!("GetCertificateAuthorityCertificate: {e}"))
        };
        let ca = optional_certs(out.certificate()).map_err(bad)?;
        // A ROOT CA has no chain: its own certificate is the anchor.
        let chain = optional_certs(out.certificate_chain()).map_err(bad)?;
        let ca_cert = ca
            .first()
            .cloned()
            .ok_or_else(|| bad("no CA certificate (is the CA installed?)".into()))?;
        let all: Vec<_> = ca.iter().chain(chain.iter()).cloned().collect();
        let mut roots: Vec<_> = all
            .iter()
            .filter(|c| signet_core::chain::is_self_signed(c))
            .cloned()
            .collect();
        if roots.is_empty() {
            roots.extend(all.last().cloned());
        }
        roots.extend(self.supplemental.iter().cloned());
        let bundle = TrustBundle::new(roots).map_err(SignError::BadChain)?;
        let ca_not_after = IssuedChain::new(ca_cert.clone(), vec![], bundle.clone())
            .ok()
            .map(|c| c.not_after());
        let above: Vec<_> = ca[1..].iter().chain(chain.iter()).cloned().collect();
        Ok(Bundle {
            bundle,
            ca: ca_cert,
            chain: above,
            ca_not_after,
        })
    }

    /// The cached bundle while fresh; else re-read (falling back to the
    /// cached one if PCA cannot be reached).
    async fn current_bundle(&self) -> Result<TrustBundle, SignError> {
        let what = format!("AWS PCA {} trust bundle", self.name);
        let max_age = self.config.trust_bundle_refresh.get();
        let b = self
            .bundle
            .get(max_age, &what, || self.read_bundle())
            .await?;
        Ok(b.bundle.clone())
    }

    /// The token that makes IssueCertificate idempotent for this request:
    /// the same request ID, CSR and template give the same token (stable
    /// across restarts); without a request ID, the same CSR, template and
    /// validity (stable across the retries of one call).
    pub fn idempotency_token(
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
        template: &str,
    ) -> String {
        let mut input = Vec::new();
        input.extend_from_slice(csr.der());
        input.extend_from_slice(template.as_bytes());
        match decision.request_id() {
            Some(id) => {
                input.extend_from_slice(b"request-id:");
                input.extend_from_slice(id.as_bytes());
            }
            None => {
                input.extend_from_slice(&unix(decision.not_before()).to_be_bytes());
                input.extend_from_slice(&unix(decision.not_after()).to_be_bytes());
            }
        }
        let digest = signet_core::crypto::sha256(&input);
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// GetCertificate until it is no longer in progress.
    async fn fetch(&self, certificate_arn: &str) -> Result<(String, String), SignError> {
        let poll = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut attempt = 0u32;
        loop {
            match self
                .client
                .get_certificate()
                .certificate_authority_arn(self.arn())
                .certificate_arn(certificate_arn)
                .send()
                .await
            {
                Ok(out) => {
                    return Ok((
                        out.certificate().unwrap_or_default().to_owned(),
                        out.certificate_chain().unwrap_or_default().to_owned(),
                    ));
                }
                Err(e) if e.code() == Some("RequestInProgressException") => {
                    tracing::debug!(certificate = certificate_arn, "AWS PCA still issuing");
                    tokio::time::sleep(poll.wait(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(map_err("GetCertificate", e)),
            }
        }
    }
}

#[async_trait]
impl Signer for AwsPcaBackend {
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: signet_core::revocation::Reason,
    ) -> Result<bool, SignError> {
        use aws_sdk_acmpca::types::RevocationReason as R;
        use signet_core::revocation::Reason;
        let serial = signet_core::revocation::colon_serial(serial_hex);
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
            .certificate_authority_arn(self.arn())
            .certificate_serial(serial)
            .revocation_reason(reason_code)
            .send()
            .await
            .map_err(|e| map_err("RevokeCertificate", e))?;
        tracing::info!(
            target: "signet::audit",
            serial = serial_hex,
            backend = %self.name,
            reason = reason.name(),
            "certificate revoked upstream (AWS Private CA)"
        );
        Ok(true)
    }

    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        if decision.is_ca()
            && let Some(info) = self.ca_info.load_full()
            && info.short_lived()
        {
            return Err(SignError::BackendRejected(
                "this AWS Private CA is in SHORT_LIVED_CERTIFICATE mode and cannot sign CA certificates; use mode: direct or a GENERAL_PURPOSE CA".into(),
            ));
        }
        let template = if decision.is_ca() {
            self.config
                .intermediate_template_arn
                .as_deref()
                .unwrap_or(SUBORDINATE_PATHLEN0_TEMPLATE)
        } else {
            self.config
                .leaf_template_arn
                .as_deref()
                .unwrap_or(END_ENTITY_TEMPLATE)
        };
        let algorithm = self.signing_algorithm().await?;
        let absolute = |t: SystemTime| {
            Validity::builder()
                .r#type(ValidityPeriodType::Absolute)
                .value(unix(t))
                .build()
                .map_err(|e| SignError::Internal(format!("PCA validity: {e}")))
        };
        let token = Self::idempotency_token(decision, csr, template);
        let issued = self
            .client
            .issue_certificate()
            .certificate_authority_arn(self.arn())
            .csr(Blob::new(csr.to_pem().into_bytes()))
            .signing_algorithm(algorithm)
            .template_arn(template)
            .validity(absolute(decision.not_after())?)
            .validity_not_before(absolute(decision.not_before())?)
            .idempotency_token(&token)
            .send()
            .await
            .map_err(|e| map_err("IssueCertificate", e))?;
        let certificate_arn = issued
            .certificate_arn()
            .ok_or_else(|| {
                SignError::BackendRejected("IssueCertificate returned no CertificateArn".into())
            })?
            .to_owned();
        tracing::debug!(certificate = %certificate_arn, token = %token, "AWS PCA issued");
        let (certificate, chain) = self.fetch(&certificate_arn).await?;
        let bad = |what: &str, e: String| {
            SignError::BackendRejected(format!("GetCertificate {what}: {e}"))
        };
        let mut leaf = certs(certificate.as_bytes()).map_err(|e| bad("Certificate", e))?;
        if leaf.len() != 1 {
            return Err(bad(
                "Certificate",
                format!("{} certificates, expected 1", leaf.len()),
            ));
        }
        let leaf = leaf.remove(0);
        // A leaf of a root CA may come with the root as its chain, or none.
        let chain = optional_certs(Some(&chain)).map_err(|e| bad("CertificateChain", e))?;
        let bundle = self.current_bundle().await?;
        let path = order_path(&leaf, chain);
        IssuedChain::new(leaf, path, bundle).map_err(SignError::BadChain)
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.current_bundle().await
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        // The roots last read (no network call on the signing path).
        self.bundle
            .latest()
            .is_some_and(|b| b.bundle.holds_key(spki_der))
    }

    async fn layout(&self) -> Result<Layout, SignError> {
        self.read_layout().await
    }

    fn describe(&self) -> BackendInfo {
        let bundle = self.bundle.latest();
        let ready = match (&bundle, self.bundle.last_error()) {
            (Some(_), _) => Ok(()),
            (None, Some(e)) => Err(format!("AWS PCA: {e}")),
            (None, None) => Err("CA certificate not read from AWS PCA yet".to_owned()),
        };
        BackendInfo {
            name: self.name.clone(),
            kind: "aws_pca",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: false,
                // PCA honours an IdempotencyToken for five minutes.
                idempotent_for: Some(Duration::from_secs(300)),
                constrains_path_len: true,
            },
            ca_not_after: bundle.and_then(|b| b.ca_not_after),
            ready,
        }
    }
}
