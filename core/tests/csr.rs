//! Every CSR rejection the issue names, against fixtures made by OpenSSL.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use signet_core::crypto::{KeyError, KeyKind, SignatureError};
use signet_core::csr::{CsrError, VerifiedCsr};
use signet_core::names::San;
use signet_core::pem::{self, PemError};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/csr/{name}.pem", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(name: &str) -> Result<VerifiedCsr, CsrError> {
    VerifiedCsr::from_pem(&fixture(name))
}

#[test]
fn accepts_the_supported_key_types() {
    let cases = [
        ("ec-p256", KeyKind::EcdsaP256),
        ("ec-p384", KeyKind::EcdsaP384),
        ("ed25519", KeyKind::Ed25519),
        ("rsa-2048", KeyKind::Rsa { bits: 2048 }),
        ("rsa-4096", KeyKind::Rsa { bits: 4096 }),
    ];
    for (name, kind) in cases {
        let csr = parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(csr.key_kind(), kind, "{name}");
        assert_eq!(csr.requested_sans().len(), 1, "{name}");
        assert!(
            matches!(&csr.requested_sans()[0], San::Uri(id) if id.as_str() == "spiffe://cluster.local/ns/default/sa/demo")
        );
        assert!(!csr.requests_ca());
        assert!(csr.subject().contains("signet-test"));
    }
}

#[test]
fn refuses_weak_and_unsupported_keys() {
    assert_eq!(
        parse("rsa-1024").unwrap_err(),
        CsrError::Key(KeyError::RsaTooSmall { bits: 1024 })
    );
    assert_eq!(parse("dsa").unwrap_err(), CsrError::Key(KeyError::Dsa));
    assert_eq!(
        parse("ec-p521").unwrap_err(),
        CsrError::Key(KeyError::UnsupportedCurve("P-521".into()))
    );
    assert!(
        matches!(parse("ec-secp256k1").unwrap_err(), CsrError::Key(KeyError::UnsupportedCurve(c)) if c == "1.3.132.0.10")
    );
    assert!(
        matches!(parse("ec-brainpool").unwrap_err(), CsrError::Key(KeyError::UnsupportedCurve(c)) if c == "1.3.36.3.3.2.8.1.1.7")
    );
    assert!(matches!(
        parse("ed448").unwrap_err(),
        CsrError::Key(KeyError::Unsupported(_))
    ));
    assert_eq!(parse("rsa-1024").unwrap_err().reason(), "weak_key");
    assert_eq!(parse("dsa").unwrap_err().reason(), "weak_key");
}

#[test]
fn refuses_broken_hashes_and_unsupported_signatures() {
    assert_eq!(
        parse("rsa-md5").unwrap_err(),
        CsrError::Signature(SignatureError::WeakHash("md5WithRSAEncryption"))
    );
    assert_eq!(
        parse("rsa-sha1").unwrap_err(),
        CsrError::Signature(SignatureError::WeakHash("sha1WithRSAEncryption"))
    );
    assert_eq!(
        parse("ec-sha1").unwrap_err(),
        CsrError::Signature(SignatureError::WeakHash("ecdsa-with-SHA1"))
    );
    assert!(matches!(
        parse("rsa-pss").unwrap_err(),
        CsrError::Signature(SignatureError::Unsupported(_))
    ));
    assert_eq!(
        parse("rsa-md5").unwrap_err().reason(),
        "weak_signature_hash"
    );
}

/// Flips one bit of the signature, re-armours, and expects a refusal.
#[test]
fn refuses_a_forged_signature() {
    for name in ["ec-p256", "ec-p384", "ed25519", "rsa-2048"] {
        let mut der = pem::parse_strict(&fixture(name)).unwrap().remove(0).der;
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let forged = pem::encode("CERTIFICATE REQUEST", &der);
        let err = VerifiedCsr::from_pem(forged.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            CsrError::Signature(SignatureError::BadSignature),
            "{name}"
        );
        assert_eq!(err.reason(), "bad_signature");
    }
}

/// Changing a signed byte (the requested name) must break the signature too.
#[test]
fn refuses_a_tampered_request_body() {
    let der = pem::parse_strict(&fixture("ec-p256"))
        .unwrap()
        .remove(0)
        .der;
    let at = der
        .windows(4)
        .position(|w| w == b"demo")
        .expect("SAN in DER");
    let mut tampered = der.clone();
    tampered[at..at + 4].copy_from_slice(b"root");
    assert_eq!(
        VerifiedCsr::from_der(&tampered).unwrap_err(),
        CsrError::Signature(SignatureError::BadSignature)
    );
}

