//! The `aws_pca` backend against moto's server mode, through a recording,
//! fault-injecting proxy: moto signs for real; where it ignores a field
//! (Validity, SigningAlgorithm, IdempotencyToken, templates) the request we
//! sent is the evidence, and throttling / in-progress answers moto never
//! gives are injected by the proxy.
#![cfg(feature = "aws_pca")]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_sdk_acmpca::config::{Credentials, Region, SharedCredentialsProvider};
use base64::Engine as _;
use serde_json::{Value, json};
use signet_backends::aws_pca::{
    AwsPcaBackend, AwsPcaConfig, END_ENTITY_TEMPLATE, SUBORDINATE_PATHLEN0_TEMPLATE,
};
use signet_core::caller::Caller;
use signet_core::chain::TrustBundle;
use signet_core::duration::HumanDuration;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::layout::{Needs, Position};
use signet_core::names::San;
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
};
use signet_core::resilience::ResilienceConfig;
use signet_core::spiffe::TrustDomain;
use signet_core::testing;
use signet_core::{Authority, ErrorKind, Signer, SystemClock, VerifiedCsr, pem};
use signet_tests::json_proxy::JsonProxy;
use signet_tests::moto::{Moto, Pca, REGION};
use signet_tests::openssl;

const DAY: Duration = Duration::from_secs(86_400);
/// moto ignores Validity and always issues for 365 days, so the policy here
/// asks for a little more than that (signet refuses a certificate that
/// outlives its decision).
const MOTO_TTL: Duration = Duration::from_secs(365 * 86_400 + 3600);

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

struct Env {
    _moto: Moto,
    proxy: JsonProxy,
    pca: Pca,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (moto, pca) = tokio::task::spawn_blocking(move || {
        let pca = moto.subordinate_pca(&d, "signet test PCA");
        (moto, pca)
    })
    .await
    .unwrap();
    let proxy = JsonProxy::start(&moto.endpoint()).await;
    // moto reports every CA as SHORT_LIVED_CERTIFICATE (usage modes are not
    // modelled); say what AWS says of a CA created without one.
    proxy.patch(
        "ACMPrivateCA.DescribeCertificateAuthority",
        "/CertificateAuthority/UsageMode",
        json!("GENERAL_PURPOSE"),
    );
    Env {
        _moto: moto,
        proxy,
        pca,
        dir,
    }
}

fn config(env: &Env) -> AwsPcaConfig {
    AwsPcaConfig {
        region: REGION.into(),
        certificate_authority_arn: env.pca.arn.clone(),
        endpoint_url: Some(env.proxy.url()),
        signing_algorithm: None,
        leaf_template_arn: None,
        intermediate_template_arn: None,
        supplemental_roots_file: None,
        access_key_id_file: None,
        secret_access_key_file: None,
        session_token_file: None,
        trust_bundle_refresh: HumanDuration::from_secs(300),
        resilience: ResilienceConfig {
            attempts: 4,
            backoff: HumanDuration(Duration::from_millis(20)),
            // Each test looks at single calls; the breaker has its own tests.
            circuit_breaker: None,
            ..ResilienceConfig::default()
        },
    }
}

fn backend(
    config: AwsPcaConfig,
    supplemental: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Arc<dyn Signer> {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(config.endpoint_url.clone().unwrap())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "tests",
        )))
        .build();
    let resilience = config.resilience.clone();
    resilience.wrap(AwsPcaBackend::with_sdk_config(
        "pca",
        config,
        &sdk,
        supplemental,
    ))
}

fn authority(signer: Arc<dyn Signer>) -> Authority {
    let policy = PolicyConfig {
        max_ttl: HumanDuration(MOTO_TTL),
        default_ttl: HumanDuration(MOTO_TTL),
        ..PolicyConfig::default()
    };
    Authority::new(
        "mesh",
        signer,
        AuthorityPolicy::new(td(), policy).unwrap(),
        Arc::new(SystemClock),
    )
}

fn workload(sa: &str) -> (VerifiedCsr, Grant) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id: signet_core::spiffe::SpiffeId = format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(None, &[San::Uri(id.clone())]).unwrap()).unwrap();
    (csr, Grant::exact_identity(id))
}

