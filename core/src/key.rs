//! Keys: the private keys signet holds, and the handle every CA key signs
//! through.
//!
//! [`PrivateKey`] has no `Clone`, a redacted `Debug`, and zeroizes its
//! serialized form on drop. PEM leaves it only through [`PrivateKey::to_pem`],
//! which returns a zeroizing string for writing to a 0600 file.
//!
//! A CA's key is a [`KeyHandle`]: an algorithm, a public key and
//! `sign(message)`. The in-memory [`PrivateKey`] is one; a key in a PKCS#11
//! token, AWS KMS or a Vault Transit engine is another (the adapters live in
//! `signet-backends`), and its private half never enters signet. [`CaKey`]
//! is how rcgen signs through a handle: an in-memory key signs while rcgen
//! encodes; for a remote one rcgen encodes with an empty signature, and
//! [`CaKey::sign_der`] has the store sign the encoded `toBeSigned` and puts
//! the signature in its place.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
/// The signature algorithm of a key, as rcgen names it.
pub use rcgen::SignatureAlgorithm;
use rcgen::{PublicKeyData, SigningKey};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer as _;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{self, KeyKind};
use crate::error::SignError;
use crate::names::{San, rcgen_san};
use crate::{der, pem};

/// Key algorithms signet can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Rsa4096,
            KeyAlgorithm::Ed25519,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("unknown key algorithm {s:?}"))
    }
}

impl KeyAlgorithm {
    /// Reads a key algorithm where the key must be generated and held in
    /// this process, refusing a key-store entry (`{ type: pkcs11, ... }`)
    /// with `why` rather than a type error.
    pub fn deserialize_in_process<'de, D: serde::Deserializer<'de>>(
        d: D,
        why: &'static str,
    ) -> Result<Self, D::Error> {
        struct V(&'static str);
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyAlgorithm;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key algorithm (ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyAlgorithm, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KeyAlgorithm, A::Error> {
                // A map is a key-store entry (`{ type: ..., ... }`).
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Err(serde::de::Error::custom(self.0))
            }
        }
        d.deserialize_any(V(why))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyLoadError {
    #[error("no private key found in PEM")]
    NotFound,
    #[error("more than one private key in PEM")]
    Multiple,
    #[error("private key PEM is malformed: {0}")]
    Pem(#[from] pem::PemError),
    #[error("unsupported or malformed private key: {0}")]
    Unsupported(String),
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// A private key (EC P-256/P-384, RSA, Ed25519).
pub struct PrivateKey {
    inner: rcgen::KeyPair,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.inner.algorithm())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.inner.zeroize();
    }
}

impl PrivateKey {
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, KeyLoadError> {
        let generated = match alg {
            KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyAlgorithm::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlgorithm::Rsa3072 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyAlgorithm::Rsa4096 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
        };
        generated
            .map(|inner| Self { inner })
            .map_err(|e| KeyLoadError::Generate(e.to_string()))
    }

    /// Loads exactly one PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA
    /// PRIVATE KEY`) key from PEM. Other blocks (e.g. `EC PARAMETERS`) are ignored.
    pub fn from_pem(input: &[u8]) -> Result<Self, KeyLoadError> {
        let blocks = pem::parse_lenient(input)?;
        let mut keys = blocks.into_iter().filter(|b| {
            matches!(
                b.label.as_str(),
                "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY"
            )
        });
        let mut block = keys.next().ok_or(KeyLoadError::NotFound)?;
        if keys.next().is_some() {
            return Err(KeyLoadError::Multiple);
        }
        let der = Zeroizing::new(std::mem::take(&mut block.der));
        let key_der = match block.label.as_str() {
            "PRIVATE KEY" => rustls_pki_types::PrivateKeyDer::Pkcs8(der.as_slice().into()),
            "EC PRIVATE KEY" => rustls_pki_types::PrivateKeyDer::Sec1(der.as_slice().into()),
            _ => rustls_pki_types::PrivateKeyDer::Pkcs1(der.as_slice().into()),
        };
        let inner = rcgen::KeyPair::try_from(&key_der)
            .map_err(|e| KeyLoadError::Unsupported(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The key as PKCS#8 PEM, in memory that is wiped when dropped.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let der = Zeroizing::new(self.inner.serialize_der());
        Zeroizing::new(pem::encode("PRIVATE KEY", &der))
    }

    /// The key as PKCS#8 DER, for handing to TLS libraries.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.inner.serialize_der())
    }

    /// DER SubjectPublicKeyInfo of the public half.
    pub fn spki_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }

    pub fn signature_algorithm(&self) -> &'static SignatureAlgorithm {
        self.inner.algorithm()
    }

    /// A CSR for this key with no subject and the given names, for asking an
    /// upstream CA to certify it.
    pub fn csr_der(
        &self,
        common_name: Option<&str>,
        sans: &[San],
    ) -> Result<Vec<u8>, KeyLoadError> {
        csr_params(common_name, sans)?
            .serialize_request(&self.inner)
            .map(|csr| csr.der().to_vec())
            .map_err(|e| KeyLoadError::Generate(e.to_string()))
    }
}

/// What a CSR for a key says: the names, and a subject of at most a CN.
fn csr_params(
    common_name: Option<&str>,
    sans: &[San],
) -> Result<rcgen::CertificateParams, KeyLoadError> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(rcgen_san)
        .collect::<Result<_, _>>()
        .map_err(KeyLoadError::Generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = common_name {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    Ok(params)
}

impl PublicKeyData for PrivateKey {
    fn der_bytes(&self) -> &[u8] {
        self.inner.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.inner.algorithm()
    }
}

impl SigningKey for PrivateKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.inner.sign(msg)
    }
}

/// Where a CA key lives, for logs, metrics and configuration checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    /// `memory`, `pkcs11`, `aws_kms` or `vault_transit`.
    pub store: &'static str,
    /// Which key in the store (token and label, key ID, mount and name);
    /// never anything secret.
    pub id: String,
}

