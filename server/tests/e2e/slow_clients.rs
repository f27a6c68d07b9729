//! Slow and oversized clients against the real binary: connections that
//! never start TLS, dribble their headers (slowloris) or their body are cut
//! off by the listener's limits while an honest client is served; gRPC
//! messages over `max_message_bytes` are refused without harm.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use signet_tests::hostile;
use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::process::Signet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn tls_connector(root: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(root).unwrap();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Reads until the server closes the stream (or `limit` passes); returns
/// what it sent and how long that took.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a slow connection open for {limit:?}"),
        }
    }
}

fn config(dir: &Path, data: &Path) -> PathBuf {
    let yaml = format!(
        r#"trust_domain: cluster.local
backends:
  dev:
    type: local
    cert_file: {data}/intermediate.pem
    key_file: {data}/intermediate-key.pem
    chain_file: {data}/root.pem
authorities:
  dev:
    backend: dev
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: dev
    auth: {{ loopback_unauthenticated: true }}
    limits: {{ handshake_timeout: 1s, request_timeout: 2s, max_connections: 200 }}
    principals:
      - name: "*"
        allowed_sans: ["spiffe://cluster.local/**"]
"#,
        data = data.display()
    );
    let path = dir.join("slow.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_honest_ones_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The dev PKI, then a server with short limits over it.
    assert!(Signet::dev(&bin(), &data).unwrap().terminate());
    let signet = Signet::start(
        &bin(),
        &[
            "serve",
            "--config",
            config(tmp.path(), &data).to_str().unwrap(),
        ],
    )
    .unwrap();
    let addr = signet.rest_addr.unwrap();
    let root = data.join("root.pem");
    let connector = tls_connector(&root);
    let server_name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    // 40 connections that never say anything.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // 40 that finish TLS, then send their headers a byte at a time.
    let mut dribblers = Vec::new();
    for i in 0..40 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(server_name.clone(), tcp).await.unwrap();
        tls.write_all(b"POST /v1/sign HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        dribblers.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u32;
            loop {
                let byte = [b'a' + (n % 26) as u8];
                if tls.write_all(&byte).await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "dribbler {i} still connected"
                );
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(1), tls.read(&mut probe)).await
                {
                    break;
                }
            }
            started.elapsed()
        }));
    }
    // One that sends a whole header and then its body too slowly.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut slow_body = connector.connect(server_name.clone(), tcp).await.unwrap();
    slow_body
        .write_all(
            b"POST /v1/sign HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{\"csr\": \"",
        )
        .await
        .unwrap();
    let slow_body = tokio::spawn(async move {
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 2048];
        while started.elapsed() < Duration::from_secs(10) {
            let _ = slow_body.write_all(b"A").await;
            let _ = slow_body.flush().await;
            match tokio::time::timeout(Duration::from_millis(200), slow_body.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    });

    // Meanwhile an honest client is served at once. (signet's own serving
    // certificate is on the audit trail too: count from here.)
    let issued_before = signet.logs_containing("certificate issued", 1).len();
    let client = signet_tests::http::client(&root);
    let started = Instant::now();
    let r = client
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": hostile::csr_corpus_good() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Silent connections: closed after the 1 s handshake timeout.
    for mut s in silent {
        let (sent, after) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(sent.is_empty());
        assert!(after < Duration::from_secs(5));
    }
    // Dribbled headers: closed after the 1 s header timeout.
    for d in dribblers {
        let after = d.await.unwrap();
        assert!(after < Duration::from_secs(5), "{after:?}");
    }
    // A dribbled body: 408 body_too_slow after half the request timeout.
    let (answer, after) = slow_body.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"reason\":\"body_too_slow\""), "{answer}");
    assert!(after < Duration::from_secs(4), "{after:?}");

    // Nothing was signed but the honest request, and the server serves on.
    assert_eq!(
        signet
            .logs_containing("certificate issued", issued_before + 1)
            .len(),
        issued_before + 1
    );
    let r = client
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": hostile::csr_corpus_good() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oversized_grpc_messages_are_refused_and_the_channel_lives_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&bin(), &data).unwrap();
    let root = data.join("root.pem");
    let token = {
        let out = std::process::Command::new(bin())
            .args(["dev", "token", "--data-dir"])
            .arg(&data)
            .args(["--ns", "default", "--sa", "demo", "--ttl", "10m"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&root).unwrap()))
        .domain_name("istiod.istio-system.svc");
    let channel = Channel::from_shared(format!("https://{}", signet.grpc_addr.unwrap()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = IstioCertificateServiceClient::new(channel);
    let call = |csr: String| {
        let mut r = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: None,
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };

    // 1 MiB and 100 KiB messages: over the 64 KiB default.
    for size in [1 << 20, 100 << 10] {
        let status = client
            .create_certificate(call("A".repeat(size)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{size}: {status:?}");
        assert!(status.message().contains("too large"), "{status:?}");
    }
    // Under the message limit but over the CSR limit: the CSR's own error.
    let huge_pem = hostile::der_to_pem("CERTIFICATE REQUEST", &vec![0x30; 40 << 10]);
    let status = client.create_certificate(call(huge_pem)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("larger than"), "{status:?}");

    // The same channel still gets certificates.
    let resp = client
        .create_certificate(call(hostile::csr_corpus_good()))
        .await
        .expect("signed");
    assert!(resp.get_ref().cert_chain.len() >= 2);
}

/// An HTTP/2 connection (hyper's client) over TLS to `addr`, its requests
/// sender and the connection's own task.
async fn h2_connection(
    addr: std::net::SocketAddr,
    root: &Path,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&std::fs::read(root).unwrap()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_busy_ones_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    drop(Signet::dev(&bin(), &data).unwrap());
    let cfg = std::fs::read_to_string(config(tmp.path(), &data))
        .unwrap()
        .replace(
            "max_connections: 200 }",
            "max_connections: 200, idle_timeout: 1s }",
        );
    let path = tmp.path().join("idle.yaml");
    std::fs::write(&path, cfg).unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", path.to_str().unwrap()]).unwrap();
    let root = data.join("root.pem");
    let healthz = || {
        http::Request::get("https://localhost/healthz")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // A busy connection (a request every 300 ms) stays open past the timeout.
    let (mut busy, busy_task) = h2_connection(signet.rest_addr.unwrap(), &root).await;
    let (mut idle, idle_task) = h2_connection(signet.rest_addr.unwrap(), &root).await;
    assert!(
        idle.send_request(healthz())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        busy.ready().await.expect("the busy connection stays open");
        assert!(
            busy.send_request(healthz())
                .await
                .unwrap()
                .status()
                .is_success()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!busy_task.is_finished(), "a busy connection was closed");
    // The idle one was closed by the server (GOAWAY), about a second after its request.
    tokio::time::timeout(Duration::from_secs(3), idle_task)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap();
    assert!(idle.ready().await.is_err());
    println!("proved: an HTTP/2 connection idle for idle_timeout is closed; one in use is not");
}
