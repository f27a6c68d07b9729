//! Renewal by mutual TLS: which certificates may stand in for the
//! credential that first obtained them.
//!
//! A workload that holds a certificate may ask the Istio front-end for the
//! next one by presenting it instead of a token. Only certificates issued for
//! that purpose qualify: the workload profile (exactly one SPIFFE ID,
//! serverAuth + clientAuth, not a CA), and carrying signet's renewal
//! mark, which policy puts only in certificates issued on a workload's
//! own token (or renewed from one). A certificate from the REST endpoint, a
//! client or server profile, or any other issuer lacks it and cannot renew,
//! so no grant outlives the credential it was given to. A renewal is never
//! longer than the certificate presented.
//!
//! The mark is an organizational unit in the certificate's subject,
//! `OU=signet renewable workload`: standard attributes only, so every
//! verifier parses it (a private extension OID without a registered arc
//! would need arcs Go's x509 refuses: istio-agent could not read such a
//! certificate, as the conformance suite showed), and nothing keys identity
//! on it (Istio and SPIFFE read the URI SAN; Kubernetes reads O, not OU).

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::clock::from_unix_seconds;
use crate::spiffe::SpiffeId;

/// The subject organizational unit that marks a certificate renewable.
pub const RENEWAL_MARKER: &str = "signet renewable workload";

/// Marks a certificate being built as renewable.
pub(crate) fn mark(params: &mut rcgen::CertificateParams) {
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, RENEWAL_MARKER);
}

/// Whether `cert`'s subject carries the mark (exactly once).
pub(crate) fn is_marked(cert: &X509Certificate<'_>) -> Result<bool, String> {
    let mut found = 0;
    for ou in cert.subject().iter_organizational_unit() {
        if ou.as_str().is_ok_and(|v| v == RENEWAL_MARKER) {
            found += 1;
        }
    }
    match found {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err("the renewal mark appears more than once".to_owned()),
    }
}

/// Why a presented certificate cannot renew.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalRefused {
    #[error("client certificate is not valid: {0}")]
    Malformed(String),
    #[error("client certificate is not a workload certificate: {0}")]
    NotWorkload(&'static str),
    #[error(
        "client certificate was not issued for renewal (only certificates obtained with a workload's own token renew by mTLS)"
    )]
    NotRenewable,
}

/// A certificate that may renew: the identity it names and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalCertificate {
    pub id: SpiffeId,
    /// NotAfter − NotBefore: the most a renewal may be given.
    pub lifetime: Duration,
    pub not_after: SystemTime,
}

/// Checks that a (handshake-verified) client certificate may renew.
pub fn renewal_certificate(der: &[u8]) -> Result<RenewalCertificate, RenewalRefused> {
    let malformed = |e: String| RenewalRefused::Malformed(e.chars().take(120).collect());
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data".into()));
    }
    if matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(RenewalRefused::NotWorkload("it is a CA certificate"));
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
        _ => {
            return Err(RenewalRefused::NotWorkload(
                "it lacks serverAuth and clientAuth",
            ));
        }
    }
    let names = cert
        .subject_alternative_name()
        .map_err(|e| malformed(e.to_string()))?
        .map(|e| e.value.general_names.clone())
        .unwrap_or_default();
    let id = match names.as_slice() {
        [GeneralName::URI(u)] => SpiffeId::new(u)
            .map_err(|_| RenewalRefused::NotWorkload("its URI SAN is not a SPIFFE ID"))?,
        _ => {
            return Err(RenewalRefused::NotWorkload(
                "it must name exactly one SPIFFE ID and nothing else",
            ));
        }
    };
    if !is_marked(&cert).map_err(malformed)? {
        return Err(RenewalRefused::NotRenewable);
    }
    let not_before = from_unix_seconds(cert.validity().not_before.timestamp());
    let not_after = from_unix_seconds(cert.validity().not_after.timestamp());
    Ok(RenewalCertificate {
        id,
        lifetime: not_after.duration_since(not_before).unwrap_or_default(),
        not_after,
    })
}
