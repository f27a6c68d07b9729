//! `signet trust rotate` on a running server without Kubernetes: a
//! delegated authority on a `local` backend moves to another root through
//! publish, issue and done; each phase is seen on the REST answers (checked
//! with openssl), in `signet trust status`, the metrics and the audit log.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use signet_tests::eventually;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;

use crate::conformance::support::self_signed_root;

const WITHIN: Duration = Duration::from_secs(20);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

/// `signet trust ...`: its stdout, or a panic with everything it said.
fn trust(args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .arg("trust")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "signet trust {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Signs a fresh openssl CSR over REST; writes cert.pem and chain.pem in
/// `dir` and returns the answer.
async fn sign(client: &reqwest::Client, url: &str, dir: &Path) -> Value {
    let csr = openssl::csr(
        dir,
        "w",
        Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/a/sa/w"),
        &[],
    );
    let resp: Value = client
        .post(format!("{url}/v1/sign"))
        .json(&json!({ "csr": std::fs::read_to_string(&csr).unwrap() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    std::fs::write(dir.join("cert.pem"), resp["certificate"].as_str().unwrap()).unwrap();
    let chain: String = resp["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    resp
}

/// Whether openssl verifies the last signed certificate under `root` alone.
fn verifies_under(dir: &Path, root: &Path) -> bool {
    let cert = dir.join("cert.pem");
    openssl::verify(root, Some(&dir.join("chain.pem")), &cert, None).is_ok()
}

/// `GET /v1/trust-bundle` (PEM), one certificate per element.
async fn bundle(client: &reqwest::Client, url: &str) -> Vec<String> {
    let pem = client
        .get(format!("{url}/v1/trust-bundle"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    const END: &str = "-----END CERTIFICATE-----\n";
    pem.split_inclusive(END).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_publishes_then_issues_from_then_drops_the_old_root() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let old = self_signed_root(d, "old");
    let new = self_signed_root(d, "new");
    let both = d.join("both.pem");
    std::fs::write(
        &both,
        [std::fs::read(&old).unwrap(), std::fs::read(&new).unwrap()].concat(),
    )
    .unwrap();
    let dd = d.display();
    let config = d.join("signet.yaml");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain: cluster.local
admin: {{ listen: "127.0.0.1:0" }}
trust: {{ state_file: {dd}/rotation.yaml, poll: 1s }}
backends:
  old: {{ type: local, cert_file: {dd}/old.pem, key_file: {dd}/old-key.pem }}
  new: {{ type: local, cert_file: {dd}/new.pem, key_file: {dd}/new-key.pem }}
authorities:
  mesh:
    backend: old
    mode: delegated
    intermediate: {{ ttl: 10m }}
    policy: {{ min_ttl: 1m, default_ttl: 1m, max_ttl: 1m }}
frontends:
  rest:
    listen: "127.0.0.1:0"
    authority: mesh
    auth: {{ loopback_unauthenticated: true }}
    principals:
      - name: anonymous
        allowed_sans: ["spiffe://cluster.local/**"]
"#
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", cfg]).expect("signet starts");
    let client = signet_tests::http::client(&both);
    let url = signet.url();
    let old_pem = std::fs::read_to_string(&old).unwrap();
    let new_pem = std::fs::read_to_string(&new).unwrap();

    sign(&client, &url, d).await;
    assert!(verifies_under(d, &old));
    assert_eq!(bundle(&client, &url).await, std::slice::from_ref(&old_pem));

    // publish: still issued under the old root, the next one in every answer.
    let begun = trust(&[
        "rotate",
        "--config",
        cfg,
        "--backend",
        "old",
        "--to",
        "new",
        "--soak",
        "1s",
    ]);
    assert!(begun.contains("rotation from old to new begun"), "{begun}");
    assert!(begun.contains("waiting at"), "{begun}");
    eventually("the next root published", WITHIN, async || {
        (bundle(&client, &url).await == [old_pem.clone(), new_pem.clone()]).then_some(())
    })
    .await;
    let resp = sign(&client, &url, d).await;
    assert!(verifies_under(d, &old), "publish issues under the old root");
    assert!(!verifies_under(d, &new));
    assert_eq!(resp["trust_bundle"].as_array().unwrap().len(), 2);

    // issue: after the soak (at least two polls), under the new root.
    let moved = eventually("publish ends", WITHIN, async || {
        let out = trust(&["rotate", "--config", cfg, "--backend", "old"]);
        out.contains("phase issue begun").then_some(out)
    })
    .await;
    assert!(moved.contains("phase issue begun"), "{moved}");
    eventually("issued under the new root", WITHIN, async || {
        sign(&client, &url, d).await;
        verifies_under(d, &new).then_some(())
    })
    .await;
    assert!(!verifies_under(d, &old), "the old root no longer issues");
    assert_eq!(
        bundle(&client, &url).await,
        [new_pem.clone(), old_pem.clone()]
    );
    let status = trust(&["status", "--config", cfg]);
    assert!(status.contains("old -> new, phase issue"), "{status}");
    assert!(status.contains("CN=new: current"), "{status}");
    assert!(status.contains("CN=old: retiring"), "{status}");
    assert!(
        status.contains("certificates under the old roots to expire"),
        "{status}"
    );
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        signet.admin_addr.expect("admin listener")
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains(
            r#"signet_trust_rotation_phase{backend="old",from="old",to="new",phase="issue"} 1"#
        ),
        "{metrics}"
    );

    // done: once a leaf's lifetime (1m) and two polls have passed.
    let done = trust(&["rotate", "--config", cfg, "--backend", "old", "--wait"]);
    assert!(done.contains("phase done begun"), "{done}");
    eventually("the old root dropped", WITHIN, async || {
        (bundle(&client, &url).await == [new_pem.clone()]).then_some(())
    })
    .await;
    sign(&client, &url, d).await;
    assert!(verifies_under(d, &new));
    for phase in ["publish", "issue", "done"] {
        assert_eq!(
            signet
                .logs_containing("trust rotation phase applied", 3)
                .iter()
                .filter(|l| l.contains(&format!(r#""phase":"{phase}""#)))
                .count(),
            1,
            "one audit line for {phase}"
        );
    }
    // An emergency re-key: the intermediate is withdrawn and replaced on
    // every replica within a poll; the local backend cannot revoke it
    // upstream, and says so.
    let before = sign(&client, &url, d).await["ca_chain"][0].clone();
    let out = std::process::Command::new(bin())
        .args([
            "revoke",
            "--config",
            cfg,
            "--authority",
            "mesh",
            "--intermediate",
            "--rekey",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("re-key of authority mesh requested"),
        "{said}"
    );
    let replaced = tokio::time::timeout(WITHIN, async {
        loop {
            if sign(&client, &url, d).await["ca_chain"][0] != before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        replaced.is_ok(),
        "no new intermediate:\n{}\n{}",
        std::fs::read_to_string(d.join("rotation.yaml")).unwrap(),
        signet.logs().join("\n")
    );
    assert!(verifies_under(d, &new));
    assert_eq!(
        signet
            .logs_containing("intermediate withdrawn for a re-key", 1)
            .len(),
        1
    );
    assert_eq!(
        signet.logs_containing("the backend cannot revoke", 1).len(),
        1
    );

    // A server that cannot apply a rotation entry (here: a backend it does
    // not have) refuses to start rather than issue from the old root.
    let bad = d.join("bad-rotation.yaml");
    let text = std::fs::read_to_string(d.join("rotation.yaml"))
        .unwrap()
        .replace("to: new", "to: missing");
    std::fs::write(&bad, text).unwrap();
    let bad_config = d.join("bad.yaml");
    std::fs::write(
        &bad_config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("rotation.yaml", "bad-rotation.yaml"),
    )
    .unwrap();
    let refused = Signet::start(&bin(), &["serve", "--config", bad_config.to_str().unwrap()])
        .expect_err("a server with an entry it cannot apply must not start");
    assert!(refused.contains("no backend named missing"), "{refused}");

    // A second rotation cannot begin over one in progress; after done it can.
    let again = trust(&["rotate", "--config", cfg, "--backend", "old", "--to", "old"]);
    assert!(again.contains("rotation from new to old begun"), "{again}");
}

/// `signet doctor` reports each rotation's phase, and warns about one that
/// could have moved on more than an hour ago.
#[test]
fn doctor_warns_about_a_stuck_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    self_signed_root(d, "old");
    self_signed_root(d, "new");
    let dd = d.display();
    let config = d.join("signet.yaml");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain: cluster.local
trust: {{ state_file: {dd}/rotation.yaml, poll: 1s }}
backends:
  old: {{ type: local, cert_file: {dd}/old.pem, key_file: {dd}/old-key.pem }}
  new: {{ type: local, cert_file: {dd}/new.pem, key_file: {dd}/new-key.pem }}
authorities:
  mesh: {{ backend: old }}
"#
        ),
    )
    .unwrap();
    let since = signet_core::clock::rfc3339(SystemTime::now() - Duration::from_secs(3 * 3600));
    std::fs::write(
        d.join("rotation.yaml"),
        format!(
            "rotations:\n  old:\n    to: new\n    phase: publish\n    since: {since}\n    soak: 1m\n    leaf_lifetime: 1h\n    poll: 1s\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["doctor", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("WARN rotation of backend old: old -> new, phase publish since")
            && said.contains("stuck"),
        "{said}"
    );
    // The authority's roots are the phase's: both.
    assert!(said.contains("ok   authority mesh: 2 root(s)"), "{said}");
}
