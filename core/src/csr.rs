//! Certificate signing requests: parsed, key-checked and signature-verified.
//!
//! [`VerifiedCsr`] is the first pipeline stage. Constructing one proves that
//! the DER is a single well-formed PKCS#10 request, that its key is one signet
//! accepts, and that the request is signed by that key. It records what the
//! request *asks for* (names, CA flag); policy decides what is granted.

use std::fmt;
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_SUBJECT_ALT_NAME};
use x509_parser::prelude::FromDer;

use crate::crypto::{self, KeyError, KeyKind, SignatureError};
use crate::names::{DnsName, NameError, San};
use crate::pem::{self, PemError};
use crate::spiffe::SpiffeId;

/// Largest CSR accepted, DER bytes. Real CSRs are well under 4 KiB (RSA-8192
/// with a handful of names is ~1.5 KiB).
pub const MAX_CSR_DER_LEN: usize = 16 * 1024;
/// Most subjectAltNames a CSR may ask for.
pub const MAX_REQUESTED_SANS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR is not valid PEM: {0}")]
    Pem(PemError),
    #[error("PEM block is {0:?}, expected \"CERTIFICATE REQUEST\"")]
    WrongPemLabel(String),
    #[error("PEM holds {0} CSRs; send exactly one")]
    MultipleCsrs(usize),
    #[error("CSR is larger than {MAX_CSR_DER_LEN} bytes")]
    TooLarge,
    #[error("CSR is not valid DER: {0}")]
    Malformed(String),
    #[error("CSR has {0} bytes of trailing data after the request")]
    TrailingData(usize),
    #[error("CSR version must be v1 (0)")]
    Version,
    #[error("CSR key refused: {0}")]
    Key(#[from] KeyError),
    #[error("CSR signature refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("CSR requests extension {0} more than once")]
    DuplicateExtension(&'static str),
    #[error("CSR extension {0} is malformed")]
    MalformedExtension(&'static str),
    #[error("CSR asks for more than {MAX_REQUESTED_SANS} subjectAltNames")]
    TooManySans,
    #[error("CSR asks for an invalid name: {0}")]
    InvalidName(#[from] NameError),
    #[error("CSR asks for an IP address SAN of {0} bytes")]
    InvalidIp(usize),
}

impl CsrError {
    /// A stable, finer-grained reason for wire errors and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::Pem(_) | CsrError::WrongPemLabel(_) => "malformed_pem",
            CsrError::MultipleCsrs(_) => "multiple_csrs",
            CsrError::TooLarge => "too_large",
            CsrError::Malformed(_) | CsrError::Version => "malformed",
            CsrError::TrailingData(_) => "trailing_data",
            CsrError::Key(k) => k.reason(),
            CsrError::Signature(s) => s.reason(),
            CsrError::DuplicateExtension(_) => "duplicate_extension",
            CsrError::MalformedExtension(_) => "malformed_extension",
            CsrError::TooManySans => "too_many_sans",
            CsrError::InvalidName(_) | CsrError::InvalidIp(_) => "invalid_name",
        }
    }
}

/// A name the CSR asks for that signet never issues (email, other URI
/// schemes, otherName, directoryName, ...). Kept so policy can refuse the
/// request by name instead of silently dropping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedName {
    pub kind: &'static str,
    pub value: String,
}

/// A CSR whose structure, key and self-signature have been verified.
/// (Public data: cloning is fine, e.g. to hand a backend call to a task.)
#[derive(Clone)]
pub struct VerifiedCsr {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    key_kind: KeyKind,
    public_key: rcgen::SubjectPublicKeyInfo,
    sans: Vec<San>,
    unsupported_names: Vec<UnsupportedName>,
    requests_ca: bool,
    subject: String,
    common_name: Option<String>,
}

impl fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("key", &self.key_kind)
            .field("subject", &self.subject)
            .field("sans", &self.sans)
            .field("requests_ca", &self.requests_ca)
            .finish_non_exhaustive()
    }
}

