//! The local backend against real files: load, sign, refuse, reload.

use signet_core::testing::Ready as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_backends::local::{LocalBackend, LocalConfig, LocalError};
use signet_core::caller::{AuthMethod, Caller};
use signet_core::clock::SystemClock;
use signet_core::duration::HumanDuration;
use signet_core::issuer::{CaError, LocalCa};
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::pem;
use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig, Profile};
use signet_core::spiffe::TrustDomain;
use signet_core::testing;
use signet_core::{Authority, Signer, VerifiedCsr};

const DAY: Duration = Duration::from_secs(86_400);

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

/// Writes a root and an intermediate (named `cn`) into `dir`; returns the config.
fn write_ca(dir: &Path, root: &LocalCa, cn: &str, alg: KeyAlgorithm) -> LocalConfig {
    let now = SystemTime::now();
    let key = PrivateKey::generate(alg).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(Some(cn), &[]).unwrap()).unwrap();
    let d = IssuanceDecision::intermediate(
        cn,
        &td(),
        0,
        now,
        30 * DAY,
        Duration::from_secs(60),
        "test",
    );
    let chain = root.sign(&d, csr.public_key()).ready().unwrap();
    std::fs::write(dir.join("ca.pem"), pem::encode_certificate(chain.leaf())).unwrap();
    std::fs::write(dir.join("ca-key.pem"), key.to_pem().as_bytes()).unwrap();
    std::fs::write(dir.join("root.pem"), root.trust_bundle().to_pem()).unwrap();
    LocalConfig {
        cert_file: dir.join("ca.pem"),
        key_file: Some(dir.join("ca-key.pem")),
        chain_file: Some(dir.join("root.pem")),
        roots_file: None,
        reload_interval: HumanDuration::from_secs(1),
        key: None,
        resilience: Default::default(),
    }
}

fn root() -> LocalCa {
    LocalCa::self_signed_root(
        "root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        365 * DAY,
    )
    .unwrap()
}

fn authority(backend: Arc<LocalBackend>) -> Authority {
    Authority::new(
        "mesh",
        backend,
        AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap(),
        Arc::new(SystemClock),
    )
}

