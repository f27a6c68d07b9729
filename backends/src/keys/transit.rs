//! A CA key in a Vault or OpenBao Transit engine.
//!
//! At start signet reads the key (`GET <mount>/keys/<name>`), checks its
//! type (`ecdsa-p256`, `ecdsa-p384`, `rsa-2048`/`3072`/`4096`) and takes
//! the public key of the version it will sign with: `key_version`, or the
//! latest at start. The version is pinned because the CA certificate
//! certifies one public key; after a Transit rotation, the new version
//! signs only once signet is pointed at it (with the new certificate).
//! Each signature is `POST <mount>/sign/<name>` with the digest signet
//! computed (`prehashed`), `marshaling_algorithm: asn1` for ECDSA and
//! `signature_algorithm: pkcs1v15` for RSA, the forms X.509 carries. Login
//! (token, AppRole, Kubernetes) is the `vault` backend's.
//!
//! [`TransitKeys`] makes keys in the engine (a delegated authority's
//! intermediates): a key named `signet-<authority>-<time>-<random>` per
//! intermediate, created with the algorithm's type and not exportable;
//! retiring it allows its deletion and deletes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine as _;
use rustify_derive::Endpoint;
use serde::Deserialize;
use signet_core::crypto::KeyKind;
use signet_core::key::{
    DigestName, GeneratedKey, KeyAlgorithm, KeyDescription, KeyFactory, KeyHandle, KeyStoreError,
    PublicKey, SignatureAlgorithm, generated_key_name, generated_key_time,
};
use signet_core::{SignError, SystemClock};

use super::KeyOpenError;
use crate::vault::{VaultAccess, VaultAuth, VaultSession};

fn default_mount() -> String {
    "transit".to_owned()
}

/// `key: { type: vault_transit, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitKeyConfig {
    /// `https://vault.example:8200`.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// PEM CA bundle to verify Vault's TLS certificate (default: system roots).
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    /// As the `vault` backend's `auth`.
    pub auth: VaultAuth,
    /// Mount path of the Transit engine.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The key's name (not for keys signet makes).
    #[serde(default)]
    pub name: Option<String>,
    /// The version that signs; default: the latest when signet starts.
    #[serde(default)]
    pub key_version: Option<u64>,
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "{self.mount}/keys/{self.name}", response = "KeyInfo")]
struct ReadKey {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    key_type: String,
    latest_version: u64,
    keys: std::collections::BTreeMap<String, KeyVersion>,
}

#[derive(Debug, Deserialize)]
struct KeyVersion {
    #[serde(default)]
    public_key: Option<String>,
}

#[derive(Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/sign/{self.name}",
    method = "POST",
    response = "Signed"
)]
struct Sign {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    name: String,
    input: String,
    prehashed: bool,
    hash_algorithm: String,
    key_version: u64,
    signature_algorithm: Option<String>,
    marshaling_algorithm: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Signed {
    signature: String,
}

impl TransitKeyConfig {
    /// As the key of a CA.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_none() {
            return Err("name is required".into());
        }
        Ok(())
    }

    /// As where intermediates' keys are made.
    pub fn check_for_generation(&self) -> Result<(), String> {
        if self.name.is_some() || self.key_version.is_some() {
            return Err("signet names the keys it makes: leave out name and key_version".into());
        }
        Ok(())
    }

    fn session(
        &self,
        what: &str,
        timeout: std::time::Duration,
    ) -> Result<Arc<VaultSession>, KeyOpenError> {
        let session = VaultSession::new(
            what,
            VaultAccess {
                address: self.address.clone(),
                namespace: self.namespace.clone(),
                ca_cert_file: self.ca_cert_file.clone(),
                auth: self.auth.clone(),
            },
            timeout,
            Arc::new(SystemClock),
        )
        .map_err(|e| store_err(e.to_string()))?;
        Ok(Arc::new(session))
    }
}

/// A key in a Transit engine.
#[derive(Debug)]
pub struct TransitKey {
    session: Arc<VaultSession>,
    mount: String,
    name: String,
    version: u64,
    public: PublicKey,
}

fn store_err(detail: impl Into<String>) -> KeyOpenError {
    KeyOpenError::Store {
        store: "vault_transit",
        detail: detail.into(),
    }
}

/// The Vault client's verdict in the key's vocabulary.
fn key_err(e: SignError) -> KeyStoreError {
    if e.kind().is_retryable() {
        KeyStoreError::Unavailable(e.to_string())
    } else {
        KeyStoreError::Refused(e.to_string())
    }
}

