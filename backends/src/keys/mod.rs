//! Where a CA's key lives: `key:` of a backend.
//!
//! A file (the key is read into memory, as `key_file` always did), or a key
//! store that signs for signet and never gives the key out: a PKCS#11 token
//! ([`pkcs11`]), AWS KMS ([`aws_kms`]) or a Vault/OpenBao Transit engine
//! ([`transit`]). Each store becomes a [`KeyHandle`] that
//! [`signet_core::issuer::LocalCa`] signs through.
//!
//! `authorities.<name>.intermediate.key` is an algorithm (the key is made
//! in memory) or a store that makes the intermediates' keys
//! ([`IntermediateKey`]), a [`KeyFactory`].

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use signet_core::key::{CaKey, KeyAlgorithm, KeyFactory, KeyHandle, KeyLoadError, PrivateKey};
use signet_core::resilience::ResilienceConfig;

#[cfg(feature = "aws_kms")]
pub mod aws_kms;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "vault_transit")]
pub mod transit;

/// `key:` — one of `type: file | pkcs11 | aws_kms | vault_transit`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyConfig {
    /// A PEM private key file (PKCS#8, SEC1 or PKCS#1), held in memory.
    File(FileKeyConfig),
    #[cfg(feature = "pkcs11")]
    Pkcs11(pkcs11::Pkcs11KeyConfig),
    #[cfg(feature = "aws_kms")]
    AwsKms(aws_kms::KmsKeyConfig),
    #[cfg(feature = "vault_transit")]
    VaultTransit(Box<transit::TransitKeyConfig>),
}

impl KeyConfig {
    /// `file`, `pkcs11`, `aws_kms` or `vault_transit`.
    pub fn store(&self) -> &'static str {
        match self {
            KeyConfig::File(_) => "file",
            #[cfg(feature = "pkcs11")]
            KeyConfig::Pkcs11(_) => "pkcs11",
            #[cfg(feature = "aws_kms")]
            KeyConfig::AwsKms(_) => "aws_kms",
            #[cfg(feature = "vault_transit")]
            KeyConfig::VaultTransit(_) => "vault_transit",
        }
    }

    /// Whether the key stays in a store and every signature is a call to it.
    pub fn is_remote(&self) -> bool {
        !matches!(self, KeyConfig::File(_))
    }

    /// Whether this names one key to sign with (what it needs beyond
    /// serde's checks).
    pub fn check(&self) -> Result<(), String> {
        match self {
            KeyConfig::File(_) => Ok(()),
            #[cfg(feature = "pkcs11")]
            KeyConfig::Pkcs11(c) => c.check(),
            #[cfg(feature = "aws_kms")]
            KeyConfig::AwsKms(c) => c.check(),
            #[cfg(feature = "vault_transit")]
            KeyConfig::VaultTransit(c) => c.check(),
        }
    }

    /// Whether this names a store to make keys in.
    pub fn check_for_generation(&self) -> Result<(), String> {
        match self {
            KeyConfig::File(_) => Err(
                "a key file cannot make keys: name the algorithm (key: ecdsa-p256) for a key made in memory, or a key store (pkcs11, aws_kms, vault_transit)".into(),
            ),
            #[cfg(feature = "pkcs11")]
            KeyConfig::Pkcs11(c) => c.check_for_generation(),
            #[cfg(feature = "aws_kms")]
            KeyConfig::AwsKms(c) => c.check_for_generation(),
            #[cfg(feature = "vault_transit")]
            KeyConfig::VaultTransit(c) => c.check_for_generation(),
        }
    }
}

/// `authorities.<name>.intermediate.key`: the algorithm of a key made in
/// memory (`ecdsa-p256`, the default), or a key store that makes each
/// intermediate's key: the store's settings as under a `local` backend's
/// `key:` (without the key's name), plus `algorithm` and `resilience` (how
/// its signatures are protected).
#[derive(Debug, Clone, PartialEq)]
pub enum IntermediateKey {
    InMemory(KeyAlgorithm),
    Store(Box<StoreKeys>),
}

impl Default for IntermediateKey {
    fn default() -> Self {
        IntermediateKey::InMemory(KeyAlgorithm::default())
    }
}

/// A key store that makes intermediates' keys.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreKeys {
    pub algorithm: KeyAlgorithm,
    pub resilience: ResilienceConfig,
    pub store: KeyConfig,
}

impl IntermediateKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            IntermediateKey::InMemory(a) => *a,
            IntermediateKey::Store(s) => s.algorithm,
        }
    }

    pub fn store(&self) -> Option<&StoreKeys> {
        match self {
            IntermediateKey::InMemory(_) => None,
            IntermediateKey::Store(s) => Some(s),
        }
    }

    fn from_map(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let algorithm = match map.remove("algorithm") {
            Some(a) => serde_json::from_value(a).map_err(|e| format!("algorithm: {e}"))?,
            None => KeyAlgorithm::default(),
        };
        let resilience = match map.remove("resilience") {
            Some(r) => serde_json::from_value(r).map_err(|e| format!("resilience: {e}"))?,
            None => ResilienceConfig::default(),
        };
        let store: KeyConfig =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        store.check_for_generation()?;
        if algorithm == KeyAlgorithm::Ed25519 {
            return Err("key stores make EC P-256/P-384 or RSA keys, not ed25519".into());
        }
        Ok(IntermediateKey::Store(Box::new(StoreKeys {
            algorithm,
            resilience,
            store,
        })))
    }
}

