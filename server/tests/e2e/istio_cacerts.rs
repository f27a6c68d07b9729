//! The "done when" for cacerts: `signet istio cacerts --out DIR` with
//! a local backend holding an offline root writes four files istiod accepts,
//! checked with OpenSSL.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::pem;
use signet_tests::openssl;

#[test]
fn signet_istio_cacerts_writes_what_istiod_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = LocalCa::self_signed_root(
        "Offline Root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP384).unwrap(),
        SystemTime::now(),
        Duration::from_secs(3650 * 86_400),
    )
    .unwrap();
    std::fs::write(
        dir.join("root.pem"),
        pem::encode_certificate(root.certificate()),
    )
    .unwrap();
    std::fs::write(
        dir.join("root-key.pem"),
        root.private_key().unwrap().to_pem().as_bytes(),
    )
    .unwrap();
    let config = format!(
        "trust_domain: cluster.local\nbackends:\n  offline-root:\n    type: local\n    cert_file: {d}/root.pem\n    key_file: {d}/root-key.pem\nfrontends:\n  istio_cacerts:\n    backend: offline-root\n    ttl: 720h\n",
        d = dir.display()
    );
    std::fs::write(dir.join("signet.yaml"), config).unwrap();
    let out = dir.join("cacerts");
    let run = std::process::Command::new(PathBuf::from(env!("CARGO_BIN_EXE_signet")))
        .args(["istio", "cacerts", "--config"])
        .arg(dir.join("signet.yaml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let text = openssl::text(&out.join("ca-cert.pem"));
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("URI:spiffe://cluster.local"), "{text}");
    openssl::verify(
        &out.join("root-cert.pem"),
        Some(&out.join("cert-chain.pem")),
        &out.join("ca-cert.pem"),
        None,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(out.join("root-cert.pem")).unwrap(),
        std::fs::read(dir.join("root.pem")).unwrap(),
        "the backend's root"
    );
    let chain = pem::certificates(&std::fs::read(out.join("cert-chain.pem")).unwrap()).unwrap();
    assert_eq!(chain.len(), 2, "intermediate then root");
    // The key matches the certificate (compare public keys as OpenSSL sees them).
    let pubkey = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap()
            .stdout
    };
    let from_cert = pubkey(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        out.join("ca-cert.pem").to_str().unwrap(),
    ]);
    let from_key = pubkey(&[
        "pkey",
        "-pubout",
        "-in",
        out.join("ca-key.pem").to_str().unwrap(),
    ]);
    assert!(!from_cert.is_empty());
    assert_eq!(from_cert, from_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(out.join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
