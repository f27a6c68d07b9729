//! The REST signing endpoint: `POST /v1/sign`, `GET /v1/trust-bundle`,
//! `/healthz`, `/readyz`, `/metrics`.
//!
//! The handler runs the pipeline in order — authenticate, read the body,
//! parse the request and CSR, look up the caller's grant, issue — and every
//! refusal goes through [`ApiError`], the one place where errors become HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use signet_core::caller::{
    AuthMethod, Caller, Principal, PrincipalSelector, certificate_principal,
};
use signet_core::clock::rfc3339;
use signet_core::crypto::{constant_time_eq, sha256};
use signet_core::duration::HumanDuration;
use signet_core::envelope::{Envelope, Handled};
use signet_core::error::{ErrorKind, SignError, TransportFault};
use signet_core::metrics::Metrics;
use signet_core::policy::{Grant, IssuanceRequest, PolicyError, Profile, TtlOverflow};
use signet_core::spiffe_bundle::SpiffeBundle;
use signet_core::{Authority, VerifiedCsr};

use crate::config::{PrincipalConfig, RestConfig};
use crate::listener::PeerInfo;
use crate::tls::SwappableCert;

const FRONTEND: &str = "rest";

// === impl ApiError ===

/// An error on the wire: `{"error": {"code", "message", "reason"?}}`.
#[derive(Debug)]
pub struct ApiError(pub SignError);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl ApiError {
    /// The HTTP status, by the one table ([`SignError::wire`]).
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.wire().http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0.kind().code(),
                message: self.0.public_message(),
                reason: self.0.reason(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        match self.0.kind() {
            ErrorKind::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            k if k.is_retryable() => {
                let secs = match &self.0 {
                    SignError::RateLimited {
                        retry_after: Some(d),
                    }
                    | SignError::Overloaded {
                        retry_after: Some(d),
                    } => d.as_secs().max(1),
                    _ => 1,
                };
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        resp
    }
}

impl From<SignError> for ApiError {
    fn from(e: SignError) -> Self {
        ApiError(e)
    }
}

// === impl RestAuth ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    principal: String,
    /// Lowercase hex SHA-256 of the token.
    sha256: String,
}

/// How REST callers prove who they are.
#[derive(Debug, Default)]
pub struct RestAuth {
    /// (SHA-256(token), principal). Only digests are kept, and a presented
    /// token's digest is compared with every entry in constant time: neither
    /// the timing nor an early exit tells a caller how close a guess was.
    tokens: Vec<([u8; 32], Principal)>,
    mtls: bool,
    loopback: bool,
}

impl RestAuth {
    pub fn new(tokens_file: Option<&Path>, mtls: bool, loopback: bool) -> anyhow::Result<Self> {
        let mut tokens: Vec<([u8; 32], Principal)> = Vec::new();
        if let Some(path) = tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let file: TokensFile =
                serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(&text))
                    .map_err(|e| {
                        anyhow::anyhow!("{}: `{}`: {}", path.display(), e.path(), e.inner())
                    })?;
            for (i, t) in file.tokens.into_iter().enumerate() {
                let digest: [u8; 32] = hex::decode(t.sha256.trim())
                    .ok()
                    .and_then(|d| d.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: tokens[{i}].sha256 must be 64 hex characters",
                            path.display()
                        )
                    })?;
                // A token's principal is `token:<name>` whether or not the
                // file writes the prefix.
                let name = t.principal.strip_prefix("token:").unwrap_or(&t.principal);
                anyhow::ensure!(
                    !name.is_empty() && !name.chars().any(char::is_control),
                    "{}: tokens[{i}].principal is empty",
                    path.display()
                );
                anyhow::ensure!(
                    !tokens.iter().any(|(d, _)| *d == digest),
                    "{}: tokens[{i}] repeats another token",
                    path.display()
                );
                tokens.push((digest, Principal::Token(name.to_owned())));
            }
        }
        Ok(Self {
            tokens,
            mtls,
            loopback,
        })
    }

    /// Authenticates a request: client certificate, then bearer token, then
    /// (loopback listeners only) anonymous. A presented but invalid credential
    /// is refused rather than downgraded to anonymous.
    pub fn authenticate(&self, headers: &HeaderMap, peer: &PeerInfo) -> Result<Caller, SignError> {
        if self.mtls
            && let Some(der) = &peer.client_cert
        {
            return certificate_principal(der)
                .map(|p| Caller::new(p, AuthMethod::ClientCertificate))
                .map_err(SignError::Unauthenticated);
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    SignError::Unauthenticated(
                        "malformed Authorization header; expected `Bearer <token>`".into(),
                    )
                })?;
            let presented = sha256(token.as_bytes());
            let mut principal = None;
            for (digest, p) in &self.tokens {
                if constant_time_eq(digest, &presented) {
                    principal = Some(p);
                }
            }
            return principal
                .map(|p| Caller::new(p.clone(), AuthMethod::BearerToken))
                .ok_or_else(|| SignError::Unauthenticated("invalid bearer token".into()));
        }
        if self.loopback && peer.addr.ip().is_loopback() {
            return Ok(Caller::new(Principal::Anonymous, AuthMethod::Loopback));
        }
        Err(SignError::Unauthenticated(
            "credentials required: a client certificate or a bearer token".into(),
        ))
    }
}

