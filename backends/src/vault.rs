//! The `vault` backend: HashiCorp Vault's or OpenBao's PKI secrets engine.
//!
//! Leaves are signed by `<mount>/sign/<role>`, intermediates by
//! `<mount>/root/sign-intermediate` (or `<mount>/issuer/<ref>/sign-intermediate`)
//! with `max_path_length=0`. Responses are read leniently and the chain is
//! rebuilt from what Vault returns, because Vault's `ca_chain` has known
//! quirks: it may be empty, contain the issued certificate itself, lack the
//! root, or (on some versions) come in another order; `expiration` has been a
//! number and a string. The trust bundle comes from the mount's issuers and is
//! refreshed periodically.
//!
//! Authentication: a token (file or environment variable; renewed when
//! renewable), AppRole or Kubernetes login (logged in again before the lease
//! ends, and on a 403). Tokens are never logged.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use rustify_derive::Endpoint;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use signet_core::chain::{self, IssuedChain, MAX_NOT_BEFORE_SKEW, TrustBundle};
use signet_core::duration::HumanDuration;
use signet_core::layout::Layout;
use signet_core::names::San;
use signet_core::pem;
use signet_core::resilience::ResilienceConfig;
use signet_core::signer::Capabilities;
use signet_core::worker::{Backoff, Next, Worker};
use signet_core::{BackendInfo, Clock, IssuanceDecision, SignError, Signer, VerifiedCsr};
use vaultrs::api::AuthInfo;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

fn default_mount() -> String {
    "pki".to_owned()
}
fn default_approle_mount() -> String {
    "approle".to_owned()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".to_owned()
}
fn default_sa_token() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_refresh() -> HumanDuration {
    HumanDuration::from_secs(300)
}

/// `backends.<name>` with `type: vault`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Mount path of the PKI engine.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Role for leaf certificates (`<mount>/sign/<role>`); needed in direct mode.
    #[serde(default)]
    pub role: Option<String>,
    /// Issuer that signs, by name or ID: leaves through
    /// `<mount>/issuer/<ref>/sign/<role>`, intermediates through
    /// `<mount>/issuer/<ref>/sign-intermediate`, and the trust bundle is that
    /// issuer's root alone (a root rotation names the next issuer in another
    /// backend). Default: the mount's default issuer (the role's
    /// `issuer_ref` for leaves), and every root of the mount is trusted.
    #[serde(default)]
    pub issuer: Option<String>,
    /// PEM CA bundle to verify Vault's TLS certificate (default: system roots).
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Extra trust anchors (PEM), e.g. the organisation's root when the mount
    /// holds only an intermediate without its root.
    #[serde(default)]
    pub roots_file: Option<PathBuf>,
    /// How often the trust bundle is re-read from the mount.
    #[serde(default = "default_refresh")]
    pub trust_bundle_refresh: HumanDuration,
    #[serde(default)]
    pub resilience: ResilienceConfig,
}

