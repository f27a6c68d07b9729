//! Offline verification of service-account JWTs against an issuer's JWKS.
//!
//! Only asymmetric algorithms are accepted, and each key only with the
//! algorithm its type (and curve) implies: no `none`, no HMAC, no RSA key
//! used as an HMAC secret. `exp` is required; `exp`/`nbf` are checked with
//! the configured leeway against the injectable clock. `aud` is required and
//! must hold one of the configured audiences (absent, `null`, empty or
//! malformed is refused). The namespace and service account the token names
//! must be valid Kubernetes names. The JWKS comes from a
//! file or a URL, cached, refreshed periodically and (rate-limited) when a
//! token names an unknown key.
//!
//! A token that verified is remembered (by its SHA-256) with what it proved
//! and its `nbf`/`exp`: the same token again — an agent reusing its token
//! per connection, a restart storm of identical tokens — costs a hash and a
//! lookup instead of a signature check and two JSON parses. The time checks
//! are made again on every use, and a change of the issuer's keys forgets
//! every remembered token (one signed by a withdrawn key is never accepted
//! from memory).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use signet_core::Clock;
use signet_core::clock::unix_seconds;
use signet_core::spiffe::{check_service_account, is_dns1123_subdomain};
use signet_core::worker::{Backoff, Next, Worker};
use tokio::sync::Mutex;

use super::AuthError;
use crate::config::JwtIssuerConfig;
use crate::identity::{Identity, PodRef, parse_service_account_username};

/// The least time between two JWKS fetches triggered by unknown key IDs.
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Most verified tokens remembered; beyond it, expired ones are dropped,
/// then all.
const MAX_VERIFIED: usize = 65_536;

/// What a verified token proved, and while when.
#[derive(Debug, Clone)]
struct Verified {
    identity: Identity,
    nbf: Option<i64>,
    exp: i64,
    /// The key set that verified it ([`JwtAuthenticator::generation`]).
    generation: u64,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<NamedRef>,
    pod: Option<NamedRef>,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: String,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// Read as any JSON value so that `null`, numbers and mixed arrays are
    /// refused by name rather than defaulted.
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_account: Option<String>,
}

/// The algorithm a key may be used with, from its JWK.
fn pinned_algorithm(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // Symmetric keys in a JWKS are never accepted.
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        // A declared algorithm must be one of those the key type allows.
        Some(declared) => match declared.to_string().parse::<Algorithm>() {
            Ok(a) if by_type.contains(&a) => Some(vec![a]),
            _ => None,
        },
    }
}

