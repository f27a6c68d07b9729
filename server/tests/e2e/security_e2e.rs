//! The classes of the security probe, against the real binary: token
//! audiences and names, renewal by mTLS across front-ends, a CSR carrying a
//! CA's key, malformed gRPC messages, and typed principals. Each refusal has
//! its own code and reason, nothing refused is signed, the server serves on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ISSUED: &str = "\"message\":\"certificate issued\"";
const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JWT with chosen claims, signed with the dev issuer's key by jsonwebtoken.
fn jwt(data: &Path, claims: Value) -> String {
    let pem = std::fs::read(data.join("jwt-signing-key.pem")).unwrap();
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(data.join("jwks.json")).unwrap()).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

fn claims(ns: &str, sa: &str, aud: Value) -> Value {
    let mut c = json!({
        "iss": "signet-dev",
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": now(), "exp": now() + 600,
        "kubernetes.io": { "namespace": ns, "serviceaccount": { "name": sa } },
    });
    if !aud.is_null() {
        c["aud"] = aud;
    }
    c
}

async fn channel(signet: &Signet, root: &Path, identity: Option<(&str, &str)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(root).unwrap()))
        .domain_name("istiod.istio-system.svc");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", signet.grpc_addr.unwrap()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn request(
    csr: &str,
    validity: i64,
    token: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: validity,
        metadata: None,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// An OpenSSL key and CSR for `san`, returned as (key PEM, CSR PEM).
fn openssl_csr(dir: &Path, name: &str, san: &str) -> (String, String) {
    let csr = openssl::csr(dir, name, Key::EcP256, Some(san), &[]);
    (
        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
        std::fs::read_to_string(csr).unwrap(),
    )
}

fn lifetime(cert_pem: &str) -> Duration {
    let der = signet_core::pem::certificates(cert_pem.as_bytes()).unwrap();
    let (nb, na) = signet_core::chain::validity(&der[0]).unwrap();
    na.duration_since(nb).unwrap()
}

