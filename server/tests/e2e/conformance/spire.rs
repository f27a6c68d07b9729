//! SPIRE federates with signet: a real spire-server (built from
//! github.com/spiffe/spire by scripts/conformance-build) is told to federate
//! with signet's trust domain through `GET /v1/spiffe-bundle` over the
//! `https_web` profile, and stores exactly signet's root as that trust
//! domain's bundle.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use signet_tests::process::Signet;

use super::support::*;

const SIGNET_TD: &str = "cluster.local";

/// A running spire-server; killed when dropped.
struct SpireServer {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpireServer {
    /// Starts spire-server for trust domain `spire.test`, federated with
    /// signet's trust domain at `bundle_url`; `roots` is what it trusts for
    /// https_web (SSL_CERT_FILE).
    fn start(dir: &Path, bundle_url: &str, roots: &Path) -> Self {
        let socket = dir.join("api.sock");
        let config = dir.join("server.conf");
        let d = dir.display();
        std::fs::write(
            &config,
            format!(
                r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "0"
  socket_path = "{socket}"
  trust_domain = "spire.test"
  data_dir = "{d}/data"
  log_level = "DEBUG"
  federation {{
    federates_with "{SIGNET_TD}" {{
      bundle_endpoint_url = "{bundle_url}"
      bundle_endpoint_profile "https_web" {{}}
    }}
  }}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{d}/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
"#,
                socket = socket.display(),
            ),
        )
        .unwrap();
        let log = dir.join("spire-server.log");
        let child = Command::new(built("SIGNET_SPIRE_SERVER"))
            .args(["run", "-config"])
            .arg(&config)
            .env("SSL_CERT_FILE", roots)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("spire-server starts");
        let server = Self { child, socket, log };
        let start = Instant::now();
        while !server.cli(&["healthcheck"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "spire-server did not become healthy:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `spire-server <args> -socketPath <socket>`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(built("SIGNET_SPIRE_SERVER"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// The bundle SPIRE stores for `td`, in the SPIFFE format, if any.
    fn bundle_of(&self, td: &str) -> Option<Value> {
        let id = format!("spiffe://{td}");
        let out = self.cli(&["bundle", "list", "-id", &id, "-format", "spiffe"]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let json = &text[text.find('{')?..];
        serde_json::from_str(json).ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_federates_with_signets_spiffe_bundle_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("signet");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let root_pem = data.join("root.pem");
    let bundle_url = format!("{}/v1/spiffe-bundle", signet.url());
    let spire_dir = tmp.path().join("spire");
    std::fs::create_dir_all(&spire_dir).unwrap();

    let stored = tokio::task::block_in_place(|| {
        let spire = SpireServer::start(&spire_dir, &bundle_url, &root_pem);
        let start = Instant::now();
        loop {
            // Ask for a fetch now rather than waiting for SPIRE's schedule.
            let _ = spire.cli(&["federation", "refresh", "-id", SIGNET_TD]);
            if let Some(b) = spire.bundle_of(SIGNET_TD) {
                break b;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "SPIRE stored no bundle for {SIGNET_TD}:\n{}",
                spire.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    // What SPIRE stored is signet's root, as an x509-svid key.
    let pem = std::fs::read_to_string(&root_pem).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let root_der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let keys: Vec<&Value> = stored["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .collect();
    assert_eq!(keys.len(), 1, "{stored}");
    let der = base64::engine::general_purpose::STANDARD
        .decode(keys[0]["x5c"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(der, root_der, "SPIRE stored signet's root");
    println!(
        "proved: spire-server (v1.13.3) federates with signet's trust domain {SIGNET_TD} through GET /v1/spiffe-bundle over https_web and stores exactly signet's root as that trust domain's X.509 bundle"
    );
}
