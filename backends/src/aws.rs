//! What the AWS adapters (Private CA, KMS) share: how signet reaches AWS.

use std::path::PathBuf;

#[cfg(feature = "aws_pca")]
use aws_sdk_acmpca::config::Credentials;
#[cfg(all(feature = "aws_kms", not(feature = "aws_pca")))]
use aws_sdk_kms::config::Credentials;

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
