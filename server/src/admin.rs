//! The admin listener: plain HTTP `/healthz`, `/readyz` and `/metrics` for
//! kubelet probes and Prometheus, apart from the signing endpoints.
//!
//! It serves no certificates and accepts no requests to sign, so it needs
//! neither TLS nor authentication; bind it where only the kubelet and the
//! scraper reach it (a pod IP, or loopback).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use signet_core::Authority;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// `admin` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address, e.g. `0.0.0.0:9090`.
    pub listen: SocketAddr,
}

#[derive(Debug)]
struct Admin {
    authorities: Vec<Arc<Authority>>,
    registry: Arc<Registry>,
}

/// Binds `config.listen` and serves until `shutdown` turns true.
pub async fn serve(
    config: &AdminConfig,
    authorities: &BTreeMap<String, Arc<Authority>>,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.listen))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "admin listener (healthz, readyz, metrics) listening");
    let state = Arc::new(Admin {
        authorities: authorities.values().cloned().collect(),
        registry,
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let task = tokio::spawn(async move {
        let stop = async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((bound, task))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every authority can sign: its backend reports ready (for a
/// delegated authority: it holds an intermediate).
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let not_ready: Vec<String> = admin
        .authorities
        .iter()
        .filter_map(|a| {
            a.backend()
                .ready
                .err()
                .map(|why| format!("authority {}: {why}", a.name()))
        })
        .collect();
    if not_ready.is_empty() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    match openmetrics(&admin.registry) {
        Ok(ok) => ok,
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

/// The registry as an OpenMetrics text response (here and on the REST
/// listener).
pub(crate) fn openmetrics(registry: &Registry) -> Result<Response, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
