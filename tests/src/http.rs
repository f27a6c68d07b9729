//! HTTPS clients for tests.

use std::path::Path;

/// A client that trusts only the roots in `root_pem` (HTTP/1.1 and HTTP/2).
pub fn client(root_pem: &Path) -> reqwest::Client {
    let pem = std::fs::read(root_pem).unwrap_or_else(|e| panic!("{}: {e}", root_pem.display()));
    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("root PEM");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .expect("client")
}

/// A client that trusts only `root_pem` and speaks HTTP/1.1 only.
pub fn client_http1(root_pem: &Path) -> reqwest::Client {
    let pem = std::fs::read(root_pem).unwrap_or_else(|e| panic!("{}: {e}", root_pem.display()));
    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("root PEM");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .http1_only()
        .build()
        .expect("client")
}

/// Same, with a client certificate (PEM cert chain + key).
pub fn client_with_identity(root_pem: &Path, identity_pem: &[u8]) -> reqwest::Client {
    let pem = std::fs::read(root_pem).unwrap_or_else(|e| panic!("{}: {e}", root_pem.display()));
    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("root PEM");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .identity(reqwest::Identity::from_pem(identity_pem).expect("identity"))
        .build()
        .expect("client")
}
