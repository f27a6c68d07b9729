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

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyUsageType, MessageType, SigningAlgorithmSpec};
use serde::Deserialize;
use signet_core::crypto::KeyKind;
use signet_core::key::{KeyDescription, KeyHandle, KeyStoreError, PublicKey, SignatureAlgorithm};

use super::KeyOpenError;

/// The longest message KMS signs as it is (`MessageType: RAW`).
const RAW_LIMIT: usize = 4096;

/// `key: { type: aws_kms, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsKeyConfig {
    /// Key ID, key ARN, alias name (`alias/...`) or alias ARN.
    pub key_id: String,
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
    pub async fn open(config: KmsKeyConfig) -> Result<Arc<Self>, KeyOpenError> {
        let sdk = crate::aws::AwsAccess {
            region: &config.region,
            endpoint_url: config.endpoint_url.as_deref(),
            access_key_id_file: config.access_key_id_file.as_ref(),
            secret_access_key_file: config.secret_access_key_file.as_ref(),
            session_token_file: config.session_token_file.as_ref(),
        }
        .sdk_config()
        .await
        .map_err(store_err)?;
        let kms = aws_sdk_kms::config::Builder::from(&sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        Self::with_client(aws_sdk_kms::Client::from_conf(kms), config.key_id).await
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
