//! signet-istio: make signet a drop-in CA for Istio's data plane.
//!
//! The Istio CA gRPC service ([`service`]) that istio-agent and ztunnel call,
//! caller authentication ([`auth`]: client certificates, offline JWTs,
//! Kubernetes TokenReview), ztunnel's impersonation check
//! ([`impersonation`]), and the development token issuer ([`dev`]).

pub mod auth;
pub mod cacerts;
pub mod config;
pub mod dev;
pub mod identity;
pub mod impersonation;
#[cfg(feature = "kube")]
pub mod k8s;
pub mod service;

/// The generated Istio CA messages, client and server.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
