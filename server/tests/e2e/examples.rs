//! Every example configuration passes `signet check --offline`.

use std::path::PathBuf;

#[test]
fn every_example_config_checks() {
    let examples = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let config = entry.unwrap().path().join("signet.yaml");
        if !config.exists() {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
            .args(["check", "--offline", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1, "no example configs found");
}

/// examples/vault: the setup script prepares a real OpenBao, the example
/// config checks online and serves certificates that chain to its root.
#[tokio::test]
async fn the_vault_example_works_against_openbao() {
    let bao = signet_tests::openbao::OpenBao::dev();
    let example = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/vault"));
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(example.join("setup-openbao.sh"))
        .arg("signet-vault")
        .current_dir(tmp.path())
        .env("BAO_BIN", signet_tests::openbao::bao_binary())
        .env("BAO_ADDR", bao.addr())
        .env("BAO_TOKEN", &bao.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(example.join("signet.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8200", &bao.addr())
        .replace("127.0.0.1:8443", "127.0.0.1:0");
    std::fs::write(tmp.path().join("signet.yaml"), config).unwrap();

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_signet"));
    let check = std::process::Command::new(&bin)
        .args(["check", "--config", "signet.yaml"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let signet = signet_tests::process::Signet::start_in(
        &bin,
        &["serve", "--config", "signet.yaml"],
        tmp.path(),
    )
    .unwrap();
    let root = tmp.path().join("signet-vault/root.pem");
    let csr = signet_tests::openssl::csr(
        tmp.path(),
        "w",
        signet_tests::openssl::Key::EcP256,
        Some("URI:spiffe://cluster.local/ns/x/sa/y"),
        &[],
    );
    let client = signet_tests::http::client(&root);
    let r = client
        .post(format!("{}/v1/sign", signet.url()))
        .json(&serde_json::json!({ "csr": std::fs::read_to_string(&csr).unwrap() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    std::fs::write(
        tmp.path().join("leaf.pem"),
        body["certificate"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("chain.pem"),
        body["ca_chain"][0].as_str().unwrap(),
    )
    .unwrap();
    signet_tests::openssl::verify(
        &root,
        Some(&tmp.path().join("chain.pem")),
        &tmp.path().join("leaf.pem"),
        None,
    )
    .unwrap();
}

signet_tests::cluster_tests!(both:
    the_cert_manager_example_issues,
);

/// examples/cert-manager: the shipped CRDs, the example issuers and a
/// CertificateRequest shaped like the one cert-manager makes for
/// certificate.yaml, against a real `signet serve` — on the API fake
/// (where every request signet makes is checked against the chart's RBAC)
/// and on a real kube-apiserver with cert-manager's own CRDs (where the
/// example's objects meet the real schemas).
async fn the_cert_manager_example_issues(cluster: signet_tests::cluster::Cluster) {
    use base64::Engine as _;
    use serde_json::{Value, json};
    use signet_core::key::{KeyAlgorithm, PrivateKey};
    use signet_core::names::{DnsName, San};
    use std::time::{Duration, Instant, SystemTime};

    let b64 = base64::engine::general_purpose::STANDARD;
    let example = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cert-manager"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let kc = cluster.kubeconfig(tmp.path());
    let yaml_docs = |text: &str| -> Vec<Value> {
        text.split("\n---\n")
            .filter(|d| d.contains("kind:"))
            .map(|d| serde_yaml_ng::from_str(d).unwrap())
            .collect()
    };
    // The CRDs as the chart ships them, plus cert-manager's (its own on a
    // real server, signet's model of CertificateRequest on the fake).
    let mut crds = yaml_docs(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/signet/crds/signet.dev.yaml"
        ))
        .unwrap(),
    );
    match cluster.as_fake() {
        Some(_) => crds.push(
            serde_json::to_value(
                <signet_backends::cert_manager::CertificateRequest as kube::CustomResourceExt>::crd(
                ),
            )
            .unwrap(),
        ),
        None => crds.extend(
            signet_tests::cluster::cert_manager_crds()
                .into_iter()
                .filter(|c| c["metadata"]["name"] == "certificaterequests.cert-manager.io"),
        ),
    }
    cluster.install_crds(&crds).await;
    cluster.add_namespace("signet", json!({})).await;
    cluster.add_namespace("apps", json!({})).await;

    // The team CA Secret, as `kubectl create secret tls` makes it.
    let ca = signet_core::issuer::LocalCa::self_signed_root(
        "team ca",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        Duration::from_secs(365 * 86_400),
    )
    .unwrap();
    let ca_pem = signet_core::pem::encode_certificate(ca.certificate());
    cluster.apply(json!({ "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": { "name": "team-ca", "namespace": "apps" },
        "data": { "tls.crt": b64.encode(&ca_pem), "tls.key": b64.encode(ca.private_key().unwrap().to_pem().as_bytes()) } }))
        .await;
    for doc in yaml_docs(&std::fs::read_to_string(example.join("issuers.yaml")).unwrap()) {
        cluster.apply(doc).await;
    }

    let config = std::fs::read_to_string(example.join("signet.yaml"))
        .unwrap()
        .replace(
            "kubernetes: {}",
            &format!("kubernetes: {{ kubeconfig: {} }}", kc.display()),
        );
    std::fs::write(tmp.path().join("signet.yaml"), config).unwrap();
    let bin = crate::conformance::support::bin();
    // From here on only signet talks to the API server over HTTP.
    let setup_requests = cluster.as_fake().map(|f| f.accesses().len());
    let _signet = signet_tests::process::Signet::start_in(
        &bin,
        &["serve", "--config", "signet.yaml"],
        tmp.path(),
    )
    .unwrap();

    let ready = async |api_version: &str, plural: &str, ns: &str, name: &str| -> Option<Value> {
        cluster
            .get(api_version, plural, ns, name)
            .await
            .and_then(|o| {
                o["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .cloned()
            })
    };
    let wait_for = async |what: &str,
                          api_version: &str,
                          plural: &str,
                          ns: &str,
                          name: &str,
                          f: &dyn Fn(&Value) -> bool| {
        let start = Instant::now();
        loop {
            if ready(api_version, plural, ns, name)
                .await
                .is_some_and(|c| f(&c))
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let message_names = |c: &Value, what: &str| {
        c["status"] == "False" && c["message"].as_str().unwrap_or("").contains(what)
    };
    wait_for(
        "the team issuer Ready",
        "signet.dev/v1alpha1",
        "signetissuers",
        "apps",
        "team-ca",
        &|c| c["status"] == "True",
    )
    .await;
    // The Vault issuer has no Secret yet: not ready, and says why; so do the
    // cloud issuers, naming their missing Secrets.
    for (name, secret) in [
        ("org-vault", "vault-approle"),
        ("org-aws-pca", "aws-pca"),
        ("org-gcp-cas", "gcp-cas"),
    ] {
        wait_for(
            name,
            "signet.dev/v1alpha1",
            "signetclusterissuers",
            "",
            name,
            &|c| message_names(c, secret),
        )
        .await;
    }

    // What cert-manager creates for certificate.yaml, then approves.
    let certificate: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(example.join("certificate.yaml")).unwrap(),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let dns = certificate["spec"]["dnsNames"][0].as_str().unwrap();
    let csr = key
        .csr_der(None, &[San::Dns(DnsName::new(dns).unwrap())])
        .unwrap();
    let mut cr = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "metadata": { "name": "web-1", "namespace": "apps" },
        "spec": {
            "request": b64.encode(signet_core::pem::encode("CERTIFICATE REQUEST", &csr)),
            "issuerRef": certificate["spec"]["issuerRef"],
            "duration": "720h0m0s",
            "usages": certificate["spec"]["usages"],
        }
    });
    cluster.apply(cr.clone()).await;
    cr["status"] = json!({ "conditions": [{ "type": "Approved", "status": "True", "reason": "cert-manager.io", "message": "approved",
        "lastTransitionTime": "2026-01-01T00:00:00Z" }] });
    cluster.apply(cr).await;
    wait_for(
        "the request Issued",
        "cert-manager.io/v1",
        "certificaterequests",
        "apps",
        "web-1",
        &|c| c["reason"] == "Issued",
    )
    .await;
    let issued = cluster
        .get("cert-manager.io/v1", "certificaterequests", "apps", "web-1")
        .await
        .unwrap();
    let leaf = b64
        .decode(issued["status"]["certificate"].as_str().unwrap())
        .unwrap();
    let root = b64
        .decode(issued["status"]["ca"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(root.clone()).unwrap(), ca_pem);
    std::fs::write(tmp.path().join("leaf.pem"), leaf).unwrap();
    std::fs::write(tmp.path().join("ca.pem"), root).unwrap();
    signet_tests::openssl::verify(
        &tmp.path().join("ca.pem"),
        None,
        &tmp.path().join("leaf.pem"),
        Some("sslserver"),
    )
    .unwrap();
    assert!(
        signet_tests::openssl::text(&tmp.path().join("leaf.pem")).contains(&format!("DNS:{dns}"))
    );

    let Some((fake, setup_requests)) = cluster.as_fake().zip(setup_requests) else {
        println!(
            "proved: examples/cert-manager (signet's CRDs, the example issuers, a CertificateRequest for certificate.yaml) is accepted and issues on {}",
            cluster.describe().await
        );
        return;
    };
    // Everything signet asked of the API server is allowed by the RBAC the
    // chart renders for this configuration with the example's values.
    let config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(tmp.path().join("signet.yaml")).unwrap())
            .unwrap();
    let rbac = signet_tests::helm::rbac_for_config(&config, "signet");
    let mut accesses = fake.accesses().split_off(setup_requests);
    accesses.sort();
    accesses.dedup();
    assert!(
        accesses
            .iter()
            .any(|a| a.resource == "certificaterequests/status")
    );
    let denied: Vec<_> = accesses.iter().filter(|a| !rbac.allows(a)).collect();
    assert!(
        denied.is_empty(),
        "not allowed by the chart's RBAC: {denied:#?}"
    );
}
