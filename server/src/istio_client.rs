//! `signet dev istio-sign`: an istio-agent-shaped client for the Istio CA API,
//! for trying signet and for checking what a deployed CA answers.

use std::path::PathBuf;

use anyhow::Context as _;
use signet_istio::pb::IstioCertificateRequest;
use signet_istio::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// `signet dev istio-sign` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct IstioSignArgs {
    /// Address of the CA service, e.g. 127.0.0.1:15012.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub addr: String,
    /// Root(s) to verify the service's certificate (istio-agent's root-cert.pem).
    #[arg(long)]
    pub ca_file: PathBuf,
    /// TLS server name to expect (istio-agent uses the host of CA_ADDR).
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub server_name: String,
    /// File holding the bearer token (e.g. from `signet dev token`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// The `clusterid` header.
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// PEM CSR file.
    #[arg(long)]
    pub csr: PathBuf,
    /// Requested lifetime (validity_duration), e.g. 24h.
    #[arg(long, default_value = "24h")]
    pub ttl: signet_core::duration::HumanDuration,
    /// Write cert.pem, ca-chain.pem and root-cert.pem here instead of printing.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn sign(args: IstioSignArgs) -> anyhow::Result<()> {
    let root = std::fs::read(&args.ca_file).with_context(|| args.ca_file.display().to_string())?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name(args.server_name.clone());
    let channel = Channel::from_shared(format!("https://{}", args.addr))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let token = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.token_file)
            .with_context(|| args.token_file.display().to_string())?,
    );
    let csr = std::fs::read_to_string(&args.csr).with_context(|| args.csr.display().to_string())?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: args.ttl.get().as_secs() as i64,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    req.metadata_mut()
        .insert("clusterid", args.cluster_id.parse()?);
    let resp = IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let chain = resp.cert_chain;
    anyhow::ensure!(
        chain.len() >= 2,
        "the service answered {} element(s); istio-agent needs at least 2",
        chain.len()
    );
    let middle: String = chain[1..chain.len() - 1].concat();
    match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("cert.pem"), &chain[0])?;
            std::fs::write(dir.join("ca-chain.pem"), &middle)?;
            std::fs::write(dir.join("root-cert.pem"), &chain[chain.len() - 1])?;
            eprintln!(
                "wrote cert.pem, ca-chain.pem, root-cert.pem to {} ({} elements)",
                dir.display(),
                chain.len()
            );
        }
        None => chain.iter().for_each(|e| print!("{e}")),
    }
    Ok(())
}