// === impl Grants ===

/// Grants by typed principal: an exact entry, else the entry for every
/// principal of its type (`token:*`, `uri:*`, `dns:*`), else `*`.
#[derive(Debug, Default)]
pub struct Grants {
    by_selector: HashMap<PrincipalSelector, Grant>,
}

impl Grants {
    pub fn new(principals: &[PrincipalConfig]) -> Self {
        let mut g = Grants::default();
        for p in principals {
            let grant = Grant {
                allowed_sans: p.allowed_sans.clone(),
                max_ttl: p.max_ttl.map(HumanDuration::get),
                profiles: p.profiles.clone(),
                allow_wildcards: p.allow_wildcards,
            };
            g.by_selector.insert(p.name.clone(), grant);
        }
        g
    }

    /// The grant of `principal`, or the refusal the server gives.
    pub fn require(&self, principal: &Principal) -> Result<&Grant, SignError> {
        self.for_principal(principal)
            .ok_or_else(|| PolicyError::NoGrant(principal.to_string()).into())
    }

    pub fn for_principal(&self, principal: &Principal) -> Option<&Grant> {
        self.by_selector
            .get(&PrincipalSelector::Exact(principal.clone()))
            .or_else(|| {
                PrincipalSelector::kind_of(principal).and_then(|k| self.by_selector.get(&k))
            })
            .or_else(|| self.by_selector.get(&PrincipalSelector::Anyone))
    }
}

// === impl Rest ===

/// Everything the REST handlers share.
#[derive(Debug)]
pub struct Rest {
    pub authority: Arc<Authority>,
    pub auth: RestAuth,
    pub grants: Grants,
    pub envelope: Envelope,
    pub registry: Arc<Registry>,
    pub serving: Option<Arc<SwappableCert>>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub spiffe_refresh_hint: Duration,
    /// The authority's revocation list, for `GET /v1/crl/<authority>`.
    pub revocation_file: Option<PathBuf>,
    /// Its CRL, signed again only when the list, the CA or the hour changes.
    pub crl_cache: signet_core::revocation::CrlCache,
}

impl Rest {
    pub fn from_config(
        config: &RestConfig,
        authority: Arc<Authority>,
        metrics: Metrics,
        registry: Arc<Registry>,
        serving: Option<Arc<SwappableCert>>,
    ) -> anyhow::Result<Self> {
        let auth = RestAuth::new(
            config.auth.tokens_file.as_deref(),
            config.auth.mtls.is_some(),
            config.auth.loopback_unauthenticated,
        )?;
        let envelope = Envelope::new(
            FRONTEND,
            authority.name(),
            Some(config.limits.max_concurrent_requests),
            config.limits.request_timeout.get(),
            metrics,
        );
        Ok(Self {
            authority,
            auth,
            grants: Grants::new(&config.principals),
            envelope,
            registry,
            serving,
            max_body_bytes: config.limits.max_body_bytes,
            request_timeout: config.limits.request_timeout.get(),
            spiffe_refresh_hint: config.spiffe_refresh_hint.get(),
            revocation_file: None,
            crl_cache: Default::default(),
        })
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/sign", post(sign))
            .route("/v1/trust-bundle", get(trust_bundle))
            .route("/v1/spiffe-bundle", get(spiffe_bundle))
            .route("/v1/crl/{authority}", get(crl))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self)
    }
}

/// `POST /v1/sign` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub csr: String,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
}

/// `POST /v1/sign` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignResponse {
    pub certificate: String,
    pub ca_chain: Vec<String>,
    pub trust_bundle: Vec<String>,
    pub serial_number: String,
    pub not_before: String,
    pub not_after: String,
}

