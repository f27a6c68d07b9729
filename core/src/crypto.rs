//! Which keys and signature algorithms signet accepts, and signature checks.
//!
//! One table decides: ECDSA P-256/P-384, RSA 2048–8192 with PKCS#1 v1.5
//! SHA-2, and Ed25519. Everything else is refused with a reason that names the
//! problem (weak hash, small RSA key, unsupported curve, DSA). The same table
//! verifies CSR self-signatures and certificate chains.

use std::fmt;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_MD2WITHRSAENC, OID_PKCS1_MD4WITHRSAENC, OID_PKCS1_MD5WITHRSAENC,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA224WITHRSA,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SHA1_WITH_RSA,
    OID_SIG_DSA_WITH_SHA1, OID_SIG_ECDSA_WITH_SHA224, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

/// Smallest and largest RSA modulus accepted, in bits.
pub const RSA_MIN_BITS: usize = 2048;
pub const RSA_MAX_BITS: usize = 8192;

/// The kind of an accepted public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
    Ed25519,
}

impl KeyKind {
    /// RSA keys may encipher session keys (TLS 1.2 RSA key exchange), so their
    /// certificates also get keyEncipherment.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa { .. })
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Why a public key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("RSA key of {bits} bits is too small (minimum {RSA_MIN_BITS})")]
    RsaTooSmall { bits: usize },
    #[error("RSA key of {bits} bits is too large (maximum {RSA_MAX_BITS})")]
    RsaTooLarge { bits: usize },
    #[error("RSA public exponent is not acceptable (must be odd and at least 65537)")]
    RsaExponent,
    #[error("DSA keys are not accepted")]
    Dsa,
    #[error("elliptic curve {0} is not accepted (use P-256 or P-384)")]
    UnsupportedCurve(String),
    #[error("RSASSA-PSS-restricted keys are not accepted (use an rsaEncryption key)")]
    RsaPssKey,
    #[error("key algorithm {0} is not accepted (use ECDSA P-256/P-384, RSA 2048-8192 or Ed25519)")]
    Unsupported(String),
    #[error("malformed public key")]
    Malformed,
}

impl KeyError {
    /// Weak keys get their own reason so callers can tell them from unknown ones.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::RsaTooSmall { .. } | KeyError::RsaExponent | KeyError::Dsa => "weak_key",
            KeyError::Malformed => "malformed",
            _ => "unsupported_key",
        }
    }
}

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("signature algorithm {0} uses a broken hash and is refused")]
    WeakHash(&'static str),
    #[error("signature algorithm {0} is not supported")]
    Unsupported(String),
    #[error("signature algorithm {alg} does not match the {key} key")]
    KeyMismatch { alg: &'static str, key: KeyKind },
    #[error("signature does not verify")]
    BadSignature,
}

impl SignatureError {
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::WeakHash(_) => "weak_signature_hash",
            SignatureError::Unsupported(_) => "unsupported_signature_algorithm",
            SignatureError::KeyMismatch { .. } => "signature_key_mismatch",
            SignatureError::BadSignature => "bad_signature",
        }
    }
}

/// Classifies a SubjectPublicKeyInfo, refusing what signet does not accept.
pub fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, KeyError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or(KeyError::Malformed)?;
        let (kind, point_len) = if curve == OID_EC_P256 {
            (KeyKind::EcdsaP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyKind::EcdsaP384, 97)
        } else if curve == OID_NIST_EC_P521 {
            return Err(KeyError::UnsupportedCurve("P-521".into()));
        } else {
            return Err(KeyError::UnsupportedCurve(curve.to_id_string()));
        };
        // Only uncompressed points: every mainstream stack emits them and
        // the encoder that writes the certificate copies the bytes as-is.
        let point = spki.subject_public_key.as_ref();
        if point.len() != point_len || point[0] != 0x04 {
            return Err(KeyError::Malformed);
        }
        Ok(kind)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(KeyError::Malformed);
        };
        let bits = rsa.key_size();
        if bits < RSA_MIN_BITS {
            return Err(KeyError::RsaTooSmall { bits });
        }
        if bits > RSA_MAX_BITS {
            return Err(KeyError::RsaTooLarge { bits });
        }
        match rsa.try_exponent() {
            Ok(e) if e >= 65_537 && e % 2 == 1 => Ok(KeyKind::Rsa { bits }),
            Ok(_) => Err(KeyError::RsaExponent),
            Err(_) => Err(KeyError::RsaExponent),
        }
    } else if *alg == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() || spki.subject_public_key.as_ref().len() != 32 {
            return Err(KeyError::Malformed);
        }
        Ok(KeyKind::Ed25519)
    } else if *alg == OID_KEY_TYPE_DSA {
        Err(KeyError::Dsa)
    } else if *alg == OID_PKCS1_RSASSAPSS {
        Err(KeyError::RsaPssKey)
    } else if *alg == OID_SIG_ED448 {
        Err(KeyError::Unsupported("Ed448".into()))
    } else {
        Err(KeyError::Unsupported(alg.to_id_string()))
    }
}