#[test]
fn refuses_trailing_garbage_and_multiple_csrs() {
    let one = fixture("ec-p256");
    let mut trailing_text = one.clone();
    trailing_text.extend_from_slice(b"garbage\n");
    assert!(matches!(
        VerifiedCsr::from_pem(&trailing_text).unwrap_err(),
        CsrError::Pem(PemError::TrailingData { .. })
    ));

    let mut der = pem::parse_strict(&one).unwrap().remove(0).der;
    der.extend_from_slice(&[0, 0]);
    assert_eq!(
        VerifiedCsr::from_der(&der).unwrap_err(),
        CsrError::TrailingData(2)
    );
    let armoured = pem::encode("CERTIFICATE REQUEST", &der);
    assert_eq!(
        VerifiedCsr::from_pem(armoured.as_bytes()).unwrap_err(),
        CsrError::TrailingData(2)
    );

    let two = [one.clone(), fixture("ec-p384")].concat();
    assert_eq!(
        VerifiedCsr::from_pem(&two).unwrap_err(),
        CsrError::MultipleCsrs(2)
    );
}

#[test]
fn refuses_malformed_input() {
    assert!(matches!(
        VerifiedCsr::from_pem(b"").unwrap_err(),
        CsrError::Pem(PemError::Empty)
    ));
    assert!(matches!(
        VerifiedCsr::from_pem(b"hello").unwrap_err(),
        CsrError::Pem(_)
    ));
    assert!(matches!(
        VerifiedCsr::from_der(b"\x30\x03\x02\x01\x00").unwrap_err(),
        CsrError::Malformed(_)
    ));
    let cert = pem::encode("CERTIFICATE", b"\x30\x00");
    assert!(matches!(
        VerifiedCsr::from_pem(cert.as_bytes()).unwrap_err(),
        CsrError::WrongPemLabel(_)
    ));
    let huge = pem::encode("CERTIFICATE REQUEST", &vec![0u8; 40_000]);
    assert_eq!(
        VerifiedCsr::from_pem(huge.as_bytes()).unwrap_err(),
        CsrError::TooLarge
    );
    // Truncation at every length never panics and never succeeds.
    let der = pem::parse_strict(&fixture("rsa-2048"))
        .unwrap()
        .remove(0)
        .der;
    for len in 0..der.len() {
        assert!(
            VerifiedCsr::from_der(&der[..len]).is_err(),
            "truncated at {len}"
        );
    }
}

#[test]
fn records_what_is_asked_without_granting_it() {
    let ca = parse("ca-request").unwrap();
    assert!(ca.requests_ca());

    let email = parse("email-san").unwrap();
    assert_eq!(email.unsupported_names().len(), 1);
    assert_eq!(email.unsupported_names()[0].kind, "email");

    let server = parse("server-names").unwrap();
    let names: Vec<String> = server
        .requested_sans()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        names,
        ["DNS:api.example.com", "DNS:*.example.com", "IP:10.1.2.3"]
    );

    // Requested key usages and EKUs are parsed past, not kept; a critical
    // extension signet does not understand (here nameConstraints) is
    // refused rather than dropped.
    let extra = parse("extra-exts").unwrap_err();
    assert_eq!(extra.reason(), "unsupported_critical_extension");
    assert!(extra.to_string().contains("2.5.29.30"), "{extra}");
}

#[test]
fn refuses_invalid_spiffe_ids() {
    let err = parse("spiffe-dotdot").unwrap_err();
    assert_eq!(err.reason(), "invalid_name");
    assert!(err.to_string().contains("'.' or '..'"), "{err}");
}

/// Bytes outside the signed part must not change without the CSR being refused.
#[test]
fn refuses_every_single_bit_flip_outside_the_signature() {
    for name in ["ec-p256", "rsa-2048", "ed25519"] {
        let der = pem::parse_strict(&fixture(name)).unwrap().remove(0).der;
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut m = der.clone();
                m[i] ^= 1 << bit;
                assert!(
                    VerifiedCsr::from_der(&m).is_err(),
                    "{name}: flipping bit {bit} of byte {i} was accepted"
                );
            }
        }
    }
}
