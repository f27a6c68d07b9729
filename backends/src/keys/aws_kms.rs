//! A CA key in AWS KMS: an asymmetric `SIGN_VERIFY` key (`ECC_NIST_P256`,
//! `ECC_NIST_P384`, `RSA_2048`/`3072`/`4096`).
//!
//! At start signet reads the key's public half (`GetPublicKey`) and checks
//! its usage and type. Each signature is one `Sign` call with
//! `ECDSA_SHA_256`, `ECDSA_SHA_384` or `RSASSA_PKCS1_V1_5_SHA_256`. The
//! message is the certificate's `toBeSigned` itself (`MessageType: RAW`, KMS
//! hashes it), or above KMS's 4096-byte limit for raw messages the digest
//! signet computed (`MessageType: DIGEST`). (Raw first because the `toBeSigned`
//! is no secret, and a KMS emulator that ignores `DIGEST` signs the same.)
//! The SDK's own retries are off: retries, deadlines and the call budget are
//! the backend's resilience layer's.
//!
//! [`KmsKeys`] makes keys in KMS (a delegated authority's intermediates):
//! `CreateKey` of an asymmetric `SIGN_VERIFY` key, tagged with its
//! authority, and an alias `alias/signet-<authority>-<time>-<random>` by
//! which it is found again. Retiring a key schedules its deletion (KMS's
//! shortest window, 7 days) and deletes the alias.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use serde::Deserialize;
use signet_core::crypto::KeyKind;
use signet_core::key::{
    GeneratedKey, KeyAlgorithm, KeyDescription, KeyFactory, KeyHandle, KeyStoreError, PublicKey,
    SignatureAlgorithm, generated_key_name, generated_key_time,
};

use super::KeyOpenError;

/// The longest message KMS signs as it is (`MessageType: RAW`).
const RAW_LIMIT: usize = 4096;

/// `key: { type: aws_kms, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsKeyConfig {
    /// Key ID, key ARN, alias name (`alias/...`) or alias ARN (not for
    /// keys signet makes).
    #[serde(default)]
    pub key_id: Option<String>,
    /// e.g. `eu-west-1`.
    pub region: String,
    /// Another endpoint (a VPC endpoint, or a test server).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the AWS default chain (both or neither,
    /// optionally a session token).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub session_token_file: Option<PathBuf>,
}

impl KmsKeyConfig {
    /// As the key of a CA.
    pub fn check(&self) -> Result<(), String> {
        if self.key_id.is_none() {
            return Err("key_id is required".into());
        }
        Ok(())
    }

    /// As where intermediates' keys are made.
    pub fn check_for_generation(&self) -> Result<(), String> {
        if self.key_id.is_some() {
            return Err("signet names the keys it makes: leave out key_id".into());
        }
        Ok(())
    }

    /// A client whose every call ends within `timeout`.
    async fn client(
        &self,
        timeout: std::time::Duration,
    ) -> Result<aws_sdk_kms::Client, KeyOpenError> {
        let sdk = crate::aws::AwsAccess {
            region: &self.region,
            endpoint_url: self.endpoint_url.as_deref(),
            access_key_id_file: self.access_key_id_file.as_ref(),
            secret_access_key_file: self.secret_access_key_file.as_ref(),
            session_token_file: self.session_token_file.as_ref(),
        }
        .sdk_config()
        .await
        .map_err(store_err)?;
        let kms = aws_sdk_kms::config::Builder::from(&sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .build(),
            )
            .build();
        Ok(aws_sdk_kms::Client::from_conf(kms))
    }
}

/// A key in AWS KMS.
#[derive(Debug)]
pub struct KmsKey {
    client: aws_sdk_kms::Client,
    key_id: String,
    public: PublicKey,
    algorithm: SigningAlgorithmSpec,
}

fn store_err(detail: impl Into<String>) -> KeyOpenError {
    KeyOpenError::Store {
        store: "aws_kms",
        detail: detail.into(),
    }
}