/// Picks the verification algorithm for a signature algorithm and key kind.
fn verification_algorithm(
    alg: &AlgorithmIdentifier<'_>,
    key: KeyKind,
) -> Result<&'static dyn VerificationAlgorithm, SignatureError> {
    let oid = &alg.algorithm;
    let mismatch = |name: &'static str| SignatureError::KeyMismatch { alg: name, key };
    if *oid == OID_SIG_ECDSA_WITH_SHA256 {
        return match key {
            KeyKind::EcdsaP256 => Ok(&signature::ECDSA_P256_SHA256_ASN1),
            KeyKind::EcdsaP384 => Ok(&signature::ECDSA_P384_SHA256_ASN1),
            _ => Err(mismatch("ecdsa-with-SHA256")),
        };
    }
    if *oid == OID_SIG_ECDSA_WITH_SHA384 {
        return match key {
            KeyKind::EcdsaP256 => Ok(&signature::ECDSA_P256_SHA384_ASN1),
            KeyKind::EcdsaP384 => Ok(&signature::ECDSA_P384_SHA384_ASN1),
            _ => Err(mismatch("ecdsa-with-SHA384")),
        };
    }
    if *oid == OID_SIG_ECDSA_WITH_SHA512 {
        return match key {
            KeyKind::EcdsaP256 => Ok(&signature::ECDSA_P256_SHA512_ASN1),
            KeyKind::EcdsaP384 => Ok(&signature::ECDSA_P384_SHA512_ASN1),
            _ => Err(mismatch("ecdsa-with-SHA512")),
        };
    }
    let rsa = |name, alg: &'static dyn VerificationAlgorithm| match key {
        KeyKind::Rsa { .. } => Ok(alg),
        _ => Err(mismatch(name)),
    };
    if *oid == OID_PKCS1_SHA256WITHRSA {
        return rsa(
            "sha256WithRSAEncryption",
            &signature::RSA_PKCS1_2048_8192_SHA256,
        );
    }
    if *oid == OID_PKCS1_SHA384WITHRSA {
        return rsa(
            "sha384WithRSAEncryption",
            &signature::RSA_PKCS1_2048_8192_SHA384,
        );
    }
    if *oid == OID_PKCS1_SHA512WITHRSA {
        return rsa(
            "sha512WithRSAEncryption",
            &signature::RSA_PKCS1_2048_8192_SHA512,
        );
    }
    if *oid == OID_SIG_ED25519 {
        if alg.parameters.is_some() {
            return Err(SignatureError::Unsupported(
                "Ed25519 with parameters".to_owned(),
            ));
        }
        return match key {
            KeyKind::Ed25519 => Ok(&signature::ED25519),
            _ => Err(mismatch("Ed25519")),
        };
    }
    Err(refused_algorithm(alg))
}

fn refused_algorithm(alg: &AlgorithmIdentifier<'_>) -> SignatureError {
    let oid = &alg.algorithm;
    let weak: &[(&x509_parser::der_parser::Oid<'static>, &'static str)] = &[
        (&OID_PKCS1_MD2WITHRSAENC, "md2WithRSAEncryption"),
        (&OID_PKCS1_MD4WITHRSAENC, "md4WithRSAEncryption"),
        (&OID_PKCS1_MD5WITHRSAENC, "md5WithRSAEncryption"),
        (&OID_PKCS1_SHA1WITHRSA, "sha1WithRSAEncryption"),
        (&OID_SHA1_WITH_RSA, "sha1WithRSA"),
        (&OID_SIG_DSA_WITH_SHA1, "dsa-with-SHA1"),
    ];
    if let Some((_, name)) = weak.iter().find(|(o, _)| *o == oid) {
        return SignatureError::WeakHash(name);
    }
    match oid.to_id_string().as_str() {
        "1.2.840.10045.4.1" => SignatureError::WeakHash("ecdsa-with-SHA1"),
        "1.3.14.3.2.25" => SignatureError::WeakHash("md5WithRSA"),
        _ if *oid == OID_PKCS1_RSASSAPSS => {
            SignatureError::Unsupported("RSASSA-PSS (sign with PKCS#1 v1.5 SHA-256)".to_owned())
        }
        _ if *oid == OID_PKCS1_SHA224WITHRSA || *oid == OID_SIG_ECDSA_WITH_SHA224 => {
            SignatureError::Unsupported("SHA-224 signatures".to_owned())
        }
        other => SignatureError::Unsupported(other.to_owned()),
    }
}

/// Verifies `signature` over `message` by the key in `signer_spki`.
pub fn verify_signature(
    signer_spki: &SubjectPublicKeyInfo<'_>,
    signer_kind: KeyKind,
    alg: &AlgorithmIdentifier<'_>,
    signature: &[u8],
    message: &[u8],
) -> Result<(), SignatureError> {
    let verification = verification_algorithm(alg, signer_kind)?;
    UnparsedPublicKey::new(verification, signer_spki.subject_public_key.as_ref())
        .verify(message, signature)
        .map_err(|_| SignatureError::BadSignature)
}

/// SHA-256 of some bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    use aws_lc_rs::rand::SecureRandom as _;
    // The system RNG only fails if the OS cannot supply randomness at all,
    // in which case no certificate may be issued: abort loudly.
    aws_lc_rs::rand::SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random number generator failed");
}

/// Constant-time equality, for comparing secrets and their digests.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
