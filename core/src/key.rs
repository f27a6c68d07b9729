//! Private keys: generated or loaded, never cloned, never printed.
//!
//! [`PrivateKey`] has no `Clone`, a redacted `Debug`, and zeroizes its
//! serialized form on drop. PEM leaves it only through [`PrivateKey::to_pem`],
//! which returns a zeroizing string for writing to a 0600 file.

use std::fmt;
use std::str::FromStr;

use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::names::{San, rcgen_san};
use crate::pem;

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
        params
            .serialize_request(&self.inner)
            .map(|csr| csr.der().to_vec())
            .map_err(|e| KeyLoadError::Generate(e.to_string()))
    }
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
