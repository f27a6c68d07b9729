//! A corpus of hostile certificate signing requests, made with rcgen and
//! hand-written DER (never with signet's own code), each with what a
//! signet that follows its policy must answer.
//!
//! The OpenSSL-made fixtures of `core/testdata/csr/` (weak keys and hashes,
//! unusual curves) are included by file; the rest are built here because
//! OpenSSL refuses to write them (duplicate extensions, NUL bytes, raw
//! UTF-8 in a dNSName, thousands of names).

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyPair, KeyUsagePurpose, SanType,
    string::Ia5String,
};

/// The SPIFFE ID every well-formed case asks for (the dev server's REST
/// grant covers `spiffe://cluster.local/*`).
pub const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";

/// What signet must do with a hostile CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Refused: REST `{"error": {"code", "reason"}}`.
    Refused {
        code: &'static str,
        reason: &'static str,
    },
    /// Signed, but the certificate carries none of the requested extras:
    /// only `DEMO` as SAN, `CA:FALSE`, no keyCertSign, no code signing, no
    /// name constraints, no extension it does not know.
    SignedWithoutExtras,
}

/// One hostile request.
#[derive(Debug, Clone)]
pub struct HostileCsr {
    pub name: &'static str,
    pub pem: String,
    /// The REST profile to ask for (`server` for DNS-only requests).
    pub profile: &'static str,
    pub expect: Expect,
}

const fn refused(code: &'static str, reason: &'static str) -> Expect {
    Expect::Refused { code, reason }
}
const INVALID: &str = "invalid_csr";
const POLICY: &str = "policy_denied";

// OIDs as rcgen wants them.
const OID_SAN: &[u64] = &[2, 5, 29, 17];
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const OID_EKU: &[u64] = &[2, 5, 29, 37];
const OID_NAME_CONSTRAINTS: &[u64] = &[2, 5, 29, 30];
/// A private-enterprise OID no one implements.
pub const OID_UNKNOWN: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 1, 1];
/// signet's renewal mark (`signet_core::renewal::RENEWAL_MARKER`, written
/// out here so that the corpus does not use signet's code).
pub const SIGNET_RENEWAL_MARK: &str = "signet renewable workload";
const OID_SAN_DER: &[u8] = &[0x55, 0x1d, 0x11];
const LONG_NAMESPACE_ID: &str = "spiffe://cluster.local/ns/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/sa/x";

fn name_constraints(critical: bool) -> CustomExtension {
    let mut nc = CustomExtension::from_oid_content(
        OID_NAME_CONSTRAINTS,
        tlv(0x30, &tlv(0xa0, &tlv(0x30, &tlv(0x82, b".evil")))),
    );
    nc.set_criticality(critical);
    nc
}

/// `value` (one TLV) re-encoded with a needless long-form length.
fn long_form(value: &[u8]) -> Vec<u8> {
    let (tag, len) = (value[0], value[1]);
    assert!(len < 0x80, "short form expected");
    [vec![tag, 0x81, len], value[2..].to_vec()].concat()
}

/// `value` (one TLV) re-encoded with an indefinite length (BER only).
fn indefinite(value: &[u8]) -> Vec<u8> {
    [vec![value[0] | 0x20, 0x80], value[2..].to_vec(), vec![0, 0]].concat()
}

/// An Extension: OID, optional critical flag written out, OCTET STRING value.
fn extension(oid: &[u8], critical: Option<bool>, value: &[u8]) -> Vec<u8> {
    let mut body = tlv(0x06, oid);
    if let Some(c) = critical {
        body.extend(tlv(0x01, &[if c { 0xff } else { 0x00 }]));
    }
    body.extend(tlv(0x04, value));
    tlv(0x30, &body)
}

/// An extensionRequest attribute with one value (the given extensions) or,
/// with `second`, two values.
fn ext_request(exts: &[&[u8]], second: Option<&[&[u8]]>) -> Vec<u8> {
    let value = |e: &[&[u8]]| tlv(0x30, &e.concat());
    let mut values = value(exts);
    if let Some(s) = second {
        values.extend(value(s));
    }
    let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
    tlv(0x30, &[tlv(0x06, &oid), tlv(0x31, &values)].concat())
}