async fn sign(
    State(rest): State<Arc<Rest>>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Shed rather than queue: a full server answers at once (the envelope).
    let result = rest
        .envelope
        .serve(&peer.addr.to_string(), async {
            match rest.auth.authenticate(&headers, &peer) {
                Ok(caller) => Handled::by(
                    caller.principal().to_string(),
                    sign_for(&rest, &caller, &headers, body).await,
                ),
                Err(e) => Handled::anonymous(Err(e)),
            }
        })
        .await;
    match result {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn sign_for(
    rest: &Rest,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<SignResponse, SignError> {
    check_content_type(headers)?;
    // The body must arrive within half the request's time: a client that
    // dribbles it (slowloris) is told so (408), and the rest of the budget
    // stays for signing.
    let read = axum::body::to_bytes(body, rest.max_body_bytes);
    let bytes: Bytes = tokio::time::timeout(rest.request_timeout / 2, read)
        .await
        .map_err(|_| {
            SignError::transport(
                TransportFault::BodyTooSlow,
                format!(
                    "the request body did not arrive within {}",
                    HumanDuration::from(rest.request_timeout / 2)
                ),
            )
        })?
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                SignError::transport(
                    TransportFault::BodyTooLarge,
                    format!("request body exceeds {} bytes", rest.max_body_bytes),
                )
            } else {
                SignError::invalid_request("body_unreadable", "could not read the request body")
            }
        })?;
    let (csr, request) = decode_sign_request(&bytes)?;
    let grant = rest.grants.require(caller.principal())?;
    let chain = rest.authority.issue(caller, grant, &csr, &request).await?;
    Ok(SignResponse {
        certificate: chain.leaf_pem(),
        ca_chain: chain.intermediate_pems(),
        trust_bundle: chain.trust_bundle().pems(),
        serial_number: chain.serial_hex().to_owned(),
        not_before: rfc3339(chain.not_before()),
        not_after: rfc3339(chain.not_after()),
    })
}

/// `POST /v1/sign` must say its body is JSON (a cheap CSRF guard for the
/// unauthenticated loopback mode).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), SignError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(SignError::transport(
            TransportFault::UnsupportedMediaType,
            "Content-Type must be application/json",
        ))
    }
}

/// Decodes a `POST /v1/sign` body into a verified CSR and what it asks for;
/// authorisation and policy come after. Pure, so that it can be fuzzed.
pub fn decode_sign_request(body: &[u8]) -> Result<(VerifiedCsr, IssuanceRequest), SignError> {
    // serde would also accept a struct written as a JSON array; only objects are the API.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(SignError::invalid_request(
            "malformed_json",
            "request body must be a JSON object",
        ));
    }
    let req: SignRequest = serde_json::from_slice(body).map_err(|e| {
        SignError::invalid_request("malformed_json", format!("invalid request body: {e}"))
    })?;
    let request = request_of(&req)?;
    let csr = VerifiedCsr::from_pem(req.csr.as_bytes())?;
    Ok((csr, request))
}

/// What a `POST /v1/sign` body asks for besides its CSR (its profile and
/// lifetime); shared with `signet policy test`.
pub fn request_of(req: &SignRequest) -> Result<IssuanceRequest, SignError> {
    let profile = match req.profile.as_deref() {
        None => Profile::Workload,
        Some(p) => p
            .parse()
            .map_err(|e: String| SignError::invalid_request("invalid_profile", e))?,
    };
    let ttl = match req.ttl.as_deref() {
        None => None,
        Some(t) => Some(
            t.parse::<HumanDuration>()
                .map_err(|e| SignError::invalid_request("invalid_ttl", e.to_string()))?
                .get(),
        ),
    };
    Ok(IssuanceRequest {
        profile,
        ttl,
        ttl_overflow: TtlOverflow::Refuse,
        renewable: false,
        request_id: None,
    })
}

async fn trust_bundle(State(rest): State<Arc<Rest>>) -> Response {
    match rest.authority.trust_bundle().await {
        Ok(b) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            b.to_pem(),
        )
            .into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// `GET /v1/spiffe-bundle` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleQuery {
    #[serde(default)]
    trust_domain: Option<String>,
}

