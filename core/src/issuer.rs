//! Signing as a CA whose certificate signet holds.
//!
//! [`LocalCa`] is a CA certificate, its key and the chain above it. It backs
//! the `local` backend and delegated authorities, which hold an intermediate
//! obtained from an upstream backend. The key is a [`CaKey`]: in memory, or
//! in a key store that signs each certificate remotely. Loading refuses a
//! key that does not match the certificate and a certificate that is not a
//! CA.

use std::fmt;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::chain::{self, ChainError, IssuedChain, TrustBundle};
use crate::clock::{from_unix_seconds, rfc3339, unix_seconds};
use crate::error::SignError;
use crate::key::{CaKey, PrivateKey};
use crate::names::rcgen_san;
use crate::policy::{ExtKeyUsage, IssuanceDecision, KeyUsage};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("CA certificate: {0}")]
    Certificate(String),
    #[error("the certificate is not a CA (basicConstraints cA is not TRUE)")]
    NotACa,
    #[error("the CA certificate's keyUsage does not allow keyCertSign")]
    NoKeyCertSign,
    #[error("the private key does not match the CA certificate")]
    KeyMismatch,
    #[error("the CA chain does not verify: {0}")]
    Chain(ChainError),
    #[error("the CA certificate expired at {0}")]
    Expired(String),
}

// Not `#[from]`: that would make the chain error a `source` as well as
// part of the message, and a printed error chain would repeat it.
impl From<ChainError> for CaError {
    fn from(e: ChainError) -> Self {
        CaError::Chain(e)
    }
}

/// A CA whose certificates signet assembles and signs with its [`CaKey`].
pub struct LocalCa {
    issuer: Issuer<'static, CaKey>,
    cert: CertificateDer<'static>,
    /// Certificates above `cert`, excluding trust-bundle roots.
    chain: Vec<CertificateDer<'static>>,
    trust_bundle: TrustBundle,
    not_before: SystemTime,
    not_after: SystemTime,
    path_len: Option<u32>,
    subject: String,
    /// The CA certificate's SubjectPublicKeyInfo (= the key's).
    spki: Vec<u8>,
    /// SubjectPublicKeyInfos of this CA, its chain and its roots.
    ca_spkis: Vec<Vec<u8>>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("subject", &self.subject)
            .field("not_after", &rfc3339(self.not_after))
            .field("chain", &self.chain.len())
            .field("trust_bundle", &self.trust_bundle)
            .field("key", &self.issuer.key().handle().describe())
            .finish()
    }
}

