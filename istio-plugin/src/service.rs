//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Authenticate, resolve the identity (possibly impersonated), grant exactly
//! that SPIFFE ID, clamp the TTL, issue, and answer with the chain in the form
//! istio-agent and ztunnel both parse: `[leaf, intermediate..., roots]`, one
//! PEM per element except the last, which holds every root. Errors become gRPC
//! codes in [`to_status`], and only there.

use std::sync::Arc;
use std::time::Duration;

use signet_core::caller::{AuthMethod, Caller, PeerInfo, Principal};
use signet_core::envelope::{Envelope, Handled};
use signet_core::error::SignError;
use signet_core::metrics::Metrics;
use signet_core::policy::{Grant, IssuanceRequest, Profile, TtlOverflow};
use signet_core::routing::{RouteSubject, Routes};
use signet_core::spiffe::SpiffeId;
use signet_core::{Authority, VerifiedCsr};
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Authenticators, Credentials};
use crate::identity::Identity;
use crate::impersonation::Impersonation;
use crate::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};

const FRONTEND: &str = "istio";
/// istio-agent's default `clusterid`.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// The request metadata istio-agent fills from `ISTIO_META_CERT_SIGNER`.
const CERT_SIGNER: &str = "CertSigner";

/// A pipeline error as a gRPC status, by the one table ([`SignError::wire`]).
pub fn to_status(e: &SignError) -> Status {
    Status::new(
        tonic::Code::from_i32(e.wire().grpc as i32),
        e.public_message(),
    )
}

/// Set by the service when a request reached it, i.e. its message decoded.
/// The listener adds one to every request: a gRPC INTERNAL answered to a
/// request that never reached the service is tonic refusing a malformed
/// message (truncated frame or field, bad varint, invalid UTF-8, nesting too
/// deep), which is the caller's fault and is answered INVALID_ARGUMENT
/// ([`malformed_request_status`]).
#[derive(Debug, Clone, Default)]
pub struct Reached(pub Arc<std::sync::atomic::AtomicBool>);

/// The status for a request tonic could not decode, given the one it chose.
pub fn malformed_request_status(code: tonic::Code) -> Option<tonic::Code> {
    (code == tonic::Code::Internal).then_some(tonic::Code::InvalidArgument)
}

/// The Istio CA service.
#[derive(Debug)]
pub struct IstioCa {
    routes: Routes,
    auth: Authenticators,
    impersonation: Option<Impersonation>,
    envelope: Envelope,
}

impl IstioCa {
    /// `routes`: the authority (or authorities, by route) that sign.
    pub fn new(
        routes: Routes,
        auth: Authenticators,
        impersonation: Option<Impersonation>,
        metrics: Metrics,
        max_concurrent: usize,
        timeout: Duration,
    ) -> Self {
        let envelope = Envelope::new(
            FRONTEND,
            routes.default_authority().name(),
            Some(max_concurrent),
            timeout,
            metrics,
        );
        Self {
            routes,
            auth,
            impersonation,
            envelope,
        }
    }

    fn authority(&self) -> &Arc<Authority> {
        self.routes.default_authority()
    }