impl VerifiedCsr {
    /// Parses exactly one PEM `CERTIFICATE REQUEST` (or `NEW CERTIFICATE
    /// REQUEST`) with nothing but whitespace around it.
    pub fn from_pem(input: &[u8]) -> Result<Self, CsrError> {
        if input.len() > MAX_CSR_DER_LEN * 2 {
            return Err(CsrError::TooLarge);
        }
        let mut blocks = pem::parse_strict(input).map_err(CsrError::Pem)?;
        if blocks.len() > 1 {
            return Err(CsrError::MultipleCsrs(blocks.len()));
        }
        let block = blocks.remove(0);
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::WrongPemLabel(block.label));
        }
        Self::from_der(&block.der)
    }

    /// Parses a DER-encoded PKCS#10 request.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_DER_LEN {
            return Err(CsrError::TooLarge);
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData(rest.len()));
        }
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(CsrError::Version);
        }
        let spki = &info.subject_pki;
        let key_kind = crypto::classify_key(spki)?;
        crypto::verify_signature(
            spki,
            key_kind,
            &csr.signature_algorithm,
            csr.signature_value.as_ref(),
            info.raw,
        )?;
        check_outer_der(der, info.raw)?;

        let mut sans = Vec::new();
        let mut unsupported_names = Vec::new();
        let mut requests_ca = false;
        let mut seen_san = false;
        let mut seen_bc = false;
        let extension_requests = info
            .iter_attributes()
            .filter(|a| {
                matches!(
                    a.parsed_attribute(),
                    x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(_)
                )
            })
            .count();
        if extension_requests > 1 {
            return Err(CsrError::DuplicateExtension("extensionRequest"));
        }
        for attr in info.iter_attributes() {
            let x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(req) =
                attr.parsed_attribute()
            else {
                continue;
            };
            for ext in &req.extensions {
                if ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME {
                    if std::mem::replace(&mut seen_san, true) {
                        return Err(CsrError::DuplicateExtension("subjectAltName"));
                    }
                    let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension()
                    else {
                        return Err(CsrError::MalformedExtension("subjectAltName"));
                    };
                    if san.general_names.len() > MAX_REQUESTED_SANS {
                        return Err(CsrError::TooManySans);
                    }
                    for name in &san.general_names {
                        collect_name(name, &mut sans, &mut unsupported_names)?;
                    }
                } else if ext.oid == OID_X509_EXT_BASIC_CONSTRAINTS {
                    if std::mem::replace(&mut seen_bc, true) {
                        return Err(CsrError::DuplicateExtension("basicConstraints"));
                    }
                    match ext.parsed_extension() {
                        ParsedExtension::BasicConstraints(bc) => requests_ca = bc.ca,
                        _ => return Err(CsrError::MalformedExtension("basicConstraints")),
                    }
                }
                // Every other requested extension (key usages, EKUs, policies,
                // unknown or critical ones) is ignored: policy alone decides
                // the certificate's extensions.
            }
        }

        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
        let subject = info.subject.to_string();
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty() && cn.len() <= 64 && !cn.chars().any(char::is_control))
            .map(str::to_owned);
        Ok(Self {
            der: der.to_vec(),
            spki_der: spki.raw.to_vec(),
            key_kind,
            public_key,
            sans,
            unsupported_names,
            requests_ca,
            subject,
            common_name,
        })
    }

    /// The DER of the whole request, for backends that forward it.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The request re-encoded as PEM.
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE REQUEST", &self.der)
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The public key, in the form the certificate encoder takes.
    pub fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.public_key
    }

    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// Names the CSR asks for, in request order, duplicates removed.
    pub fn requested_sans(&self) -> &[San] {
        &self.sans
    }

    pub fn unsupported_names(&self) -> &[UnsupportedName] {
        &self.unsupported_names
    }

    /// Whether the CSR asks for basicConstraints cA=TRUE.
    pub fn requests_ca(&self) -> bool {
        self.requests_ca
    }

    /// The requested subject, for logs only: never copied into a certificate.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The first subject CN, if printable and at most 64 characters. Leaves
    /// never carry it; a CA decision may name itself with it.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }
}

/// One DER TLV: (tag, content, rest). Only definite, minimal lengths.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n || rest[0] == 0 {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        if len < 0x80 {
            return None;
        }
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The signature does not cover the outer wrapper of a CSR, so the parser's
/// tolerance there would let one request travel in many encodings. Insist on
/// exactly SEQUENCE { info, SEQUENCE algorithm, BIT STRING (0 unused bits) }
/// in canonical DER.
fn check_outer_der(der: &[u8], info_raw: &[u8]) -> Result<(), CsrError> {
    let malformed =
        || CsrError::Malformed("non-canonical DER in the request's outer structure".into());
    let (tag, body, rest) = der_tlv(der).ok_or_else(malformed)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(malformed());
    }
    let (tag, _, after_info) = der_tlv(body).ok_or_else(malformed)?;
    if tag != 0x30 || &body[..body.len() - after_info.len()] != info_raw {
        return Err(malformed());
    }
    let (tag, alg, after_alg) = der_tlv(after_info).ok_or_else(malformed)?;
    if tag != 0x30 {
        return Err(malformed());
    }
    // AlgorithmIdentifier: an OID, then nothing or NULL (the only parameters
    // of the signature algorithms accepted).
    let (tag, _, params) = der_tlv(alg).ok_or_else(malformed)?;
    if tag != 0x06 || !(params.is_empty() || params == [0x05, 0x00]) {
        return Err(malformed());
    }
    let (tag, bits, end) = der_tlv(after_alg).ok_or_else(malformed)?;
    if tag != 0x03 || bits.first() != Some(&0) || !end.is_empty() {
        return Err(malformed());
    }
    Ok(())
}

fn collect_name(
    name: &GeneralName<'_>,
    sans: &mut Vec<San>,
    unsupported: &mut Vec<UnsupportedName>,
) -> Result<(), CsrError> {
    let san = match name {
        GeneralName::DNSName(d) => San::Dns(DnsName::new(d)?),
        GeneralName::IPAddress(bytes) => San::Ip(match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default()),
            16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()),
            n => return Err(CsrError::InvalidIp(n)),
        }),
        GeneralName::URI(u)
            if u.get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")) =>
        {
            San::Uri(SpiffeId::new(u).map_err(|source| {
                CsrError::InvalidName(NameError::Spiffe {
                    uri: u.chars().take(80).collect(),
                    source,
                })
            })?)
        }
        other => {
            let (kind, value) = match other {
                GeneralName::URI(u) => ("URI", u.to_string()),
                GeneralName::RFC822Name(e) => ("email", e.to_string()),
                GeneralName::OtherName(oid, _) => ("otherName", oid.to_id_string()),
                GeneralName::DirectoryName(n) => ("directoryName", n.to_string()),
                GeneralName::RegisteredID(oid) => ("registeredID", oid.to_id_string()),
                GeneralName::X400Address(_) => ("x400Address", String::new()),
                GeneralName::EDIPartyName(_) => ("ediPartyName", String::new()),
                GeneralName::Invalid(_, _) => {
                    return Err(CsrError::MalformedExtension("subjectAltName"));
                }
                _ => ("unknown", String::new()),
            };
            unsupported.push(UnsupportedName {
                kind,
                value: value
                    .chars()
                    .take(80)
                    .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                    .collect(),
            });
            return Ok(());
        }
    };
    if !sans.contains(&san) {
        sans.push(san);
    }
    Ok(())
}
