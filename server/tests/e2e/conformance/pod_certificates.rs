//! The PodCertificateRequest signer on a real kube-apiserver (v1.37,
//! certificates.k8s.io/v1): requests filed as the kubelet files them (by
//! the node's own identity, through Node authorization and NodeRestriction,
//! for pods with a `podCertificate` volume), and by a cluster admin who
//! bypasses those checks; signet holding only the rules the chart gives it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use signet_kubernetes::pod_certificates::PodCertificateRequest;
use signet_tests::control_plane::ControlPlane;
use signet_tests::eventually;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;

use super::support::*;

const SIGNER: &str = "signet.dev/pods";
const WITHIN: Duration = Duration::from_secs(30);

async fn node(c: &Client, name: &str) -> String {
    let api: Api<Node> = Api::all(c.clone());
    let n: Node = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    api.create(&PostParams::default(), &n)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// A pod on `node` running as `sa`, with a `podCertificate` volume for
/// signet's signer (what lets its node ask); returns its UID.
async fn pod(c: &Client, ns: &str, name: &str, sa: &str, node: &str) -> String {
    let api: Api<Pod> = Api::namespaced(c.clone(), ns);
    let p: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "serviceAccountName": sa, "nodeName": node,
            "containers": [{ "name": "app", "image": "example.invalid/app",
                             "volumeMounts": [{ "name": "certs", "mountPath": "/var/run/certs" }] }],
            "volumes": [{ "name": "certs", "projected": { "sources": [{ "podCertificate": {
                "signerName": SIGNER, "keyType": "ECDSAP256", "credentialBundlePath": "bundle.pem" } }] } }]
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &p)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// The stub PKCS#10 request the kubelet makes: an empty subject, no names.
fn stub(dir: &Path, name: &str, key: Key) -> Vec<u8> {
    let pem = std::fs::read(openssl::csr(dir, name, key, None, &[])).unwrap();
    signet_core::pem::parse_strict(&pem).unwrap()[0].der.clone()
}

/// What a request names.
struct Facts<'a> {
    ns: &'a str,
    pod: &'a str,
    pod_uid: &'a str,
    sa: &'a str,
    sa_uid: &'a str,
    node: &'a str,
    node_uid: &'a str,
}

/// Files a request through `c` and waits for signet's answer.
async fn request(
    c: &Client,
    name: &str,
    f: &Facts<'_>,
    der: Vec<u8>,
    max_seconds: i32,
    annotations: Option<serde_json::Value>,
) -> PodCertificateRequest {
    let api: Api<PodCertificateRequest> = Api::namespaced(c.clone(), f.ns);
    let mut spec = json!({
        "signerName": SIGNER, "podName": f.pod, "podUID": f.pod_uid,
        "serviceAccountName": f.sa, "serviceAccountUID": f.sa_uid,
        "nodeName": f.node, "nodeUID": f.node_uid,
        "maxExpirationSeconds": max_seconds,
        "stubPKCS10Request": ByteString(der),
    });
    if let Some(a) = annotations {
        spec["unverifiedUserAnnotations"] = a;
    }
    let pcr: PodCertificateRequest =
        serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec })).unwrap();
    api.create(&PostParams::default(), &pcr)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    let admin_api = api.clone();
    eventually(&format!("signet's answer to {name}"), WITHIN, async || {
        let got = admin_api.get(name).await.unwrap();
        let s = got.status.clone()?;
        (!s.conditions.clone().unwrap_or_default().is_empty()).then_some(got)
    })
    .await
}

/// The one final condition: `(type, reason)`, and that no certificate came.
fn refusal(p: &PodCertificateRequest) -> (String, String) {
    let s = p.status.clone().unwrap();
    assert!(
        s.certificate_chain.is_none(),
        "a refusal carries no certificate"
    );
    let c = &s.conditions.unwrap()[0];
    (c.type_.clone(), c.reason.clone())
}

fn policy_test(config: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["policy", "test", "--config", config.to_str().unwrap()])
        .args(["--frontend", "pod-certificates", "--signer-name", SIGNER])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

