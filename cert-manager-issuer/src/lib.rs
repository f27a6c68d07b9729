//! signet-cert-manager: signet as a cert-manager external issuer.
//!
//! [`crd`] defines `SignetIssuer` / `SignetClusterIssuer`; [`resolve`] turns
//! an issuer's backend (with Secret references) into a backend config;
//! [`issuer`] holds a running issuer and its policy; [`controller`]
//! reconciles the issuers (building their backends, reporting readiness) and
//! the `cert-manager.io/v1` CertificateRequests that name them.

pub mod controller;
pub mod crd;
pub mod issuer;
pub mod resolve;

pub use controller::{ControllerConfig, IssuerController};
pub use crd::crds_yaml;
