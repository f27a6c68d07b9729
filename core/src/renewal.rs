//! Renewal by mutual TLS: which certificates may stand in for the
//! credential that first obtained them.
//!
//! A workload that holds a certificate may ask the Istio front-end for the
//! next one by presenting it instead of a token. Only certificates issued for
//! that purpose qualify: the workload profile (exactly one SPIFFE ID,
//! serverAuth + clientAuth, not a CA), and carrying signet's renewal
//! extension, which policy puts only in certificates issued on a workload's
//! own token (or renewed from one). A certificate from the REST endpoint, a
//! client or server profile, or any other issuer lacks it and cannot renew,
//! so no grant outlives the credential it was given to. A renewal is never
//! longer than the certificate presented.
//!
//! The extension is non-critical (verifiers that do not know it ignore it),
//! and its OID is in the UUID arc `2.25` (X.667), chosen at random for signet.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::clock::from_unix_seconds;
use crate::spiffe::SpiffeId;

/// OID of signet's renewal extension.
pub const RENEWAL_OID: [u64; 3] = [2, 25, 6_379_693_309_150_171_038];
/// Its value: DER UTF8String "signet workload v1".
const RENEWAL_VALUE: &[u8] = b"\x0c\x12signet workload v1";

/// The extension, for the certificate encoder.
pub(crate) fn extension() -> rcgen::CustomExtension {
    rcgen::CustomExtension::from_oid_content(&RENEWAL_OID, RENEWAL_VALUE.to_vec())
}

/// Whether `cert` carries the renewal extension; an extension with signet's
/// OID but another value or marked critical is an error.
pub(crate) fn is_marked(cert: &X509Certificate<'_>) -> Result<bool, String> {
    let oid = x509_parser::der_parser::oid::Oid::from(&RENEWAL_OID)
        .map_err(|_| "renewal OID".to_owned())?;
    let mut found = false;
    for ext in cert.extensions() {
        if ext.oid != oid {
            continue;
        }
        if found || ext.critical || ext.value != RENEWAL_VALUE {
            return Err("malformed renewal extension".to_owned());
        }
        found = true;
    }
    Ok(found)
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