/// How signet logs in to Vault. Written as a map with exactly one key:
/// `auth: { token: {...} }`, `{ approle: {...} }` or `{ kubernetes: {...} }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AuthMap")]
pub enum VaultAuth {
    /// A token from a file (re-read at every login) or an environment variable.
    Token {
        token_file: Option<PathBuf>,
        token_env: Option<String>,
    },
    /// AppRole: `auth/<mount>/login` with a role ID and a secret ID from a file.
    Approle {
        mount: String,
        role_id: String,
        secret_id_file: PathBuf,
    },
    /// Kubernetes: `auth/<mount>/login` with a service-account token.
    Kubernetes {
        mount: String,
        role: String,
        token_file: PathBuf,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthMap {
    #[serde(default)]
    token: Option<TokenAuth>,
    #[serde(default)]
    approle: Option<ApproleAuth>,
    #[serde(default)]
    kubernetes: Option<KubernetesAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenAuth {
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproleAuth {
    #[serde(default = "default_approle_mount")]
    mount: String,
    role_id: String,
    secret_id_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesAuth {
    #[serde(default = "default_kubernetes_mount")]
    mount: String,
    role: String,
    #[serde(default = "default_sa_token")]
    token_file: PathBuf,
}

impl TryFrom<AuthMap> for VaultAuth {
    type Error = String;
    fn try_from(m: AuthMap) -> Result<Self, String> {
        match (m.token, m.approle, m.kubernetes) {
            (Some(t), None, None) => match (&t.token_file, &t.token_env) {
                (Some(_), None) | (None, Some(_)) => Ok(VaultAuth::Token {
                    token_file: t.token_file,
                    token_env: t.token_env,
                }),
                _ => Err("auth.token needs exactly one of token_file and token_env".into()),
            },
            (None, Some(a), None) => Ok(VaultAuth::Approle {
                mount: a.mount,
                role_id: a.role_id,
                secret_id_file: a.secret_id_file,
            }),
            (None, None, Some(k)) => Ok(VaultAuth::Kubernetes {
                mount: k.mount,
                role: k.role,
                token_file: k.token_file,
            }),
            _ => Err("auth needs exactly one of token, approle, kubernetes".into()),
        }
    }
}

impl VaultAuth {
    fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token { .. } => "token",
            VaultAuth::Approle { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error("address {0:?} is not an http(s) URL")]
    Address(String),
    #[error("auth.token needs exactly one of token_file and token_env")]
    TokenSource,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("environment variable {0} is not set")]
    Env(String),
}

// === Vault API endpoints (lenient responses) ===

#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "{self.path}", method = "POST", response = "SignResponse")]
struct SignLeaf {
    /// `<mount>/sign/<role>`, or `<mount>/issuer/<ref>/sign/<role>` when an
    /// issuer is configured.
    #[endpoint(skip)]
    path: String,
    csr: String,
    alt_names: Option<String>,
    ip_sans: Option<String>,
    uri_sans: Option<String>,
    ttl: String,
    format: String,
    exclude_cn_from_sans: bool,
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "{self.path}", method = "POST", response = "SignResponse")]
struct SignIntermediate {
    /// `<mount>/root/sign-intermediate` or `<mount>/issuer/<ref>/sign-intermediate`.
    #[endpoint(skip)]
    path: String,
    csr: String,
    common_name: Option<String>,
    uri_sans: Option<String>,
    ttl: String,
    format: String,
    max_path_length: i32,
    exclude_cn_from_sans: bool,
    use_csr_values: bool,
}

/// What `sign` and `sign-intermediate` return; only what is needed, leniently.
#[derive(Debug, Deserialize)]
struct SignResponse {
    certificate: String,
    #[serde(default)]
    issuing_ca: Option<String>,
    #[serde(default)]
    ca_chain: Option<ChainField>,
}

/// `ca_chain` as a list of PEM strings, or as one string (some endpoints and
/// versions).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChainField {
    List(Vec<String>),
    One(String),
}

impl ChainField {
    fn pems(&self) -> Vec<&str> {
        match self {
            ChainField::List(v) => v.iter().map(String::as_str).collect(),
            ChainField::One(s) => vec![s.as_str()],
        }
    }
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/issuers",
    method = "LIST",
    response = "IssuerList"
)]
struct ListIssuers {
    #[endpoint(skip)]
    mount: String,
}

#[derive(Debug, Deserialize)]
struct IssuerList {
    #[serde(default)]
    keys: Vec<String>,
}

/// `<mount>/revoke`: the certificate joins the issuer's CRL.
#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "{self.mount}/revoke", method = "POST")]
struct Revoke {
    #[endpoint(skip)]
    mount: String,
    /// Colon-separated hex, as Vault prints serials.
    serial_number: String,
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/issuer/{self.issuer}/json",
    response = "IssuerCert"
)]
struct ReadIssuer {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    issuer: String,
}

#[derive(Debug, Deserialize)]
struct IssuerCert {
    certificate: String,
    #[serde(default)]
    ca_chain: Option<ChainField>,
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "{self.mount}/roles/{self.role}", response = "RoleInfo")]
struct ReadRole {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    role: String,
}

#[derive(Debug, Deserialize)]
struct RoleInfo {
    #[serde(default)]
    issuer_ref: Option<String>,
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "{self.mount}/cert/ca_chain", response = "CaChain")]
struct ReadCaChain {
    #[endpoint(skip)]
    mount: String,
}

#[derive(Debug, Deserialize)]
struct CaChain {
    #[serde(default)]
    ca_chain: Option<ChainField>,
    #[serde(default)]
    certificate: Option<String>,
}

