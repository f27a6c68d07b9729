//! The issue's "done when", with the real binary and a real OpenBao:
//! direct and delegated signing, 50 leaves per upstream certificate, OpenBao
//! killed (delegated keeps answering, direct fails fast) and restarted
//! (direct recovers without restarting signet).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signet_tests::openbao::{OpenBao, write};
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn config(dir: &Path, bao: &OpenBao, mode: &str) -> PathBuf {
    let token = bao.create_token(&["signet"], "24h", true, None);
    let token_file = write(dir, &format!("{mode}-token"), &token);
    let extra = if mode == "delegated" {
        "    intermediate: { ttl: 72h, key: ecdsa-p256 }\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"trust_domain: cluster.local
backends:
  openbao:
    type: vault
    address: {addr}
    mount: pki
    role: mesh
    auth:
      token: {{ token_file: {token_file} }}
authorities:
  mesh:
    backend: openbao
    mode: {mode}
{extra}    policy: {{ default_ttl: 1h, max_ttl: 24h }}
frontends:
  rest:
    listen: 127.0.0.1:0
    authority: mesh
    auth: {{ loopback_unauthenticated: true }}
    principals:
      - name: "*"
        allowed_sans: ["spiffe://cluster.local/**"]
"#,
        addr = bao.addr(),
        token_file = token_file.display()
    );
    write(dir, &format!("{mode}.yaml"), &yaml)
}

async fn sign(client: &reqwest::Client, signet: &Signet, csr: &str) -> (u16, Value) {
    let r = client
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

fn verify(dir: &Path, root: &Path, body: &Value, name: &str) {
    let cert = write(
        dir,
        &format!("{name}.pem"),
        body["certificate"].as_str().unwrap(),
    );
    let chain: String = body["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let chain = (!chain.is_empty()).then(|| write(dir, &format!("{name}-chain.pem"), &chain));
    openssl::verify(root, chain.as_deref(), &cert, None).unwrap_or_else(|e| panic!("{name}: {e}"));
}

#[tokio::test]
async fn direct_and_delegated_over_openbao_survive_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut bao = OpenBao::persistent();
    bao.enable_pki("pki");
    let root_pem = bao.generate_root("pki", "OpenBao e2e root");
    let root = write(dir, "openbao-root.pem", &root_pem);
    bao.create_role("pki", "mesh");
    bao.write_policy("signet", &OpenBao::signet_policy("pki", "mesh"));

    let direct = Signet::start(
        &bin(),
        &[
            "serve",
            "--config",
            config(dir, &bao, "direct").to_str().unwrap(),
        ],
    )
    .unwrap();
    let before = bao.issued_serials("pki").len();
    let delegated = Signet::start(
        &bin(),
        &[
            "serve",
            "--config",
            config(dir, &bao, "delegated").to_str().unwrap(),
        ],
    )
    .unwrap();
    // Both serving certificates chain to OpenBao's root too.
    let client = signet_tests::http::client(&root);
    let csr = std::fs::read_to_string(openssl::csr(
        dir,
        "w",
        Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/default/sa/demo"),
        &[],
    ))
    .unwrap();

    let after_start = bao.issued_serials("pki").len();
    assert_eq!(
        after_start - before,
        1,
        "a delegated signet asks OpenBao for one intermediate"
    );

    let (status, body) = sign(&client, &direct, &csr).await;
    assert_eq!(status, 200, "{body}");
    verify(dir, &root, &body, "direct");
    let after_start = after_start + 1;
    for n in 0..50 {
        let (status, body) = sign(&client, &delegated, &csr).await;
        assert_eq!(status, 200, "{body}");
        if n == 0 {
            verify(dir, &root, &body, "delegated");
            assert_eq!(
                body["ca_chain"].as_array().unwrap().len(),
                1,
                "the intermediate"
            );
        }
    }
    assert_eq!(
        bao.issued_serials("pki").len(),
        after_start,
        "50 leaves, no certificate from OpenBao"
    );

    // OpenBao goes away.
    bao.kill();
    let (status, body) = sign(&client, &delegated, &csr).await;
    assert_eq!(status, 200, "delegated keeps signing: {body}");
    let started = Instant::now();
    let (status, body) = sign(&client, &direct, &csr).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (503, "backend_unavailable"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        started.elapsed()
    );

    // OpenBao comes back: direct recovers by itself.
    bao.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = sign(&client, &direct, &csr).await;
        if status == 200 {
            verify(dir, &root, &body, "direct-after");
            break;
        }
        assert!(Instant::now() < deadline, "direct did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready = client
        .get(format!("{}/readyz", direct.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
