//! moto's server mode (PyPI `moto[server]`) as AWS Private CA for tests.
//!
//! [`Moto::start`] runs `moto_server` on 127.0.0.1 on a free port, stopped
//! when dropped (and, through a shell wrapper watching its stdin, when the
//! test process dies). [`Moto::subordinate_pca`] creates a subordinate CA
//! through the ACM PCA JSON API, signs its CSR with an external root made by
//! `openssl` (as an organisation would), imports it and returns the ARN.
//!
//! What moto does and does not do (5.2.5): it signs for real (RSA-2048 CA
//! key, SHA-512), copies the CSR's subject and SANs, applies the
//! EndEntityCertificate/V1 extensions for leaves, but ignores Validity (always
//! 365 days), SigningAlgorithm, IdempotencyToken and the subordinate-CA
//! templates, and never answers RequestInProgressException.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where `moto_server` is: `$SIGNET_MOTO`, the project's `.tools/venv`, or
/// `PATH`. Panics with how to get it when it is nowhere.
pub fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SIGNET_MOTO") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/moto_server");
    if local.exists() {
        return local;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "moto_server not found: run scripts/test (it installs moto[server] into .tools/venv), or set SIGNET_MOTO"
    );
}

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The test region.
pub const REGION: &str = "us-east-1";

/// A PCA made by [`Moto::subordinate_pca`].
#[derive(Debug, Clone)]
pub struct Pca {
    pub arn: String,
    /// The external root (PEM file) the PCA's certificate chains to.
    pub root_pem: PathBuf,
    /// The PCA's own certificate (PEM file).
    pub ca_pem: PathBuf,
}

impl Moto {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log");
        let script = "\"$@\" & pid=$!; trap 'kill $pid 2>/dev/null' EXIT; read _unused; kill $pid 2>/dev/null; wait $pid";
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("moto-wrapper")
            .arg(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting moto_server");
        let moto = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start listening:\n{}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// One ACM PCA JSON 1.1 call (moto does not check signatures).
    pub fn call(&self, operation: &str, body: Value) -> Value {
        self.call_service("ACMPrivateCA", "acm-pca", operation, body)
    }

    /// An asymmetric `SIGN_VERIFY` KMS key (`ECC_NIST_P256`,
    /// `ECC_NIST_P384`, `RSA_2048`, ...); returns its key ID.
    pub fn kms_key(&self, key_spec: &str) -> String {
        let out = self.call_service(
            "TrentService",
            "kms",
            "CreateKey",
            json!({ "KeySpec": key_spec, "KeyUsage": "SIGN_VERIFY", "Description": "signet test CA key" }),
        );
        out["KeyMetadata"]["KeyId"]
            .as_str()
            .expect("a key ID")
            .to_owned()
    }

    /// One JSON 1.1 call to `service` (its `X-Amz-Target` prefix) as
    /// `signing_name` (the credential scope's service).
    pub fn call_service(
        &self,
        target_prefix: &str,
        signing_name: &str,
        operation: &str,
        body: Value,
    ) -> Value {
        let url = self.endpoint();
        let body = body.to_string();
        let (status, text) = std::thread::scope(|s| {
            s.spawn(|| {
                let r = reqwest::blocking::Client::new()
                    .post(&url)
                    .header("X-Amz-Target", format!("{target_prefix}.{operation}"))
                    .header("Content-Type", "application/x-amz-json-1.1")
                    .header(
                        "Authorization",
                        format!(
                            "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{signing_name}/aws4_request, SignedHeaders=host, Signature=0"
                        ),
                    )
                    .body(body)
                    .send()
                    .expect("moto reachable");
                (r.status(), r.text().unwrap_or_default())
            })
            .join()
            .expect("HTTP thread")
        });
        assert!(status.is_success(), "{operation}: {status}: {text}");
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON")
        }
    }

    /// A ROOT CA, created, self-signed with PCA's RootCACertificate/V1
    /// template and activated, as a user would; `key_algorithm` is what
    /// DescribeCertificateAuthority reports (`RSA_2048`, `EC_prime256v1`;
    /// moto signs with RSA whatever it says). `dir` receives its PEM.
    pub fn root_pca(&self, dir: &Path, common_name: &str, key_algorithm: &str) -> Pca {
        let signing = if key_algorithm.starts_with("EC") {
            "SHA256WITHECDSA"
        } else {
            "SHA256WITHRSA"
        };
        let arn = self.create_ca("ROOT", common_name, key_algorithm, signing);
        let csr = self.call(
            "GetCertificateAuthorityCsr",
            json!({ "CertificateAuthorityArn": arn }),
        );
        let pem = self.issue(
            &arn,
            csr["Csr"].as_str().expect("Csr"),
            signing,
            "arn:aws:acm-pca:::template/RootCACertificate/V1",
        );
        use base64::Engine as _;
        self.call(
            "ImportCertificateAuthorityCertificate",
            json!({
                "CertificateAuthorityArn": arn,
                "Certificate": base64::engine::general_purpose::STANDARD.encode(&pem.0),
            }),
        );
        let ca = dir.join(format!("{}.pem", common_name.replace(' ', "-")));
        std::fs::write(&ca, &pem.0).expect("write");
        Pca {
            arn,
            root_pem: ca.clone(),
            ca_pem: ca,
        }
    }

