//! The `local` backend: a CA certificate from a PEM file and its key, from
//! a PEM file or in a key store (`key:`, see [`crate::keys`]).
//!
//! The files are re-read every `reload_interval`; a changed, valid set
//! replaces the CA without a restart, a changed but invalid set is logged and
//! ignored (the previous CA keeps signing). The key must match the
//! certificate and the certificate must be a CA, at start-up and on reload.
//! A key in a store is opened once at start; every certificate is then a
//! call to the store, protected by the backend's `resilience` settings.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use signet_core::chain::{IssuedChain, TrustBundle};
use signet_core::clock::rfc3339;
use signet_core::crypto::sha256;
use signet_core::duration::HumanDuration;
use signet_core::issuer::{CaError, LocalCa};
use signet_core::key::{CaKey, KeyHandle};
use signet_core::pem::{self, PemError};
use signet_core::resilience::ResilienceConfig;
use signet_core::signer::Capabilities;
use signet_core::worker::{Backoff, Next, Worker};

use crate::keys::{FileKeyConfig, KeyConfig, KeyOpenError};
use signet_core::{BackendInfo, Clock, IssuanceDecision, SignError, Signer, VerifiedCsr};

fn default_reload_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// `backends.<name>` with `type: local`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// PEM with the CA certificate first, optionally followed by the chain above it.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of the CA certificate:
    /// short for `key: { type: file, path: ... }`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Where the CA certificate's key is (exactly one of `key_file`, `key`).
    #[serde(default)]
    pub key: Option<KeyConfig>,
    /// Optional PEM with the certificates above the CA, up to and including the root.
    #[serde(default)]
    pub chain_file: Option<PathBuf>,
    /// Optional PEM with the trust anchors to publish; default: the top of the chain.
    #[serde(default)]
    pub roots_file: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: HumanDuration,
    /// How calls to a key store are protected (unused for a key file).
    #[serde(default)]
    pub resilience: ResilienceConfig,
}

impl LocalConfig {
    /// The key, `key_file` read as its shorthand.
    pub fn key(&self) -> Result<KeyConfig, LocalError> {
        match (&self.key_file, &self.key) {
            (Some(path), None) => Ok(KeyConfig::File(FileKeyConfig { path: path.clone() })),
            (None, Some(key)) => Ok(key.clone()),
            _ => Err(LocalError::KeySource),
        }
    }

