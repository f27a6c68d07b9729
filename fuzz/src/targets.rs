//! The bodies of signet's fuzz targets. The cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` call them, and the workspace test
//! `server/tests/e2e/fuzz_corpus.rs` includes this file to replay every
//! corpus entry and crash artifact in the normal suite.
//!
//! Each target checks invariants, not only the absence of panics: whatever
//! is accepted is signed exactly as decided and only for the names the grant
//! allows; whatever is refused is refused as the caller's fault.

use signet_core::testing::Ready as _;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use signet_core::Authority;
use signet_core::caller::{AuthMethod, Caller};
use signet_core::clock::{Clock, SystemClock};
use signet_core::csr::VerifiedCsr;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{San, SanPattern};
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
};
use signet_core::spiffe::TrustDomain;
use signet_istio::auth::Authenticators;
use signet_istio::auth::jwt::JwtAuthenticator;
use signet_istio::config::JwtIssuerConfig;
use signet_istio::pb::IstioCertificateRequest;
use signet_istio::pb::istio_certificate_service_server::IstioCertificateService as _;
use signet_istio::service::IstioCa;

/// The JWT issuer the fixtures' key (`fixtures/jwt-key.pem`, a test key that
/// signs nothing else) stands for.
pub const JWT_ISSUER: &str = "signet-dev";
const DAY: Duration = Duration::from_secs(86_400);

struct Fixture {
    ca: LocalCa,
    policy: AuthorityPolicy,
    grants: Vec<(Grant, Profile)>,
    runtime: tokio::runtime::Runtime,
    jwt: Arc<JwtAuthenticator>,
    istio: IstioCa,
    _dir: tempfile::TempDir,
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("trust domain")
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let now = SystemTime::now();
    let ca = LocalCa::self_signed_root(
        "fuzz root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        now,
        3650 * DAY,
    )
    .expect("root");
    let policy = AuthorityPolicy::new(td(), PolicyConfig::default()).expect("policy");
    let pattern = |p: &str| p.parse::<SanPattern>().expect("pattern");
    let grants = vec![
        (
            Grant {
                allowed_sans: vec![pattern("spiffe://cluster.local/ns/default/sa/*")],
                max_ttl: None,
                profiles: vec![Profile::Workload],
                allow_wildcards: false,
            },
            Profile::Workload,
        ),
        (
            Grant {
                allowed_sans: vec![
                    pattern("*.example.com"),
                    pattern("10.0.0.0/8"),
                    pattern("spiffe://cluster.local/ns/web/sa/front"),
                ],
                max_ttl: Some(3600 * Duration::from_secs(1)),
                profiles: vec![Profile::Server, Profile::Client],
                allow_wildcards: true,
            },
            Profile::Server,
        ),
        (
            // The whole trust domain: the identity shape must still hold.
            Grant {
                allowed_sans: vec![pattern("spiffe://cluster.local/**")],
                max_ttl: None,
                profiles: Profile::ALL.to_vec(),
                allow_wildcards: false,
            },
            Profile::Workload,
        ),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, include_str!("../fixtures/jwks.json")).expect("jwks");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config: JwtIssuerConfig = serde_json::from_value(serde_json::json!({
        "issuer": JWT_ISSUER,
        "cluster": "Kubernetes",
        "jwks_file": jwks,
    }))
    .expect("jwt config");
    let jwt = runtime
        .block_on(JwtAuthenticator::new(config, clock.clone()))
        .expect("jwt authenticator");
    let signer = Arc::new(signet_core::testing::CaSigner::new(
        LocalCa::self_signed_root(
            "fuzz istio root",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
            now,
            3650 * DAY,
        )
        .expect("root"),
    ));
    let authority = Arc::new(Authority::new(
        "fuzz",
        signer,
        AuthorityPolicy::new(td(), PolicyConfig::default()).expect("policy"),
        clock,
    ));
    let auth = Authenticators {
        jwt: vec![jwt.clone()],
        ..Authenticators::default()
    };
    let metrics = signet_core::metrics::Metrics::register(&mut Default::default());
    let istio = IstioCa::new(
        signet_core::routing::Routes::single(authority),
        auth,
        None,
        metrics,
        16,
        Duration::from_secs(5),
    );
    Fixture {
        ca,
        policy,
        grants,
        runtime,
        jwt,
        istio,
        _dir: dir,
    }
});

/// CSR bytes (PEM or DER) → verification → policy under two grants →
/// signing → the chain check. Anything decided must sign, and the
/// certificate must hold exactly the decided names, all within the grant.
pub fn csr_policy(data: &[u8]) {
    let Ok(csr) = VerifiedCsr::from_pem(data).or_else(|_| VerifiedCsr::from_der(data)) else {
        return;
    };
    let f = &*FIXTURE;
    let now = SystemTime::now();
    let caller = Caller::new(
        signet_core::Principal::Token("fuzz".into()),
        AuthMethod::BearerToken,
    );
    for (grant, profile) in &f.grants {
        for ttl in [None, Some(Duration::from_secs(600)), Some(400 * DAY)] {
            let request = IssuanceRequest {
                profile: *profile,
                ttl,
                ttl_overflow: TtlOverflow::Refuse,
                renewable: true,
                request_id: None,
            };
            let Ok(decision) = f.policy.decide(&caller, grant, &csr, &request, now) else {
                continue;
            };
            assert!(!decision.is_ca(), "a leaf profile decided a CA");
            assert!(!decision.sans().is_empty(), "a certificate without names");
            for san in decision.sans() {
                assert!(
                    grant.allowed_sans.iter().any(|p| p.matches(san)),
                    "{san:?} is outside the grant"
                );
                if let San::Uri(id) = san {
                    assert!(id.is_member_of(f.policy.trust_domain()));
                    assert!(id.mesh_identity().is_ok(), "{id} breaks the mesh shape");
                }
            }
            assert!(decision.not_after() <= now + PolicyConfig::default().max_ttl.get());
            let chain =
                f.ca.sign(&decision, csr.public_key())
                    .ready()
                    .expect("a decided certificate must sign");
            chain
                .check(&decision, &csr, now, Duration::ZERO)
                .expect("the certificate must be what was decided");
        }
    }
}

