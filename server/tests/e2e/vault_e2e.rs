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

/// The upstream call budget with the real binary and a real OpenBao: a burst
/// of distinct requests past `rate_limit` is answered at once with 503
/// `overloaded` and a Retry-After for the shed part, OpenBao issues exactly
/// as many certificates as were delivered (a shed request never reaches
/// it), the callers that wait as told are all served, and the metrics count
/// each call and each shed.
#[tokio::test]
async fn a_call_budget_sheds_what_the_upstream_would_not_get() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bao = OpenBao::persistent();
    bao.enable_pki("pki");
    let root = write(
        dir,
        "openbao-root.pem",
        &bao.generate_root("pki", "budget root"),
    );
    bao.create_role("pki", "mesh");
    bao.write_policy("signet", &OpenBao::signet_policy("pki", "mesh"));
    let path = config(dir, &bao, "direct");
    let yaml = std::fs::read_to_string(&path).unwrap().replace(
        "    auth:\n      token:",
        "    resilience: { rate_limit: { per_second: 2, burst: 2, max_wait: 10ms } }\n    auth:\n      token:",
    );
    std::fs::write(&path, yaml).unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", path.to_str().unwrap()]).unwrap();
    let client = signet_tests::http::client(&root);
    let csrs: Vec<String> = (0..10)
        .map(|i| {
            std::fs::read_to_string(openssl::csr(
                dir,
                &format!("w{i}"),
                Key::EcP256,
                Some(&format!("URI:spiffe://cluster.local/ns/default/sa/w{i}")),
                &[],
            ))
            .unwrap()
        })
        .collect();
    // Start-up's own calls (the CA, the bundle) have spent the burst.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = bao.issued_serials("pki").len();

    let url = signet.url();
    let tasks: Vec<_> = csrs
        .iter()
        .map(|csr| {
            let (client, url, csr) = (client.clone(), url.clone(), csr.clone());
            tokio::spawn(async move {
                let r = client
                    .post(format!("{url}/v1/sign"))
                    .json(&json!({ "csr": csr }))
                    .send()
                    .await
                    .expect("answer");
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                (status, retry_after, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut served = 0;
    let mut waits = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, retry_after, body) = t.await.unwrap();
        match status {
            200 => {
                verify(dir, &root, &body, &format!("budget-{i}"));
                served += 1;
            }
            503 => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                waits.push((i, retry_after.expect("Retry-After on a shed request")));
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(served <= 3, "past the budget: {served} served at once");
    assert!(!waits.is_empty(), "nothing was shed");
    assert_eq!(
        bao.issued_serials("pki").len() - before,
        served,
        "OpenBao issued only what was delivered"
    );
    let metrics = client
        .get(format!("{}/metrics", signet.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(
        value(r#"signet_upstream_shed_total{backend="openbao",reason="budget"} "#),
        waits.len() as u64
    );
    assert!(
        value(r#"signet_upstream_calls_total{backend="openbao",outcome="ok"} "#) >= served as u64
    );

    // Callers that wait as told (as istio-agent retries) are all served.
    for (i, mut wait) in waits {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let (status, body) = sign(&client, &signet, &csrs[i]).await;
            if status == 200 {
                verify(dir, &root, &body, &format!("budget-retry-{i}"));
                break;
            }
            assert_eq!(body["error"]["code"], "overloaded", "{body}");
            assert!(Instant::now() < deadline, "w{i} never served");
            wait = 1;
        }
    }
}
