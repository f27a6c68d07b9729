//! signet's backends: one module per system that holds trust.
//!
//! Each backend is a [`signet_core::Signer`] behind its own cargo feature, with
//! its own configuration type. [`BackendConfig`] is the `backends.<name>`
//! entry of the config file, tagged by `type`; [`build`] turns it into a
//! running signer.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use signet_core::{Clock, Signer};

#[cfg(any(feature = "aws_pca", feature = "aws_kms"))]
mod aws;
#[cfg(feature = "aws_pca")]
pub mod aws_pca;
#[cfg(feature = "cert_manager")]
pub mod cert_manager;
#[cfg(feature = "gcp_cas")]
pub mod gcp_cas;
pub mod keys;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "vault")]
pub mod vault;

/// The backend types this build knows, whether or not compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Local,
    Vault,
    CertManager,
    AwsPca,
    GcpCas,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Vault => "vault",
            BackendKind::CertManager => "cert_manager",
            BackendKind::AwsPca => "aws_pca",
            BackendKind::GcpCas => "gcp_cas",
        }
    }
}

/// One `backends.<name>` entry.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BackendConfig {
    #[cfg(feature = "local")]
    Local(Box<local::LocalConfig>),
    #[cfg(feature = "vault")]
    Vault(Box<vault::VaultConfig>),
    #[cfg(feature = "cert_manager")]
    CertManager(Box<cert_manager::CertManagerConfig>),
    #[cfg(feature = "aws_pca")]
    AwsPca(Box<aws_pca::AwsPcaConfig>),
    #[cfg(feature = "gcp_cas")]
    GcpCas(Box<gcp_cas::GcpCasConfig>),
}

impl BackendConfig {
    pub fn kind(&self) -> BackendKind {
        match self {
            #[cfg(feature = "local")]
            BackendConfig::Local(_) => BackendKind::Local,
            #[cfg(feature = "vault")]
            BackendConfig::Vault(_) => BackendKind::Vault,
            #[cfg(feature = "cert_manager")]
            BackendConfig::CertManager(_) => BackendKind::CertManager,
            #[cfg(feature = "aws_pca")]
            BackendConfig::AwsPca(_) => BackendKind::AwsPca,
            #[cfg(feature = "gcp_cas")]
            BackendConfig::GcpCas(_) => BackendKind::GcpCas,
        }
    }
}

/// Why a backend could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[cfg(feature = "local")]
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[cfg(feature = "vault")]
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    #[cfg(feature = "cert_manager")]
    #[error(transparent)]
    CertManager(#[from] cert_manager::CertManagerError),
    #[cfg(feature = "aws_pca")]
    #[error(transparent)]
    AwsPca(#[from] aws_pca::AwsPcaError),
    #[cfg(feature = "gcp_cas")]
    #[error(transparent)]
    GcpCas(#[from] gcp_cas::GcpCasError),
}

/// Builds and starts a backend (background tasks stop when it is dropped).
pub async fn build(
    name: &str,
    config: &BackendConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Signer>, BuildError> {
    match config {
        #[cfg(feature = "local")]
        BackendConfig::Local(c) => {
            let backend = Arc::new(local::LocalBackend::load(name, (**c).clone(), clock).await?);
            local::LocalBackend::spawn_reloader(&backend);
            if backend.key_is_remote() {
                // Every certificate is a call to the key store.
                Ok(c.resilience.wrap(backend))
            } else {
                Ok(backend)
            }
        }
        #[cfg(feature = "vault")]
        BackendConfig::Vault(c) => {
            let backend = vault::VaultBackend::new(name, (**c).clone(), clock)?;
            vault::VaultBackend::spawn_maintenance(&backend);
            Ok(c.resilience.wrap(backend))
        }
        #[cfg(feature = "cert_manager")]
        BackendConfig::CertManager(c) => {
            let backend = cert_manager::CertManagerBackend::new(name, (**c).clone(), clock).await?;
            Ok(c.resilience.wrap(backend))
        }
        #[cfg(feature = "aws_pca")]
        BackendConfig::AwsPca(c) => {
            let backend = aws_pca::AwsPcaBackend::new(name, (**c).clone()).await?;
            Ok(c.resilience.wrap(backend))
        }
        #[cfg(feature = "gcp_cas")]
        BackendConfig::GcpCas(c) => {
            let backend = gcp_cas::GcpCasBackend::new(name, (**c).clone(), clock).await?;
            Ok(c.resilience.wrap(backend))
        }
    }
}

// === impl Deserialize for BackendConfig ===
//
// `type` selects the variant. When `type` is the first key (as every example
// writes it) the rest of the map streams straight into the variant's struct,
// so errors keep their exact path and line. Otherwise the entry is buffered
// and errors name the path inside the entry.

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BackendVisitor)
    }
}

struct BackendVisitor;

fn variant<'de, D: Deserializer<'de>>(kind: BackendKind, d: D) -> Result<BackendConfig, D::Error> {
    match kind {
        #[cfg(feature = "local")]
        BackendKind::Local => {
            local::LocalConfig::deserialize(d).map(|c| BackendConfig::Local(Box::new(c)))
        }
        #[cfg(feature = "vault")]
        BackendKind::Vault => {
            vault::VaultConfig::deserialize(d).map(|c| BackendConfig::Vault(Box::new(c)))
        }
        #[cfg(feature = "cert_manager")]
        BackendKind::CertManager => cert_manager::CertManagerConfig::deserialize(d)
            .map(|c| BackendConfig::CertManager(Box::new(c))),
        #[cfg(feature = "aws_pca")]
        BackendKind::AwsPca => {
            aws_pca::AwsPcaConfig::deserialize(d).map(|c| BackendConfig::AwsPca(Box::new(c)))
        }
        #[cfg(feature = "gcp_cas")]
        BackendKind::GcpCas => {
            gcp_cas::GcpCasConfig::deserialize(d).map(|c| BackendConfig::GcpCas(Box::new(c)))
        }
        #[allow(unreachable_patterns)]
        other => Err(de::Error::custom(format!(
            "backend type {:?} is not compiled into this build of signet",
            other.as_str()
        ))),
    }
}

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = BackendConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a backend definition with a `type` key")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BackendConfig, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field("type"));
        };
        if first == "type" {
            let kind: BackendKind = map.next_value()?;
            return variant(kind, de::value::MapAccessDeserializer::new(map));
        }
        let mut entries = serde_json::Map::new();
        entries.insert(first, map.next_value()?);
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            entries.insert(k, v);
        }
        let kind = entries
            .remove("type")
            .ok_or_else(|| de::Error::missing_field("type"))?;
        let kind: BackendKind = serde_json::from_value(kind).map_err(de::Error::custom)?;
        let mut track = serde_path_to_error::Track::new();
        let value = serde_json::Value::Object(entries);
        variant(
            kind,
            serde_path_to_error::Deserializer::new(value, &mut track),
        )
        .map_err(|e| <A::Error as de::Error>::custom(format!("{}: {e}", track.path())))
    }
}