/// One configured issuer.
#[derive(Debug)]
pub struct JwtAuthenticator {
    config: JwtIssuerConfig,
    keys: ArcSwap<JwkSet>,
    /// Bumped whenever the key set changes.
    generation: std::sync::atomic::AtomicU64,
    /// SHA-256 of the JWKS last loaded (to tell a change from a re-fetch).
    keys_digest: std::sync::Mutex<[u8; 32]>,
    verified: std::sync::RwLock<std::collections::HashMap<[u8; 32], Verified>>,
    last_fetch: Mutex<Option<tokio::time::Instant>>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl JwtAuthenticator {
    /// Loads the JWKS once (a file must be readable; a URL may be down).
    pub async fn new(config: JwtIssuerConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let this = Arc::new(Self {
            config,
            keys: ArcSwap::from_pointee(JwkSet { keys: vec![] }),
            generation: std::sync::atomic::AtomicU64::new(0),
            keys_digest: std::sync::Mutex::new([0; 32]),
            verified: std::sync::RwLock::new(std::collections::HashMap::new()),
            last_fetch: Mutex::new(None),
            http,
            clock,
        });
        match (&this.config.jwks_file, this.refresh().await) {
            (Some(f), Err(e)) => return Err(format!("{}: {e}", f.display())),
            (None, Err(e)) => {
                tracing::warn!(issuer = %this.config.issuer, error = %e, "JWKS not reachable yet; will retry")
            }
            _ => {}
        }
        let period = this.config.jwks_refresh.get();
        Worker::new(format!("JWKS of {}", this.config.issuer))
            .backoff(Backoff::new(Duration::from_secs(1).min(period), period))
            .first(Next::In(period))
            .spawn_for(&this, move |this| async move {
                this.refresh()
                    .await
                    .map(|_| Next::In(period))
                    .map_err(|e| format!("{e}; keeping the previous keys"))
            });
        Ok(this)
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    async fn refresh(&self) -> Result<(), String> {
        *self.last_fetch.lock().await = Some(signet_core::clock::monotonic());
        let bytes = match (&self.config.jwks_file, &self.config.jwks_url) {
            (Some(f), _) => tokio::fs::read(f).await.map_err(|e| e.to_string())?,
            (None, Some(u)) => {
                let r = self.http.get(u).send().await.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("{u}: {}", r.status()));
                }
                r.bytes().await.map_err(|e| e.to_string())?.to_vec()
            }
            (None, None) => return Err("no JWKS source".into()),
        };
        let set: JwkSet =
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid JWKS: {e}"))?;
        let digest = signet_core::crypto::sha256(&bytes);
        let mut held = self.keys_digest.lock().unwrap_or_else(|e| e.into_inner());
        self.keys.store(Arc::new(set));
        if *held != digest {
            *held = digest;
            // Tokens verified by the old keys are checked again.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.verified
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        Ok(())
    }

    /// The identity `token` (whose SHA-256 is `digest`) proved before, when
    /// the keys that verified it are still the issuer's and it is within its
    /// validity now; `None` means: verify it.
    pub fn remembered(&self, digest: &[u8; 32]) -> Option<Identity> {
        let v = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()?;
        let now = unix_seconds(self.clock.now());
        let leeway = self.config.leeway.get().as_secs() as i64;
        let current = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let in_time = now <= v.exp + leeway && v.nbf.is_none_or(|nbf| now + leeway >= nbf);
        (v.generation == current && in_time).then_some(v.identity)
    }

    fn remember(&self, digest: [u8; 32], v: Verified) {
        let now = unix_seconds(self.clock.now());
        let leeway = self.config.leeway.get().as_secs() as i64;
        let mut map = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_VERIFIED {
            map.retain(|_, v| now <= v.exp + leeway);
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
        }
        map.insert(digest, v);
    }

    /// Re-fetches a URL-based JWKS when a token names an unknown key, at
    /// most every 30 seconds.
    async fn refetch_for_unknown_kid(&self) -> bool {
        if self.config.jwks_url.is_none() {
            return false;
        }
        let due = self
            .last_fetch
            .lock()
            .await
            .is_none_or(|t| signet_core::clock::elapsed(t) >= REFETCH_MIN_INTERVAL);
        due && self.refresh().await.is_ok()
    }

    /// Verifies `token`, returning the service account it names (from
    /// memory when it verified before; see the module doc).
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let digest = signet_core::crypto::sha256(token.as_bytes());
        match self.remembered(&digest) {
            Some(id) => Ok(id),
            None => self.verify_new(token, digest).await,
        }
    }