/// Where a Vault server is and how signet logs in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VaultAccess {
    pub address: String,
    pub namespace: Option<String>,
    pub ca_cert_file: Option<PathBuf>,
    pub auth: VaultAuth,
}

/// A logged-in client of one Vault server, shared by whatever calls it
/// (the PKI backend, a Transit key): logs in lazily, again on a 403 and
/// before the lease ends, and renews a renewable token.
pub(crate) struct VaultSession {
    /// Who uses it, for logs.
    name: String,
    access: VaultAccess,
    /// The per-attempt deadline of the caller's resilience layer.
    timeout: Duration,
    clock: Arc<dyn Clock>,
    client: ArcSwapOption<VaultClient>,
    lease: Mutex<Option<Lease>>,
    login_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for VaultSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSession")
            .field("name", &self.name)
            .field("address", &self.access.address)
            .field("auth", &self.access.auth.method())
            .finish_non_exhaustive()
    }
}

impl VaultSession {
    /// Validates the address and reads the files the login needs. No
    /// network call happens here: Vault may be down when signet starts.
    pub(crate) fn new(
        name: &str,
        access: VaultAccess,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, VaultError> {
        if !(access.address.starts_with("http://") || access.address.starts_with("https://")) {
            return Err(VaultError::Address(access.address.clone()));
        }
        match &access.auth {
            VaultAuth::Token {
                token_file,
                token_env,
            } => match (token_file, token_env) {
                (Some(f), None) => {
                    read(f)?;
                }
                (None, Some(v)) => {
                    std::env::var(v).map_err(|_| VaultError::Env(v.clone()))?;
                }
                _ => return Err(VaultError::TokenSource),
            },
            VaultAuth::Approle { secret_id_file, .. } => {
                read(secret_id_file)?;
            }
            VaultAuth::Kubernetes { token_file, .. } => {
                read(token_file)?;
            }
        }
        if let Some(ca) = &access.ca_cert_file {
            read(ca)?;
        }
        Ok(Self {
            name: name.to_owned(),
            access,
            timeout,
            clock,
            client: ArcSwapOption::empty(),
            lease: Mutex::new(None),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.access.address
    }

    /// Keeps the token fresh until the session is dropped: looked at when
    /// the lease is due, or every `every` without a lease.
    pub(crate) fn spawn_upkeep(this: &Arc<Self>, every: Duration) {
        Worker::new(format!("vault token of {}", this.name))
            .clock(this.clock.clone())
            .spawn_for(this, move |this| async move {
                this.maintain_token().await?;
                let due = this
                    .lease
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .and_then(|l| l.due());
                // A token without a lease is looked at again every period
                // (a login may have given it one).
                Ok::<_, SignError>(due.map_or(Next::In(every), Next::At))
            });
    }

    fn client_with_token(&self, token: &str) -> Result<VaultClient, SignError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&self.access.address)
            .token(token)
            .verify(true)
            .ca_certs(
                self.access
                    .ca_cert_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            // Longer than the per-attempt deadline, so that an answer that
            // comes late is still read and its certificate audited
            // (`signet_core::resilience::Timeout`).
            .timeout(Some(
                self.timeout * signet_core::resilience::LATE_ANSWER_FACTOR,
            ));
        if let Some(ns) = &self.access.namespace {
            settings.namespace(Some(ns.clone()));
        }
        let settings = settings
            .build()
            .map_err(|e| SignError::Internal(format!("vault client settings: {e}")))?;
        VaultClient::new(settings).map_err(|e| SignError::Internal(format!("vault client: {e}")))
    }

    /// Logs in (or re-reads the token) and installs a fresh client.
    async fn login(&self, stale: Option<&Arc<VaultClient>>) -> Result<Arc<VaultClient>, SignError> {
        let _guard = self.login_lock.lock().await;
        // Someone else logged in while we waited.
        if let (Some(current), Some(stale)) = (self.client.load_full(), stale)
            && !Arc::ptr_eq(&current, stale)
        {
            return Ok(current);
        }
        let now = self.clock.now();
        let (client, lease) = match &self.access.auth {
            VaultAuth::Token {
                token_file,
                token_env,
            } => {
                let token = match (token_file, token_env) {
                    (Some(f), _) => read(f).map_err(|e| SignError::Internal(e.to_string()))?,
                    (None, Some(v)) => Zeroizing::new(
                        std::env::var(v)
                            .map_err(|_| SignError::Internal(format!("{v} is not set")))?,
                    ),
                    (None, None) => return Err(SignError::Internal("no token source".into())),
                };
                let client = self.client_with_token(token.trim())?;
                let info = vaultrs::token::lookup_self(&client)
                    .await
                    .map_err(sign_error)?;
                let lease = Lease {
                    obtained: now,
                    ttl: (info.ttl > 0).then(|| Duration::from_secs(info.ttl)),
                    renewable: info.renewable.unwrap_or(false),
                };
                (client, lease)
            }
            VaultAuth::Approle {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret =
                    read(secret_id_file).map_err(|e| SignError::Internal(e.to_string()))?;
                let anon = self.client_with_token("")?;
                let info = vaultrs::auth::approle::login(&anon, mount, role_id, secret.trim())
                    .await
                    .map_err(sign_error)?;
                (
                    self.client_with_token(&info.client_token)?,
                    Lease::from_auth(&info, now),
                )
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                token_file,
            } => {
                let jwt = read(token_file).map_err(|e| SignError::Internal(e.to_string()))?;
                let anon = self.client_with_token("")?;
                let info = vaultrs::auth::kubernetes::login(&anon, mount, role, jwt.trim())
                    .await
                    .map_err(sign_error)?;
                (
                    self.client_with_token(&info.client_token)?,
                    Lease::from_auth(&info, now),
                )
            }
        };
        tracing::info!(
            vault = %self.name,
            method = self.access.auth.method(),
            ttl = ?lease.ttl.map(HumanDuration),
            renewable = lease.renewable,
            "logged in to vault"
        );
        let client = Arc::new(client);
        self.client.store(Some(client.clone()));
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        Ok(client)
    }

    async fn client(&self) -> Result<Arc<VaultClient>, SignError> {
        let expired = self
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|l| l.expired(self.clock.now()));
        match self.client.load_full() {
            Some(c) if !expired => Ok(c),
            stale => self.login(stale.as_ref()).await,
        }
    }

    /// Runs `op` with a logged-in client; on 403 logs in again and retries once.
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, SignError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let client = self.client().await?;
        match op(client.clone()).await {
            Err(e) if is_forbidden(&e) => {
                tracing::info!(vault = %self.name, "vault answered 403; logging in again");
                let client = self.login(Some(&client)).await?;
                op(client).await.map_err(sign_error)
            }
            other => other.map_err(sign_error),
        }
    }

