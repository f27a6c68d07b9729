//! A development token issuer, so that the Istio API can be tried without a
//! Kubernetes cluster: `signet serve --dev` trusts `<data-dir>/jwks.json`, and
//! `signet dev token` signs service-account-shaped JWTs with the matching key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use signet_core::clock::unix_seconds;
use signet_core::key::{KeyAlgorithm, PrivateKey};

/// The `iss` of development tokens.
pub const DEV_ISSUER: &str = "signet-dev";
/// The audience istio-agent asks for.
pub const DEV_AUDIENCE: &str = "istio-ca";

/// Files of the development issuer.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    pub key: PathBuf,
    pub jwks: PathBuf,
}

impl DevIssuer {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            key: dir.join("jwt-signing-key.pem"),
            jwks: dir.join("jwks.json"),
        }
    }

    /// Creates the signing key (0600) and its JWKS once.
    pub fn ensure(dir: &Path) -> Result<Self, String> {
        let this = Self::in_dir(dir);
        if this.key.exists() && this.jwks.exists() {
            return Ok(this);
        }
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| e.to_string())?;
        let jwks = jwks_for(&key)?;
        signet_core::fsutil::write_atomic(&this.key, key.to_pem().as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", this.key.display()))?;
        signet_core::fsutil::write_atomic(&this.jwks, jwks.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", this.jwks.display()))?;
        Ok(this)
    }

    /// A token for `namespace`/`service_account`, valid for `ttl` from `now`.
    pub fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, String> {
        let pem = zeroize::Zeroizing::new(
            std::fs::read(&self.key).map_err(|e| format!("{}: {e}", self.key.display()))?,
        );
        let key = PrivateKey::from_pem(&pem).map_err(|e| e.to_string())?;
        let encoding = EncodingKey::from_ec_der(&key.to_pkcs8_der());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid(&key));
        let iat = unix_seconds(now);
        let claims = json!({
            "iss": DEV_ISSUER,
            "aud": [DEV_AUDIENCE],
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl.as_secs() as i64,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": service_account, "uid": "00000000-0000-0000-0000-000000000000" }
            }
        });
        jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| e.to_string())
    }
}

fn kid(key: &PrivateKey) -> String {
    hex::encode(&signet_core::crypto::sha256(&key.spki_der())[..8])
}

/// The JWKS (one ES256 key) for `key`.
fn jwks_for(key: &PrivateKey) -> Result<String, String> {
    let spki = key.spki_der();
    // An uncompressed P-256 point is the last 65 bytes of the SPKI: 04 || x || y.
    let point = spki
        .get(spki.len().saturating_sub(65)..)
        .ok_or("short key")?;
    if point.len() != 65 || point[0] != 4 {
        return Err("unexpected public key encoding".into());
    }
    let jwks = json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid(key),
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }]});
    serde_json::to_string_pretty(&jwks).map_err(|e| e.to_string())
}
