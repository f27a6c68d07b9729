//! Where a CA's key lives: `key:` of a backend.
//!
//! A file (the key is read into memory, as `key_file` always did), or a key
//! store that signs for signet and never gives the key out: a PKCS#11 token
//! ([`pkcs11`]), AWS KMS ([`aws_kms`]) or a Vault/OpenBao Transit engine
//! ([`transit`]). Each store becomes a [`KeyHandle`] that
//! [`signet_core::issuer::LocalCa`] signs through.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use signet_core::key::{CaKey, KeyHandle, KeyLoadError, PrivateKey};

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
    #[cfg_attr(not(feature = "vault_transit"), allow(unused_variables))]
    timeout: std::time::Duration,
) -> Result<Arc<dyn KeyHandle>, KeyOpenError> {
    match config {
        KeyConfig::File(f) => Ok(Arc::new(read_file(&f.path)?)),
        #[cfg(feature = "pkcs11")]
        KeyConfig::Pkcs11(c) => Ok(pkcs11::Pkcs11Key::open(c.clone()).await?),
        #[cfg(feature = "aws_kms")]
        KeyConfig::AwsKms(c) => Ok(aws_kms::KmsKey::open(c.clone()).await?),
        #[cfg(feature = "vault_transit")]
        KeyConfig::VaultTransit(c) => Ok(transit::TransitKey::open((**c).clone(), timeout).await?),
    }
}