/// Maps a KMS error: throttling, service trouble and transport failures are
/// worth retrying; a refusal (access, a disabled or missing key, wrong
/// usage) is not.
fn map_err<E: ProvideErrorMetadata + std::fmt::Debug>(e: SdkError<E>) -> KeyStoreError {
    let (code, detail) = crate::aws::describe("KMS", &e);
    match (&e, code.as_deref()) {
        (_, Some(c)) if crate::aws::THROTTLED.contains(&c) => KeyStoreError::Unavailable(detail),
        (_, Some(c)) if crate::aws::UNAVAILABLE.contains(&c) => KeyStoreError::Unavailable(detail),
        (SdkError::ServiceError(s), _) if s.raw().status().is_server_error() => {
            KeyStoreError::Unavailable(detail)
        }
        (SdkError::ServiceError(_), _) => KeyStoreError::Refused(detail),
        // Timeouts, connection failures, unreadable responses.
        _ => KeyStoreError::Unavailable(detail),
    }
}

impl KmsKey {
    /// Connects and reads the key's public half.
    /// `timeout` bounds each call (the backend's `resilience.timeout`).
    pub async fn open(
        config: KmsKeyConfig,
        timeout: std::time::Duration,
    ) -> Result<Arc<Self>, KeyOpenError> {
        config.check().map_err(store_err)?;
        let client = config.client(timeout).await?;
        Self::with_client(client, config.key_id.unwrap_or_default()).await
    }

    /// With a client built elsewhere.
    pub async fn with_client(
        client: aws_sdk_kms::Client,
        key_id: String,
    ) -> Result<Arc<Self>, KeyOpenError> {
        let out = client
            .get_public_key()
            .key_id(&key_id)
            .send()
            .await
            .map_err(|e| store_err(format!("{key_id}: {}", map_err(e))))?;
        if out.key_usage() != Some(&KeyUsageType::SignVerify) {
            return Err(store_err(format!(
                "{key_id} is not a SIGN_VERIFY key (usage {:?})",
                out.key_usage()
            )));
        }
        let spki = out
            .public_key()
            .ok_or_else(|| store_err(format!("{key_id}: GetPublicKey returned no key")))?;
        let public = PublicKey::from_spki_der(spki.as_ref())
            .map_err(|e| store_err(format!("{key_id}: {e}")))?;
        let algorithm = match public.kind() {
            KeyKind::EcdsaP256 => SigningAlgorithmSpec::EcdsaSha256,
            KeyKind::EcdsaP384 => SigningAlgorithmSpec::EcdsaSha384,
            KeyKind::Rsa { .. } => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
            KeyKind::Ed25519 => {
                return Err(store_err(format!("{key_id}: Ed25519 is not supported")));
            }
        };
        if !out.signing_algorithms().contains(&algorithm) {
            return Err(store_err(format!(
                "{key_id} does not offer {}",
                algorithm.as_str()
            )));
        }
        tracing::info!(key = %key_id, algorithm = %public.kind(), "AWS KMS key opened");
        Ok(Arc::new(Self {
            client,
            key_id,
            public,
            algorithm,
        }))
    }
}

#[async_trait]
impl KeyHandle for KmsKey {
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.public.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.public.bits()
    }
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "aws_kms",
            id: self.key_id.clone(),
        }
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let (message, message_type) = if message.len() <= RAW_LIMIT {
            (message.to_vec(), MessageType::Raw)
        } else {
            (self.public.digest(message)?.bytes, MessageType::Digest)
        };
        let out = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(message_type)
            .signing_algorithm(self.algorithm.clone())
            .send()
            .await
            .map_err(map_err)?;
        out.signature
            .map(Blob::into_inner)
            .ok_or_else(|| KeyStoreError::Refused("KMS Sign returned no signature".into()))
    }
}

/// Makes intermediates' keys in AWS KMS (see the module documentation).
#[derive(Debug)]
pub struct KmsKeys {
    client: aws_sdk_kms::Client,
    region: String,
}

/// The tag that names the authority a key was made for.
const OWNER_TAG: &str = "signet-authority";

impl KmsKeys {
    /// `timeout` bounds each call.
    pub async fn open(
        config: KmsKeyConfig,
        timeout: std::time::Duration,
    ) -> Result<Arc<Self>, KeyOpenError> {
        config.check_for_generation().map_err(store_err)?;
        let client = config.client(timeout).await?;
        // Listing aliases is what sweeping needs: a missing permission or
        // an unreachable endpoint is found at start.
        client
            .list_aliases()
            .limit(1)
            .send()
            .await
            .map_err(|e| store_err(format!("ListAliases: {}", map_err(e))))?;
        Ok(Arc::new(Self {
            client,
            region: config.region,
        }))
    }

