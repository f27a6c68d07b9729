//! TLS and HTTP/1.1 plumbing: one keep-alive connection per worker, as wrk
//! does, so every target pays the same client cost.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A client configuration that trusts only the certificates in `ca` and
/// offers `alpn`.
pub fn tls_config(ca: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read(ca).with_context(|| ca.display().to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.with_context(|| ca.display().to_string())?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no certificate", ca.display());
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Where to connect: `host:port` and the TLS server name.
#[derive(Debug, Clone)]
pub struct Origin {
    pub authority: String,
    pub server_name: ServerName<'static>,
    pub tls: Option<Arc<ClientConfig>>,
}

impl Origin {
    /// From `https://host:port` (or `http://` for plain connections).
    pub fn parse(url: &str, tls: Option<Arc<ClientConfig>>) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("{url}: the scheme must be https or http"),
        };
        let host = uri.host().context("URL without a host")?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        anyhow::ensure!(!https || tls.is_some(), "{url}: https needs --ca");
        Ok(Self {
            authority,
            server_name: ServerName::try_from(host)?,
            tls: if https { tls } else { None },
        })
    }

    /// Opens one HTTP/1.1 connection (TLS when the origin is https).
    pub async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(&self.authority).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some(tls) => {
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(self.server_name.clone(), tcp)
                    .await?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
    }

    /// Opens one HTTP/2 connection for gRPC (TLS with ALPN h2), driven by
    /// hyper directly: no buffer task between the caller and the
    /// connection, so the gRPC client costs what the HTTP/1.1 one does.
    pub async fn connect_h2(&self) -> anyhow::Result<H2> {
        let tls = self.tls.clone().context("gRPC needs TLS")?;
        let tcp = TcpStream::connect(&self.authority).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(self.server_name.clone(), tcp)
            .await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2 {
            sender,
            origin: format!("https://{}", self.authority).parse()?,
        })
    }
}

/// A gRPC transport over one hyper HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    origin: http::Uri,
}

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // tonic sets the path; HTTP/2 needs the scheme and authority too.
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        Box::pin(self.sender.send_request(req))
    }
}

async fn handshake<T>(io: T) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `req` and reads the whole answer.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