    /// Logs in if nobody has yet; renews the token if it is renewable and
    /// due; logs in again if it is not renewable and due, or if renewal
    /// fails.
    pub(crate) async fn maintain_token(&self) -> Result<(), SignError> {
        let lease = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = lease else {
            // Not logged in yet: do it now so the lease (and its renewal
            // time) is known without waiting for the first request.
            return self.client().await.map(|_| ());
        };
        let Some(due) = lease.due() else {
            return Ok(());
        };
        if self.clock.now() < due {
            return Ok(());
        }
        let stale = self.client.load_full();
        if lease.renewable
            && let Some(client) = &stale
        {
            match vaultrs::token::renew_self(client.as_ref(), None).await {
                Ok(info) => {
                    let renewed = Lease {
                        obtained: self.clock.now(),
                        ttl: (info.lease_duration > 0)
                            .then(|| Duration::from_secs(info.lease_duration)),
                        renewable: info.renewable,
                    };
                    // Vault caps renewals at the token's max TTL: when it
                    // stops granting time, log in again instead.
                    if renewed.ttl.is_some_and(|t| t > Duration::from_secs(5)) {
                        tracing::debug!(vault = %self.name, ttl = ?renewed.ttl, "vault token renewed");
                        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(renewed);
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(vault = %self.name, error = %sign_error(e), "renewing the vault token failed; logging in again")
                }
            }
        }
        self.login(stale.as_ref()).await.map(|_| ())
    }
}

// === impl VaultBackend ===

/// How long the current token lives and whether it can be renewed.
#[derive(Debug, Clone, Copy)]
struct Lease {
    obtained: SystemTime,
    ttl: Option<Duration>,
    renewable: bool,
}

impl Lease {
    fn from_auth(info: &AuthInfo, now: SystemTime) -> Self {
        Self {
            obtained: now,
            ttl: (info.lease_duration > 0).then(|| Duration::from_secs(info.lease_duration)),
            renewable: info.renewable,
        }
    }