impl TransitKey {
    /// Logs in and reads the key's public half; `timeout` is the deadline of
    /// each call (the backend's `resilience.timeout`).
    pub async fn open(
        config: TransitKeyConfig,
        timeout: std::time::Duration,
    ) -> Result<Arc<Self>, KeyOpenError> {
        config.check().map_err(store_err)?;
        let name = config.name.clone().unwrap_or_default();
        let id = format!("{}/{name}", config.mount);
        let session = config.session(&format!("transit key {id}"), timeout)?;
        let key =
            Self::with_session(session.clone(), config.mount, name, config.key_version).await?;
        VaultSession::spawn_upkeep(&session, std::time::Duration::from_secs(300));
        Ok(key)
    }

    /// Reads the key `mount`/`name` through a logged-in `session`.
    async fn with_session(
        session: Arc<VaultSession>,
        mount: String,
        name: String,
        key_version: Option<u64>,
    ) -> Result<Arc<Self>, KeyOpenError> {
        let id = format!("{mount}/{name}");
        let info = session
            .call(|c| {
                let r = ReadKey {
                    mount: mount.clone(),
                    name: name.clone(),
                };
                async move { vaultrs::api::exec_with_result(c.as_ref(), r).await }
            })
            .await
            .map_err(|e| store_err(format!("reading {id}: {e}")))?;
        if !matches!(
            info.key_type.as_str(),
            "ecdsa-p256" | "ecdsa-p384" | "rsa-2048" | "rsa-3072" | "rsa-4096"
        ) {
            return Err(store_err(format!(
                "{id} is a {} key (use ecdsa-p256, ecdsa-p384 or rsa-2048/3072/4096)",
                info.key_type
            )));
        }
        let version = key_version.unwrap_or(info.latest_version);
        let pem = info
            .keys
            .get(&version.to_string())
            .and_then(|v| v.public_key.as_deref())
            .ok_or_else(|| store_err(format!("{id} has no version {version}")))?;
        let spki = signet_core::pem::parse_lenient(pem.as_bytes())
            .ok()
            .and_then(|blocks| blocks.into_iter().find(|b| b.label == "PUBLIC KEY"))
            .ok_or_else(|| store_err(format!("{id}: unreadable public key")))?;
        let public =
            PublicKey::from_spki_der(&spki.der).map_err(|e| store_err(format!("{id}: {e}")))?;
        tracing::info!(key = %id, version, algorithm = %public.kind(), address = session.address(), "Vault Transit key opened");
        Ok(Arc::new(Self {
            session,
            mount,
            name,
            version,
            public,
        }))
    }
}

#[async_trait]
impl KeyHandle for TransitKey {
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.public.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.public.bits()
    }
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "vault_transit",
            id: format!("{}/{} v{}", self.mount, self.name, self.version),
        }
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let digest = self.public.digest(message)?;
        let ec = matches!(self.public.kind(), KeyKind::EcdsaP256 | KeyKind::EcdsaP384);
        let input = base64::engine::general_purpose::STANDARD.encode(&digest.bytes);
        let hash = match digest.name {
            DigestName::Sha256 => "sha2-256",
            DigestName::Sha384 => "sha2-384",
        };
        let signed = self
            .session
            .call(|c| {
                let r = Sign {
                    mount: self.mount.clone(),
                    name: self.name.clone(),
                    input: input.clone(),
                    prehashed: true,
                    hash_algorithm: hash.to_owned(),
                    key_version: self.version,
                    signature_algorithm: (!ec).then(|| "pkcs1v15".to_owned()),
                    marshaling_algorithm: ec.then(|| "asn1".to_owned()),
                };
                async move { vaultrs::api::exec_with_result(c.as_ref(), r).await }
            })
            .await
            .map_err(key_err)?;
        // `vault:v<version>:<base64>`
        let encoded = signed
            .signature
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| KeyStoreError::Refused("Transit returned an unreadable signature".into()))
    }
}

/// Makes intermediates' keys in a Transit engine (see the module
/// documentation).
#[derive(Debug)]
pub struct TransitKeys {
    session: Arc<VaultSession>,
    mount: String,
}

