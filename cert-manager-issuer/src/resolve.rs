//! Turns an issuer's `spec.backend` into a [`BackendConfig`].
//!
//! The spec has the config file's shape, with one difference: credentials
//! are Secret references. Every `<key>_secret: {name, key}` is read from the
//! issuer's Secret namespace and written to a private file, and the entry
//! becomes the `<key>_file` the backend's config type expects. Whatever
//! would let an issuer author reach signet's own files or environment is
//! refused: `<key>_file`, `<key>_env`, `kubeconfig`, and (for namespaced
//! issuers) Kubernetes auth with signet's own service-account token.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Deserialize;
use serde_json::Value;
use signet_backends::BackendConfig;

/// Where an issuer lives, which decides where its Secrets are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// Why an issuer's backend could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The spec is wrong; nothing changes until it is edited.
    #[error("spec.backend{path}: {detail}")]
    Invalid { path: String, detail: String },
    /// A referenced Secret or key is missing (or unreadable); retried.
    #[error("{0}")]
    Secret(String),
}

/// A `<key>_secret` reference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A reference found in the spec: where it sits and what it names.
#[derive(Debug)]
struct Found {
    /// The object holding it (JSON pointer).
    parent: String,
    /// `<key>` of `<key>_secret`.
    stem: String,
    secret: SecretKeyRef,
}

/// Backend types an issuer may not use.
const REFUSED_TYPES: &[(&str, &str)] = &[(
    "cert_manager",
    "an issuer cannot use the cert_manager backend (it would ask cert-manager to ask itself)",
)];

fn invalid(path: &str, detail: impl Into<String>) -> ResolveError {
    ResolveError::Invalid {
        path: path.replace('/', "."),
        detail: detail.into(),
    }
}

/// Walks the spec, refusing what is not allowed and collecting references.
fn walk(value: &Value, pointer: &str, found: &mut Vec<Found>) -> Result<(), ResolveError> {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{pointer}/{k}");
                if let Some(stem) = k.strip_suffix("_secret") {
                    let secret = SecretKeyRef::deserialize(v)
                        .map_err(|e| invalid(&here, format!("expected {{name, key}}: {e}")))?;
                    if map.contains_key(&format!("{stem}_file")) {
                        return Err(invalid(&here, format!("both {k} and {stem}_file")));
                    }
                    found.push(Found {
                        parent: pointer.to_owned(),
                        stem: stem.to_owned(),
                        secret,
                    });
                } else if let Some(stem) = k.strip_suffix("_file") {
                    return Err(invalid(
                        &here,
                        format!(
                            "files are not read for issuers; reference a Secret with {stem}_secret: {{name, key}}"
                        ),
                    ));
                } else if k.ends_with("_env") {
                    return Err(invalid(
                        &here,
                        "signet's environment is not available to issuers; reference a Secret",
                    ));
                } else if k == "kubeconfig" {
                    return Err(invalid(&here, "not available to issuers"));
                } else {
                    walk(v, &here, found)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{pointer}/{i}"), found)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a spec without reading anything (what can be said before Secrets).
pub fn check(spec: &Value, scope: Scope) -> Result<(), ResolveError> {
    let Some(map) = spec.as_object() else {
        return Err(invalid("", "must be an object with a `type`"));
    };
    let Some(kind) = map.get("type").and_then(Value::as_str) else {
        return Err(invalid("", "`type` is required"));
    };
    if let Some((_, why)) = REFUSED_TYPES.iter().find(|(t, _)| *t == kind) {
        return Err(invalid("/type", *why));
    }
    // Vault's Kubernetes auth defaults to signet's own service-account
    // token: only cluster issuers (created by cluster administrators) may
    // act as signet.
    if scope == Scope::Namespaced
        && let Some(k8s) = spec.pointer("/auth/kubernetes")
        && k8s.get("token_secret").is_none()
    {
        return Err(invalid(
            "/auth/kubernetes",
            "a SignetIssuer must give token_secret (signet's own service-account token is for SignetClusterIssuers only)",
        ));
    }
    // Cloud backends otherwise use signet's own cloud identity.
    if scope == Scope::Namespaced {
        let has = |k: &str| map.contains_key(k);
        if kind == "aws_pca" && !(has("access_key_id_secret") && has("secret_access_key_secret")) {
            return Err(invalid(
                "",
                "a SignetIssuer of type aws_pca must give access_key_id_secret and secret_access_key_secret (signet's own AWS identity is for SignetClusterIssuers only)",
            ));
        }
        if kind == "gcp_cas" && !has("credentials_secret") {
            return Err(invalid(
                "",
                "a SignetIssuer of type gcp_cas must give credentials_secret (signet's own Google identity is for SignetClusterIssuers only)",
            ));
        }
    }
    walk(spec, "", &mut Vec::new())
}

/// The files holding an issuer's Secret values while it runs.
///
/// On Linux they are unlinked (O_TMPFILE) files, reached by the backends
/// through `/proc/self/fd/<n>`: no name on disk, owner-only, gone with the
/// process even if it is killed. Elsewhere: 0600 files in a private
/// temporary directory removed when this is dropped.
#[derive(Debug)]
pub struct SecretFiles {
    files: Vec<std::fs::File>,
    dir: Option<tempfile::TempDir>,
}

impl SecretFiles {
    pub fn new() -> std::io::Result<Self> {
        let dir = if cfg!(target_os = "linux") && Path::new("/proc/self/fd").is_dir() {
            None
        } else {
            Some(
                tempfile::Builder::new()
                    .prefix("signet-issuer-")
                    .tempdir()?,
            )
        };
        Ok(Self {
            files: Vec::new(),
            dir,
        })
    }

    /// Stores `bytes`; returns the path a backend reads them from.
    fn add(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<String> {
        match &self.dir {
            Some(dir) => {
                let path = dir.path().join(format!("{}-{name}", self.files.len()));
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&path)?;
                f.write_all(bytes)?;
                self.files.push(f);
                Ok(path.display().to_string())
            }
            None => {
                let mut f = tempfile::tempfile()?;
                f.write_all(bytes)?;
                f.flush()?;
                #[cfg(unix)]
                let path = {
                    use std::os::fd::AsRawFd as _;
                    format!("/proc/self/fd/{}", f.as_raw_fd())
                };
                #[cfg(not(unix))]
                let path = String::new();
                self.files.push(f);
                Ok(path)
            }
        }
    }
}

/// Resolves `spec` into a backend config, storing Secret values in `files`.
/// Returns the config and the resourceVersion of each Secret read, to
/// notice when they change.
pub async fn resolve(
    spec: &Value,
    scope: Scope,
    secrets: &Api<Secret>,
    files: &mut SecretFiles,
) -> Result<(BackendConfig, BTreeMap<String, String>), ResolveError> {
    check(spec, scope)?;
    let mut found = Vec::new();
    walk(spec, "", &mut found)?;
    let mut resolved = spec.clone();
    let mut versions = BTreeMap::new();
    for f in &found {
        let secret = secrets
            .get_opt(&f.secret.name)
            .await
            .map_err(|e| ResolveError::Secret(format!("reading Secret {}: {e}", f.secret.name)))?
            .ok_or_else(|| ResolveError::Secret(format!("Secret {} not found", f.secret.name)))?;
        versions.insert(
            f.secret.name.clone(),
            secret.metadata.resource_version.clone().unwrap_or_default(),
        );
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&f.secret.key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&f.secret.key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| {
                ResolveError::Secret(format!(
                    "Secret {} has no key {:?}",
                    f.secret.name, f.secret.key
                ))
            })?;
        let path = files
            .add(&f.stem, &bytes)
            .map_err(|e| ResolveError::Secret(format!("storing Secret {}: {e}", f.secret.name)))?;
        let parent = resolved
            .pointer_mut(&f.parent)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid(&f.parent, "not an object"))?;
        parent.remove(&format!("{}_secret", f.stem));
        parent.insert(format!("{}_file", f.stem), Value::String(path));
    }
    let config = BackendConfig::deserialize(&resolved).map_err(|e| invalid("", e.to_string()))?;
    Ok((config, versions))
}