impl fmt::Display for KeyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id.is_empty() {
            f.write_str(self.store)
        } else {
            write!(f, "{} {}", self.store, self.id)
        }
    }
}

/// Why a key store did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// Unreachable, throttling, sealed, busy: worth trying again.
    #[error("the key store is unavailable: {0}")]
    Unavailable(String),
    /// Refused: no permission, a disabled or wrong key. Retrying will not help.
    #[error("the key store refused: {0}")]
    Refused(String),
}

impl From<KeyStoreError> for SignError {
    fn from(e: KeyStoreError) -> Self {
        match e {
            KeyStoreError::Unavailable(m) => SignError::BackendUnavailable(format!("CA key: {m}")),
            KeyStoreError::Refused(m) => SignError::BackendRejected(format!("CA key: {m}")),
        }
    }
}

/// A CA key: its algorithm, its public half and a way to sign with it.
/// Nothing of the private half crosses this interface.
#[async_trait]
pub trait KeyHandle: Send + Sync + fmt::Debug {
    /// The signature algorithm certificates signed with it carry
    /// (ECDSA P-256 with SHA-256, P-384 with SHA-384, RSA PKCS#1 v1.5 with
    /// SHA-256, Ed25519).
    fn algorithm(&self) -> &'static SignatureAlgorithm;

    /// The public key as SubjectPublicKeyInfo's BIT STRING holds it (the
    /// EC point, or the PKCS#1 RSAPublicKey).
    fn public_key(&self) -> &[u8];

    fn describe(&self) -> KeyDescription;

    /// The key itself when it is in this process, which lets rcgen sign
    /// while it encodes.
    fn in_memory(&self) -> Option<&PrivateKey> {
        None
    }

    /// Signs `message` (the DER that is signed) with [`Self::algorithm`];
    /// ECDSA signatures are DER `SEQUENCE { r, s }`. Signing has no effect
    /// but the signature, so a failed call may be retried.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError>;
}

#[async_trait]
impl KeyHandle for PrivateKey {
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.inner.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.inner.der_bytes()
    }
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "memory",
            id: String::new(),
        }
    }
    fn in_memory(&self) -> Option<&PrivateKey> {
        Some(self)
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner
            .sign(message)
            .map_err(|e| KeyStoreError::Refused(e.to_string()))
    }
}

/// A key a [`KeyFactory`] made: the handle to sign with, and the name the
/// store knows it by (a PKCS#11 label, a KMS alias, a Transit version).
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub handle: Arc<dyn KeyHandle>,
    pub name: String,
}

/// Where the keys of the intermediates signet rotates are made: in this
/// process ([`InMemoryKeys`]) or inside a key store, which generates the
/// key, signs its CSR and every certificate after, and never gives it out.
///
/// Keys are named by [`generated_key_name`] (`signet-<owner>-<unix
/// seconds>-<random>`), so that keys a stopped process could not retire are
/// found by [`KeyFactory::sweep`] from their age alone, without state.
#[async_trait]
pub trait KeyFactory: Send + Sync + fmt::Debug {
    /// The store (`memory`, `pkcs11`, `aws_kms`, `vault_transit`) and where
    /// in it keys are made.
    fn describe(&self) -> KeyDescription;