impl LocalCa {
    /// Builds a CA from its certificate, key and the chain above it.
    ///
    /// `chain` lists the certificates above `cert` in order and may end with
    /// the root. `roots`, when given, is the trust bundle; otherwise the top
    /// of the chain (or `cert` itself, for a self-signed root) is the anchor.
    pub fn new(
        cert: CertificateDer<'static>,
        key: impl Into<CaKey>,
        chain: Vec<CertificateDer<'static>>,
        roots: Option<Vec<CertificateDer<'static>>>,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let (rest, parsed) =
            X509Certificate::from_der(&cert).map_err(|e| CaError::Certificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CaError::Certificate("trailing data".into()));
        }
        let bc = parsed
            .basic_constraints()
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let Some(bc) = bc.filter(|b| b.value.ca) else {
            return Err(CaError::NotACa);
        };
        let path_len = bc.value.path_len_constraint;
        if let Ok(Some(ku)) = parsed.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(CaError::NoKeyCertSign);
        }
        let key = key.into();
        let spki = key.spki_der();
        if parsed.public_key().raw != spki.as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let not_before = from_unix_seconds(parsed.validity().not_before.timestamp());
        let not_after = from_unix_seconds(parsed.validity().not_after.timestamp());
        if now > not_after {
            return Err(CaError::Expired(rfc3339(not_after)));
        }
        let subject = parsed.subject().to_string();
        let self_signed = parsed.subject().as_raw() == parsed.issuer().as_raw();

        let roots = match roots {
            Some(r) => r,
            None => match chain.last() {
                Some(top) => vec![top.clone()],
                None if self_signed => vec![cert.clone()],
                None => {
                    return Err(CaError::Certificate(
                        "the CA certificate is not self-signed and no chain or roots were given"
                            .into(),
                    ));
                }
            },
        };
        let trust_bundle = TrustBundle::new(roots)?;
        let chain: Vec<_> = chain
            .into_iter()
            .filter(|c| !trust_bundle.contains(c))
            .collect();
        if !trust_bundle.contains(&cert) {
            // The CA must itself chain to the bundle (a root verifies as a member).
            chain::verify_path(&cert, &chain, &trust_bundle, now)?;
        }

        let mut ca_spkis = vec![spki.clone()];
        for der in chain.iter().chain(trust_bundle.roots()) {
            if let Ok((_, c)) = X509Certificate::from_der(der) {
                ca_spkis.push(c.public_key().raw.to_vec());
            }
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        Ok(Self {
            issuer,
            cert,
            chain,
            trust_bundle,
            not_before,
            not_after,
            path_len,
            subject,
            spki,
            ca_spkis,
        })
    }

    /// Whether `spki_der` is the key of this CA, of its chain or of a root.
    pub fn holds_key(&self, spki_der: &[u8]) -> bool {
        self.ca_spkis.iter().any(|k| k == spki_der)
    }

    /// A new self-signed root CA (used by `--dev` and tests).
    pub fn self_signed_root(
        common_name: &str,
        key: PrivateKey,
        now: SystemTime,
        ttl: std::time::Duration,
    ) -> Result<Self, SignError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - std::time::Duration::from_secs(60));
        params.not_after = to_offset(now + ttl);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| SignError::Internal(format!("self-signing root: {e}")))?;
        Self::new(cert.der().clone(), key, Vec::new(), None, now)
            .map_err(|e| SignError::Internal(format!("new root: {e}")))
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
    /// Certificates above this CA (not including trust-bundle roots).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.trust_bundle
    }
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    pub fn subject(&self) -> &str {
        &self.subject
    }
    pub fn key(&self) -> &CaKey {
        self.issuer.key()
    }

    /// The key itself, when it is in memory (a development root written
    /// to disk, a plug-in CA's key written to its Secret).
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.issuer.key().handle().in_memory()
    }

    /// Signs a CRL as this CA (see [`crate::revocation`]); DER.
    pub async fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, SignError> {
        let encoded = params
            .signed_by(&self.issuer)
            .map_err(|e| SignError::Internal(format!("encoding the CRL: {e}")))?;
        self.issuer.key().sign_der(encoded.der().to_vec()).await
    }

    /// Signs a certificate for `public_key` as `decision` says. NotAfter is
    /// clamped to this CA's NotAfter; NotBefore never precedes the CA's.
    pub async fn sign(
        &self,
        decision: &IssuanceDecision,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedChain, SignError> {
        if let Some(ca) = decision.ca() {
            if self.path_len == Some(0) {
                return Err(SignError::BackendRejected(
                    "this CA has pathLenConstraint 0 and cannot issue CA certificates".into(),
                ));
            }
            if let (Some(mine), Some(theirs)) = (self.path_len, ca.path_len)
                && u32::from(theirs) >= mine
            {
                return Err(SignError::BackendRejected(format!(
                    "requested path length {theirs} does not fit under this CA's {mine}"
                )));
            }
        }
        let not_after = decision.not_after().min(self.not_after);
        let not_before = decision.not_before().max(self.not_before);
        if not_after <= not_before {
            return Err(SignError::NotReady(format!(
                "the CA expires at {}",
                rfc3339(self.not_after)
            )));
        }
        let params = certificate_params(decision, not_before, not_after)?;
        let encoded = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| SignError::Internal(format!("signing: {e}")))?;
        // A remote key's signature is verified by `sign_der`, an in-memory
        // key's is the one just computed: either way the leaf is known to
        // be signed by `spki`.
        let leaf = self.issuer.key().sign_der(encoded.der().to_vec()).await?;
        let mut intermediates = Vec::with_capacity(self.chain.len() + 1);
        if !self.trust_bundle.contains(&self.cert) {
            intermediates.push(self.cert.clone());
        }
        intermediates.extend(self.chain.iter().cloned());
        IssuedChain::new(leaf.into(), intermediates, self.trust_bundle.clone())
            .map(|c| c.signed_in_process(self.spki.clone()))
            .map_err(SignError::BadChain)
    }
}

/// A self-signed end-entity certificate for `sans` (serverAuth), for a
/// listener that must answer before its real certificate can be issued.
pub fn self_signed_server(
    sans: &[crate::names::San],
    key: &PrivateKey,
    now: SystemTime,
    ttl: std::time::Duration,
) -> Result<CertificateDer<'static>, SignError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "signet provisional certificate");
    params.subject_alt_names = sans
        .iter()
        .map(rcgen_san)
        .collect::<Result<_, _>>()
        .map_err(SignError::Internal)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = to_offset(now - std::time::Duration::from_secs(60));
    params.not_after = to_offset(now + ttl);
    params.serial_number = Some(random_serial());
    params
        .self_signed(key)
        .map(|c| c.der().clone())
        .map_err(|e| SignError::Internal(format!("self-signing: {e}")))
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A random positive serial: 16 bytes, top bit clear and second bit set so
/// the DER encoding is always 16 bytes (126 bits of entropy).
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    crate::crypto::random_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn certificate_params(
    decision: &IssuanceDecision,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, SignError> {
    let mut params = CertificateParams::default();
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    params.serial_number = Some(random_serial());
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = decision.common_name() {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.subject_alt_names = decision
        .sans()
        .iter()
        .map(rcgen_san)
        .collect::<Result<_, _>>()
        .map_err(SignError::Internal)?;
    if !decision.crl_distribution_points().is_empty() {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: decision.crl_distribution_points().to_vec(),
        }];
    }
    params.is_ca = match decision.ca() {
        Some(ca) => IsCa::Ca(match ca.path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        }),
        None => IsCa::ExplicitNoCa,
    };
    params.key_usages = decision
        .key_usage()
        .iter()
        .map(|ku| match ku {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        })
        .collect();
    params.extended_key_usages = decision
        .extended_key_usage()
        .iter()
        .map(|eku| match eku {
            ExtKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            ExtKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    if decision.renewable() {
        crate::renewal::mark(&mut params);
    }
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}