/// A PKCS#10 request written by hand (empty subject, the given attributes)
/// and signed with a fresh P-256 key, so that only its shape is wrong.
fn hand_csr(attributes: &[Vec<u8>]) -> String {
    use rcgen::{PublicKeyData as _, SigningKey as _};
    let key = KeyPair::generate().expect("P-256 key");
    let info = tlv(
        0x30,
        &[
            tlv(0x02, &[0]),
            tlv(0x30, &[]),
            key.subject_public_key_info(),
            tlv(0xa0, &attributes.concat()),
        ]
        .concat(),
    );
    let sig = key.sign(&info).expect("sign");
    // ecdsa-with-SHA256
    let alg = tlv(
        0x30,
        &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let bits = tlv(0x03, &[&[0u8][..], &sig].concat());
    der_to_pem(
        "CERTIFICATE REQUEST",
        &tlv(0x30, &[info, alg, bits].concat()),
    )
}

/// DER: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// A GeneralNames SEQUENCE of raw `(context tag, bytes)` entries, bytes
/// copied as they are (so NUL, control characters or UTF-8 go through).
fn general_names(names: &[(u8, &[u8])]) -> Vec<u8> {
    let body: Vec<u8> = names
        .iter()
        .flat_map(|(tag, value)| tlv(0x80 | tag, value))
        .collect();
    tlv(0x30, &body)
}
const DNS: u8 = 2;
const URI: u8 = 6;

fn ia5(s: &str) -> Ia5String {
    Ia5String::try_from(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn uri(s: &str) -> SanType {
    SanType::URI(ia5(s))
}

fn params(sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans;
    p
}

fn raw_san(names: &[(u8, &[u8])], critical: bool) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_SAN, general_names(names));
    ext.set_criticality(critical);
    ext
}

fn make(p: &CertificateParams) -> String {
    let key = KeyPair::generate().expect("P-256 key");
    p.serialize_request(&key)
        .expect("rcgen CSR")
        .pem()
        .expect("PEM")
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../core/testdata/csr")
        .join(format!("{name}.pem"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Flips one bit of the signature (the last byte of the DER): the request
/// is intact, its signature no longer verifies.
fn forged(pem: &str) -> String {
    let der = pem_to_der(pem);
    let mut der = der;
    *der.last_mut().expect("non-empty") ^= 0x01;
    der_to_pem("CERTIFICATE REQUEST", &der)
}

/// Base64 body of the first PEM block.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

/// PEM armour around `der`.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The corpus. Every case but the `SignedWithoutExtras` ones must be
/// refused with exactly its code and reason.
pub fn csr_corpus() -> Vec<HostileCsr> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, pem, expect| {
        let profile = if name.contains("dns") {
            "server"
        } else {
            "workload"
        };
        out.push(HostileCsr {
            name,
            pem,
            profile,
            expect,
        })
    };

    // Keys, hashes and curves, by OpenSSL.
    for (name, reason) in [
        ("rsa-1024", "weak_key"),
        ("dsa", "weak_key"),
        ("rsa-md5", "weak_signature_hash"),
        ("rsa-sha1", "weak_signature_hash"),
        ("ec-sha1", "weak_signature_hash"),
        ("rsa-pss", "unsupported_signature_algorithm"),
        ("ec-p521", "unsupported_key"),
        ("ec-secp256k1", "unsupported_key"),
        ("ec-brainpool", "unsupported_key"),
        ("ed448", "unsupported_key"),
    ] {
        add(name, fixture(name), refused(INVALID, reason));
    }

    let good = make(&params(vec![uri(DEMO)]));
    add(
        "forged-signature",
        forged(&good),
        refused(INVALID, "bad_signature"),
    );

    // Too many names: over the SAN limit, and far over the size limit.
    let many = |n: usize| -> Vec<SanType> {
        (0..n)
            .map(|i| SanType::DnsName(ia5(&format!("h{i}.cluster.local"))))
            .collect()
    };
    add(
        "101-sans",
        make(&params(many(101))),
        refused(INVALID, "too_many_sans"),
    );
    // (1,000 names: over the 16 KiB CSR limit, under the 64 KiB body and
    // message limits, so the CSR's own check answers.)
    add(
        "1000-sans",
        make(&params(many(1000))),
        refused(INVALID, "too_large"),
    );

    // The same extension twice.
    let mut p = params(vec![uri(DEMO)]);
    p.custom_extensions.push(raw_san(
        &[(URI, b"spiffe://cluster.local/ns/kube-system/sa/admin")],
        false,
    ));
    add(
        "duplicate-san",
        make(&p),
        refused(INVALID, "duplicate_extension"),
    );
    let mut p = params(vec![uri(DEMO)]);
    p.is_ca = IsCa::ExplicitNoCa;
    p.custom_extensions.push(CustomExtension::from_oid_content(
        OID_BASIC_CONSTRAINTS,
        tlv(0x30, &[0x01, 0x01, 0xff]),
    ));
    add(
        "duplicate-basic-constraints",
        make(&p),
        refused(INVALID, "duplicate_extension"),
    );
    let mut p = params(vec![]);
    p.custom_extensions.push(CustomExtension::from_oid_content(
        OID_SAN,
        vec![0x30, 0x05, 0x86, 0x09],
    ));
    add(
        "malformed-san",
        make(&p),
        refused(INVALID, "malformed_extension"),
    );

    // Bytes that must never reach a certificate.
    for (name, tag, value) in [
        ("nul-in-dns", DNS, &b"evil\0.cluster.local"[..]),
        ("bell-in-dns", DNS, &b"ev\x07il.cluster.local"[..]),
        ("newline-in-dns", DNS, &b"evil.cluster.local\nx"[..]),
        ("utf8-idn-dns", DNS, "café.cluster.local".as_bytes()),
        (
            "nul-in-spiffe-id",
            URI,
            &b"spiffe://cluster.local/ns/default/sa/de\0mo"[..],
        ),
        (
            "utf8-in-spiffe-id",
            URI,
            "spiffe://cluster.local/ns/default/sa/démo".as_bytes(),
        ),
    ] {
        let mut p = params(vec![]);
        p.custom_extensions.push(raw_san(&[(tag, value)], true));
        add(name, make(&p), refused(INVALID, "invalid_name"));
    }

    // SPIFFE IDs that would name something else once normalised.
    for (name, id) in [
        (
            "spiffe-dotdot",
            "spiffe://cluster.local/ns/default/sa/../../kube-system/sa/admin",
        ),
        (
            "spiffe-percent-2e",
            "spiffe://cluster.local/ns/default/sa/%2e%2e/admin",
        ),
        (
            "spiffe-query",
            "spiffe://cluster.local/ns/default/sa/demo?admin=1",
        ),
        (
            "spiffe-fragment",
            "spiffe://cluster.local/ns/default/sa/demo#admin",
        ),
        (
            "spiffe-port",
            "spiffe://cluster.local:443/ns/default/sa/demo",
        ),
        (
            "spiffe-userinfo",
            "spiffe://admin@cluster.local/ns/default/sa/demo",
        ),
        ("spiffe-empty-segment", "spiffe://cluster.local/ns//sa/demo"),
    ] {
        add(
            name,
            make(&params(vec![uri(id)])),
            refused(INVALID, "invalid_name"),
        );
    }
    add(
        "spiffe-wrong-trust-domain",
        make(&params(vec![uri(
            "spiffe://evil.example/ns/default/sa/demo",
        )])),
        refused(POLICY, "wrong_trust_domain"),
    );
    add(
        "two-spiffe-ids",
        make(&params(vec![
            uri(DEMO),
            uri("spiffe://cluster.local/ns/default/sa/other"),
        ])),
        refused(POLICY, "profile_mismatch"),
    );
    add(
        "email-san",
        make(&params(vec![
            uri(DEMO),
            SanType::Rfc822Name(ia5("root@cluster.local")),
        ])),
        refused(POLICY, "san_type_not_allowed"),
    );
    add(
        "wildcard-dns",
        make(&params(vec![SanType::DnsName(ia5("*.cluster.local"))])),
        refused(POLICY, "wildcard_not_allowed"),
    );
    add(
        "inner-wildcard-dns",
        make(&params(vec![SanType::DnsName(ia5("foo.*.cluster.local"))])),
        refused(INVALID, "invalid_name"),
    );
    add(
        "dns-outside-the-grant",
        make(&params(vec![SanType::DnsName(ia5("bank.example.com"))])),
        refused(POLICY, "san_not_allowed"),
    );

    // Asking to be a CA.
    let mut p = params(vec![uri(DEMO)]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    add("ca-true", make(&p), refused(POLICY, "ca_requested"));

    // Extras that are ignored: the certificate is policy's, not the CSR's.
    let mut p = params(vec![uri(DEMO)]);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // EKU codeSigning (1.3.6.1.5.5.7.3.3).
    p.custom_extensions.push(CustomExtension::from_oid_content(
        OID_EKU,
        tlv(
            0x30,
            &tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03]),
        ),
    ));
    // nameConstraints permitting everything under .evil (not critical).
    p.custom_extensions.push(name_constraints(false));
    p.custom_extensions.push(CustomExtension::from_oid_content(
        OID_UNKNOWN,
        tlv(0x04, b"hello"),
    ));
    // signet's own renewal mark: only policy may grant it.
    p.distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, SIGNET_RENEWAL_MARK);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "admin\0.cluster.local");
    add("extras-are-ignored", make(&p), Expect::SignedWithoutExtras);

    // Critical extensions signet does not understand are refused, not dropped.
    let mut p = params(vec![uri(DEMO)]);
    p.custom_extensions.push(name_constraints(true));
    add(
        "critical-name-constraints",
        make(&p),
        refused(INVALID, "unsupported_critical_extension"),
    );
    let mut p = params(vec![uri(DEMO)]);
    let mut unknown = CustomExtension::from_oid_content(OID_UNKNOWN, tlv(0x04, b"hello"));
    unknown.set_criticality(true);
    p.custom_extensions.push(unknown);
    add(
        "critical-unknown-extension",
        make(&p),
        refused(INVALID, "unsupported_critical_extension"),
    );

    // Strict DER, inside the extensions as well as around them.
    let san_value = general_names(&[(URI, DEMO.as_bytes())]);
    let mut trailing = san_value.clone();
    trailing.extend_from_slice(&tlv(
        0x86,
        b"spiffe://cluster.local/ns/kube-system/sa/admin",
    ));
    for (name, value, reason) in [
        ("san-trailing-names", trailing, "trailing_data"),
        (
            "san-trailing-zero",
            [san_value.clone(), vec![0x00]].concat(),
            "trailing_data",
        ),
        (
            "san-long-form-length",
            long_form(&san_value),
            "non_canonical_der",
        ),
        (
            "san-indefinite-length",
            indefinite(&san_value),
            "non_canonical_der",
        ),
        (
            "san-constructed-uri",
            tlv(0x30, &tlv(0xa6, &tlv(0x16, DEMO.as_bytes()))),
            "non_canonical_der",
        ),
    ] {
        let mut p = params(vec![]);
        p.custom_extensions
            .push(CustomExtension::from_oid_content(OID_SAN, value));
        add(name, make(&p), refused(INVALID, reason));
    }
    // basicConstraints cA as BOOLEAN 01 (BER true, not DER).
    let mut p = params(vec![uri(DEMO)]);
    p.custom_extensions.push(CustomExtension::from_oid_content(
        OID_BASIC_CONSTRAINTS,
        tlv(0x30, &[0x01, 0x01, 0x01]),
    ));
    add(
        "basic-constraints-ber-true",
        make(&p),
        refused(INVALID, "non_canonical_der"),
    );
    // Hand-built requests: attribute shapes rcgen never writes.
    let san_ext = extension(OID_SAN_DER, None, &general_names(&[(URI, DEMO.as_bytes())]));
    let admin_ext = extension(
        OID_SAN_DER,
        None,
        &general_names(&[(URI, b"spiffe://cluster.local/ns/kube-system/sa/admin")]),
    );
    add(
        "extension-request-two-values",
        hand_csr(&[ext_request(&[&san_ext], Some(&[&admin_ext]))]),
        refused(INVALID, "multi_valued_attribute"),
    );
    add(
        "two-extension-requests",
        hand_csr(&[
            ext_request(&[&san_ext], None),
            ext_request(&[&admin_ext], None),
        ]),
        refused(INVALID, "duplicate_extension"),
    );
    add(
        "critical-false-written-out",
        hand_csr(&[ext_request(
            &[&extension(
                OID_SAN_DER,
                Some(false),
                &general_names(&[(URI, DEMO.as_bytes())]),
            )],
            None,
        )]),
        refused(INVALID, "non_canonical_der"),
    );
    add(
        "hand-built-control",
        hand_csr(&[ext_request(&[&san_ext], None)]),
        Expect::SignedWithoutExtras,
    );

    // Identity shape: an ID with an `ns` segment is exactly
    // /ns/<namespace>/sa/<service account>, with Kubernetes-valid names.
    for (name, id) in [
        (
            "shape-nested-namespace",
            "spiffe://cluster.local/ns/default/sa/demo/ns/kube-system/sa/admin",
        ),
        (
            "shape-ns-not-first",
            "spiffe://cluster.local/x/ns/kube-system/sa/admin",
        ),
        ("shape-no-sa", "spiffe://cluster.local/ns/kube-system"),
        (
            "shape-extra-segment",
            "spiffe://cluster.local/ns/default/sa/demo/x",
        ),
        (
            "shape-upper-ns-keyword",
            "spiffe://cluster.local/NS/kube-system/sa/admin",
        ),
        (
            "shape-upper-sa-keyword",
            "spiffe://cluster.local/ns/kube-system/SA/admin",
        ),
        (
            "shape-upper-namespace",
            "spiffe://cluster.local/ns/Kube-System/sa/admin",
        ),
        (
            "shape-dotted-namespace",
            "spiffe://cluster.local/ns/kube.system/sa/admin",
        ),
        (
            "shape-underscore-namespace",
            "spiffe://cluster.local/ns/kube_system/sa/admin",
        ),
        (
            "shape-hyphen-namespace",
            "spiffe://cluster.local/ns/-kube/sa/admin",
        ),
        (
            "shape-upper-account",
            "spiffe://cluster.local/ns/default/sa/Admin",
        ),
        (
            "shape-underscore-account",
            "spiffe://cluster.local/ns/default/sa/ad_min",
        ),
        ("shape-long-namespace", LONG_NAMESPACE_ID),
    ] {
        add(
            name,
            make(&params(vec![uri(id)])),
            refused(POLICY, "identity_shape"),
        );
    }

    out
}

/// An honest request for [`DEMO`] (to show the server still serves).
pub fn csr_corpus_good() -> String {
    make(&params(vec![uri(DEMO)]))
}