    /// A new key of `algorithm` for `owner` (an authority's name).
    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        owner: &str,
        now: std::time::SystemTime,
    ) -> Result<GeneratedKey, KeyStoreError>;

    /// Destroys (or schedules for deletion) a key this factory made, now
    /// that nothing signs with it.
    async fn retire(&self, key: &GeneratedKey) -> Result<(), KeyStoreError>;

    /// Destroys `owner`'s keys made before `before`, except `keep`: keys a
    /// process that stopped left behind. Returns how many it destroyed.
    async fn sweep(
        &self,
        owner: &str,
        before: std::time::SystemTime,
        keep: &str,
    ) -> Result<usize, KeyStoreError>;
}

/// Keys generated in memory (the default for an intermediate): nothing to
/// retire but the memory, which [`PrivateKey`] wipes when dropped.
#[derive(Debug, Default)]
pub struct InMemoryKeys;

#[async_trait]
impl KeyFactory for InMemoryKeys {
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "memory",
            id: String::new(),
        }
    }
    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        owner: &str,
        now: std::time::SystemTime,
    ) -> Result<GeneratedKey, KeyStoreError> {
        let key =
            PrivateKey::generate(algorithm).map_err(|e| KeyStoreError::Refused(e.to_string()))?;
        Ok(GeneratedKey {
            handle: Arc::new(key),
            name: generated_key_name(owner, now),
        })
    }
    async fn retire(&self, _key: &GeneratedKey) -> Result<(), KeyStoreError> {
        Ok(())
    }
    async fn sweep(
        &self,
        _owner: &str,
        _before: std::time::SystemTime,
        _keep: &str,
    ) -> Result<usize, KeyStoreError> {
        Ok(0)
    }
}

/// The name of a key made for `owner` at `now`: `signet-<owner>-<unix
/// seconds>-<8 hex digits>` (the random part keeps replicas apart).
pub fn generated_key_name(owner: &str, now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut random = [0u8; 4];
    crypto::random_bytes(&mut random);
    format!("signet-{owner}-{secs}-{}", hex::encode(random))
}

/// When a key named by [`generated_key_name`] for `owner` was made; `None`
/// for any other name (another owner's, or not signet's).
pub fn generated_key_time(owner: &str, name: &str) -> Option<std::time::SystemTime> {
    let rest = name
        .strip_prefix("signet-")?
        .strip_prefix(owner)?
        .strip_prefix('-')?;
    let (secs, random) = rest.split_once('-')?;
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || random.len() != 8
        || !random.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    // Checked: a name is whatever the store holds, and a time past what
    // SystemTime holds is not one signet made.
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs.parse().ok()?))
}

/// The public half of a key held elsewhere, read from its
/// SubjectPublicKeyInfo and checked against what signet accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kind: KeyKind,
    algorithm: &'static SignatureAlgorithm,
    bits: Vec<u8>,
    spki: Vec<u8>,
}