    /// When to act: renew (or log in again) at two thirds of the lease.
    fn due(&self) -> Option<SystemTime> {
        self.ttl.map(|t| {
            signet_core::clock::renew_time(
                self.obtained,
                self.obtained + t,
                signet_core::clock::RENEW_AT,
            )
        })
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.ttl.is_some_and(|t| now >= self.obtained + t)
    }
}

/// A Vault/OpenBao PKI mount as a signer.
pub struct VaultBackend {
    name: String,
    config: VaultConfig,
    clock: Arc<dyn Clock>,
    session: Arc<VaultSession>,
    bundle: ArcSwapOption<TrustBundle>,
    extra_roots: Vec<CertificateDer<'static>>,
    last_error: ArcSwap<Option<String>>,
}

impl fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBackend")
            .field("name", &self.name)
            .field("address", &self.config.address)
            .field("mount", &self.config.mount)
            .field("auth", &self.config.auth.method())
            .finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<Zeroizing<String>, VaultError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| VaultError::Io {
            path: path.clone(),
            source,
        })
}

/// Maps a Vault client error to the pipeline's vocabulary: unreachable,
/// sealed, overloaded or throttling is retryable; a refusal is not.
fn sign_error(e: ClientError) -> SignError {
    use rustify::errors::ClientError as Rest;
    let by_code = |code: u16, detail: String| match code {
        429 => SignError::RateLimited { retry_after: None },
        500..=599 => SignError::BackendUnavailable(format!("vault answered {code}: {detail}")),
        _ => SignError::BackendRejected(format!("vault answered {code}: {detail}")),
    };
    match e {
        ClientError::APIError { code, errors } => by_code(code, errors.join("; ")),
        ClientError::RestClientError { source } => match source {
            Rest::ServerResponseError { code, content } => by_code(
                code,
                content.unwrap_or_default().chars().take(200).collect(),
            ),
            Rest::RequestError { .. } | Rest::ResponseError { .. } => {
                SignError::BackendUnavailable(format!("cannot reach vault: {source:#}"))
            }
            Rest::ResponseParseError { .. } | Rest::ResponseConversionError { .. } => {
                SignError::BackendRejected(format!("unexpected answer from vault: {source}"))
            }
            other => SignError::Internal(format!("vault request: {other}")),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            SignError::BackendRejected("vault returned no data".into())
        }
        other => SignError::BackendUnavailable(other.to_string()),
    }
}

fn is_forbidden(e: &ClientError) -> bool {
    matches!(e, ClientError::APIError { code: 403, .. })
        || matches!(
            e,
            ClientError::RestClientError {
                source: rustify::errors::ClientError::ServerResponseError { code: 403, .. }
            }
        )
}

/// All certificates in some PEM strings (an element may hold several).
fn certs_in<'a>(
    pems: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<CertificateDer<'static>>, SignError> {
    let mut out = Vec::new();
    for p in pems {
        if p.trim().is_empty() {
            continue;
        }
        let certs = pem::certificates(p.as_bytes()).map_err(|e| {
            SignError::BackendRejected(format!("vault returned malformed PEM: {e}"))
        })?;
        out.extend(certs.into_iter().map(CertificateDer::from));
    }
    Ok(out)
}