async fn issue(a: &Authority, id: &str) -> signet_core::IssuedChain {
    let csr = testing::spiffe_csr(id);
    let grant = testing::grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
    let req = testing::request(Profile::Workload);
    a.issue(
        &Caller::new(
            signet_core::Principal::Token("t".into()),
            AuthMethod::BearerToken,
        ),
        &grant,
        &csr,
        &req,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn key_file_is_short_for_a_file_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = write_ca(dir.path(), &root(), "inter", KeyAlgorithm::EcdsaP256);
    let long = LocalConfig {
        key: Some(signet_backends::keys::KeyConfig::File(
            signet_backends::keys::FileKeyConfig {
                path: short.key_file.clone().unwrap(),
            },
        )),
        key_file: None,
        ..short.clone()
    };
    assert_eq!(long.key().unwrap(), short.key().unwrap());
    let backend = Arc::new(
        LocalBackend::load("local", long, Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    assert!(!backend.key_is_remote());
    issue(&authority(backend), "spiffe://cluster.local/ns/a/sa/b").await;
    let both = LocalConfig {
        key: short.key().ok(),
        ..short
    };
    let err = LocalBackend::load("local", both, Arc::new(SystemClock))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("exactly one of key_file and key"),
        "{err}"
    );
}

#[tokio::test]
async fn signs_with_every_ca_key_type() {
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_ca(dir.path(), &root(), "inter", alg);
        let backend = Arc::new(
            LocalBackend::load("local", config, Arc::new(SystemClock))
                .await
                .unwrap(),
        );
        let chain = issue(
            &authority(backend.clone()),
            "spiffe://cluster.local/ns/a/sa/b",
        )
        .await;
        assert_eq!(chain.intermediates().len(), 1, "{alg:?}");
        assert_eq!(backend.trust_bundle().await.unwrap().roots().len(), 1);
        let info = backend.describe();
        assert!(info.ready.is_ok() && info.capabilities.in_process && info.ca_not_after.is_some());
    }
}

#[tokio::test]
async fn accepts_sec1_and_pkcs1_keys_and_bundled_chains() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "2",
            "-subj",
            "/CN=openssl root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // PKCS#8 -> PKCS#1 ("RSA PRIVATE KEY")
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args(["rsa", "-in", "k.pem", "-traditional", "-out", "k1.pem"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        std::fs::read_to_string(dir.path().join("k1.pem"))
            .unwrap()
            .contains("RSA PRIVATE KEY")
    );
    let config = LocalConfig {
        cert_file: dir.path().join("c.pem"),
        key_file: Some(dir.path().join("k1.pem")),
        chain_file: None,
        roots_file: None,
        reload_interval: HumanDuration::from_secs(10),
        key: None,
        resilience: Default::default(),
    };
    let backend = Arc::new(
        LocalBackend::load("rsa", config, Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    let chain = issue(&authority(backend), "spiffe://cluster.local/x").await;
    assert!(chain.intermediates().is_empty());

    // SEC1 EC key, with the certificate file holding cert + root (a bundle).
    let r = root();
    let config = write_ca(dir.path(), &r, "inter", KeyAlgorithm::EcdsaP256);
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args(["ec", "-in", "ca-key.pem", "-out", "sec1.pem"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        std::fs::read_to_string(dir.path().join("sec1.pem"))
            .unwrap()
            .contains("EC PRIVATE KEY")
    );
    let bundle = [
        std::fs::read(&config.cert_file).unwrap(),
        std::fs::read(dir.path().join("root.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.path().join("bundle.pem"), bundle).unwrap();
    let config = LocalConfig {
        cert_file: dir.path().join("bundle.pem"),
        key_file: Some(dir.path().join("sec1.pem")),
        chain_file: None,
        ..config
    };
    let backend = Arc::new(
        LocalBackend::load("ec", config, Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    issue(&authority(backend), "spiffe://cluster.local/y").await;
}

#[tokio::test]
async fn refuses_mismatched_keys_and_non_cas() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_ca(dir.path(), &root(), "inter", KeyAlgorithm::EcdsaP256);
    let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    std::fs::write(dir.path().join("other-key.pem"), other.to_pem().as_bytes()).unwrap();
    let bad = LocalConfig {
        key_file: Some(dir.path().join("other-key.pem")),
        ..config.clone()
    };
    let err = LocalBackend::load("x", bad, Arc::new(SystemClock))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LocalError::Ca {
                error: CaError::KeyMismatch,
                ..
            }
        ),
        "{err}"
    );

    // A leaf certificate is not a CA.
    let backend = Arc::new(
        LocalBackend::load("x", config.clone(), Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    let leaf = issue(&authority(backend), "spiffe://cluster.local/leaf").await;
    std::fs::write(dir.path().join("leaf.pem"), leaf.leaf_pem()).unwrap();
    let not_ca = LocalConfig {
        cert_file: dir.path().join("leaf.pem"),
        ..config.clone()
    };
    let err = LocalBackend::load("x", not_ca, Arc::new(SystemClock))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LocalError::Ca {
                error: CaError::NotACa | CaError::KeyMismatch,
                ..
            }
        ),
        "{err}"
    );

    let missing = LocalConfig {
        cert_file: dir.path().join("nope.pem"),
        ..config
    };
    assert!(matches!(
        LocalBackend::load("x", missing, Arc::new(SystemClock))
            .await
            .unwrap_err(),
        LocalError::Io { .. }
    ));
}

#[tokio::test]
async fn reloads_changed_files_and_keeps_the_old_ca_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let r = root();
    let config = write_ca(dir.path(), &r, "first", KeyAlgorithm::EcdsaP256);
    let backend = Arc::new(
        LocalBackend::load("x", config, Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    assert!(
        !backend.reload_if_changed().unwrap(),
        "unchanged files are not reloaded"
    );
    assert!(backend.current().subject().contains("first"));

    write_ca(dir.path(), &r, "second", KeyAlgorithm::EcdsaP384);
    assert!(backend.reload_if_changed().unwrap());
    assert!(backend.current().subject().contains("second"));
    issue(
        &authority(backend.clone()),
        "spiffe://cluster.local/after-reload",
    )
    .await;

    // A key that does not match: refused, the second CA keeps signing.
    std::fs::write(
        dir.path().join("ca-key.pem"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP384)
            .unwrap()
            .to_pem()
            .as_bytes(),
    )
    .unwrap();
    assert!(backend.reload_if_changed().is_err());
    assert!(backend.current().subject().contains("second"));
    issue(&authority(backend), "spiffe://cluster.local/still-signing").await;
}

#[tokio::test(start_paused = true)]
async fn the_reloader_picks_up_changes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let r = root();
    let config = write_ca(dir.path(), &r, "first", KeyAlgorithm::EcdsaP256);
    let backend = Arc::new(
        LocalBackend::load("x", config, Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    let task = LocalBackend::spawn_reloader(&backend);
    write_ca(dir.path(), &r, "rotated", KeyAlgorithm::EcdsaP256);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if backend.current().subject().contains("rotated") {
            break;
        }
    }
    assert!(backend.current().subject().contains("rotated"));
    drop(backend);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        task.is_finished(),
        "the reloader stops when the backend is dropped"
    );
}

#[test]
fn config_refuses_unknown_keys_with_their_path() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Top {
        backends: std::collections::BTreeMap<String, signet_backends::BackendConfig>,
    }
    let parse = |y: &str| {
        serde_path_to_error::deserialize::<_, Top>(serde_yaml_ng::Deserializer::from_str(y))
    };
    let ok =
        parse("backends:\n  dev:\n    type: local\n    cert_file: a\n    key_file: b\n").unwrap();
    assert_eq!(
        ok.backends["dev"].kind(),
        signet_backends::BackendKind::Local
    );
    let err = parse("backends:\n  dev:\n    type: local\n    cert_file: a\n    key_fil: b\n")
        .unwrap_err();
    assert_eq!(err.path().to_string(), "backends.dev.key_fil");
    assert!(
        err.inner().to_string().contains("unknown field `key_fil`"),
        "{}",
        err.inner()
    );
    let loc = err.inner().location().expect("a line");
    assert_eq!(loc.line(), 5);
    // `type` not first: buffered, the inner path is still named.
    let err = parse("backends:\n  dev:\n    cert_file: a\n    type: local\n    reload_interval: 5\n    key_file: b\n").unwrap_err();
    assert!(err.to_string().contains("reload_interval"), "{err}");
    let err = parse("backends:\n  dev:\n    type: nosuch\n").unwrap_err();
    assert!(err.to_string().contains("unknown variant"), "{err}");
    let err = parse("backends:\n  dev:\n    cert_file: a\n").unwrap_err();
    assert!(err.to_string().contains("missing field `type`"), "{err}");
}