/// The authority's roots in the SPIFFE bundle format (for SPIRE federation
/// and istiod's `spiffeBundleUrl`); `?trust_domain=` must name the
/// authority's trust domain when given.
async fn spiffe_bundle(
    State(rest): State<Arc<Rest>>,
    query: Result<Query<BundleQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => {
            return ApiError(SignError::invalid_request("invalid_query", e.body_text()))
                .into_response();
        }
    };
    let td = rest.authority.policy().trust_domain();
    if let Some(want) = &query.trust_domain
        && want != td.as_str()
    {
        return ApiError(SignError::transport(
            TransportFault::NotFound,
            format!("no bundle for trust domain {want:?}: this endpoint serves {td}"),
        ))
        .into_response();
    }
    let bundle = match rest.authority.trust_bundle().await {
        Ok(b) => b,
        Err(e) => return ApiError(e).into_response(),
    };
    match SpiffeBundle::of(&bundle, rest.spiffe_refresh_hint) {
        Ok(b) => Json(b).into_response(),
        Err(e) => ApiError(SignError::BadChain(e)).into_response(),
    }
}

/// `GET /v1/crl/<authority>` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrlQuery {
    /// `pem` for a PEM `X509 CRL` block; DER otherwise.
    #[serde(default)]
    format: Option<String>,
}

/// The authority's CRL, signed by its issuing CA where every replica holds
/// that key (the `local` backend's CA), listing its `revocation_file`.
async fn crl(
    State(rest): State<Arc<Rest>>,
    axum::extract::Path(authority): axum::extract::Path<String>,
    query: Result<Query<CrlQuery>, QueryRejection>,
) -> Response {
    let not_found =
        |why: String| ApiError(SignError::transport(TransportFault::NotFound, why)).into_response();
    let pem = match query.as_ref().map(|q| q.format.as_deref()) {
        Ok(None | Some("der")) => false,
        Ok(Some("pem")) => true,
        Ok(Some(other)) => {
            return ApiError(SignError::invalid_request(
                "invalid_query",
                format!("format must be der or pem, not {other:?}"),
            ))
            .into_response();
        }
        Err(e) => {
            return ApiError(SignError::invalid_request("invalid_query", e.body_text()))
                .into_response();
        }
    };
    if authority != rest.authority.name() {
        return not_found(format!(
            "no CRL for authority {authority:?}: this endpoint serves {}",
            rest.authority.name()
        ));
    }
    let Some(file) = &rest.revocation_file else {
        return not_found(format!("authority {authority} has no revocation_file"));
    };
    let Some(ca) = rest.authority.issuing_ca() else {
        return not_found(format!(
            "authority {authority}'s issuing CA is not held by signet: its backend keeps its own revocation"
        ));
    };
    let now = rest.authority.clock().now();
    let list = signet_core::revocation::RevocationList::read(file);
    let crl = match list {
        // The CA's key may be in a store: bounded like a signing request.
        Ok(l) => tokio::time::timeout(rest.request_timeout, rest.crl_cache.crl(&l, &ca, now))
            .await
            .unwrap_or_else(|_| {
                Err(signet_core::revocation::RevocationError::Sign(
                    "signing took too long".into(),
                ))
            }),
        Err(e) => Err(e),
    };
    let der = match crl {
        Ok(der) => der,
        Err(e) => {
            tracing::warn!(authority = %authority, error = %e, "cannot serve the CRL");
            return ApiError(SignError::NotReady(format!("the CRL: {e}"))).into_response();
        }
    };
    if pem {
        (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            signet_core::pem::encode("X509 CRL", &der),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(rest): State<Arc<Rest>>) -> Response {
    let info = rest.authority.backend();
    if let Err(why) = info.ready {
        return ApiError(SignError::NotReady(why)).into_response();
    }
    if let Some(cert) = &rest.serving {
        if cert.is_provisional() {
            return ApiError(SignError::NotReady(
                "serving certificate not issued yet".into(),
            ))
            .into_response();
        }
        if cert.not_after() < rest.authority.clock().now() {
            return ApiError(SignError::NotReady("serving certificate expired".into()))
                .into_response();
        }
    }
    "ready\n".into_response()
}

async fn metrics(State(rest): State<Arc<Rest>>) -> Response {
    crate::admin::openmetrics(&rest.registry).unwrap_or_else(|_| {
        ApiError(SignError::Internal("encoding metrics".into())).into_response()
    })
}

async fn not_found() -> Response {
    ApiError(SignError::transport(
        TransportFault::NotFound,
        "no such endpoint",
    ))
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError(SignError::transport(
        TransportFault::MethodNotAllowed,
        "method not allowed on this endpoint",
    ))
    .into_response()
}