    /// A SUBORDINATE CA signed by another PCA (`parent`), activated with the
    /// parent's certificate as its chain. (AWS would sign it with
    /// SubordinateCACertificate_PathLen0/V1; moto 5.2.5 gives that template
    /// no basicConstraints at all, so the parent signs with
    /// RootCACertificate/V1, which moto turns into CA:TRUE + keyCertSign
    /// under the parent's name and key: the same shape for signet.)
    pub fn subordinate_of(&self, parent: &Pca, dir: &Path, common_name: &str) -> Pca {
        let arn = self.create_ca("SUBORDINATE", common_name, "RSA_2048", "SHA256WITHRSA");
        let csr = self.call(
            "GetCertificateAuthorityCsr",
            json!({ "CertificateAuthorityArn": arn }),
        );
        let (cert, _) = self.issue(
            &parent.arn,
            csr["Csr"].as_str().expect("Csr"),
            "SHA256WITHRSA",
            "arn:aws:acm-pca:::template/RootCACertificate/V1",
        );
        let chain = std::fs::read_to_string(&parent.ca_pem).expect("parent PEM");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.call(
            "ImportCertificateAuthorityCertificate",
            json!({
                "CertificateAuthorityArn": arn,
                "Certificate": b64.encode(&cert),
                "CertificateChain": b64.encode(&chain),
            }),
        );
        let ca = dir.join(format!("{}.pem", common_name.replace(' ', "-")));
        std::fs::write(&ca, &cert).expect("write");
        Pca {
            arn,
            root_pem: parent.root_pem.clone(),
            ca_pem: ca,
        }
    }

    fn create_ca(&self, ty: &str, common_name: &str, key: &str, signing: &str) -> String {
        let created = self.call(
            "CreateCertificateAuthority",
            json!({
                "CertificateAuthorityConfiguration": {
                    "KeyAlgorithm": key,
                    "SigningAlgorithm": signing,
                    "Subject": { "Organization": "signet tests", "CommonName": common_name }
                },
                "CertificateAuthorityType": ty
            }),
        );
        created["CertificateAuthorityArn"]
            .as_str()
            .expect("ARN")
            .to_owned()
    }

    /// IssueCertificate then GetCertificate: (certificate PEM, chain PEM).
    fn issue(&self, arn: &str, csr_pem: &str, signing: &str, template: &str) -> (String, String) {
        use base64::Engine as _;
        let issued = self.call(
            "IssueCertificate",
            json!({
                "CertificateAuthorityArn": arn,
                "Csr": base64::engine::general_purpose::STANDARD.encode(csr_pem),
                "SigningAlgorithm": signing,
                "TemplateArn": template,
                "Validity": { "Type": "YEARS", "Value": 5 },
            }),
        );
        let got = self.call(
            "GetCertificate",
            json!({
                "CertificateAuthorityArn": arn,
                "CertificateArn": issued["CertificateArn"].as_str().expect("CertificateArn"),
            }),
        );
        (
            got["Certificate"].as_str().expect("Certificate").to_owned(),
            got["CertificateChain"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    /// A subordinate CA under an external root, created, signed and
    /// activated through the API. `dir` receives the root and CA PEMs.
    pub fn subordinate_pca(&self, dir: &Path, common_name: &str) -> Pca {
        use base64::Engine as _;
        let created = self.call(
            "CreateCertificateAuthority",
            json!({
                "CertificateAuthorityConfiguration": {
                    "KeyAlgorithm": "RSA_2048",
                    "SigningAlgorithm": "SHA256WITHRSA",
                    "Subject": { "Organization": "signet tests", "CommonName": common_name }
                },
                "CertificateAuthorityType": "SUBORDINATE"
            }),
        );
        let arn = created["CertificateAuthorityArn"]
            .as_str()
            .expect("ARN")
            .to_owned();
        let csr = self.call(
            "GetCertificateAuthorityCsr",
            json!({ "CertificateAuthorityArn": arn }),
        );
        let csr_path = dir.join("pca.csr");
        std::fs::write(&csr_path, csr["Csr"].as_str().expect("Csr")).expect("write");
        let (root, root_key) = (dir.join("org-root.pem"), dir.join("org-root.key"));
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-subj",
            "/O=signet tests/CN=org root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path(&root_key),
            "-out",
            path(&root),
        ]);
        let ext = dir.join("pca.ext");
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:TRUE,pathlen:1\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .expect("write");
        let ca = dir.join("pca.pem");
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr_path),
            "-CA",
            path(&root),
            "-CAkey",
            path(&root_key),
            "-CAcreateserial",
            "-days",
            "1825",
            "-sha256",
            "-extfile",
            path(&ext),
            "-out",
            path(&ca),
        ]);
        let b64 = base64::engine::general_purpose::STANDARD;
        self.call(
            "ImportCertificateAuthorityCertificate",
            json!({
                "CertificateAuthorityArn": arn,
                "Certificate": b64.encode(std::fs::read(&ca).expect("read")),
                "CertificateChain": b64.encode(std::fs::read(&root).expect("read")),
            }),
        );
        Pca {
            arn,
            root_pem: root,
            ca_pem: ca,
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Closing stdin makes the wrapper stop moto.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
