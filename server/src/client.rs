//! `signet sign`: a small client for the REST endpoint.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::rest::SignResponse;

/// `signet sign` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// Base URL of the endpoint, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    pub url: String,
    /// PEM CSR file.
    #[arg(long)]
    pub csr: PathBuf,
    /// Trust only these roots for the server certificate (e.g. signet-data/root.pem).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// File holding a bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Requested lifetime, e.g. 1h or 24h.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Certificate profile: workload, server or client.
    #[arg(long)]
    pub profile: Option<String>,
    /// Write cert.pem, ca-chain.pem, fullchain.pem and trust-bundle.pem here
    /// instead of printing the chain.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn endpoint(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if trimmed.ends_with("/v1/sign") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/sign")
    }
}

/// Sends the CSR and writes or prints the result.
pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let csr = std::fs::read_to_string(&args.csr)
        .with_context(|| format!("reading {}", args.csr.display()))?;
    let mut builder = reqwest::Client::builder().https_only(true);
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not PEM certificates", ca.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{}: no certificates", ca.display());
        builder = builder.tls_certs_only(certs);
    }
    let client = builder.build()?;
    let mut body = serde_json::json!({ "csr": csr });
    if let Some(ttl) = &args.ttl {
        body["ttl"] = ttl.clone().into();
    }
    if let Some(profile) = &args.profile {
        body["profile"] = profile.clone().into();
    }
    let mut req = client.post(endpoint(&args.url)).json(&body);
    if let Some(tf) = &args.token_file {
        let token = zeroize::Zeroizing::new(
            std::fs::read_to_string(tf).with_context(|| format!("reading {}", tf.display()))?,
        );
        req = req.bearer_auth(token.trim());
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("POST {}", endpoint(&args.url)))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{} ({}): {}",
                    e.get("code")?.as_str()?,
                    e.get("reason").and_then(|r| r.as_str()).unwrap_or("-"),
                    e.get("message")?.as_str()?
                ))
            })
            .unwrap_or(text);
        anyhow::bail!("{status}: {detail}");
    }
    let signed: SignResponse = serde_json::from_str(&text).context("unexpected response")?;
    match &args.out {
        Some(dir) => write_out(dir, &signed)?,
        None => {
            print!("{}", signed.certificate);
            for c in &signed.ca_chain {
                print!("{c}");
            }
        }
    }
    eprintln!(
        "issued serial {} valid until {}",
        signed.serial_number, signed.not_after
    );
    Ok(())
}

fn write_out(dir: &Path, s: &SignResponse) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let chain: String = s.ca_chain.concat();
    std::fs::write(dir.join("cert.pem"), &s.certificate)?;
    std::fs::write(dir.join("ca-chain.pem"), &chain)?;
    std::fs::write(
        dir.join("fullchain.pem"),
        format!("{}{chain}", s.certificate),
    )?;
    std::fs::write(dir.join("trust-bundle.pem"), s.trust_bundle.concat())?;
    eprintln!(
        "wrote cert.pem, ca-chain.pem, fullchain.pem, trust-bundle.pem to {}",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_accepts_base_or_full_urls() {
        assert_eq!(super::endpoint("https://h:1"), "https://h:1/v1/sign");
        assert_eq!(super::endpoint("https://h:1/"), "https://h:1/v1/sign");
        assert_eq!(
            super::endpoint("https://h:1/v1/sign"),
            "https://h:1/v1/sign"
        );
    }
}
