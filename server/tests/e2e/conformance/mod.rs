//! The conformance suite: signet against a real kube-apiserver (and, where
//! noted, real cert-manager, Istio and SPIRE code), built from their Go modules by
//! `scripts/conformance-build`. Every test prints one line, `proved: ...`,
//! naming what it showed. `scripts/conformance` runs these alone.

mod cert_manager;
mod charts;
mod doctor;
mod istiod;
mod pod_certificates;
mod replicas;
mod rotation;
mod routing;
mod spire;
pub(crate) mod support;
mod tokens;