async fn issue(
    a: &Authority,
    sa: &str,
) -> Result<signet_core::IssuedChain, signet_core::SignError> {
    let (csr, grant) = workload(sa);
    let req = testing::request(Profile::Workload);
    a.issue(&Caller::internal(sa), &grant, &csr, &req).await
}

fn verify(dir: &std::path::Path, chain: &signet_core::IssuedChain) {
    let (leaf, inter, root) = (
        dir.join("leaf.pem"),
        dir.join("chain.pem"),
        dir.join("root.pem"),
    );
    std::fs::write(&leaf, chain.leaf_pem()).unwrap();
    std::fs::write(&inter, chain.intermediate_pems().concat()).unwrap();
    std::fs::write(&root, chain.trust_bundle().to_pem()).unwrap();
    let untrusted = (!chain.intermediates().is_empty()).then_some(inter.as_path());
    openssl::verify(&root, untrusted, &leaf, Some("sslclient")).unwrap();
}

const ISSUE: &str = "ACMPrivateCA.IssueCertificate";
const GET: &str = "ACMPrivateCA.GetCertificate";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_chain_to_the_org_root_and_the_request_says_what_policy_decided() {
    let env = env().await;
    let a = authority(backend(config(&env), vec![]));
    let chain = issue(&a, "web").await.unwrap();
    verify(env.dir.path(), &chain);
    // The trust anchor is the organisation's root above the PCA.
    assert_eq!(
        chain.trust_bundle().to_pem(),
        std::fs::read_to_string(&env.pca.root_pem).unwrap()
    );
    assert!(
        openssl::text(&env.dir.path().join("leaf.pem"))
            .contains("URI:spiffe://cluster.local/ns/default/sa/web")
    );

    let sent = env.proxy.requests(ISSUE);
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r["CertificateAuthorityArn"], env.pca.arn.as_str());
    assert_eq!(r["TemplateArn"], END_ENTITY_TEMPLATE);
    // The CA's algorithm, read with DescribeCertificateAuthority.
    assert_eq!(r["SigningAlgorithm"], "SHA256WITHRSA");
    assert_eq!(r["Validity"]["Type"], "ABSOLUTE");
    let not_after = r["Validity"]["Value"].as_i64().unwrap();
    assert!(
        (not_after - (now_secs() + MOTO_TTL.as_secs() as i64)).abs() < 60,
        "{r}"
    );
    assert_eq!(r["ValidityNotBefore"]["Type"], "ABSOLUTE");
    assert!(r["ValidityNotBefore"]["Value"].as_i64().unwrap() < now_secs());
    let token = r["IdempotencyToken"].as_str().unwrap();
    assert_eq!(token.len(), 32);
    let csr = base64::engine::general_purpose::STANDARD
        .decode(r["Csr"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(csr)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_the_same_idempotency_token() {
    let env = env().await;
    let a = authority(backend(config(&env), vec![]));
    env.proxy.fail(
        ISSUE,
        2,
        400,
        json!({ "__type": "ThrottlingException", "message": "Rate exceeded" }),
    );
    let chain = issue(&a, "busy").await.unwrap();
    verify(env.dir.path(), &chain);
    let sent = env.proxy.requests(ISSUE);
    assert_eq!(sent.len(), 3);
    let tokens: Vec<&Value> = sent.iter().map(|r| &r["IdempotencyToken"]).collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");

    // A quota error that outlasts the retries is rate_limited, not a refusal.
    env.proxy.fail(
        ISSUE,
        4,
        400,
        json!({ "__type": "LimitExceededException", "message": "quota" }),
    );
    let e = issue(&a, "busier").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_certificate_waits_while_the_certificate_is_in_progress() {
    let env = env().await;
    let a = authority(backend(config(&env), vec![]));
    env.proxy.fail(
        GET,
        3,
        400,
        json!({ "__type": "RequestInProgressException", "message": "The request is in progress" }),
    );
    let chain = issue(&a, "slow").await.unwrap();
    verify(env.dir.path(), &chain);
    assert_eq!(
        env.proxy.requests(ISSUE).len(),
        1,
        "waiting never re-issues"
    );
    assert_eq!(env.proxy.requests(GET).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_ask_for_the_pathlen0_template_and_a_non_ca_answer_is_refused() {
    let env = env().await;
    let b = backend(config(&env), vec![]);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(
        &key.csr_der(Some("mesh intermediate"), &[San::Uri(td().id())])
            .unwrap(),
    )
    .unwrap();
    let now = SystemTime::now();
    let decision = IssuanceDecision::intermediate(
        "mesh intermediate",
        &td(),
        0,
        now,
        400 * DAY,
        Duration::from_secs(60),
        "t",
    );
    let chain = b.sign(&decision, &csr).await.unwrap();
    let r = &env.proxy.requests(ISSUE)[0];
    assert_eq!(r["TemplateArn"], SUBORDINATE_PATHLEN0_TEMPLATE);
    let want =
        now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + (400 * DAY).as_secs() as i64;
    assert!((r["Validity"]["Value"].as_i64().unwrap() - want).abs() <= 1);
    // moto ignores the template and returns an end-entity certificate:
    // signet's check (what Delegated runs) refuses it.
    let e = chain
        .check(&decision, &csr, now, Duration::from_secs(300))
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("ca"), "{e}");
}

/// A withdrawn intermediate is revoked with RevokeCertificate: the serial
/// as AWS writes it (colon-separated hex) and the reason; moto accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_sends_the_serial_and_reason_pca_expects() {
    let env = env().await;
    let b = backend(config(&env), vec![]);
    let a = authority(b.clone());
    let chain = issue(&a, "w").await.unwrap();
    let serial = signet_core::revocation::normalise_serial(chain.serial_hex()).unwrap();
    assert!(
        b.revoke(&serial, signet_core::revocation::Reason::KeyCompromise)
            .await
            .unwrap()
    );
    let r = &env.proxy.requests("ACMPrivateCA.RevokeCertificate")[0];
    assert_eq!(r["CertificateAuthorityArn"], env.pca.arn);
    assert_eq!(
        r["CertificateSerial"],
        signet_core::revocation::colon_serial(&serial)
    );
    assert_eq!(r["RevocationReason"], "KEY_COMPROMISE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_bundle_adds_supplemental_roots_and_errors_map_to_codes() {
    let env = env().await;
    let next_root = signet_core::issuer::LocalCa::self_signed_root(
        "next org root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        3650 * DAY,
    )
    .unwrap();
    let b = backend(config(&env), vec![next_root.certificate().clone()]);
    let bundle: TrustBundle = b.trust_bundle().await.unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert!(
        bundle
            .to_pem()
            .contains(&pem::encode("CERTIFICATE", next_root.certificate()))
    );
    let info = b.describe();
    assert!(info.ready.is_ok());
    assert!(info.ca_not_after.is_some());

    let a = authority(b);
    env.proxy.fail(
        ISSUE,
        1,
        400,
        json!({ "__type": "MalformedCSRException", "message": "bad csr" }),
    );
    let e = issue(&a, "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendRejected, "{e}");
    assert!(e.to_string().contains("MalformedCSRException"), "{e}");
    // As many failures as the resilience layer makes attempts.
    env.proxy.fail(
        ISSUE,
        4,
        500,
        json!({ "__type": "InternalFailure", "message": "oops" }),
    );
    let before = env.proxy.requests(ISSUE).len();
    let e = issue(&a, "y").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendUnavailable, "{e}");
    assert_eq!(
        env.proxy.requests(ISSUE).len() - before,
        4,
        "one call per attempt"
    );
    // Retryable too (the CA may be re-enabled), so it lasts all attempts.
    env.proxy.fail(
        ISSUE,
        4,
        400,
        json!({ "__type": "InvalidStateException", "message": "CA is DISABLED" }),
    );
    let e = issue(&a, "z").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotReady, "{e}");

    // A CA that does not exist is refused, not retried forever.
    let mut c = config(&env);
    c.certificate_authority_arn = format!("{}0", env.pca.arn);
    let a = authority(backend(c, vec![]));
    let e = issue(&a, "w").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendRejected, "{e}");
}

#[test]
fn request_ids_make_tokens_stable_across_restarts() {
    let (csr, grant) = workload("a");
    let policy = AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap();
    let req = IssuanceRequest {
        profile: Profile::Workload,
        ttl: None,
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        request_id: None,
    };
    let caller = Caller::internal("a");
    let now = SystemTime::now();
    let d1 = policy.decide(&caller, &grant, &csr, &req, now).unwrap();
    let d2 = policy
        .decide(&caller, &grant, &csr, &req, now + Duration::from_secs(90))
        .unwrap();
    let t = |d: &IssuanceDecision| AwsPcaBackend::idempotency_token(d, &csr, END_ENTITY_TEMPLATE);
    // Without a request ID the validity is part of the token...
    assert_ne!(t(&d1), t(&d2));
    // ...with one, a later decision for the same request reuses it.
    assert_eq!(
        t(&d1.clone().with_request_id("r1")),
        t(&d2.clone().with_request_id("r1"))
    );
    assert_ne!(
        t(&d1.clone().with_request_id("r1")),
        t(&d1.with_request_id("r2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_credentials_from_files_replace_the_default_chain() {
    let env = env().await;
    let (id, secret) = (env.dir.path().join("akid"), env.dir.path().join("secret"));
    std::fs::write(&id, "AKIDSIGNETTEST\n").unwrap();
    std::fs::write(&secret, "not-a-real-secret\n").unwrap();
    let mut c = config(&env);
    c.access_key_id_file = Some(id.clone());
    let e = AwsPcaBackend::new("pca", c.clone()).await.unwrap_err();
    assert!(e.to_string().contains("go together"), "{e}");
    c.secret_access_key_file = Some(secret);
    let b = c
        .resilience
        .clone()
        .wrap(AwsPcaBackend::new("pca", c).await.unwrap());
    let chain = issue(&authority(b), "keyed").await.unwrap();
    verify(env.dir.path(), &chain);
}

/// A backend for `pca` behind a fresh proxy that reports `usage_mode`.
async fn layout_env(moto: &Moto, pca: &Pca, usage_mode: &str) -> (JsonProxy, Arc<dyn Signer>) {
    let proxy = JsonProxy::start(&moto.endpoint()).await;
    proxy.patch(
        "ACMPrivateCA.DescribeCertificateAuthority",
        "/CertificateAuthority/UsageMode",
        json!(usage_mode),
    );
    let mut c = AwsPcaConfig {
        certificate_authority_arn: pca.arn.clone(),
        endpoint_url: Some(proxy.url()),
        ..aws_config_defaults()
    };
    c.resilience.circuit_breaker = None;
    let b = backend(c, vec![]);
    (proxy, b)
}

fn aws_config_defaults() -> AwsPcaConfig {
    AwsPcaConfig {
        region: REGION.into(),
        certificate_authority_arn: String::new(),
        endpoint_url: None,
        signing_algorithm: None,
        leaf_template_arn: None,
        intermediate_template_arn: None,
        supplemental_roots_file: None,
        access_key_id_file: None,
        secret_access_key_file: None,
        session_token_file: None,
        trust_bundle_refresh: HumanDuration::from_secs(300),
        resilience: ResilienceConfig {
            attempts: 2,
            backoff: HumanDuration(Duration::from_millis(20)),
            circuit_breaker: None,
            ..ResilienceConfig::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_private_ca_layout_reports_itself_and_chains_to_its_root() {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (moto, root_ec, root_rsa, sub_pca, sub_ext) = tokio::task::spawn_blocking(move || {
        let root_ec = moto.root_pca(&d, "root ec", "EC_prime256v1");
        let root_rsa = moto.root_pca(&d, "root rsa", "RSA_2048");
        let sub_pca = moto.subordinate_of(&root_rsa, &d, "sub of pca");
        let sub_ext = moto.subordinate_pca(&d, "sub of external");
        (moto, root_ec, root_rsa, sub_pca, sub_ext)
    })
    .await
    .unwrap();
    for (what, pca, ty, position, algorithm) in [
        (
            "ROOT, EC key",
            &root_ec,
            "ROOT",
            Position::Root,
            "SHA256WITHECDSA",
        ),
        (
            "ROOT, RSA key",
            &root_rsa,
            "ROOT",
            Position::Root,
            "SHA256WITHRSA",
        ),
        (
            "SUBORDINATE under a PCA",
            &sub_pca,
            "SUBORDINATE",
            Position::Subordinate,
            "SHA256WITHRSA",
        ),
        (
            "SUBORDINATE under an external root",
            &sub_ext,
            "SUBORDINATE",
            Position::Subordinate,
            "SHA256WITHRSA",
        ),
    ] {
        let (proxy, b) = layout_env(&moto, pca, "GENERAL_PURPOSE").await;
        let layout = b.layout().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(layout.position(), position, "{what}:\n{layout}");
        assert!(
            layout.facts.contains(&("type".into(), ty.into())),
            "{what}:\n{layout}"
        );
        assert!(
            layout.issues_ca_certificates && layout.max_validity.is_none(),
            "{what}"
        );
        assert!(layout.anchored_at_root, "{what}:\n{layout}");
        assert_eq!(layout.anchors.len(), 1, "{what}");
        // A direct authority over it issues leaves that chain to that root.
        let a = authority(b.clone());
        let chain = issue(&a, "layout")
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        verify(dir.path(), &chain);
        assert_eq!(
            chain.trust_bundle().to_pem().trim(),
            std::fs::read_to_string(&pca.root_pem).unwrap().trim(),
            "{what}"
        );
        assert_eq!(
            chain.intermediates().len(),
            usize::from(position == Position::Subordinate),
            "{what}"
        );
        // The CA's own algorithm is what signet asks for.
        assert_eq!(
            proxy.requests(ISSUE)[0]["SigningAlgorithm"],
            algorithm,
            "{what}"
        );
        // Both modes fit a general-purpose CA.
        for need in [
            Needs {
                authority: "direct".into(),
                intermediate_ttl: None,
                max_ttl: MOTO_TTL,
            },
            Needs {
                authority: "delegated".into(),
                intermediate_ttl: Some(30 * DAY),
                max_ttl: DAY,
            },
        ] {
            layout
                .check(&need)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }

    // A short-lived-certificate CA: direct within seven days only, never delegated.
    let (_proxy, b) = layout_env(&moto, &root_ec, "SHORT_LIVED_CERTIFICATE").await;
    let layout = b.layout().await.unwrap();
    assert!(!layout.issues_ca_certificates);
    assert_eq!(layout.max_validity, Some(Duration::from_secs(7 * 86_400)));
    layout
        .check(&Needs {
            authority: "direct".into(),
            intermediate_ttl: None,
            max_ttl: DAY,
        })
        .unwrap();
    let e = layout
        .check(&Needs {
            authority: "mesh".into(),
            intermediate_ttl: None,
            max_ttl: 30 * DAY,
        })
        .unwrap_err();
    assert!(e.contains("policy.max_ttl 30d exceeds the 7d"), "{e}");
    let e = layout
        .check(&Needs {
            authority: "mesh".into(),
            intermediate_ttl: Some(2 * DAY),
            max_ttl: DAY,
        })
        .unwrap_err();
    assert!(e.contains("mode: direct"), "{e}");
    // And its backend refuses an intermediate outright, without asking PCA.
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr =
        VerifiedCsr::from_der(&key.csr_der(Some("x"), &[San::Uri(td().id())]).unwrap()).unwrap();
    let decision = IssuanceDecision::intermediate(
        "x",
        &td(),
        0,
        SystemTime::now(),
        DAY,
        Duration::from_secs(60),
        "t",
    );
    let err = b.sign(&decision, &csr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected, "{err}");
    assert!(err.to_string().contains("SHORT_LIVED_CERTIFICATE"), "{err}");
    drop(sub_pca);
    drop(sub_ext);
    drop(root_rsa);
}