    /// The tonic service, with a message size cap.
    pub fn into_service(self, max_message_bytes: usize) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(4 * 1024 * 1024)
    }

    async fn handle(
        &self,
        peer: Option<&PeerInfo>,
        token: Option<&str>,
        cluster_id: &str,
        req: IstioCertificateRequest,
    ) -> Handled<IstioCertificateResponse> {
        let creds = Credentials {
            peer,
            token,
            cluster_id,
        };
        let identity = match self.auth.authenticate(&creds).await {
            Ok(i) => i,
            Err(AuthError::Invalid { public, detail }) => {
                tracing::info!(peer = ?peer.map(|p| p.addr), cluster = cluster_id, %detail, "authentication failed");
                return Handled::anonymous(Err(SignError::Unauthenticated(public.to_owned())));
            }
            Err(AuthError::Unavailable(d)) => {
                return Handled::anonymous(Err(SignError::BackendUnavailable(d)));
            }
        };
        let mut route = None;
        let result = self.issue(&identity, peer, req, &mut route).await;
        let handled = Handled::by(identity.to_string(), result);
        handled.routed(route)
    }

    async fn issue(
        &self,
        identity: &Identity,
        peer: Option<&PeerInfo>,
        req: IstioCertificateRequest,
        route: &mut Option<(String, String)>,
    ) -> Result<IstioCertificateResponse, SignError> {
        let td = self.authority().policy().trust_domain();
        let own = identity.spiffe_id(td).map_err(|e| {
            SignError::Unauthenticated(format!("identity is not a valid SPIFFE ID: {e}"))
        })?;
        let target = self.target(identity, &own, &req).await?;
        let cert_signer = metadata_string(&req, CERT_SIGNER)?;
        let account = crate::identity::spiffe_account(&target);
        let subject = RouteSubject {
            namespace: account.as_ref().map(|(ns, _)| ns.as_str()),
            service_account: account.as_ref().map(|(_, sa)| sa.as_str()),
            trust_domain: Some(target.trust_domain()),
            cert_signer: cert_signer.as_deref(),
            signer_name: None,
        };
        let chosen = self.routes.choose(&subject)?;
        let authority = chosen.authority;
        if self.routes.is_routed() {
            *route = Some((chosen.route.to_owned(), authority.name().to_owned()));
        }
        let renewal = match identity {
            Identity::Renewal { lifetime, .. } => {
                if self.routes.is_routed() {
                    renewed_under(peer, authority).await?;
                }
                Some(*lifetime)
            }
            _ => None,
        };
        let (mut caller, grant, request) = workload_request(
            &own,
            target,
            auth_method(identity),
            renewal,
            authority.policy().config().backdate.get(),
            req.validity_duration,
            authority.backend().capabilities.in_process,
        )?;
        if self.routes.is_routed() {
            caller = caller.on_route(chosen.route);
        }
        let csr = VerifiedCsr::from_pem(req.csr.as_bytes())?;
        let chain = authority.issue(&caller, &grant, &csr, &request).await?;
        let mut cert_chain = Vec::with_capacity(chain.intermediates().len() + 2);
        cert_chain.push(chain.leaf_pem());
        cert_chain.extend(chain.intermediate_pems());
        cert_chain.push(chain.trust_bundle().to_pem());
        Ok(IstioCertificateResponse { cert_chain })
    }

    /// The identity the certificate is for: the caller's own, or (a node
    /// proxy's request, `ImpersonatedIdentity`) a pod's service account the
    /// impersonation check allows.
    async fn target(
        &self,
        identity: &Identity,
        own: &SpiffeId,
        req: &IstioCertificateRequest,
    ) -> Result<SpiffeId, SignError> {
        let td = self.authority().policy().trust_domain();
        let impersonated = metadata_string(req, IMPERSONATED_IDENTITY)?;
        let Some(s) = impersonated.filter(|s| s != own.as_str()) else {
            return Ok(own.clone());
        };
        let Some(imp) = &self.impersonation else {
            return Err(SignError::Unauthenticated(
                "impersonation is not allowed".into(),
            ));
        };
        let id = SpiffeId::new(&s).map_err(|_| {
            SignError::Unauthenticated("impersonated identity is not a SPIFFE ID".into())
        })?;
        let target = crate::identity::spiffe_account(&id)
            .filter(|_| id.is_member_of(td))
            .ok_or_else(|| {
                SignError::Unauthenticated(
                    "impersonated identity is not a service account of this trust domain".into(),
                )
            })?;
        if let Err(e) = imp.check(identity, &target).await {
            tracing::info!(caller = %identity, target = %id, error = %e, "impersonation refused");
            return Err(match e {
                crate::impersonation::ImpersonationError::Lookup(d) => {
                    SignError::BackendUnavailable(d)
                }
                other => SignError::Unauthenticated(format!("impersonation refused: {other}")),
            });
        }
        Ok(id)
    }
}

/// A string field of the request's metadata (absent: `None`).
fn metadata_string(req: &IstioCertificateRequest, key: &str) -> Result<Option<String>, SignError> {
    req.metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .map(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Ok(s.clone()),
            _ => Err(SignError::invalid_request(
                "invalid_metadata",
                format!("{key} must be a string"),
            )),
        })
        .transpose()
}