fn cert_time(cert: &Path, field: &str) -> i64 {
    let text = openssl::field(cert, field);
    let when = text
        .trim()
        .split_once('=')
        .map_or(text.as_str(), |(_, v)| v)
        .to_owned();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &when, "+%s"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_certificate_requests_are_issued_routed_and_denied_on_the_real_api_server() {
    let cp = ControlPlane::start();
    let c = admin(&cp).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // signet's identity, with the chart's rules for pod_certificates and
    // cluster_trust_bundles (and its Lease).
    service_account(&c, "signet", "signet").await;
    grant_cluster(
        &c,
        "signet-pod-certificates",
        vec![
            rule(
                &["certificates.k8s.io"],
                &["podcertificaterequests"],
                &["get", "list", "watch"],
            ),
            rule(
                &["certificates.k8s.io"],
                &["podcertificaterequests/status"],
                &["patch", "update"],
            ),
            {
                let mut r = rule(&["certificates.k8s.io"], &["signers"], &["sign", "attest"]);
                r.resource_names = Some(vec![SIGNER.to_owned()]);
                r
            },
            rule(&[""], &["pods", "serviceaccounts", "nodes"], &["get"]),
            rule(
                &["certificates.k8s.io"],
                &["clustertrustbundles"],
                &["get", "list", "create", "update", "delete"],
            ),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "create", "update"],
            ),
        ],
        "signet",
        "signet",
    )
    .await;
    let own = token(&c, "signet", "signet", &[], None).await;
    let kubeconfig = cp.kubeconfig_with_token("signet", &own);

    let (cert, key, root) = local_ca(d);
    let strict_root = self_signed_root(d, "strict");
    let cfg = d.join("signet.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"trust_domain: cluster.local
admin: {{ listen: "127.0.0.1:0" }}
backends:
  ca: {{ type: local, cert_file: {cert}, key_file: {key}, chain_file: {root} }}
  strict: {{ type: local, cert_file: {strict}, key_file: {strict_key} }}
authorities:
  pods: {{ backend: ca }}
  strict: {{ backend: strict, policy: {{ min_ttl: 2h }} }}
kubernetes: {{ kubeconfig: {kc} }}
leader_election: {{ namespace: signet, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
  pod_certificates:
    signer_names: [{SIGNER}]
    authority: pods
    dns_names: ["{{service_account}}.{{namespace}}.svc"]
    routes:
      - {{ name: vault-tenant, authority: strict, namespaces: [vault] }}
  cluster_trust_bundles:
    poll: 1s
    bundles:
      - {{ authority: pods, signer_name: {SIGNER} }}
      - {{ authority: strict, signer_name: {SIGNER} }}
"#,
            cert = cert.display(),
            key = key.display(),
            root = root.display(),
            strict = strict_root.display(),
            strict_key = d.join("strict-key.pem").display(),
            kc = kubeconfig.display(),
        ),
    )
    .unwrap();
    let signet = Signet::start(&bin(), &["serve", "--config", cfg.to_str().unwrap()])
        .expect("signet starts");

    let node1 = node(&c, "node-1").await;
    let node2 = node(&c, "node-2").await;
    let web_sa = service_account(&c, "shop", "web").await;
    let other_sa = service_account(&c, "shop", "other").await;
    let web = pod(&c, "shop", "web-0", "web", "node-1").await;
    let app_sa = service_account(&c, "vault", "app").await;
    let app = pod(&c, "vault", "app-0", "app", "node-1").await;
    let kubelet = client_as(
        &cp,
        "system:node:node-1",
        &["system:nodes", "system:authenticated"],
    )
    .await;
    let good = Facts {
        ns: "shop",
        pod: "web-0",
        pod_uid: &web,
        sa: "web",
        sa_uid: &web_sa,
        node: "node-1",
        node_uid: &node1,
    };

    // The kubelet's request: issued.
    let issued = request(
        &kubelet,
        "web-0-a",
        &good,
        stub(d, "a", Key::EcP256),
        7200,
        None,
    )
    .await;
    let s = issued.status.clone().unwrap();
    let conditions = s.conditions.clone().unwrap();
    assert_eq!(
        (conditions[0].type_.as_str(), conditions[0].status.as_str()),
        ("Issued", "True")
    );
    let pem = s.certificate_chain.clone().expect("a chain");
    let blocks = signet_core::pem::parse_strict(pem.as_bytes()).unwrap();
    assert_eq!(
        blocks.len(),
        2,
        "leaf and intermediate; the root is in the ClusterTrustBundle"
    );
    let (leaf, chain) = (d.join("pod-leaf.pem"), d.join("pod-chain.pem"));
    std::fs::write(
        &leaf,
        signet_core::pem::encode("CERTIFICATE", &blocks[0].der),
    )
    .unwrap();
    std::fs::write(
        &chain,
        signet_core::pem::encode("CERTIFICATE", &blocks[1].der),
    )
    .unwrap();
    // Verified against what a pod mounts: the signer's ClusterTrustBundles.
    let bundles = d.join("ctb.pem");
    let ctb = eventually("the signer's ClusterTrustBundles", WITHIN, async || {
        let all = Api::<ClusterTrustBundle>::all(c.clone())
            .list(&Default::default())
            .await
            .unwrap();
        let ours: Vec<String> = all
            .items
            .into_iter()
            .filter(|b| b.spec.signer_name.as_deref() == Some(SIGNER))
            .map(|b| b.spec.trust_bundle)
            .collect();
        (ours.len() == 2).then(|| ours.concat())
    })
    .await;
    std::fs::write(&bundles, &ctb).unwrap();
    openssl::verify(&bundles, Some(&chain), &leaf, None)
        .expect("verifies to the ClusterTrustBundles");
    openssl::verify(&root, Some(&chain), &leaf, None).expect("under the pods authority's root");
    let text = openssl::text(&leaf);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/shop/sa/web"),
        "{text}"
    );
    assert!(text.contains("DNS:web.shop.svc"), "{text}");
    let (nb, na) = (cert_time(&leaf, "startdate"), cert_time(&leaf, "enddate"));
    assert_eq!(unix(s.not_before.as_ref().unwrap()), nb);
    assert_eq!(unix(s.not_after.as_ref().unwrap()), na);
    assert!((3600..=7200).contains(&(na - nb)), "lifetime {}", na - nb);
    let refresh = unix(s.begin_refresh_at.as_ref().unwrap());
    assert!(
        refresh >= nb + 600 && refresh <= na - 600,
        "beginRefreshAt {refresh}"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (nb - now).abs() < 300,
        "notBefore is now (backdated a minute)"
    );

    // The same decision from `signet policy test`.
    let (ok, out) = policy_test(
        &cfg,
        &[
            "--namespace",
            "shop",
            "--service-account",
            "web",
            "--ttl",
            "2h",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("route default, authority pods"), "{out}");
    assert!(
        out.contains("spiffe://cluster.local/ns/shop/sa/web") && out.contains("web.shop.svc"),
        "{out}"
    );

    // Another namespace routed to another authority: its root, and its policy.
    let vault = Facts {
        ns: "vault",
        pod: "app-0",
        pod_uid: &app,
        sa: "app",
        sa_uid: &app_sa,
        node: "node-1",
        node_uid: &node1,
    };
    let routed = request(
        &kubelet,
        "app-0-a",
        &vault,
        stub(d, "b", Key::EcP256),
        10_800,
        None,
    )
    .await;
    let rpem = routed.status.unwrap().certificate_chain.expect("issued");
    let rleaf = d.join("routed-leaf.pem");
    std::fs::write(&rleaf, &rpem).unwrap();
    openssl::verify(&strict_root, None, &rleaf, None).expect("under the routed authority's root");
    assert!(openssl::verify(&root, None, &rleaf, None).is_err());
    openssl::verify(&bundles, None, &rleaf, None).expect("and the signer's ClusterTrustBundles");
    let short = request(
        &kubelet,
        "app-0-b",
        &vault,
        stub(d, "c", Key::EcP256),
        3600,
        None,
    )
    .await;
    assert_eq!(
        refusal(&short),
        ("Denied".into(), "SignetPolicyDenied".into())
    );
    let (ok, out) = policy_test(
        &cfg,
        &[
            "--namespace",
            "vault",
            "--service-account",
            "app",
            "--ttl",
            "1h",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("route vault-tenant, authority strict"),
        "{out}"
    );
    assert!(
        out.contains(
            "refused: policy_denied/ttl_too_short (PodCertificateRequest Denied SignetPolicyDenied)"
        ),
        "{out}"
    );

    // What the kubelet may file but signet will not sign.
    let p521 = request(
        &kubelet,
        "web-0-b",
        &good,
        stub(d, "d", Key::EcP521),
        7200,
        None,
    )
    .await;
    assert_eq!(
        refusal(&p521),
        ("Denied".into(), "UnsupportedKeyType".into())
    );
    let annotated = request(
        &kubelet,
        "web-0-c",
        &good,
        stub(d, "e", Key::EcP256),
        7200,
        Some(json!({ "example.com/team": "payments" })),
    )
    .await;
    assert_eq!(
        refusal(&annotated),
        ("Denied".into(), "InvalidUnverifiedUserAnnotations".into())
    );

    // What only someone past NodeRestriction can file: facts the cluster
    // contradicts. Each is denied, none signed.
    let stale_uid = Facts {
        pod_uid: "00000000-0000-0000-0000-000000000000",
        ..good
    };
    let other_node = Facts {
        node: "node-2",
        node_uid: &node2,
        ..good
    };
    let other_account = Facts {
        sa: "other",
        sa_uid: &other_sa,
        ..good
    };
    let wrong_node_uid = Facts {
        node_uid: &node2,
        ..good
    };
    // A pod that never asked for a certificate (no podCertificate volume).
    let plain: Pod = serde_json::from_value(json!({
        "metadata": { "name": "plain-0" },
        "spec": { "serviceAccountName": "web", "nodeName": "node-1",
                  "containers": [{ "name": "app", "image": "example.invalid/app" }] }
    }))
    .unwrap();
    let plain_uid = Api::<Pod>::namespaced(c.clone(), "shop")
        .create(&PostParams::default(), &plain)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let never_asked = Facts {
        pod: "plain-0",
        pod_uid: &plain_uid,
        ..good
    };
    for (i, (what, f)) in [
        ("a pod UID the pod does not have", &stale_uid),
        ("a node the pod does not run on", &other_node),
        ("a service account the pod does not run as", &other_account),
        ("another node's UID", &wrong_node_uid),
        (
            "a pod with no podCertificate volume for the signer",
            &never_asked,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let p = request(
            &c,
            &format!("forged-{i}"),
            f,
            stub(d, &format!("f{i}"), Key::EcP256),
            7200,
            None,
        )
        .await;
        assert_eq!(
            refusal(&p),
            ("Denied".into(), "SignetPodMismatch".into()),
            "{what}"
        );
    }

    // Two certificates issued, one per issued request, never more.
    let metrics = admin_metrics(&signet).await;
    let issued_total: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("signet_requests_total{")
                && l.contains("frontend=\"pod_certificates\"")
                && l.contains("outcome=\"issued\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(issued_total, 2.0, "{metrics}");
    assert!(
        metrics.contains("route=\"vault-tenant\",authority=\"strict\",outcome=\"issued\""),
        "{metrics}"
    );
    assert_eq!(
        signet
            .logs()
            .iter()
            .filter(|l| l.contains("certificate issued")
                && l.contains("system:serviceaccount:shop:web"))
            .count(),
        1
    );
    drop(signet);
    println!(
        "proved: on kube-apiserver v1.37 (certificates.k8s.io/v1), a PodCertificateRequest the kubelet files (Node authorization, NodeRestriction) gets the pod's SPIFFE ID and DNS name within maxExpirationSeconds, notBefore/notAfter/beginRefreshAt accepted by the API, verifying to the signer's ClusterTrustBundles; a namespace routed to another authority gets that root and its policy; P-521 is Denied UnsupportedKeyType, unknown annotations InvalidUnverifiedUserAnnotations, a too-short lifetime SignetPolicyDenied (as signet policy test prints), and five forged pod/node/account facts (one a pod that never asked) SignetPodMismatch; one signature per issued request"
    );
}