impl VaultBackend {
    /// Validates the configuration and reads the files it names. No network
    /// call happens here: Vault may be down when signet starts.
    pub fn new(
        name: &str,
        config: VaultConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, VaultError> {
        let session = Arc::new(VaultSession::new(
            name,
            VaultAccess {
                address: config.address.clone(),
                namespace: config.namespace.clone(),
                ca_cert_file: config.ca_cert_file.clone(),
                auth: config.auth.clone(),
            },
            config.resilience.timeout.get(),
            clock.clone(),
        )?);
        let extra_roots = match &config.roots_file {
            Some(path) => {
                let pem = read(path)?;
                certs_in([pem.as_str()]).map_err(|e| VaultError::Pem {
                    path: path.clone(),
                    detail: e.to_string(),
                })?
            }
            None => Vec::new(),
        };
        Ok(Arc::new(Self {
            name: name.to_owned(),
            config,
            clock,
            session,
            bundle: ArcSwapOption::empty(),
            extra_roots,
            last_error: ArcSwap::from_pointee(None),
        }))
    }

    /// Reads the roots from the mount's issuers (falling back to its CA chain)
    /// plus `roots_file`, and caches them.
    pub async fn refresh_trust_bundle(&self) -> Result<TrustBundle, SignError> {
        let mount = self.config.mount.clone();
        let listed = match &self.config.issuer {
            Some(_) => Ok(IssuerList { keys: Vec::new() }),
            None => {
                self.session
                    .call(|c| {
                        let mount = mount.clone();
                        async move {
                            vaultrs::api::exec_with_result(c.as_ref(), ListIssuers { mount }).await
                        }
                    })
                    .await
            }
        };
        let mut chains: Vec<Vec<CertificateDer<'static>>> = Vec::new();
        // With an issuer configured, only its chain, whatever the list says
        // (or whether listing is allowed): another root in the mount (the
        // next one of a rotation) is another backend's, and falling back to
        // the default issuer's chain would publish the wrong root.
        let listed = match &self.config.issuer {
            Some(issuer) => Ok(IssuerList {
                keys: vec![issuer.clone()],
            }),
            None => listed,
        };
        match listed {
            Ok(list) => {
                for id in list.keys {
                    let mount = mount.clone();
                    let issuer = self
                        .session
                        .call(|c| {
                            let (mount, issuer) = (mount.clone(), id.clone());
                            async move {
                                vaultrs::api::exec_with_result(
                                    c.as_ref(),
                                    ReadIssuer { mount, issuer },
                                )
                                .await
                            }
                        })
                        .await?;
                    let mut pems = vec![issuer.certificate.as_str()];
                    if let Some(chain) = &issuer.ca_chain {
                        pems.extend(chain.pems());
                    }
                    chains.push(certs_in(pems)?);
                }
            }
            // Vault before 1.11 has no issuers API.
            Err(SignError::BackendRejected(_)) => {
                let chain = self
                    .session
                    .call(|c| {
                        let mount = mount.clone();
                        async move {
                            vaultrs::api::exec_with_result(c.as_ref(), ReadCaChain { mount }).await
                        }
                    })
                    .await?;
                let mut pems: Vec<&str> = chain
                    .ca_chain
                    .as_ref()
                    .map(ChainField::pems)
                    .unwrap_or_default();
                if let Some(c) = &chain.certificate {
                    pems.push(c);
                }
                chains.push(certs_in(pems)?);
            }
            Err(e) => return Err(e),
        }
        let mut roots: Vec<CertificateDer<'static>> = chains
            .iter()
            .flatten()
            .filter(|c| chain::is_self_signed(c))
            .cloned()
            .collect();
        roots.extend(self.extra_roots.iter().cloned());
        if roots.is_empty() {
            // An intermediate mount whose root Vault was never given, and no
            // roots_file: the top of each chain is the best anchor there is.
            tracing::warn!(backend = %self.name, "vault has no root certificate for this mount; trusting the top of its chain (set roots_file to anchor at the real root)");
            roots.extend(chains.iter().filter_map(|c| c.last().cloned()));
        }
        let bundle = TrustBundle::new(roots)
            .map_err(|e| SignError::BackendRejected(format!("vault's CA certificates: {e}")))?;
        self.bundle.store(Some(Arc::new(bundle.clone())));
        Ok(bundle)
    }

    /// The issuer that signs (the configured `issuer`, else the role's
    /// `issuer_ref`, else the mount's default), its
    /// chain, the anchors, and how many issuers the mount has.
    pub async fn read_layout(&self) -> Result<Layout, SignError> {
        let bundle = self.refresh_trust_bundle().await?;
        let mount = self.config.mount.clone();
        let role_ref = match &self.config.role {
            Some(role) => self
                .session
                .call(|c| {
                    let (mount, role) = (mount.clone(), role.clone());
                    async move {
                        vaultrs::api::exec_with_result(c.as_ref(), ReadRole { mount, role }).await
                    }
                })
                .await
                .ok()
                .and_then(|r| r.issuer_ref),
            None => None,
        };
        let signing = self
            .config
            .issuer
            .clone()
            .or_else(|| role_ref.clone())
            .unwrap_or_else(|| "default".to_owned());
        let issuers =
            self.session
                .call(|c| {
                    let mount = mount.clone();
                    async move {
                        vaultrs::api::exec_with_result(c.as_ref(), ListIssuers { mount }).await
                    }
                })
                .await
                .map(|l| l.keys.len())
                .ok();
        let issuer = self
            .session
            .call(|c| {
                let (mount, issuer) = (mount.clone(), signing.clone());
                async move {
                    vaultrs::api::exec_with_result(c.as_ref(), ReadIssuer { mount, issuer }).await
                }
            })
            .await
            .ok();
        let mut layout = match &issuer {
            Some(i) => {
                let mut certs = certs_in([i.certificate.as_str()])?;
                let above = match &i.ca_chain {
                    Some(chain) => certs_in(chain.pems())?,
                    None => Vec::new(),
                };
                let own = certs.remove(0);
                let above: Vec<_> = above.into_iter().filter(|c| *c != own).collect();
                Layout::from_certs(Some(&own), &above, &bundle)
            }
            // Vault before 1.11: no issuers API.
            None => Layout::from_certs(None, &[], &bundle),
        };
        layout = layout
            .fact("mount", self.config.mount.clone())
            .fact("signing issuer", signing);
        if let Some(n) = issuers {
            layout = layout.fact("issuers in the mount", n.to_string());
        }
        if let Some(r) = &self.config.role {
            layout = layout.fact("role", r.clone());
        }
        Ok(layout)
    }

    async fn bundle(&self) -> Result<TrustBundle, SignError> {
        match self.bundle.load_full() {
            Some(b) => Ok((*b).clone()),
            None => self.refresh_trust_bundle().await,
        }
    }

    /// Keeps the token fresh and the trust bundle current until dropped:
    /// two workers, one per schedule.
    pub fn spawn_maintenance(this: &Arc<Self>) {
        let refresh = this.config.trust_bundle_refresh.get();
        Worker::new(format!("trust bundle of backend {}", this.name))
            .backoff(Backoff::new(
                Duration::from_secs(5).min(refresh),
                Duration::from_secs(30).min(refresh),
            ))
            .spawn_for(this, move |this| async move {
                match this.refresh_trust_bundle().await {
                    Ok(b) => {
                        this.last_error.store(Arc::new(None));
                        tracing::debug!(backend = %this.name, roots = b.roots().len(), "vault trust bundle refreshed");
                        Ok(Next::In(refresh))
                    }
                    Err(e) => {
                        this.last_error.store(Arc::new(Some(e.to_string())));
                        Err(e)
                    }
                }
            });
        VaultSession::spawn_upkeep(&this.session, refresh);
    }

    fn assemble(&self, resp: &SignResponse, bundle: TrustBundle) -> Result<IssuedChain, SignError> {
        let mut issued = certs_in([resp.certificate.as_str()])?;
        if issued.is_empty() {
            return Err(SignError::BackendRejected(
                "vault returned no certificate".into(),
            ));
        }
        let leaf = issued.remove(0);
        let mut candidates = issued;
        if let Some(chain) = &resp.ca_chain {
            candidates.extend(certs_in(chain.pems())?);
        }
        if let Some(ca) = &resp.issuing_ca {
            candidates.extend(certs_in([ca.as_str()])?);
        }
        let path = chain::order_path(&leaf, candidates);
        IssuedChain::new(leaf, path, bundle).map_err(SignError::BadChain)
    }
}

fn join(values: impl Iterator<Item = String>) -> Option<String> {
    let v: Vec<String> = values.collect();
    (!v.is_empty()).then(|| v.join(","))
}

#[async_trait]
impl Signer for VaultBackend {
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: signet_core::revocation::Reason,
    ) -> Result<bool, SignError> {
        let serial_number = signet_core::revocation::colon_serial(serial_hex);
        let mount = self.config.mount.clone();
        self.session
            .call(|c| {
                let r = Revoke {
                    mount: mount.clone(),
                    serial_number: serial_number.clone(),
                };
                async move { vaultrs::api::exec_with_empty_result(c.as_ref(), r).await }
            })
            .await?;
        tracing::info!(
            target: "signet::audit",
            serial = serial_hex,
            backend = %self.name,
            reason = reason.name(),
            "certificate revoked upstream (vault)"
        );
        Ok(true)
    }

    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let now = self.clock.now();
        let ttl = decision
            .not_after()
            .duration_since(now)
            .unwrap_or_default()
            .as_secs()
            .max(1);
        let uri_sans = join(decision.sans().iter().filter_map(|s| match s {
            San::Uri(id) => Some(id.to_string()),
            _ => None,
        }));
        let resp = if let Some(ca) = decision.ca() {
            let path = match &self.config.issuer {
                Some(issuer) => format!("{}/issuer/{issuer}/sign-intermediate", self.config.mount),
                None => format!("{}/root/sign-intermediate", self.config.mount),
            };
            let req = |path: String| SignIntermediate {
                path,
                csr: csr.to_pem(),
                common_name: decision.common_name().map(str::to_owned),
                uri_sans: uri_sans.clone(),
                ttl: format!("{ttl}s"),
                format: "pem".into(),
                max_path_length: ca.path_len.map_or(-1, i32::from),
                exclude_cn_from_sans: true,
                use_csr_values: false,
            };
            self.session
                .call(|c| {
                    let r = req(path.clone());
                    async move { vaultrs::api::exec_with_result(c.as_ref(), r).await }
                })
                .await?
        } else {
            let Some(role) = self.config.role.clone() else {
                return Err(SignError::BackendRejected(format!(
                    "backend {} has no `role` for leaf certificates (use mode: delegated, or set role)",
                    self.name
                )));
            };
            let alt_names = join(decision.sans().iter().filter_map(|s| match s {
                San::Dns(d) => Some(d.to_string()),
                _ => None,
            }));
            let ip_sans = join(decision.sans().iter().filter_map(|s| match s {
                San::Ip(ip) => Some(ip.to_string()),
                _ => None,
            }));
            let path = match &self.config.issuer {
                Some(issuer) => format!("{}/issuer/{issuer}/sign/{role}", self.config.mount),
                None => format!("{}/sign/{role}", self.config.mount),
            };
            self.session
                .call(|c| {
                    let r = SignLeaf {
                        path: path.clone(),
                        csr: csr.to_pem(),
                        alt_names: alt_names.clone(),
                        ip_sans: ip_sans.clone(),
                        uri_sans: uri_sans.clone(),
                        ttl: format!("{ttl}s"),
                        format: "pem".into(),
                        exclude_cn_from_sans: true,
                    };
                    async move { vaultrs::api::exec_with_result(c.as_ref(), r).await }
                })
                .await?
        };
        let chain = self.assemble(&resp, self.bundle().await?)?;
        if chain
            .verify_with_skew(self.clock.now(), MAX_NOT_BEFORE_SKEW)
            .is_err()
        {
            // Vault's roots may have changed (rotation): read them again once.
            let bundle = self.refresh_trust_bundle().await?;
            return self.assemble(&resp, bundle);
        }
        Ok(chain)
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.bundle().await
    }

    async fn layout(&self) -> Result<Layout, SignError> {
        self.read_layout().await
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        // The roots last read (no network call on the signing path).
        self.bundle
            .load()
            .as_ref()
            .is_some_and(|b| b.holds_key(spki_der))
    }

    fn describe(&self) -> BackendInfo {
        let bundle = self.bundle.load_full();
        let ready = match (&bundle, self.last_error.load().as_ref()) {
            (Some(_), _) => Ok(()),
            (None, Some(e)) => Err(format!("vault unreachable: {e}")),
            (None, None) => Err("trust bundle not read from vault yet".to_owned()),
        };
        BackendInfo {
            name: self.name.clone(),
            kind: "vault",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: false,
                idempotent_for: None,
                constrains_path_len: true,
            },
            ca_not_after: bundle.and_then(|b| b.earliest_expiry()),
            ready,
        }
    }
}

impl fmt::Display for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vault {} at {} (mount {})",
            self.name, self.config.address, self.config.mount
        )
    }
}