/// With routes, the TLS handshake accepts certificates under the roots of
/// every routed authority; a renewal must come from under the roots of the
/// authority its identity routes to, so that one tenant's CA cannot renew
/// into another's. The presented chain is verified again (signatures,
/// validity, path) against that authority's roots alone.
async fn renewed_under(peer: Option<&PeerInfo>, authority: &Authority) -> Result<(), SignError> {
    let presented = peer
        .and_then(|p| p.client_chain.as_deref())
        .ok_or_else(|| SignError::Unauthenticated("no client certificate".into()))?;
    let bundle = authority.trust_bundle().await?;
    signet_core::chain::verify_client_chain(presented, bundle.roots(), authority.clock().now())
        .map_err(|e| {
            tracing::info!(authority = authority.name(), error = %e, "renewal certificate not under the routed authority's roots");
            SignError::Unauthenticated(format!(
                "client certificate is not under the roots of authority {}, where its identity is routed",
                authority.name()
            ))
        })
}

fn auth_method(identity: &Identity) -> AuthMethod {
    match identity {
        Identity::Renewal { .. } => AuthMethod::ClientCertificate,
        Identity::ServiceAccount {
            cluster, method, ..
        } => match method.strip_prefix("jwt:") {
            Some(issuer) => AuthMethod::Jwt {
                issuer: issuer.to_owned(),
            },
            None => AuthMethod::KubernetesToken {
                cluster: cluster.clone(),
            },
        },
    }
}

fn bearer(req: &Request<IstioCertificateRequest>) -> Option<String> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

#[tonic::async_trait]
impl IstioCertificateService for IstioCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        if let Some(r) = request.extensions().get::<Reached>() {
            r.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let peer_name = peer
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.addr.to_string());
        let token = bearer(&request);
        let cluster = request
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_CLUSTER_ID)
            .to_owned();
        let msg = request.into_inner();
        self.envelope
            .serve(
                &peer_name,
                self.handle(peer.as_ref(), token.as_deref(), &cluster, msg),
            )
            .await
            .map(Response::new)
            .map_err(|e| to_status(&e))
    }
}

/// What the Istio front-end asks its authority to decide for a workload
/// (`own`) whose certificate is for `target` (itself, or a pod a node proxy
/// impersonates): the caller, its grant (exactly that identity; a renewal
/// never longer than the certificate that asked) and the request. Pure, and
/// shared with `signet policy test`.
pub fn workload_request(
    own: &SpiffeId,
    target: SpiffeId,
    method: AuthMethod,
    renewal_lifetime: Option<Duration>,
    backdate: Duration,
    validity_duration: i64,
    marks_renewals: bool,
) -> Result<(Caller, Grant, IssuanceRequest), SignError> {
    let ttl = match validity_duration {
        d if d < 0 => {
            return Err(SignError::invalid_request(
                "invalid_ttl",
                format!("validity_duration {d} is negative"),
            ));
        }
        0 => None,
        d => Some(Duration::from_secs(d as u64)),
    };
    let impersonating = target != *own;
    let caller = if impersonating {
        Caller::new(
            Principal::Workload(format!("{target} (impersonated by {own})")),
            method,
        )
    } else {
        Caller::new(Principal::Workload(own.to_string()), method)
    };
    let mut grant = Grant::exact_identity(target);
    if let Some(lifetime) = renewal_lifetime {
        grant.max_ttl = Some(lifetime.saturating_sub(backdate));
    }
    let request = IssuanceRequest {
        profile: Profile::Workload,
        ttl,
        ttl_overflow: TtlOverflow::Clamp,
        // The workload's own certificate may renew itself; one a node proxy
        // obtained for a pod may not (that would outlast the pod-on-node
        // check). Only in-process signers write the mark: a remote backend
        // in direct mode signs what it signs, and its workloads renew with
        // tokens.
        renewable: !impersonating && marks_renewals,
        request_id: None,
    };
    Ok((caller, grant, request))
}
