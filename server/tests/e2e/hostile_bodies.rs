//! Thousands of random and mutated bodies: every one gets a 4xx JSON error,
//! nothing is signed, and the server keeps serving.

use std::path::PathBuf;
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::json;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;

/// xorshift64*: reproducible noise without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn armour(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

fn body(rng: &mut Rng, good: &str, good_der: &[u8]) -> Vec<u8> {
    match rng.below(8) {
        0 => {
            let n = rng.below(3000);
            rng.bytes(n)
        }
        1 => {
            let n = rng.below(200);
            let junk = String::from_utf8_lossy(&rng.bytes(n)).into_owned();
            json!({ "csr": junk }).to_string().into_bytes()
        }
        2 | 3 => {
            // One to four flipped bits anywhere in a real CSR (flips that
            // cancel out would give back the real CSR: draw again).
            let mut der = good_der.to_vec();
            while der == good_der {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(der.len());
                    der[i] ^= 1 << rng.below(8);
                }
            }
            json!({ "csr": armour(&der) }).to_string().into_bytes()
        }
        4 => {
            let cut = rng.below(good_der.len());
            json!({ "csr": armour(&good_der[..cut]) })
                .to_string()
                .into_bytes()
        }
        5 => {
            let ttl = [
                "0s",
                "1s",
                "-1h",
                "999999999h",
                "1y",
                "",
                "24",
                "NaN",
                "1e9s",
            ][rng.below(9)];
            let profile = ["workload", "admin", "", "ca"][rng.below(4)];
            json!({ "csr": good, "ttl": ttl, "profile": profile })
                .to_string()
                .into_bytes()
        }
        6 => {
            let mut s = json!({ "csr": good }).to_string().into_bytes();
            let cut = rng.below(s.len());
            s.truncate(cut);
            s
        }
        _ => {
            let variants = [
                json!({}),
                json!([good]),
                json!({ "csr": 42 }),
                json!({ "csr": good, "extra": true }),
                json!({ "csr": format!("{good}{good}") }),
                json!({ "csr": good.replace("REQUEST", "REQUESTX") }),
                json!(null),
            ];
            variants[rng.below(variants.len())].to_string().into_bytes()
        }
    }
}

#[tokio::test]
async fn the_dev_server_survives_thousands_of_hostile_bodies() {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&PathBuf::from(env!("CARGO_BIN_EXE_signet")), &data).unwrap();
    let client = signet_tests::http::client(&data.join("root.pem"));
    let good = std::fs::read_to_string(openssl::csr(
        tmp.path(),
        "g",
        Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/a/sa/b"),
        &[],
    ))
    .unwrap();
    let good_der = pem_der(&good);
    let url = format!("{}/v1/sign", signet.url());

    let bodies: Vec<Vec<u8>> = (0..3000)
        .map(|_| body(&mut rng, &good, &good_der))
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for chunk in bodies.chunks(64) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|b| {
                let req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone());
                tokio::spawn(async move {
                    let r = req.send().await.expect("the server answers");
                    (r.status().as_u16(), r.text().await.unwrap())
                })
            })
            .collect();
        for (b, t) in chunk.iter().zip(tasks) {
            let (status, text) = t.await.unwrap();
            assert!(
                (400..500).contains(&status),
                "seed {seed}: status {status} for body {:?}: {text}",
                String::from_utf8_lossy(&b[..b.len().min(200)])
            );
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("seed {seed}: not JSON: {text}"));
            assert!(v["error"]["code"].is_string(), "seed {seed}: {text}");
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    eprintln!("seed {seed}: statuses {statuses:?}");

    // Still serving, and only the (REST and gRPC) serving certificates were issued.
    assert_eq!(
        signet
            .logs_containing("\"target\":\"signet::audit\"", 2)
            .len(),
        2
    );
    let ok = client
        .post(&url)
        .json(&json!({ "csr": good }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