    /// Verifies a token not remembered (`digest` is its SHA-256), and
    /// remembers it.
    pub async fn verify_new(&self, token: &str, digest: [u8; 32]) -> Result<Identity, AuthError> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let (identity, nbf, exp) = self.verify_signature(token).await?;
        self.remember(
            digest,
            Verified {
                identity: identity.clone(),
                nbf,
                exp,
                generation,
            },
        );
        Ok(identity)
    }

    /// The full check: signature by a current key, then the claims.
    async fn verify_signature(
        &self,
        token: &str,
    ) -> Result<(Identity, Option<i64>, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::invalid("malformed token", e))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(AuthError::invalid(
                "token algorithm not allowed",
                format!("{:?}", header.alg),
            ));
        }
        let mut candidates = self.candidates(&header);
        if candidates.is_empty() && self.refetch_for_unknown_kid().await {
            candidates = self.candidates(&header);
        }
        if candidates.is_empty() {
            return Err(AuthError::invalid(
                "token signed by an unknown key",
                format!("kid {:?} alg {:?}", header.kid, header.alg),
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        // The audience is checked in `identity`, strictly (see the module doc).
        validation.validate_aud = false;
        validation.set_issuer(&[&self.config.issuer]);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    let (nbf, exp) = (data.claims.nbf, data.claims.exp);
                    let identity = self.identity(data.claims)?;
                    // `identity` refused a token without `exp`.
                    return Ok((identity, nbf, exp.unwrap_or_default()));
                }
                Err(e) => last = Some(e),
            }
        }
        // The caller learns which check failed (never the expected values).
        use jsonwebtoken::errors::ErrorKind as Jwt;
        let public = match last.as_ref().map(|e| e.kind()) {
            Some(Jwt::InvalidSignature) => "token signature does not verify",
            Some(Jwt::InvalidIssuer) => "token issuer not accepted",
            Some(Jwt::InvalidAudience) => "token audience not accepted",
            _ => "token verification failed",
        };
        Err(AuthError::invalid(
            public,
            last.map_or_else(String::new, |e| e.to_string()),
        ))
    }

    fn candidates(&self, header: &jsonwebtoken::Header) -> Vec<DecodingKey> {
        self.keys
            .load()
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
            .filter(|k| pinned_algorithm(k).is_some_and(|algs| algs.contains(&header.alg)))
            .filter_map(|k| DecodingKey::from_jwk(k).ok())
            .collect()
    }

    /// The token must name at least one configured audience.
    fn check_audience(&self, aud: Option<&serde_json::Value>) -> Result<(), AuthError> {
        use serde_json::Value;
        let auds: Vec<&str> = match aud {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    AuthError::invalid("token audience is malformed", "aud holds a non-string")
                })?,
            Some(Value::Null) | None => {
                return Err(AuthError::invalid(
                    "token has no audience",
                    "aud is missing or null",
                ));
            }
            Some(other) => {
                return Err(AuthError::invalid(
                    "token audience is malformed",
                    format!("aud is {other}"),
                ));
            }
        };
        if auds.is_empty() {
            return Err(AuthError::invalid("token has no audience", "aud is empty"));
        }
        if !auds
            .iter()
            .any(|a| self.config.audiences.iter().any(|w| w == a))
        {
            return Err(AuthError::invalid(
                "token audience not accepted",
                format!("aud {auds:?}"),
            ));
        }
        Ok(())
    }

    fn identity(&self, c: Claims) -> Result<Identity, AuthError> {
        self.check_audience(c.aud.as_ref())?;
        let now = unix_seconds(self.clock.now());
        let leeway = self.config.leeway.get().as_secs() as i64;
        let exp = c
            .exp
            .ok_or_else(|| AuthError::invalid("token has no expiry", "exp missing"))?;
        if now > exp + leeway {
            return Err(AuthError::invalid(
                "token expired",
                format!("exp {exp}, now {now}"),
            ));
        }
        if let Some(nbf) = c.nbf
            && now + leeway < nbf
        {
            return Err(AuthError::invalid(
                "token not yet valid",
                format!("nbf {nbf}, now {now}"),
            ));
        }
        let from_sub = c.sub.as_deref().and_then(parse_service_account_username);
        let from_claims = match &c.kubernetes {
            Some(k) => k
                .namespace
                .clone()
                .zip(k.serviceaccount.as_ref().map(|s| s.name.clone())),
            None => c.legacy_namespace.clone().zip(c.legacy_account.clone()),
        };
        let (namespace, name) = match (from_sub, from_claims) {
            (Some(a), Some(b)) if a != b => {
                return Err(AuthError::invalid(
                    "token claims disagree",
                    format!("sub {a:?} vs kubernetes.io {b:?}"),
                ));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => {
                return Err(AuthError::invalid(
                    "token names no service account",
                    "no sub or kubernetes.io claims",
                ));
            }
        };
        check_service_account(&namespace, &name)
            .map_err(|e| AuthError::invalid("token names an invalid service account", e))?;
        let pod = c.kubernetes.and_then(|k| k.pod).map(|p| PodRef {
            name: p.name,
            uid: p.uid,
        });
        if let Some(p) = &pod
            && !is_dns1123_subdomain(&p.name)
        {
            return Err(AuthError::invalid(
                "token names an invalid pod",
                format!("pod {:?}", p.name.chars().take(80).collect::<String>()),
            ));
        }
        Ok(Identity::ServiceAccount {
            cluster: self.config.cluster.clone(),
            namespace,
            name,
            pod,
            method: format!("jwt:{}", self.config.issuer),
        })
    }

    /// Seconds since the epoch when the token expires, if it says (unverified).
    pub fn unverified_expiry(token: &str) -> Option<SystemTime> {
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        claims["exp"]
            .as_i64()
            .map(signet_core::clock::from_unix_seconds)
    }

    /// The `iss` claim, unverified (to pick the issuer's keys).
    pub fn unverified_issuer(token: &str) -> Option<String> {
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        claims["iss"].as_str().map(str::to_owned)
    }
}
