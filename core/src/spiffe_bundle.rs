//! A trust bundle in the SPIFFE Trust Domain and Bundle format: a JWK Set
//! whose keys are the roots, each as an `x509-svid` key carrying the
//! certificate in `x5c` (SPIFFE_Trust_Domain_and_Bundle.md §4). What SPIRE's
//! federation and istiod's `spiffeBundleUrl` read.
//!
//! `spiffe_sequence` is the newest root's NotBefore in Unix seconds: every
//! replica computes the same number without shared state, and adding a root
//! (the start of a rotation) raises it. Dropping a root alone leaves it as it
//! was; consumers compare the keys, not the number, to see that change.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::chain::{ChainError, TrustBundle};

/// A JWK Set in the SPIFFE bundle format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpiffeBundle {
    pub keys: Vec<Jwk>,
    pub spiffe_sequence: u64,
    /// Seconds after which a consumer should fetch the bundle again.
    pub spiffe_refresh_hint: u64,
}

/// One root as a JSON Web Key (RFC 7517) of use `x509-svid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// The root certificate (standard base64 DER), exactly one.
    pub x5c: Vec<String>,
}

const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const P521: &str = "1.3.132.0.35";
const ED25519: &str = "1.3.101.112";

impl SpiffeBundle {
    /// The bundle's roots as JWKs, in the bundle's order.
    pub fn of(bundle: &TrustBundle, refresh_hint: Duration) -> Result<Self, ChainError> {
        let mut keys = Vec::with_capacity(bundle.roots().len());
        let mut sequence = 0u64;
        for (i, der) in bundle.roots().iter().enumerate() {
            let what = format!("trust bundle root {i}");
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| ChainError::Parse {
                what: what.clone(),
                detail: e.to_string(),
            })?;
            let not_before = cert.validity().not_before.timestamp();
            sequence = sequence.max(u64::try_from(not_before).unwrap_or(0));
            keys.push(jwk(&cert, der, &what)?);
        }
        Ok(Self {
            keys,
            spiffe_sequence: sequence,
            spiffe_refresh_hint: refresh_hint.as_secs().max(1),
        })
    }
}

fn jwk(cert: &X509Certificate<'_>, der: &[u8], what: &str) -> Result<Jwk, ChainError> {
    let spki = cert.public_key();
    let unsupported = |why: &str| ChainError::Parse {
        what: what.to_owned(),
        detail: format!("{why} has no JWK form"),
    };
    let mut key = Jwk {
        kty: "",
        use_: "x509-svid",
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        x5c: vec![STANDARD.encode(der)],
    };
    let algorithm = spki.algorithm.algorithm.to_id_string();
    if algorithm == ED25519 {
        key.kty = "OKP";
        key.crv = Some("Ed25519");
        key.x = Some(URL_SAFE_NO_PAD.encode(spki.subject_public_key.data.as_ref()));
        return Ok(key);
    }
    match spki.parsed().map_err(|e| ChainError::Parse {
        what: what.to_owned(),
        detail: e.to_string(),
    })? {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let (crv, size) = match curve.as_deref() {
                Some(P256) => ("P-256", 32),
                Some(P384) => ("P-384", 48),
                Some(P521) => ("P-521", 66),
                _ => return Err(unsupported("an EC key on this curve")),
            };
            let data = point.data();
            if data.len() != 1 + 2 * size || data[0] != 4 {
                return Err(unsupported("a compressed EC point"));
            }
            key.kty = "EC";
            key.crv = Some(crv);
            key.x = Some(URL_SAFE_NO_PAD.encode(&data[1..=size]));
            key.y = Some(URL_SAFE_NO_PAD.encode(&data[1 + size..]));
        }
        PublicKey::RSA(rsa) => {
            key.kty = "RSA";
            key.n = Some(URL_SAFE_NO_PAD.encode(strip_zeros(rsa.modulus)));
            key.e = Some(URL_SAFE_NO_PAD.encode(strip_zeros(rsa.exponent)));
        }
        _ => return Err(unsupported("this key type")),
    }
    Ok(key)
}

/// An unsigned big-endian integer without its DER sign padding.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::clock::unix_seconds;
    use crate::issuer::LocalCa;
    use crate::key::{KeyAlgorithm, PrivateKey};

    fn root(alg: KeyAlgorithm, name: &str, now: SystemTime) -> LocalCa {
        LocalCa::self_signed_root(
            name,
            PrivateKey::generate(alg).unwrap(),
            now,
            Duration::from_secs(86_400),
        )
        .unwrap()
    }

    #[test]
    fn every_root_is_one_x509_svid_key_with_its_certificate() {
        let now = crate::clock::from_unix_seconds(1_800_000_000);
        let a = root(
            KeyAlgorithm::EcdsaP256,
            "a",
            now - Duration::from_secs(3600),
        );
        let b = root(KeyAlgorithm::EcdsaP384, "b", now);
        let bundle = TrustBundle::new(vec![
            a.trust_bundle().roots()[0].clone(),
            b.trust_bundle().roots()[0].clone(),
        ])
        .unwrap();
        let s = SpiffeBundle::of(&bundle, Duration::from_secs(300)).unwrap();
        assert_eq!(s.spiffe_refresh_hint, 300);
        assert_eq!(s.keys.len(), 2);
        for (k, der) in s.keys.iter().zip(bundle.roots()) {
            assert_eq!(k.use_, "x509-svid");
            assert_eq!(k.kty, "EC");
            assert_eq!(k.x5c, vec![STANDARD.encode(der)]);
        }
        assert_eq!(s.keys[0].crv, Some("P-256"));
        assert_eq!(s.keys[1].crv, Some("P-384"));
        assert_eq!(
            s.keys[1].x.as_ref().unwrap().len(),
            64,
            "48 bytes, base64url"
        );
        // The newest root's NotBefore (LocalCa back-dates its roots a little).
        let (nb, _) = crate::chain::validity(&bundle.roots()[1]).unwrap();
        assert_eq!(s.spiffe_sequence, unix_seconds(nb) as u64);
    }

    #[test]
    fn rsa_and_ed25519_roots_have_their_jwk_members() {
        let now = crate::clock::from_unix_seconds(1_800_000_000);
        for (alg, kty) in [
            (KeyAlgorithm::Rsa2048, "RSA"),
            (KeyAlgorithm::Ed25519, "OKP"),
        ] {
            let r = root(alg, "r", now);
            let s = SpiffeBundle::of(r.trust_bundle(), Duration::from_secs(60)).unwrap();
            let k = &s.keys[0];
            assert_eq!(k.kty, kty);
            match kty {
                "RSA" => {
                    assert_eq!(k.e.as_deref(), Some("AQAB"));
                    assert_eq!(k.n.as_ref().unwrap().len(), 342, "256 bytes, base64url");
                }
                _ => {
                    assert_eq!(k.crv, Some("Ed25519"));
                    assert_eq!(k.x.as_ref().unwrap().len(), 43, "32 bytes, base64url");
                }
            }
        }
    }
}