    /// The key file, when the key is one (`key_file`, or `key: { type:
    /// file }`).
    fn key_path(&self) -> Option<&Path> {
        match (&self.key_file, &self.key) {
            (Some(path), _) => Some(path),
            (None, Some(KeyConfig::File(f))) => Some(&f.path),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: PemError },
    #[error("{path}: no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error(transparent)]
    Key(#[from] KeyOpenError),
    #[error("exactly one of key_file and key")]
    KeySource,
    /// (The reason is in the message, not a `source`: printed as a chain it
    /// would repeat.)
    #[error("{cert}: {error}")]
    Ca { cert: PathBuf, error: CaError },
    #[error("reload_interval must be at least 1s")]
    ReloadInterval,
}

/// A CA whose certificate signet holds, reloaded from its files.
#[derive(Debug)]
pub struct LocalBackend {
    name: String,
    config: LocalConfig,
    /// The key when it is in a store (opened once); `None` for a key file,
    /// which is read with the certificate.
    store_key: Option<Arc<dyn KeyHandle>>,
    clock: Arc<dyn Clock>,
    ca: ArcSwap<LocalCa>,
    /// SHA-256 over the files' contents at the last successful load.
    fingerprint: Mutex<[u8; 32]>,
}

struct Files {
    cert: Vec<u8>,
    /// The key file's bytes (none for a key in a store).
    key: zeroize::Zeroizing<Vec<u8>>,
    chain: Option<Vec<u8>>,
    roots: Option<Vec<u8>>,
}

impl Files {
    fn fingerprint(&self) -> [u8; 32] {
        let mut all = Vec::with_capacity(self.cert.len() + self.key.len() + 64);
        for part in [
            Some(&self.cert[..]),
            Some(&self.key[..]),
            self.chain.as_deref(),
            self.roots.as_deref(),
        ] {
            let part = part.unwrap_or_default();
            all.extend_from_slice(&(part.len() as u64).to_be_bytes());
            all.extend_from_slice(&sha256(part));
        }
        sha256(&all)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LocalError> {
    std::fs::read(path).map_err(|source| LocalError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, LocalError> {
    pem::certificates(bytes)
        .map(|v| v.into_iter().map(CertificateDer::from).collect())
        .map_err(|source| LocalError::Pem {
            path: path.to_owned(),
            source,
        })
}

/// Warns when someone other than signet can read the CA key: any access for
/// "others", or group access for a group signet itself is not in. (A
/// Kubernetes Secret volume gives the pod's `fsGroup` read access, which is
/// signet's own group, so 0440 there is fine.)
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    if exposed(mode, meta.gid(), &own_groups()) {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "CA key file is readable by other users; chmod 600 it");
    }
}

/// Whether a key file with `mode`, owned by group `gid`, is readable by
/// anyone but signet (whose groups are `own`).
#[cfg(unix)]
fn exposed(mode: u32, gid: u32, own: &[u32]) -> bool {
    mode & 0o007 != 0 || (mode & 0o070 != 0 && !own.contains(&gid))
}

/// The process's effective and supplementary group IDs (Linux: from
/// `/proc/self/status`; elsewhere none, so any group access warns).
#[cfg(unix)]
fn own_groups() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut groups = field("Groups:");
    // Gid: real, effective, saved, filesystem.
    groups.extend(field("Gid:").get(1));
    groups
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

impl LocalBackend {
    /// Loads the CA from its files (and opens its key, when in a store),
    /// refusing anything unusable.
    pub async fn load(
        name: &str,
        config: LocalConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LocalError> {
        if config.reload_interval.get() < Duration::from_secs(1) {
            return Err(LocalError::ReloadInterval);
        }
        let key = config.key()?;
        let store_key = if key.is_remote() {
            Some(crate::keys::open(&key, config.resilience.timeout.get()).await?)
        } else {
            config.key_path().map(warn_if_readable_by_others);
            None
        };
        let files = Self::read_files(&config)?;
        let fingerprint = files.fingerprint();
        let ca = Self::build(&config, store_key.as_ref(), files, clock.as_ref())?;
        tracing::info!(backend = name, subject = ca.subject(), not_after = %rfc3339(ca.not_after()), key = %ca.key().handle().describe(), "local CA loaded");
        Ok(Self {
            name: name.to_owned(),
            config,
            store_key,
            clock,
            ca: ArcSwap::from_pointee(ca),
            fingerprint: Mutex::new(fingerprint),
        })
    }

    /// Whether the key is in a store (every certificate is a call to it).
    pub fn key_is_remote(&self) -> bool {
        self.store_key.is_some()
    }

    fn read_files(config: &LocalConfig) -> Result<Files, LocalError> {
        let key = match config.key_path() {
            Some(path) => read(path)?,
            None => Vec::new(),
        };
        Ok(Files {
            cert: read(&config.cert_file)?,
            key: zeroize::Zeroizing::new(key),
            chain: config.chain_file.as_deref().map(read).transpose()?,
            roots: config.roots_file.as_deref().map(read).transpose()?,
        })
    }

    fn build(
        config: &LocalConfig,
        store_key: Option<&Arc<dyn KeyHandle>>,
        files: Files,
        clock: &dyn Clock,
    ) -> Result<LocalCa, LocalError> {
        let mut cert_and_chain = certs(&config.cert_file, &files.cert)?;
        if cert_and_chain.is_empty() {
            return Err(LocalError::NoCertificate {
                path: config.cert_file.clone(),
            });
        }
        let cert = cert_and_chain.remove(0);
        let mut chain = cert_and_chain;
        if let (Some(path), Some(bytes)) = (&config.chain_file, &files.chain) {
            chain.extend(certs(path, bytes)?);
        }
        let roots = match (&config.roots_file, &files.roots) {
            (Some(path), Some(bytes)) => {
                let roots = certs(path, bytes)?;
                if roots.is_empty() {
                    return Err(LocalError::NoCertificate { path: path.clone() });
                }
                Some(roots)
            }
            _ => None,
        };
        let key = match (store_key, config.key_path()) {
            (Some(handle), _) => CaKey::new(handle.clone()),
            (None, Some(path)) => {
                CaKey::from(signet_core::key::PrivateKey::from_pem(&files.key).map_err(
                    |source| KeyOpenError::File {
                        path: path.to_owned(),
                        source,
                    },
                )?)
            }
            (None, None) => return Err(LocalError::KeySource),
        };
        LocalCa::new(cert, key, chain, roots, clock.now()).map_err(|error| LocalError::Ca {
            cert: config.cert_file.clone(),
            error,
        })
    }

    /// Re-reads the files; swaps the CA in if they changed and are valid.
    /// Returns whether a new CA was installed.
    pub fn reload_if_changed(&self) -> Result<bool, LocalError> {
        let files = Self::read_files(&self.config)?;
        let fingerprint = files.fingerprint();
        let mut current = self.fingerprint.lock().unwrap_or_else(|e| e.into_inner());
        if *current == fingerprint {
            return Ok(false);
        }
        let ca = Self::build(
            &self.config,
            self.store_key.as_ref(),
            files,
            self.clock.as_ref(),
        )?;
        tracing::info!(backend = %self.name, subject = ca.subject(), not_after = %rfc3339(ca.not_after()), "local CA reloaded");
        self.ca.store(Arc::new(ca));
        *current = fingerprint;
        Ok(true)
    }

    /// Polls the files every `reload_interval` until the backend is dropped;
    /// unusable files leave the previous CA signing.
    pub fn spawn_reloader(this: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let period = this.config.reload_interval.get();
        Worker::new(format!("CA files of backend {}", this.name))
            .backoff(Backoff::constant(period))
            .first(Next::In(period))
            .spawn_for(this, move |backend| async move {
                backend
                    .reload_if_changed()
                    .map(|_| Next::In(period))
                    .map_err(|e| format!("{e}; still signing with the previous CA"))
            })
    }

    /// The CA currently signing.
    pub fn current(&self) -> Arc<LocalCa> {
        self.ca.load_full()
    }
}

#[async_trait]
impl Signer for LocalBackend {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        // The CA is held across the call: a reload meanwhile changes the
        // next certificate, not this one.
        let ca = self.ca.load_full();
        ca.sign(decision, csr.public_key()).await
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        Ok(self.ca.load().trust_bundle().clone())
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        self.ca.load().holds_key(spki_der)
    }

    fn issuing_ca(&self) -> Option<Arc<LocalCa>> {
        Some(self.ca.load_full())
    }

    async fn layout(&self) -> Result<signet_core::layout::Layout, SignError> {
        let ca = self.ca.load();
        Ok(signet_core::layout::Layout::from_certs(
            Some(ca.certificate()),
            ca.chain(),
            ca.trust_bundle(),
        ))
    }

    fn describe(&self) -> BackendInfo {
        let ca = self.ca.load();
        let now = self.clock.now();
        let ready = if now > ca.not_after() {
            Err(format!("the CA expired at {}", rfc3339(ca.not_after())))
        } else {
            Ok(())
        };
        BackendInfo {
            name: self.name.clone(),
            kind: "local",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: true,
                idempotent_for: None,
                constrains_path_len: true,
            },
            ca_not_after: Some(ca.not_after()),
            ready,
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::exposed;

    #[test]
    fn key_file_exposure() {
        // Owner only: fine.
        assert!(!exposed(0o100600, 0, &[]));
        assert!(!exposed(0o100400, 1000, &[]));
        // A Secret volume's 0440 with the pod's fsGroup, which is ours: fine.
        assert!(!exposed(0o100440, 65532, &[65532]));
        // Group access for a group we are not in, or any access for others.
        assert!(exposed(0o100640, 100, &[65532]));
        assert!(exposed(0o100604, 65532, &[65532]));
        assert!(exposed(0o100644, 65532, &[65532]));
    }
}