impl PublicKey {
    pub fn from_spki_der(spki_der: &[u8]) -> Result<Self, KeyLoadError> {
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| KeyLoadError::Unsupported(format!("public key: {e}")))?;
        if !rest.is_empty() {
            return Err(KeyLoadError::Unsupported(
                "public key: bytes after the SubjectPublicKeyInfo".into(),
            ));
        }
        let kind = crypto::classify_key(&spki)
            .map_err(|e| KeyLoadError::Unsupported(format!("public key: {e}")))?;
        let algorithm = match kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        };
        Ok(Self {
            kind,
            algorithm,
            bits: spki.subject_public_key.as_ref().to_vec(),
            spki: spki_der.to_vec(),
        })
    }

    /// From PKCS#11's `CKA_EC_PARAMS` (the curve's DER OID) and
    /// `CKA_EC_POINT` (the uncompressed point, bare or in a DER OCTET
    /// STRING as the standard says).
    pub fn from_ec(params: &[u8], point: &[u8]) -> Result<Self, KeyLoadError> {
        // Wrapped: an OCTET STRING holding exactly an uncompressed P-256
        // or P-384 point (a bare point can begin like an OCTET STRING).
        let point = match der::single(point) {
            Ok(t)
                if t.tag == der::OCTET_STRING
                    && t.content.first() == Some(&0x04)
                    && matches!(t.content.len(), 65 | 97) =>
            {
                t.content
            }
            _ => point,
        };
        let algorithm = der::encode(der::SEQUENCE, &[&EC_PUBLIC_KEY_OID[..], params].concat());
        let bits = der::encode(der::BIT_STRING, &[&[0u8][..], point].concat());
        Self::from_spki_der(&der::encode(der::SEQUENCE, &[algorithm, bits].concat()))
    }

    /// From an RSA modulus and public exponent (unsigned, big-endian).
    pub fn from_rsa(modulus: &[u8], exponent: &[u8]) -> Result<Self, KeyLoadError> {
        let rsa = der::encode(
            der::SEQUENCE,
            &[
                der::unsigned_integer(modulus),
                der::unsigned_integer(exponent),
            ]
            .concat(),
        );
        let algorithm = der::encode(der::SEQUENCE, &RSA_ENCRYPTION_NULL);
        let bits = der::encode(der::BIT_STRING, &[&[0u8][..], &rsa].concat());
        Self::from_spki_der(&der::encode(der::SEQUENCE, &[algorithm, bits].concat()))
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    pub fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
    /// What SubjectPublicKeyInfo's BIT STRING holds.
    pub fn bits(&self) -> &[u8] {
        &self.bits
    }
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The digest a store that signs digests is given for `message`, and
    /// its name: SHA-384 for P-384 keys, SHA-256 otherwise.
    pub fn digest(&self, message: &[u8]) -> Result<Digest, KeyStoreError> {
        let (alg, name) = match self.kind {
            KeyKind::EcdsaP384 => (&aws_lc_rs::digest::SHA384, DigestName::Sha384),
            KeyKind::EcdsaP256 | KeyKind::Rsa { .. } => {
                (&aws_lc_rs::digest::SHA256, DigestName::Sha256)
            }
            KeyKind::Ed25519 => {
                return Err(KeyStoreError::Refused(
                    "Ed25519 signs the message, not a digest".into(),
                ));
            }
        };
        Ok(Digest {
            name,
            bytes: aws_lc_rs::digest::digest(alg, message).as_ref().to_vec(),
        })
    }
}

/// OID 1.2.840.10045.2.1 (id-ecPublicKey).
const EC_PUBLIC_KEY_OID: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// OID 1.2.840.113549.1.1.1 (rsaEncryption) and NULL parameters.
const RSA_ENCRYPTION_NULL: [u8; 13] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// A message digest for a key store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub name: DigestName,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestName {
    Sha256,
    Sha384,
}

impl Digest {
    /// PKCS#1 v1.5 `DigestInfo` (RFC 8017 §9.2), what a raw RSA PKCS#1
    /// signature mechanism signs.
    pub fn digest_info(&self) -> Vec<u8> {
        let prefix: &[u8] = match self.name {
            DigestName::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            DigestName::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
        };
        [prefix, &self.bytes].concat()
    }
}

/// An ECDSA signature as PKCS#11 returns it (`r || s`) in X.509's DER form.
pub fn ecdsa_signature_to_der(raw: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
    der::ecdsa_raw_to_der(raw)
        .ok_or_else(|| KeyStoreError::Refused("the ECDSA signature is malformed".into()))
}

/// A CA's key as rcgen uses it: see the module documentation.
#[derive(Debug, Clone)]
pub struct CaKey(Arc<dyn KeyHandle>);

impl CaKey {
    pub fn new(handle: Arc<dyn KeyHandle>) -> Self {
        Self(handle)
    }

    pub fn handle(&self) -> &Arc<dyn KeyHandle> {
        &self.0
    }

    /// Whether signing calls out of the process.
    pub fn is_remote(&self) -> bool {
        self.0.in_memory().is_none()
    }

