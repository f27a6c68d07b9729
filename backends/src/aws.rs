//! What the AWS adapters (Private CA, KMS) share: how signet reaches AWS.

use std::path::PathBuf;

#[cfg(feature = "aws_pca")]
use aws_sdk_acmpca::config::Credentials;
#[cfg(feature = "aws_pca")]
use aws_sdk_acmpca::error::{ProvideErrorMetadata, SdkError};
#[cfg(all(feature = "aws_kms", not(feature = "aws_pca")))]
use aws_sdk_kms::config::Credentials;
#[cfg(all(feature = "aws_kms", not(feature = "aws_pca")))]
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

/// Region, endpoint and credentials of an AWS service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AwsAccess<'a> {
    pub region: &'a str,
    /// Another endpoint (a VPC endpoint, or a test server).
    pub endpoint_url: Option<&'a str>,
    /// Static credentials (read at start) instead of the AWS default chain:
    /// both or neither, optionally a session token.
    pub access_key_id_file: Option<&'a PathBuf>,
    pub secret_access_key_file: Option<&'a PathBuf>,
    pub session_token_file: Option<&'a PathBuf>,
}

impl AwsAccess<'_> {
    /// The SDK configuration (credentials from the files, or the default
    /// chain, resolved lazily by the SDK).
    pub(crate) async fn sdk_config(&self) -> Result<aws_config::SdkConfig, String> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.to_owned()));
        if let Some(url) = self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(credentials) = self.static_credentials()? {
            loader = loader.credentials_provider(credentials);
        }
        Ok(loader.load().await)
    }

    fn static_credentials(&self) -> Result<Option<Credentials>, String> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| zeroize::Zeroizing::new(s.trim().to_owned()))
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        match (self.access_key_id_file, self.secret_access_key_file) {
            (None, None) if self.session_token_file.is_none() => Ok(None),
            (Some(id), Some(secret)) => {
                let token = self.session_token_file.map(read).transpose()?;
                Ok(Some(Credentials::new(
                    read(id)?.as_str(),
                    read(secret)?.as_str(),
                    token.map(|t| t.to_string()),
                    None,
                    "signet-config",
                )))
            }
            _ => Err("access_key_id_file and secret_access_key_file go together".into()),
        }
    }
}

/// Error codes by which AWS says "slow down".
pub(crate) const THROTTLED: &[&str] = &[
    "ThrottlingException",
    "LimitExceededException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// Error codes by which AWS says "try again later".
pub(crate) const UNAVAILABLE: &[&str] = &[
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "KMSInternalException",
    "DependencyTimeoutException",
];

/// An SDK error's code, and a line for logs and answers: `<what>: <code>:
/// <message>` (the error's debug form, cut short, when AWS sent no message).
pub(crate) fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    e: &SdkError<E>,
) -> (Option<String>, String) {
    let code = e.code().map(str::to_owned);
    let message = e
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{e:?}").chars().take(300).collect());
    let detail = format!(
        "{what}: {}{message}",
        code.as_deref()
            .map(|c| format!("{c}: "))
            .unwrap_or_default()
    );
    (code, detail)
}