#[tokio::test]
async fn tokens_need_an_audience_and_kubernetes_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let root = data.join("root.pem");
    let mut istio = IstioCertificateServiceClient::new(channel(&signet, &root, None).await);
    let (_, csr) = openssl_csr(tmp.path(), "demo", &format!("URI:{DEMO}"));
    let before = signet.logs_containing(ISSUED, 1).len();

    let mut wrong = Vec::new();
    // Audiences: a token must carry one of the configured ones.
    let no_aud = {
        let mut c = claims("default", "demo", Value::Null);
        c.as_object_mut().unwrap().remove("aud");
        c
    };
    let null_aud = {
        let mut c = claims("default", "demo", Value::Null);
        c["aud"] = Value::Null;
        c
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no aud", no_aud, "token has no audience"),
        ("aud null", null_aud, "token has no audience"),
        (
            "aud []",
            claims("default", "demo", json!([])),
            "token has no audience",
        ),
        (
            "aud [null]",
            claims("default", "demo", json!([null])),
            "token audience is malformed",
        ),
        (
            "aud 5",
            claims("default", "demo", json!(5)),
            "token audience is malformed",
        ),
        (
            "aud {}",
            claims("default", "demo", json!({"a": "istio-ca"})),
            "token audience is malformed",
        ),
        (
            "aud other",
            claims("default", "demo", json!("kubernetes")),
            "token audience not accepted",
        ),
        (
            "aud [other]",
            claims("default", "demo", json!(["kubernetes", "api"])),
            "token audience not accepted",
        ),
        (
            "aud Istio-CA",
            claims("default", "demo", json!("Istio-CA")),
            "token audience not accepted",
        ),
    ];
    // Names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain.
    let bad_names = [
        ("ci/sa/x/ns/kube-system", "admin"),
        ("default", "demo/ns/kube-system/sa/admin"),
        ("Default", "demo"),
        ("default", "Demo"),
        ("kube.system", "admin"),
        ("kube_system", "admin"),
        ("-default", "demo"),
        ("default", "de_mo"),
        ("default", ".demo"),
        ("", "demo"),
        ("default", "de mo"),
        ("default", "demo%2f"),
    ];
    let mut name_cases: Vec<(String, Value)> = Vec::new();
    for (ns, sa) in bad_names {
        name_cases.push((
            format!("{ns:?}/{sa:?}"),
            claims(ns, sa, json!(["istio-ca"])),
        ));
    }
    let long = "a".repeat(64);
    name_cases.push((
        "64-char namespace".into(),
        claims(&long, "demo", json!(["istio-ca"])),
    ));
    for (what, c, want) in cases {
        match istio
            .create_certificate(request(&csr, 3600, Some(&jwt(&data, c))))
            .await
        {
            Err(s) if s.code() == tonic::Code::Unauthenticated && s.message().contains(want) => {}
            other => wrong.push(format!(
                "{what}: want UNAUTHENTICATED {want:?}, got {other:?}"
            )),
        }
    }
    for (what, c) in name_cases {
        match istio
            .create_certificate(request(&csr, 3600, Some(&jwt(&data, c))))
            .await
        {
            Err(s)
                if s.code() == tonic::Code::Unauthenticated
                    && s.message().contains("invalid service account") => {}
            other => wrong.push(format!("names {what}: want UNAUTHENTICATED, got {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        signet.logs_containing(ISSUED, before).len(),
        before,
        "something was signed"
    );

    // The honest token still works, with the audience among others.
    let good = jwt(&data, claims("default", "demo", json!(["api", "istio-ca"])));
    istio
        .create_certificate(request(&csr, 3600, Some(&good)))
        .await
        .expect("a good token is served");
    println!(
        "proved: tokens without one of the configured audiences, or naming invalid Kubernetes names, are UNAUTHENTICATED"
    );
}

#[tokio::test]
async fn only_certificates_issued_for_renewal_renew_and_never_for_longer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let root = data.join("root.pem");
    let rest = signet_tests::http::client(&root);
    let url = signet.url();

    // A REST certificate for the workload's own ID (workload profile, 2h)
    // and one of the client profile.
    let (rest_key, csr) = openssl_csr(dir, "rest", &format!("URI:{DEMO}"));
    let mut rest_certs = Vec::new();
    for profile in ["workload", "client"] {
        let r: Value = rest
            .post(format!("{url}/v1/sign"))
            .json(&json!({ "csr": csr, "ttl": "2h", "profile": profile }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let chain: String = std::iter::once(r["certificate"].as_str().unwrap().to_owned())
            .chain(
                r["ca_chain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_owned()),
            )
            .collect();
        let text = {
            let p = dir.join(format!("rest-{profile}.pem"));
            std::fs::write(&p, r["certificate"].as_str().unwrap()).unwrap();
            openssl::text(&p)
        };
        assert!(
            !text.contains("signet renewable workload"),
            "REST certificates carry no renewal extension:\n{text}"
        );
        rest_certs.push((profile, chain));
    }
    let (renew_key, renew_csr) = openssl_csr(dir, "renew", &format!("URI:{DEMO}"));
    for (profile, chain) in &rest_certs {
        let mut c = IstioCertificateServiceClient::new(
            channel(&signet, &root, Some((chain, &rest_key))).await,
        );
        let err = c
            .create_certificate(request(&renew_csr, 86_400, None))
            .await
            .expect_err("a REST certificate must not renew over gRPC");
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{profile}: {err:?}"
        );
        let want = if *profile == "workload" {
            "not issued for renewal"
        } else {
            "not a workload certificate"
        };
        assert!(err.message().contains(want), "{profile}: {}", err.message());
    }

    // A certificate the workload got with its own token renews, for no
    // longer than it had (1h asked, a day asked at renewal).
    let token = jwt(&data, claims("default", "demo", json!(["istio-ca"])));
    let mut anon = IstioCertificateServiceClient::new(channel(&signet, &root, None).await);
    let (key1, csr1) = openssl_csr(dir, "g1", &format!("URI:{DEMO}"));
    let first = anon
        .create_certificate(request(&csr1, 3600, Some(&token)))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let p = dir.join("grpc-first.pem");
    std::fs::write(&p, &first[0]).unwrap();
    assert!(
        openssl::text(&p).contains("signet renewable workload"),
        "gRPC certificates are marked for renewal"
    );
    let first_chain = first[..first.len() - 1].concat();
    let mut renewing = IstioCertificateServiceClient::new(
        channel(&signet, &root, Some((&first_chain, &key1))).await,
    );
    let renewed = renewing
        .create_certificate(request(&renew_csr, 86_400, None))
        .await
        .expect("renews")
        .into_inner()
        .cert_chain;
    assert!(
        lifetime(&renewed[0]) <= lifetime(&first[0]),
        "{:?} > {:?}",
        lifetime(&renewed[0]),
        lifetime(&first[0])
    );
    // OpenSSL agrees the renewal chains to the root.
    let leaf = dir.join("renewed.pem");
    let inter = dir.join("renewed-chain.pem");
    std::fs::write(&leaf, &renewed[0]).unwrap();
    std::fs::write(&inter, renewed[1..renewed.len() - 1].concat()).unwrap();
    openssl::verify(&root, Some(&inter), &leaf, None).unwrap();
    // A renewed certificate renews in turn, still capped.
    let renewed_chain = renewed[..renewed.len() - 1].concat();
    let mut again = IstioCertificateServiceClient::new(
        channel(&signet, &root, Some((&renewed_chain, &renew_key))).await,
    );
    let third = again
        .create_certificate(request(&csr1, 86_400, None))
        .await
        .expect("renews again")
        .into_inner()
        .cert_chain;
    assert!(lifetime(&third[0]) <= lifetime(&first[0]));
    println!(
        "proved: REST and client-profile certificates cannot renew over gRPC; token-issued ones renew, never for longer"
    );
}

#[tokio::test]
async fn a_csr_with_a_ca_key_is_refused_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let root = data.join("root.pem");
    let rest = signet_tests::http::client(&root);
    let token = jwt(&data, claims("default", "demo", json!(["istio-ca"])));
    let mut istio = IstioCertificateServiceClient::new(channel(&signet, &root, None).await);
    let before = signet.logs_containing(ISSUED, 1).len();
    for key in ["intermediate-key.pem", "root-key.pem"] {
        let out = dir.join(format!("{key}.csr"));
        let status = Command::new("openssl")
            .args(["req", "-new", "-subj", "/", "-key"])
            .arg(data.join(key))
            .args(["-addext", &format!("subjectAltName=URI:{DEMO}"), "-out"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        let csr = std::fs::read_to_string(&out).unwrap();
        let r = rest
            .post(format!("{}/v1/sign", signet.url()))
            .json(&json!({ "csr": csr }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "ca_key", "{key}: {body}");
        let err = istio
            .create_certificate(request(&csr, 3600, Some(&token)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}: {err:?}");
    }
    assert_eq!(
        signet.logs_containing(ISSUED, before).len(),
        before,
        "something was signed"
    );
    println!(
        "proved: a CSR carrying the root's or the intermediate's key is refused (ca_key) on REST and gRPC, nothing signed"
    );
}

/// One gRPC frame: compression flag, big-endian length, message.
fn frame(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend((msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// `metadata` (field 4) holding a Struct nested `depth` times.
fn deep_metadata(depth: usize) -> Vec<u8> {
    fn ld(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let mut n = body.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(body);
        out
    }
    let mut s: Vec<u8> = Vec::new();
    for _ in 0..depth {
        // Struct { fields: { "a": Value { struct_value: s } } }
        let value = ld(0x2a, &s);
        let entry = [ld(0x0a, b"a"), ld(0x12, &value)].concat();
        s = ld(0x0a, &entry);
    }
    ld(0x22, &s)
}

#[tokio::test]
async fn malformed_grpc_messages_are_invalid_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let signet = Signet::dev(&bin(), &data).expect("signet starts");
    let root = data.join("root.pem");
    let http = signet_tests::http::client(&root);
    let url = format!(
        "https://{}/istio.v1.auth.IstioCertificateService/CreateCertificate",
        signet.grpc_addr.unwrap()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated field length", frame(0, &[0x0a, 0x10, 0x41])),
        (
            "varint too long",
            frame(
                0,
                &[
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
            ),
        ),
        ("truncated varint", frame(0, &[0x18, 0xff])),
        ("invalid UTF-8 in csr", frame(0, &[0x0a, 0x02, 0xc3, 0x28])),
        ("wire type 7", frame(0, &[0x0f, 0x00])),
        ("field number 0", frame(0, &[0x02, 0x00])),
        ("metadata nested 200 deep", frame(0, &deep_metadata(200))),
        (
            "truncated frame",
            frame(0, &[0x0a, 0x05, 0x41])[..6].to_vec(),
        ),
        ("frame header only", vec![0, 0, 0, 0]),
        ("no message at all", Vec::new()),
        (
            "compressed flag without an encoding",
            frame(1, &[0x18, 0x01]),
        ),
        ("compression flag 7", frame(7, &[0x18, 0x01])),
    ];
    let mut wrong = Vec::new();
    for (what, body) in cases {
        let r = http
            .post(&url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status.as_deref() != Some("3") {
            wrong.push(format!(
                "{what}: grpc-status {status:?} (want 3, INVALID_ARGUMENT)"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The service still answers a well-formed request.
    let mut istio = IstioCertificateServiceClient::new(channel(&signet, &root, None).await);
    let (_, csr) = openssl_csr(tmp.path(), "ok", &format!("URI:{DEMO}"));
    let token = jwt(&data, claims("default", "demo", json!(["istio-ca"])));
    istio
        .create_certificate(request(&csr, 3600, Some(&token)))
        .await
        .expect("still serves");
    println!("proved: malformed protobuf and gRPC framing get INVALID_ARGUMENT, never INTERNAL");
}

fn sha256_hex(s: &str) -> String {
    signet_core::crypto::sha256(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn principals_are_typed_by_how_they_authenticate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The dev server makes a root and intermediate; a configured server then
    // signs with them and takes client certificates from that same root
    // (the mesh's own), the case where a confusion would matter.
    let data = dir.join("data");
    drop(Signet::dev(&bin(), &data).expect("dev signet starts"));
    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n  - principal: minter\n    sha256: {}\n  - principal: ci\n    sha256: {}\n",
            sha256_hex("minter-token"),
            sha256_hex("ci-token")
        ),
    )
    .unwrap();
    let d = data.display();
    let config = format!(
        r#"trust_domain: cluster.local
backends:
  ca:
    type: local
    cert_file: {d}/intermediate.pem
    key_file: {d}/intermediate-key.pem
    chain_file: {d}/root.pem
authorities:
  mesh:
    backend: ca
frontends:
  rest:
    listen: "127.0.0.1:0"
    authority: mesh
    auth:
      tokens_file: {dir}/tokens.yaml
      mtls: {{ client_ca_file: {d}/root.pem }}
      loopback_unauthenticated: true
    principals:
      - name: token:minter
        allowed_sans: ["ci", "anonymous", "minter"]
        profiles: [client]
      - name: token:ci
        allowed_sans: ["spiffe://cluster.local/ns/ci/sa/*"]
        profiles: [workload]
      - name: anonymous
        allowed_sans: ["spiffe://cluster.local/ns/anon/sa/*"]
        profiles: [workload]
"#,
        dir = dir.display()
    );
    let path = dir.join("signet.yaml");
    std::fs::write(&path, config).unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", path.to_str().unwrap()])
        .expect("signet starts");
    let root = data.join("root.pem");
    let url = signet.url();
    let plain = signet_tests::http::client(&root);

    // The minter gets client certificates named DNS:ci and DNS:anonymous.
    let mut identities = Vec::new();
    for name in ["ci", "anonymous"] {
        let (key, csr) = openssl_csr(dir, name, &format!("DNS:{name}"));
        let r = plain
            .post(format!("{url}/v1/sign"))
            .bearer_auth("minter-token")
            .json(&json!({ "csr": csr, "profile": "client" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let body: Value = r.json().await.unwrap();
        let mut pem = body["certificate"].as_str().unwrap().to_owned();
        for c in body["ca_chain"].as_array().unwrap() {
            pem.push_str(c.as_str().unwrap());
        }
        pem.push_str(&key);
        identities.push((name, pem));
    }
    let (_, ci_csr) = openssl_csr(dir, "build", "URI:spiffe://cluster.local/ns/ci/sa/build");
    let (_, anon_csr) = openssl_csr(dir, "anon", "URI:spiffe://cluster.local/ns/anon/sa/x");
    let before = signet.logs_containing(ISSUED, 1).len();
    for (name, pem) in &identities {
        let client = signet_tests::http::client_with_identity(&root, pem.as_bytes());
        for csr in [&ci_csr, &anon_csr] {
            let r = client
                .post(format!("{url}/v1/sign"))
                .json(&json!({ "csr": csr }))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                403,
                "DNS:{name} must not act as token:{name} or anonymous"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["reason"], "no_grant", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("dns:{name}")),
                "{body}"
            );
        }
    }
    assert_eq!(
        signet.logs_containing(ISSUED, before).len(),
        before,
        "something was signed"
    );
    // The real token principal and anonymous get their own grants.
    let r = plain
        .post(format!("{url}/v1/sign"))
        .bearer_auth("ci-token")
        .json(&json!({ "csr": ci_csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = plain
        .post(format!("{url}/v1/sign"))
        .json(&json!({ "csr": anon_csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let audit = signet.logs_containing("token:ci", 1);
    assert!(audit.iter().any(|l| l.contains(ISSUED)), "{audit:#?}");
    println!(
        "proved: a client certificate named DNS:ci or DNS:anonymous is dns:ci / dns:anonymous, never token:ci or anonymous"
    );
}