    pub fn spki_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }

    /// A CSR for this key (see [`PrivateKey::csr_der`]), signed where the
    /// key is.
    pub async fn csr_der(
        &self,
        common_name: Option<&str>,
        sans: &[San],
    ) -> Result<Vec<u8>, SignError> {
        let internal = |e: &dyn fmt::Display| SignError::Internal(e.to_string());
        let encoded = csr_params(common_name, sans)
            .map_err(|e| internal(&e))?
            .serialize_request(self)
            .map_err(|e| internal(&e))?;
        self.sign_der(encoded.der().to_vec()).await
    }

    /// Signs a fixed message (which no certificate, CRL or CSR can be) and
    /// verifies the signature: a store whose key is not the public key it
    /// reports is found when the key is opened, not at the first request.
    pub async fn probe(&self) -> Result<(), SignError> {
        const MESSAGE: &[u8] = b"signet: a probe of this CA key";
        let signature = self.0.sign(MESSAGE).await?;
        self.check(MESSAGE, &signature)
    }

    /// Completes what rcgen encoded with this key: an in-memory key has
    /// signed already; a remote one signs the `toBeSigned` now, and the
    /// signature replaces the empty one. The result is checked against the
    /// public key, so a store that signs with another key is caught here.
    pub async fn sign_der(&self, encoded: Vec<u8>) -> Result<Vec<u8>, SignError> {
        if !self.is_remote() {
            return Ok(encoded);
        }
        let malformed = |e: der::DerError| SignError::Internal(format!("re-encoding: {e}"));
        let (tbs, alg) = der::split_signed(&encoded).map_err(malformed)?;
        let started = crate::clock::monotonic();
        let result = self.0.sign(tbs).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(KeyStoreError::Unavailable(_)) => "unavailable",
            Err(KeyStoreError::Refused(_)) => "refused",
        };
        crate::metrics::UpstreamMetrics::global().key_signature(
            &self.0.describe(),
            outcome,
            crate::clock::elapsed(started),
        );
        let signature = result?;
        let signed = der::join_signed(tbs, alg, &signature);
        self.check(tbs, &signature)?;
        Ok(signed)
    }

    fn check(&self, message: &[u8], signature: &[u8]) -> Result<(), SignError> {
        use aws_lc_rs::signature as s;
        let alg: &'static dyn s::VerificationAlgorithm = match self.0.algorithm() {
            a if a == &rcgen::PKCS_ECDSA_P256_SHA256 => &s::ECDSA_P256_SHA256_ASN1,
            a if a == &rcgen::PKCS_ECDSA_P384_SHA384 => &s::ECDSA_P384_SHA384_ASN1,
            a if a == &rcgen::PKCS_RSA_SHA256 => &s::RSA_PKCS1_2048_8192_SHA256,
            a if a == &rcgen::PKCS_ED25519 => &s::ED25519,
            _ => return Err(SignError::Internal("unsupported CA key algorithm".into())),
        };
        s::UnparsedPublicKey::new(alg, self.0.public_key())
            .verify(message, signature)
            .map_err(|_| {
                SignError::BackendRejected(format!(
                    "the signature from {} does not verify with its public key",
                    self.0.describe()
                ))
            })
    }
}

impl From<PrivateKey> for CaKey {
    fn from(key: PrivateKey) -> Self {
        Self(Arc::new(key))
    }
}

impl From<Arc<dyn KeyHandle>> for CaKey {
    fn from(handle: Arc<dyn KeyHandle>) -> Self {
        Self(handle)
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self.0.in_memory() {
            Some(key) => key.inner.sign(msg),
            // Filled in by `sign_der`.
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_loads_and_redacts() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let pem = key.to_pem();
            let again = PrivateKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(key.spki_der(), again.spki_der());
            let dbg = format!("{key:?}");
            assert!(dbg.contains("redacted"), "{dbg}");
            assert!(!dbg.contains(&pem[30..60]));
        }
    }

    #[test]
    fn generated_key_names_carry_their_owner_and_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let name = generated_key_name("mesh-a", t);
        assert!(name.starts_with("signet-mesh-a-1800000000-"), "{name}");
        assert_eq!(generated_key_time("mesh-a", &name), Some(t));
        // Another owner's, even one whose name extends this one, is not ours.
        assert_eq!(generated_key_time("mesh", &name), None);
        assert_eq!(generated_key_time("mesh-a-1800000000", &name), None);
        assert_eq!(generated_key_time("mesh-a", "signet-mesh-a-12-xyz"), None);
        assert_eq!(generated_key_time("mesh-a", "ca-key"), None);
        // A planted name with a time SystemTime cannot hold is not ours.
        assert_eq!(
            generated_key_time("mesh-a", "signet-mesh-a-18446744073709551615-deadbeef"),
            None
        );
        assert_ne!(generated_key_name("mesh-a", t), name);
    }

    #[test]
    fn refuses_missing_or_multiple_keys() {
        assert_eq!(
            PrivateKey::from_pem(pem::encode("CERTIFICATE", b"x").as_bytes()).unwrap_err(),
            KeyLoadError::NotFound
        );
        let a = PrivateKey::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .to_pem();
        let b = PrivateKey::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .to_pem();
        let both = format!("{}{}", a.as_str(), b.as_str());
        assert_eq!(
            PrivateKey::from_pem(both.as_bytes()).unwrap_err(),
            KeyLoadError::Multiple
        );
    }
}