/// A `POST /v1/sign` body through the REST decoder; what it accepts goes
/// through the policy like [`csr_policy`]; what it refuses is a 4xx.
pub fn rest_request(data: &[u8]) {
    match signet::rest::decode_sign_request(data) {
        Ok((csr, request)) => {
            let f = &*FIXTURE;
            let caller = Caller::new(
                signet_core::Principal::Token("fuzz".into()),
                AuthMethod::BearerToken,
            );
            for (grant, _) in &f.grants {
                if let Ok(d) = f
                    .policy
                    .decide(&caller, grant, &csr, &request, SystemTime::now())
                {
                    for san in d.sans() {
                        assert!(grant.allowed_sans.iter().any(|p| p.matches(san)));
                    }
                }
            }
        }
        Err(e) => {
            let status = signet::rest::ApiError(e).status();
            assert!(status.is_client_error(), "bad input answered {status}");
        }
    }
}

/// Splits `data` at 0xFF bytes into: the `authorization` value, the
/// `clusterid` value, and the protobuf-encoded `IstioCertificateRequest`.
fn istio_parts(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let auth = parts.next().unwrap_or_default();
    let cluster = parts.next().unwrap_or_default();
    let message = parts.next().unwrap_or_default();
    (auth, cluster, message)
}

/// An Istio `CreateCertificate` call as tonic hands it to the service:
/// metadata (bearer token, cluster ID) and a decoded message. A certificate
/// comes back only for a token that verifies, and names exactly that
/// token's service account.
pub fn istio_request(data: &[u8]) {
    let (auth, cluster, message) = istio_parts(data);
    let Ok(msg) = IstioCertificateRequest::decode(message) else {
        return;
    };
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = tonic::metadata::AsciiMetadataValue::try_from(auth) {
        req.metadata_mut().insert("authorization", v);
    }
    if let Ok(v) = tonic::metadata::AsciiMetadataValue::try_from(cluster) {
        req.metadata_mut().insert("clusterid", v);
    }
    let token = std::str::from_utf8(auth)
        .ok()
        .and_then(|a| a.split_once(' '))
        .map(|(_, t)| t.trim().to_owned());
    let f = &*FIXTURE;
    let result = f.runtime.block_on(f.istio.create_certificate(req));
    match result {
        Ok(resp) => {
            let token = token.expect("a certificate without a token");
            let identity = f
                .runtime
                .block_on(f.jwt.verify(&token))
                .expect("a certificate for a token that does not verify");
            let want = identity.spiffe_id(&td()).expect("identity").to_string();
            let chain = &resp.get_ref().cert_chain;
            assert!(chain.len() >= 2, "short chain");
            let der = signet_core::pem::certificates(chain[0].as_bytes()).expect("leaf PEM");
            let (_, leaf) = x509_parser::parse_x509_certificate(&der[0]).expect("leaf");
            let sans = leaf
                .subject_alternative_name()
                .expect("SAN")
                .expect("SAN present");
            let names: Vec<String> = sans
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => (*u).to_owned(),
                    other => format!("not a URI: {other:?}"),
                })
                .collect();
            assert_eq!(names, vec![want], "issued for another identity");
        }
        Err(status) => assert!(
            !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
            "bad input answered {status:?}"
        ),
    }
}

/// A bearer token through offline JWT verification: accepted only when it
/// is an ES256 token of the fixture issuer for `istio-ca`.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let f = &*FIXTURE;
    if let Ok(identity) = f.runtime.block_on(f.jwt.verify(token)) {
        assert_eq!(
            JwtAuthenticator::unverified_issuer(token).as_deref(),
            Some(JWT_ISSUER)
        );
        let (ns, sa) = identity
            .namespace_and_account()
            .expect("a service account identity");
        assert!(
            signet_core::spiffe::check_service_account(&ns, &sa).is_ok(),
            "accepted invalid names {ns:?}/{sa:?}"
        );
        assert!(identity.spiffe_id(&td()).is_ok());
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(token).expect("claims");
        let aud_ok = match &claims["aud"] {
            serde_json::Value::String(a) => a == "istio-ca",
            serde_json::Value::Array(list) => list.iter().any(|a| a == "istio-ca"),
            _ => false,
        };
        assert!(aud_ok, "accepted a token without the istio-ca audience");
    }
}

/// A configuration file: parsed and validated, or refused with a message;
/// never a panic, never a hang.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = signet::config::Config::parse(text, "fuzz.yaml") {
        let _ = config.validate("fuzz.yaml");
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("csr_policy", csr_policy),
    ("rest_request", rest_request),
    ("istio_request", istio_request),
    ("jwt", jwt),
    ("config", config),
];
