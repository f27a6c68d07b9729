//! Wiring of the Istio CA gRPC front-end: serving certificate, client
//! certificate verification against the authority's trust bundle, the
//! configured authenticators, and the tonic service on our TLS listener (h2).

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use signet_core::Clock;
use signet_core::metrics::Metrics;
use signet_core::routing::Routes;
use signet_core::worker::{Next, Worker};
use signet_istio::auth::Authenticators;
use signet_istio::auth::jwt::JwtAuthenticator;
use signet_istio::auth::token_review::{Clusters, TokenReviewer};
use signet_istio::config::IstioConfig;
use signet_istio::impersonation::{Impersonation, KubePods};
use signet_istio::service::{IstioCa, Reached, malformed_request_status};

use crate::tls::{self, BundleClientVerifier, ServingNames};

/// Builds the router and TLS configuration of `frontends.istio`.
pub async fn build(
    ic: &IstioConfig,
    routes: Routes,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(axum::Router, rustls::ServerConfig)> {
    let authority = routes.default_authority().clone();
    let names = ServingNames::for_listener(ic.listen.ip(), &ic.server_names())?;
    let serving = tls::issued_by_authority(authority.clone(), names, "istio-serving").await?;
    // Renewals come from under any routed authority's roots (the service
    // then checks the one the identity routes to).
    let verifier: Option<Arc<dyn ClientCertVerifier>> = if ic.auth.mtls {
        Some(BundleClientVerifier::start(routes.authorities()))
    } else {
        None
    };
    // ztunnel speaks h2 only; istio-agent too.
    let tls_config = tls::server_config(serving, verifier, &[b"h2"])?;

    let mut auth = Authenticators::default();
    if ic.auth.mtls {
        auth.mtls = Some(authority.policy().trust_domain().clone());
    }
    for j in &ic.auth.jwt {
        let a = JwtAuthenticator::new(j.clone(), clock.clone())
            .await
            .map_err(|e| anyhow::anyhow!("frontends.istio.auth.jwt ({}): {e}", j.issuer))?;
        auth.jwt.push(a);
    }
    let clusters = match &ic.auth.token_review {
        Some(tr) => Some(
            Clusters::connect(&tr.clusters)
                .await
                .map_err(|e| anyhow::anyhow!("frontends.istio.auth.token_review: {e}"))?,
        ),
        None => None,
    };
    if let (Some(tr), Some(c)) = (&ic.auth.token_review, &clusters) {
        auth.token_review = Some(Arc::new(TokenReviewer::new(c.clone(), tr, clock.clone())));
    }
    let impersonation = match (&ic.impersonation, clusters) {
        (Some(imp), Some(c)) => Some(Impersonation::new(imp, Box::new(KubePods::new(c)))),
        _ => None,
    };
    let authority_for_health = authority.clone();
    let ca = IstioCa::new(
        routes,
        auth,
        impersonation,
        metrics,
        ic.limits.max_concurrent_requests,
        ic.limits.request_timeout.get(),
    );
    // grpc.health.v1 for gRPC probes: SERVING while the authority can sign.
    let (reporter, health) = tonic_health::server::health_reporter();
    Worker::new("grpc health").spawn_for(&authority_for_health, move |a| {
        use tonic_health::ServingStatus;
        let reporter = reporter.clone();
        async move {
            let status = if a.backend().ready.is_ok() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            drop(a);
            for service in ["", ISTIO_SERVICE] {
                reporter.set_service_status(service, status).await;
            }
            Ok::<_, String>(Next::In(std::time::Duration::from_secs(2)))
        }
    });
    let router = tonic::service::Routes::new(ca.into_service(ic.limits.max_message_bytes))
        .add_service(health)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn(malformed_is_invalid_argument));
    Ok((router, tls_config))
}

/// The service name health checks may ask about.
const ISTIO_SERVICE: &str = "istio.v1.auth.IstioCertificateService";

/// tonic answers INTERNAL when it cannot decode a request; that is the
/// caller's fault, so it becomes INVALID_ARGUMENT (signet's own faults, from
/// requests that reached the service, stay INTERNAL).
async fn malformed_is_invalid_argument(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let reached = Reached::default();
    req.extensions_mut().insert(reached.clone());
    let mut resp = next.run(req).await;
    if reached.0.load(std::sync::atomic::Ordering::Relaxed) {
        return resp;
    }
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from);
    if let Some(new) = code.and_then(malformed_request_status) {
        let headers = resp.headers_mut();
        headers.insert("grpc-status", (new as i32).into());
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("malformed%20request%20message"),
        );
    }
    resp
}