    /// Schedules the key's deletion, then deletes the alias.
    async fn destroy(&self, alias: &str, key_id: &str) -> Result<(), KeyStoreError> {
        match self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(7)
            .send()
            .await
        {
            Ok(_) => {}
            // Already pending deletion (an earlier try lost the alias step).
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_kms_invalid_state_exception()) => {}
            Err(e) => return Err(map_err(e)),
        }
        self.client
            .delete_alias()
            .alias_name(alias)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl KeyFactory for KmsKeys {
    fn describe(&self) -> KeyDescription {
        KeyDescription {
            store: "aws_kms",
            id: self.region.clone(),
        }
    }

    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        owner: &str,
        now: SystemTime,
    ) -> Result<GeneratedKey, KeyStoreError> {
        let spec = match algorithm {
            KeyAlgorithm::EcdsaP256 => KeySpec::EccNistP256,
            KeyAlgorithm::EcdsaP384 => KeySpec::EccNistP384,
            KeyAlgorithm::Rsa2048 => KeySpec::Rsa2048,
            KeyAlgorithm::Rsa3072 => KeySpec::Rsa3072,
            KeyAlgorithm::Rsa4096 => KeySpec::Rsa4096,
            KeyAlgorithm::Ed25519 => {
                return Err(KeyStoreError::Refused(
                    "AWS KMS keys for signet are EC P-256/P-384 or RSA".into(),
                ));
            }
        };
        let name = generated_key_name(owner, now);
        let tag = Tag::builder()
            .tag_key(OWNER_TAG)
            .tag_value(owner)
            .build()
            .map_err(|e| KeyStoreError::Refused(e.to_string()))?;
        let created = self
            .client
            .create_key()
            .key_usage(KeyUsageType::SignVerify)
            .key_spec(spec)
            .description(format!(
                "signet: intermediate CA key of authority {owner} ({name})"
            ))
            .tags(tag)
            .send()
            .await
            .map_err(map_err)?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| KeyStoreError::Refused("CreateKey returned no key".into()))?;
        let alias = format!("alias/{name}");
        if let Err(e) = self
            .client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&key_id)
            .send()
            .await
        {
            let e = map_err(e);
            // Without its alias no sweep would find it.
            let _ = self
                .client
                .schedule_key_deletion()
                .key_id(&key_id)
                .pending_window_in_days(7)
                .send()
                .await;
            return Err(e);
        }
        match KmsKey::with_client(self.client.clone(), key_id.clone()).await {
            Ok(handle) => Ok(GeneratedKey { handle, name }),
            Err(e) => {
                // Not left behind: nothing would retire it.
                let _ = self.destroy(&alias, &key_id).await;
                Err(KeyStoreError::Unavailable(format!(
                    "reading the key it made: {e}"
                )))
            }
        }
    }

    async fn retire(&self, key: &GeneratedKey) -> Result<(), KeyStoreError> {
        let alias = format!("alias/{}", key.name);
        let described = self
            .client
            .describe_key()
            .key_id(&alias)
            .send()
            .await
            .map_err(map_err)?;
        let key_id = described
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| KeyStoreError::Refused(format!("{alias}: no key")))?;
        self.destroy(&alias, &key_id).await
    }

    async fn sweep(
        &self,
        owner: &str,
        before: SystemTime,
        keep: &str,
    ) -> Result<usize, KeyStoreError> {
        let mut old = Vec::new();
        let mut pages = self.client.list_aliases().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(map_err)?;
            for a in page.aliases() {
                let (Some(alias), Some(target)) = (a.alias_name(), a.target_key_id()) else {
                    continue;
                };
                let Some(name) = alias.strip_prefix("alias/") else {
                    continue;
                };
                if name != keep && generated_key_time(owner, name).is_some_and(|made| made < before)
                {
                    old.push((alias.to_owned(), target.to_owned()));
                }
            }
        }
        let mut destroyed = 0;
        for (alias, key_id) in &old {
            // One that cannot be destroyed does not stop the others.
            match self.destroy(alias, key_id).await {
                Ok(()) => destroyed += 1,
                Err(e) => {
                    tracing::warn!(key = %alias, error = %e, "KMS: could not retire a swept key")
                }
            }
        }
        Ok(destroyed)
    }
}