impl TransitKeys {
    /// Logs in and lists the engine's keys (what sweeping needs: a missing
    /// permission is found at start).
    pub async fn open(
        config: TransitKeyConfig,
        timeout: std::time::Duration,
    ) -> Result<Arc<Self>, KeyOpenError> {
        config.check_for_generation().map_err(store_err)?;
        let session = config.session(&format!("transit engine {}", config.mount), timeout)?;
        let this = Self {
            session: session.clone(),
            mount: config.mount,
        };
        this.list()
            .await
            .map_err(|e| store_err(format!("listing {}/keys: {e}", this.mount)))?;
        VaultSession::spawn_upkeep(&session, std::time::Duration::from_secs(300));
        Ok(Arc::new(this))
    }

    async fn list(&self) -> Result<Vec<String>, SignError> {
        let listed = self
            .session
            .call(|c| {
                let mount = self.mount.clone();
                async move { vaultrs::transit::key::list(c.as_ref(), &mount).await }
            })
            .await;
        match listed {
            Ok(l) => Ok(l.keys),
            // An engine with no keys answers 404.
            Err(SignError::BackendRejected(m)) if m.contains("404") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), KeyStoreError> {
        self.session
            .call(|c| {
                let (mount, name) = (self.mount.clone(), name.to_owned());
                async move {
                    vaultrs::transit::key::update(
                        c.as_ref(),
                        &mount,
                        &name,
                        Some(
                            &mut vaultrs::api::transit::requests::UpdateKeyConfigurationRequest::builder()
                                .deletion_allowed(true),
                        ),
                    )
                    .await?;
                    vaultrs::transit::key::delete(c.as_ref(), &mount, &name).await
                }
            })
            .await
            .map_err(key_err)
    }
}

#[async_trait]
impl KeyFactory for TransitKeys {
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "vault_transit",
            id: format!("{} {}", self.session.address(), self.mount),
        }
    }

    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        owner: &str,
        now: SystemTime,
    ) -> Result<GeneratedKey, KeyStoreError> {
        use vaultrs::api::transit::KeyType;
        let key_type = match algorithm {
            KeyAlgorithm::EcdsaP256 => KeyType::EcdsaP256,
            KeyAlgorithm::EcdsaP384 => KeyType::EcdsaP384,
            KeyAlgorithm::Rsa2048 => KeyType::Rsa2048,
            KeyAlgorithm::Rsa3072 => KeyType::Rsa3072,
            KeyAlgorithm::Rsa4096 => KeyType::Rsa4096,
            KeyAlgorithm::Ed25519 => {
                return Err(KeyStoreError::Refused(
                    "Transit keys for signet are EC P-256/P-384 or RSA".into(),
                ));
            }
        };
        let name = generated_key_name(owner, now);
        self.session
            .call(|c| {
                let (mount, name, key_type) = (self.mount.clone(), name.clone(), key_type);
                async move {
                    vaultrs::transit::key::create(
                        c.as_ref(),
                        &mount,
                        &name,
                        Some(
                            &mut vaultrs::api::transit::requests::CreateKeyRequest::builder()
                                .key_type(key_type)
                                .exportable(false),
                        ),
                    )
                    .await
                }
            })
            .await
            .map_err(key_err)?;
        let read =
            TransitKey::with_session(self.session.clone(), self.mount.clone(), name.clone(), None)
                .await;
        match read {
            Ok(handle) => Ok(GeneratedKey { handle, name }),
            Err(e) => {
                // Not left behind: nothing would retire it.
                let _ = self.delete(&name).await;
                Err(KeyStoreError::Unavailable(format!(
                    "reading the key it made: {e}"
                )))
            }
        }
    }

    async fn retire(&self, key: &GeneratedKey) -> Result<(), KeyStoreError> {
        self.delete(&key.name).await
    }

    async fn sweep(
        &self,
        owner: &str,
        before: SystemTime,
        keep: &str,
    ) -> Result<usize, KeyStoreError> {
        let old: Vec<String> = self
            .list()
            .await
            .map_err(key_err)?
            .into_iter()
            .filter(|name| {
                name != keep && generated_key_time(owner, name).is_some_and(|made| made < before)
            })
            .collect();
        let mut destroyed = 0;
        for name in &old {
            // One that cannot be destroyed does not stop the others.
            match self.delete(name).await {
                Ok(()) => destroyed += 1,
                Err(e) => {
                    tracing::warn!(key = %name, error = %e, "Transit: could not delete a swept key")
                }
            }
        }
        Ok(destroyed)
    }
}
