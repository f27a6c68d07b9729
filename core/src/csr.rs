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
use crate::der;
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
    #[error("CSR key is the key of a CA in this authority's chain")]
    CaKey,
    #[error("CSR is not canonical DER ({0})")]
    NonCanonicalDer(String),
    #[error("CSR {0} has bytes after its value")]
    TrailingInside(String),
    #[error("CSR attribute {0} has more than one value")]
    MultiValuedAttribute(&'static str),
    #[error("CSR requests critical extension {0}, which signet does not understand")]
    UnsupportedCriticalExtension(String),
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
            CsrError::CaKey => "ca_key",
            CsrError::NonCanonicalDer(_) => "non_canonical_der",
            CsrError::TrailingInside(_) => "trailing_data",
            CsrError::MultiValuedAttribute(_) => "multi_valued_attribute",
            CsrError::UnsupportedCriticalExtension(_) => "unsupported_critical_extension",
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
    // Long on purpose: one pass over the request in the order RFC 2986 lays
    // it out, each refusal next to the field it is about.
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
        check_request_info(info.raw)?;

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

    /// The same key, asking for `sans` instead of what the CSR names: for
    /// front-ends whose signer chooses the names (a PodCertificateRequest's
    /// stub CSR names nothing; the pod's identity comes from the API).
    pub fn naming(mut self, sans: Vec<San>) -> Self {
        self.sans = sans;
        self.unsupported_names.clear();
        self
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

fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    der::tlv(input)
        .ok()
        .map(|(t, rest)| (t.tag, t.content, rest))
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

/// DER content of the OID 1.2.840.113549.1.9.14 (PKCS #9 extensionRequest).
const OID_EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
/// Extensions a CSR may mark critical: signet reads SAN and basicConstraints,
/// and policy alone sets keyUsage and extKeyUsage.
const KNOWN_EXTENSIONS: [(&[u8], &str); 4] = [
    (&[0x55, 0x1d, 0x11], "subjectAltName"),
    (&[0x55, 0x1d, 0x13], "basicConstraints"),
    (&[0x55, 0x1d, 0x0f], "keyUsage"),
    (&[0x55, 0x1d, 0x25], "extKeyUsage"),
];

fn oid_string(content: &[u8]) -> String {
    x509_parser::der_parser::oid::Oid::new(std::borrow::Cow::Borrowed(content)).to_id_string()
}

/// Reads the signed request info strictly (see [`crate::der`]): canonical
/// DER throughout and inside every extension value, at most one
/// extensionRequest with exactly one value, no extension twice, no bytes
/// after a value (the SAN's GeneralNames included), and no critical
/// extension signet does not understand.
/// A strict-DER refusal, named for `what` was being read.
fn der_refusal(what: &str, e: der::DerError) -> CsrError {
    match e {
        der::DerError::NonCanonical(why) => CsrError::NonCanonicalDer(format!("{what}: {why}")),
        der::DerError::Trailing => CsrError::TrailingInside(what.to_owned()),
        der::DerError::Malformed(why) => CsrError::Malformed(format!("{what}: {why}")),
    }
}

fn check_request_info(info: &[u8]) -> Result<(), CsrError> {
    let non_der = der_refusal;
    der::check_canonical(info).map_err(|e| non_der("request info", e))?;
    let info = der::single(info).map_err(|e| non_der("request info", e))?;
    let parts = der::elements(info.content).map_err(|e| non_der("request info", e))?;
    let Some(attrs) = parts.get(3) else {
        return Ok(());
    };
    if attrs.tag != 0xa0 || parts.len() > 4 {
        return Err(CsrError::Malformed(
            "unexpected fields in the request info".into(),
        ));
    }
    let mut extension_requests = 0;
    for attr in der::elements(attrs.content).map_err(|e| non_der("attributes", e))? {
        let fields = der::elements(attr.content).map_err(|e| non_der("attribute", e))?;
        let [oid, values] = fields.as_slice() else {
            return Err(CsrError::Malformed(
                "attribute is not (type, values)".into(),
            ));
        };
        if oid.tag != der::OID || values.tag != der::SET {
            return Err(CsrError::Malformed(
                "attribute is not (type, values)".into(),
            ));
        }
        if oid.content != OID_EXTENSION_REQUEST {
            continue;
        }
        extension_requests += 1;
        if extension_requests > 1 {
            return Err(CsrError::DuplicateExtension("extensionRequest"));
        }
        let values = der::elements(values.content).map_err(|e| non_der("extensionRequest", e))?;
        let [extensions] = values.as_slice() else {
            return Err(CsrError::MultiValuedAttribute("extensionRequest"));
        };
        check_extensions(extensions)?;
    }
    Ok(())
}

fn check_extensions(extensions: &der::Tlv<'_>) -> Result<(), CsrError> {
    let malformed = |what: &'static str| CsrError::MalformedExtension(what);
    if extensions.tag != der::SEQUENCE {
        return Err(malformed("extensionRequest"));
    }
    let mut seen: Vec<&[u8]> = Vec::new();
    for ext in der::elements(extensions.content).map_err(|e| der_refusal("extensionRequest", e))? {
        let fields = der::elements(ext.content).map_err(|_| malformed("extension"))?;
        let (oid, critical, value) = match fields.as_slice() {
            [o, v] => (o, false, v),
            [o, c, v] if c.tag == der::BOOLEAN => {
                if c.content != [0xff] {
                    return Err(CsrError::NonCanonicalDer(format!(
                        "extension {}: a FALSE critical flag must be omitted",
                        oid_string(o.content)
                    )));
                }
                (o, true, v)
            }
            _ => return Err(malformed("extension")),
        };
        if oid.tag != der::OID || value.tag != der::OCTET_STRING {
            return Err(malformed("extension"));
        }
        let known = KNOWN_EXTENSIONS
            .iter()
            .find(|(o, _)| *o == oid.content)
            .map(|(_, name)| *name);
        if seen.contains(&oid.content) {
            return Err(CsrError::DuplicateExtension(
                known.unwrap_or("an extension"),
            ));
        }
        seen.push(oid.content);
        der::check_canonical(value.content).map_err(|e| {
            let name = format!(
                "extension {}",
                known.map_or_else(|| oid_string(oid.content), str::to_owned)
            );
            match e {
                // A value that does not even parse is a malformed extension.
                der::DerError::Malformed(_) => {
                    CsrError::MalformedExtension(known.unwrap_or("an extension"))
                }
                other => der_refusal(&name, other),
            }
        })?;
        if critical && known.is_none() {
            return Err(CsrError::UnsupportedCriticalExtension(oid_string(
                oid.content,
            )));
        }
        if known == Some("subjectAltName") {
            check_general_names(value.content)?;
        }
    }
    Ok(())
}

/// GeneralNames: a SEQUENCE of names, the string-valued ones (email, DNS,
/// URI, IP) primitive as DER requires of IMPLICIT string types.
fn check_general_names(value: &[u8]) -> Result<(), CsrError> {
    let names = der::single(value).map_err(|_| CsrError::MalformedExtension("subjectAltName"))?;
    if names.tag != der::SEQUENCE {
        return Err(CsrError::MalformedExtension("subjectAltName"));
    }
    for name in
        der::elements(names.content).map_err(|_| CsrError::MalformedExtension("subjectAltName"))?
    {
        if matches!(name.tag, 0xa1 | 0xa2 | 0xa6 | 0xa7) {
            return Err(CsrError::NonCanonicalDer(
                "subjectAltName: a constructed string name".into(),
            ));
        }
        if name.tag & 0xc0 != 0x80 {
            return Err(CsrError::MalformedExtension("subjectAltName"));
        }
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
