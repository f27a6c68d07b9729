//! The two peers that need more than a token and a URL: smallstep step-ca
//! (a JWK provisioner's one-time token, minted for every request) and the
//! SPIRE server (its SVID API over mutual TLS, with an admin X509-SVID).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::json;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

// === step-ca ===

/// Mints step-ca one-time tokens (OTT) for a JWK provisioner: ES256, header
/// `kid`, claims iss = the provisioner's name, aud = the sign URL, sub and
/// `sans` = the CSR's SPIFFE ID, a five-minute life and a fresh `jti` (step-ca
/// refuses a token it has seen).
#[derive(Debug)]
pub struct StepCaTokens {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    header: String,
    issuer: String,
    audience: String,
    prefix: String,
    next: AtomicU64,
}

impl StepCaTokens {
    /// `key`: the provisioner's EC P-256 private key (PKCS#8 PEM).
    pub fn new(key: &Path, kid: &str, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let der =
            match PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())? {
                PrivateKeyDer::Pkcs8(k) => k,
                _ => anyhow::bail!("{}: not a PKCS#8 key", key.display()),
            };
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
        let header = B64.encode(json!({ "alg": "ES256", "kid": kid, "typ": "JWT" }).to_string());
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        Ok(Self {
            key,
            rng: SystemRandom::new(),
            header,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            prefix: format!("{}-{nanos:x}", std::process::id()),
            next: AtomicU64::new(0),
        })
    }

    /// A token for one request for `id`.
    pub fn mint(&self, id: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let jti = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": id, "sans": [id],
            "iat": now, "nbf": now, "exp": now + 300, "jti": jti,
        });
        let signed = format!("{}.{}", self.header, B64.encode(claims.to_string()));
        let sig = self
            .key
            .sign(&self.rng, signed.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing a token: {e}"))?;
        Ok(format!("{signed}.{}", B64.encode(sig.as_ref())))
    }
}

// === SPIRE ===

/// `spire.api.server.svid.v1.MintX509SVIDRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MintX509SvidRequest {
    /// The CSR, DER.
    #[prost(bytes = "vec", tag = "1")]
    pub csr: Vec<u8>,
    /// Seconds.
    #[prost(int32, tag = "2")]
    pub ttl: i32,
}

/// `spire.api.server.svid.v1.MintX509SVIDResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MintX509SvidResponse {
    #[prost(message, optional, tag = "1")]
    pub svid: Option<X509Svid>,
}

/// `spire.api.types.X509SVID` (the fields the benchmark reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub cert_chain: Vec<Vec<u8>>,
}

pub const MINT_X509_SVID: &str = "/spire.api.server.svid.v1.SVID/MintX509SVID";

/// Trusts the SPIRE bundle for the server's X509-SVID, which names the
/// server by SPIFFE ID only (`spiffe://<td>/spire/server`), not by host:
/// the chain and signatures are checked, the host name is not.
#[derive(Debug)]
struct SpiffeServer(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SpiffeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Mutual TLS to a SPIRE server: its bundle as roots, an admin X509-SVID
/// (`cert`, `key`) as the client certificate, ALPN h2.
pub fn spire_tls(bundle: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).with_context(|| bundle.display().to_string())? {
        roots.add(c?)?;
    }
    let verifier = WebPkiServerVerifier::builder(Arc::new(roots)).build()?;
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| cert.display().to_string())?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())?;
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServer(verifier)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTP/2 channel to the SPIRE server at `authority` (`host:port`).
pub async fn spire_channel(authority: &str, tls: Arc<ClientConfig>) -> anyhow::Result<Channel> {
    let target = authority.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (target, tls) = (target.clone(), tls.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("spire-server")?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, anyhow::Error>(TokioIo::new(stream))
        }
    });
    Ok(Endpoint::from_shared(format!("http://{authority}"))?
        .connect_with_connector(connector)
        .await?)
}