impl<'de> Deserialize<'de> for IntermediateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IntermediateKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key algorithm (ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519) or a key store ({ type: pkcs11 | aws_kms | vault_transit, ... })")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntermediateKey, E> {
                v.parse().map(IntermediateKey::InMemory).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<IntermediateKey, A::Error> {
                let map = serde_json::Map::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                IntermediateKey::from_map(map).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl StoreKeys {
    /// Connects to the store and checks access (each store says what).
    pub async fn open(&self) -> Result<Arc<dyn KeyFactory>, KeyOpenError> {
        let timeout = self.resilience.timeout.get();
        let store = self.store.store();
        let opened = tokio::time::timeout(timeout * 3, open_factory(&self.store, timeout)).await;
        opened.map_err(|_| KeyOpenError::Store {
            store,
            detail: format!("no answer within {}s", (timeout * 3).as_secs()),
        })?
    }
}

/// `key: { type: file, path: ... }` (what `key_file` is short for).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeyConfig {
    pub path: PathBuf,
}

/// Why a key could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyOpenError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: KeyLoadError },
    /// The store's configuration, or what it answered about the key.
    #[error("{store} key: {detail}")]
    Store { store: &'static str, detail: String },
}

/// Reads a key file into memory.
pub fn read_file(path: &std::path::Path) -> Result<PrivateKey, KeyOpenError> {
    let pem = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| KeyOpenError::Io {
        path: path.to_owned(),
        source,
    })?);
    PrivateKey::from_pem(&pem).map_err(|source| KeyOpenError::File {
        path: path.to_owned(),
        source,
    })
}

/// Opens the key `config` names: reads a file, or connects to the store,
/// reads the key's public half and has it sign a probe (so that a wrong
/// label, ID, permission or key is an error at start, not at the first
/// request). `timeout` bounds each call to the store.
pub async fn open(
    config: &KeyConfig,
    timeout: std::time::Duration,
) -> Result<Arc<dyn KeyHandle>, KeyOpenError> {
    let handle = tokio::time::timeout(timeout * 3, open_store(config, timeout))
        .await
        .map_err(|_| KeyOpenError::Store {
            store: config.store(),
            detail: format!("no answer within {}s", (timeout * 3).as_secs()),
        })??;
    if handle.in_memory().is_none() {
        let probe = tokio::time::timeout(timeout, CaKey::new(handle.clone()).probe()).await;
        let failed = match probe {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "the probe signature took over {}s",
                timeout.as_secs()
            )),
        };
        if let Some(detail) = failed {
            return Err(KeyOpenError::Store {
                store: config.store(),
                detail,
            });
        }
    }
    Ok(handle)
}

async fn open_store(
    config: &KeyConfig,
    #[cfg_attr(
        not(any(feature = "vault_transit", feature = "aws_kms")),
        allow(unused_variables)
    )]
    timeout: std::time::Duration,
) -> Result<Arc<dyn KeyHandle>, KeyOpenError> {
    match config {
        KeyConfig::File(f) => Ok(Arc::new(read_file(&f.path)?)),
        #[cfg(feature = "pkcs11")]
        KeyConfig::Pkcs11(c) => Ok(pkcs11::Pkcs11Key::open(c.clone()).await?),
        #[cfg(feature = "aws_kms")]
        KeyConfig::AwsKms(c) => Ok(aws_kms::KmsKey::open(c.clone(), timeout).await?),
        #[cfg(feature = "vault_transit")]
        KeyConfig::VaultTransit(c) => Ok(transit::TransitKey::open((**c).clone(), timeout).await?),
    }
}

#[cfg_attr(
    not(any(feature = "pkcs11", feature = "aws_kms", feature = "vault_transit")),
    allow(unreachable_code)
)]
async fn open_factory(
    config: &KeyConfig,
    #[cfg_attr(
        not(any(feature = "vault_transit", feature = "aws_kms")),
        allow(unused_variables)
    )]
    timeout: std::time::Duration,
) -> Result<Arc<dyn KeyFactory>, KeyOpenError> {
    Ok(match config {
        KeyConfig::File(_) => {
            return Err(KeyOpenError::Store {
                store: config.store(),
                detail: "a key file cannot make keys".into(),
            });
        }
        #[cfg(feature = "pkcs11")]
        KeyConfig::Pkcs11(c) => pkcs11::Pkcs11Keys::open(c.clone()).await?,
        #[cfg(feature = "aws_kms")]
        KeyConfig::AwsKms(c) => aws_kms::KmsKeys::open(c.clone(), timeout).await?,
        #[cfg(feature = "vault_transit")]
        KeyConfig::VaultTransit(c) => transit::TransitKeys::open((**c).clone(), timeout).await?,
    })
}