/// The Secret references of a spec (names only), to tell which Secrets an
/// issuer depends on.
pub fn secret_names(spec: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let _ = walk(spec, "", &mut found);
    let mut names: Vec<String> = found.into_iter().map(|f| f.secret.name).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_files_environment_and_kubeconfig() {
        for (spec, want) in [
            (
                json!({"type": "local", "cert_file": "/etc/x"}),
                "cert_secret",
            ),
            (
                json!({"type": "vault", "auth": {"token": {"token_env": "VAULT_TOKEN"}}}),
                "environment",
            ),
            (
                json!({"type": "vault", "kubeconfig": "/root/.kube/config"}),
                "not available",
            ),
            (json!({"type": "cert_manager"}), "ask itself"),
            (
                json!({"cert_secret": {"name": "a", "key": "b"}}),
                "`type` is required",
            ),
            (
                json!({"type": "local", "cert_secret": {"name": "a"}}),
                "expected {name, key}",
            ),
        ] {
            let e = check(&spec, Scope::Cluster).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn namespaced_issuers_cannot_borrow_signets_identity() {
        let spec = json!({"type": "vault", "address": "https://v:8200",
            "auth": {"kubernetes": {"role": "r"}}});
        let e = check(&spec, Scope::Namespaced).unwrap_err().to_string();
        assert!(e.contains("token_secret"), "{e}");
        check(&spec, Scope::Cluster).unwrap();
        let with_token = json!({"type": "vault", "address": "https://v:8200",
            "auth": {"kubernetes": {"role": "r", "token_secret": {"name": "sa", "key": "token"}}}});
        check(&with_token, Scope::Namespaced).unwrap();
        assert_eq!(secret_names(&with_token), vec!["sa".to_owned()]);
        for ambient in [
            json!({"type": "aws_pca", "region": "eu-west-1", "certificate_authority_arn": "arn:aws:acm-pca:eu-west-1:1:certificate-authority/x"}),
            json!({"type": "gcp_cas", "project": "p", "location": "l", "ca_pool": "c"}),
        ] {
            let e = check(&ambient, Scope::Namespaced).unwrap_err().to_string();
            assert!(e.contains("SignetClusterIssuers only"), "{e}");
            check(&ambient, Scope::Cluster).unwrap();
        }
        let keyed = json!({"type": "gcp_cas", "project": "p", "location": "l", "ca_pool": "c",
            "credentials_secret": {"name": "gsa", "key": "key.json"}});
        check(&keyed, Scope::Namespaced).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn secret_values_have_no_name_on_disk() {
        let mut files = SecretFiles::new().unwrap();
        let path = files.add("key", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(path.starts_with("/proc/self/fd/"), "{path}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        let target = std::fs::read_link(&path).unwrap();
        assert!(
            target.to_string_lossy().contains("(deleted)") || !target.exists(),
            "{target:?}"
        );
        drop(files);
        assert!(std::fs::read(&path).is_err());
    }
}
