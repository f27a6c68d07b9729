//! Policy decisions, local signing and chain checks, cross-checked by webpki.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use signet_core::testing::Ready as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_core::caller::{AuthMethod, Caller};
use signet_core::chain::ChainError;
use signet_core::clock::{Clock, ManualClock};
use signet_core::csr::VerifiedCsr;
use signet_core::error::SignError;
use signet_core::issuer::{CaError, LocalCa};
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San, SanPattern};
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest, PolicyConfig, PolicyError, Profile,
    TtlOverflow,
};
use signet_core::testing::grant;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry;
use x509_parser::prelude::*;

mod common;
use common::{td, webpki_verify};

const DEMO: &str = "spiffe://cluster.local/ns/default/sa/demo";
const DAY: Duration = Duration::from_secs(86_400);

/// root (10y) → intermediate (pathlen 0, 1y), both freshly generated.
fn hierarchy(now: SystemTime, alg: KeyAlgorithm) -> (LocalCa, LocalCa) {
    let root = LocalCa::self_signed_root(
        "test root",
        PrivateKey::generate(alg).unwrap(),
        now,
        3650 * DAY,
    )
    .unwrap();
    let key = PrivateKey::generate(alg).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(Some("test intermediate"), &[]).unwrap()).unwrap();
    let decision = IssuanceDecision::intermediate(
        "test intermediate",
        &td(),
        0,
        now,
        365 * DAY,
        Duration::from_secs(60),
        "test",
    );
    let chain = root.sign(&decision, csr.public_key()).ready().unwrap();
    chain.check(&decision, &csr, now, Duration::ZERO).unwrap();
    let inter = LocalCa::new(
        chain.leaf().clone(),
        key,
        vec![],
        Some(root.trust_bundle().roots().to_vec()),
        now,
    )
    .unwrap();
    (root, inter)
}

fn csr(alg: KeyAlgorithm, sans: &[&str]) -> VerifiedCsr {
    let key = PrivateKey::generate(alg).unwrap();
    let sans: Vec<San> = sans.iter().map(|s| san(s)).collect();
    VerifiedCsr::from_der(&key.csr_der(None, &sans).unwrap()).unwrap()
}

fn san(s: &str) -> San {
    if s.starts_with("spiffe://") {
        San::Uri(s.parse().unwrap())
    } else if let Ok(ip) = s.parse() {
        San::Ip(ip)
    } else {
        San::Dns(DnsName::new(s).unwrap())
    }
}

fn policy() -> AuthorityPolicy {
    AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap()
}

fn request(profile: Profile, ttl: Option<Duration>) -> IssuanceRequest {
    IssuanceRequest {
        ttl,
        ..signet_core::testing::request(profile)
    }
}

fn caller() -> Caller {
    Caller::new(
        signet_core::Principal::Token("tester".into()),
        AuthMethod::BearerToken,
    )
}

#[test]
fn workload_certificate_has_exactly_what_policy_chose() {
    let now = SystemTime::now();
    let (_root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let csr = csr(alg, &[DEMO]);
        let decision = policy()
            .decide(
                &caller(),
                &grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
                &csr,
                &request(Profile::Workload, None),
                now,
            )
            .unwrap();
        let chain = ca.sign(&decision, csr.public_key()).ready().unwrap();
        chain.check(&decision, &csr, now, Duration::ZERO).unwrap();
        webpki_verify(&chain, now, webpki::KeyUsage::server_auth()).unwrap();
        webpki_verify(&chain, now, webpki::KeyUsage::client_auth()).unwrap();

        let (_, cert) = X509Certificate::from_der(chain.leaf()).unwrap();
        assert!(cert.subject().as_raw().len() <= 2, "subject must be empty");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        assert_eq!(san.value.general_names, vec![GeneralName::URI(DEMO)]);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca && bc.critical);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert_eq!(
            ku.key_encipherment(),
            alg == KeyAlgorithm::Rsa2048,
            "{alg:?}"
        );
        assert!(!ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && eku.other.is_empty());
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        let t = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((t - 61..=t - 59).contains(&nb), "backdated one minute");
        assert_eq!(na - t, 86_400);
        let serial = cert.raw_serial();
        assert_eq!(serial.len(), 16);
        assert!(
            serial[0] & 0x80 == 0 && serial[0] & 0x40 != 0,
            "positive, fixed length"
        );
        assert!(
            cert.get_extension_unique(&oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
                .unwrap()
                .is_some()
        );
        assert_eq!(cert.public_key().raw, csr.spki_der());
    }
}

#[test]
fn serials_do_not_repeat() {
    let now = SystemTime::now();
    let (_root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let csr = csr(KeyAlgorithm::EcdsaP256, &[DEMO]);
    let decision = policy()
        .decide(
            &caller(),
            &grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
            &csr,
            &request(Profile::Workload, None),
            now,
        )
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        assert!(
            seen.insert(
                ca.sign(&decision, csr.public_key())
                    .ready()
                    .unwrap()
                    .serial_hex()
                    .to_owned()
            )
        );
    }
}

#[test]
fn server_and_client_profiles() {
    let now = SystemTime::now();
    let (_root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP384);
    let g = grant(
        &["**.example.com", "10.0.0.0/8"],
        &[Profile::Server, Profile::Client],
    );
    let server = csr(KeyAlgorithm::EcdsaP256, &["api.example.com", "10.1.2.3"]);
    let d = policy()
        .decide(
            &caller(),
            &g,
            &server,
            &request(Profile::Server, Some(3600 * Duration::from_secs(1))),
            now,
        )
        .unwrap();
    let chain = ca.sign(&d, server.public_key()).ready().unwrap();
    chain.check(&d, &server, now, Duration::ZERO).unwrap();
    webpki_verify(&chain, now, webpki::KeyUsage::server_auth()).unwrap();
    assert!(
        webpki_verify(&chain, now, webpki::KeyUsage::client_auth()).is_err(),
        "server cert must not be a client cert"
    );
    let ee = webpki::EndEntityCert::try_from(chain.leaf()).unwrap();
    ee.verify_is_valid_for_subject_name(
        &rustls_pki_types::ServerName::try_from("api.example.com").unwrap(),
    )
    .unwrap();

    let d = policy()
        .decide(&caller(), &g, &server, &request(Profile::Client, None), now)
        .unwrap();
    let chain = ca.sign(&d, server.public_key()).ready().unwrap();
    webpki_verify(&chain, now, webpki::KeyUsage::client_auth()).unwrap();
    assert!(webpki_verify(&chain, now, webpki::KeyUsage::server_auth()).is_err());
}

#[test]
fn policy_refusals_are_specific() {
    let now = SystemTime::now();
    let wide = grant(
        &["spiffe://cluster.local/**", "**.example.com"],
        &Profile::ALL,
    );
    let decide = |g: &Grant, c: &VerifiedCsr, r: &IssuanceRequest| {
        policy().decide(&caller(), g, c, r, now).unwrap_err()
    };
    let wl = request(Profile::Workload, None);

    let fixture = |n: &str| {
        VerifiedCsr::from_pem(
            &std::fs::read(format!(
                "{}/testdata/csr/{n}.pem",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        decide(&wide, &fixture("ca-request"), &wl),
        PolicyError::CaRequested
    );
    assert!(matches!(
        decide(&wide, &fixture("email-san"), &wl),
        PolicyError::UnsupportedName { kind: "email", .. }
    ));
    assert!(matches!(
        decide(&wide, &fixture("wrong-td"), &wl),
        PolicyError::WrongTrustDomain { .. }
    ));
    assert!(matches!(
        decide(&wide, &fixture("two-ids"), &wl),
        PolicyError::ProfileMismatch { .. }
    ));
    assert!(matches!(
        decide(&wide, &fixture("no-sans"), &wl),
        PolicyError::ProfileMismatch { .. }
    ));
    let server = request(Profile::Server, None);
    assert_eq!(
        decide(&wide, &fixture("server-names"), &server),
        PolicyError::WildcardNotAllowed("*.example.com".into())
    );
    let mut wild = wide.clone();
    wild.allow_wildcards = true;
    wild.allowed_sans
        .push(SanPattern::parse("10.1.2.3").unwrap());
    assert!(
        policy()
            .decide(&caller(), &wild, &fixture("server-names"), &server, now)
            .is_ok()
    );

    let narrow = grant(
        &["spiffe://cluster.local/ns/prod/sa/*"],
        &[Profile::Workload],
    );
    assert!(matches!(
        decide(&narrow, &fixture("ec-p256"), &wl),
        PolicyError::SanNotAllowed { .. }
    ));
    assert!(matches!(
        decide(&narrow, &fixture("ec-p256"), &server),
        PolicyError::ProfileNotAllowed { .. }
    ));
    assert!(matches!(
        decide(&wide, &fixture("ec-p256"), &server),
        PolicyError::ProfileMismatch { .. }
    ));

    let demo = fixture("ec-p256");
    let long = request(Profile::Workload, Some(400 * DAY));
    assert!(matches!(
        decide(&wide, &demo, &long),
        PolicyError::TtlTooLong { .. }
    ));
    let short = request(Profile::Workload, Some(Duration::from_secs(5)));
    assert!(matches!(
        decide(&wide, &demo, &short),
        PolicyError::TtlTooShort { .. }
    ));
    let clamped = IssuanceRequest {
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        ..long
    };
    let d = policy()
        .decide(&caller(), &wide, &demo, &clamped, now)
        .unwrap();
    assert_eq!(d.not_after(), now + DAY);
    let mut capped = wide.clone();
    capped.max_ttl = Some(Duration::from_secs(3600));
    assert!(matches!(
        decide(
            &capped,
            &demo,
            &request(Profile::Workload, Some(7200 * Duration::from_secs(1)))
        ),
        PolicyError::TtlTooLong { .. }
    ));
    let d = policy()
        .decide(&caller(), &capped, &demo, &wl, now)
        .unwrap();
    assert_eq!(
        d.ttl(),
        Duration::from_secs(3600 + 60),
        "default is capped by the grant (plus backdate)"
    );
}

#[test]
fn leaves_never_outlive_their_issuer() {
    let now = SystemTime::now();
    let root = LocalCa::self_signed_root(
        "short root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let csr = csr(KeyAlgorithm::EcdsaP256, &[DEMO]);
    let d = policy()
        .decide(
            &caller(),
            &grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
            &csr,
            &request(Profile::Workload, None),
            now,
        )
        .unwrap();
    let chain = root.sign(&d, csr.public_key()).ready().unwrap();
    assert_eq!(chain.not_after(), root.not_after());
    chain.check(&d, &csr, now, Duration::ZERO).unwrap();
    webpki_verify(&chain, now, webpki::KeyUsage::server_auth()).unwrap();
}

#[test]
fn chain_checks_catch_what_a_backend_might_get_wrong() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let now = clock.now();
    let (root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let (other_root, _) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let g = grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
    let demo = csr(KeyAlgorithm::EcdsaP256, &[DEMO]);
    let d = policy()
        .decide(&caller(), &g, &demo, &request(Profile::Workload, None), now)
        .unwrap();
    let chain = ca.sign(&d, demo.public_key()).ready().unwrap();

    // Wrong trust bundle.
    let foreign = signet_core::IssuedChain::new(
        chain.leaf().clone(),
        chain.intermediates().to_vec(),
        other_root.trust_bundle().clone(),
    )
    .unwrap();
    assert!(matches!(
        foreign.verify(now),
        Err(ChainError::IssuerMismatch { .. }
            | ChainError::UntrustedRoot
            | ChainError::Signature { .. })
    ));
    // Missing intermediate.
    let gap =
        signet_core::IssuedChain::new(chain.leaf().clone(), vec![], root.trust_bundle().clone())
            .unwrap();
    assert!(gap.verify(now).is_err());
    // Root included among the intermediates (a Vault quirk) is tolerated.
    let with_root = signet_core::IssuedChain::new(
        chain.leaf().clone(),
        [chain.intermediates(), root.trust_bundle().roots()].concat(),
        root.trust_bundle().clone(),
    )
    .unwrap();
    assert_eq!(with_root.intermediates().len(), 1);
    with_root.verify(now).unwrap();
    // Expired later.
    clock.advance(2 * DAY);
    assert!(matches!(
        chain.verify(clock.now()),
        Err(ChainError::Expired { .. })
    ));
    // A certificate for another key or other names does not match the decision.
    let other = csr(
        KeyAlgorithm::EcdsaP256,
        &["spiffe://cluster.local/ns/default/sa/other"],
    );
    let d2 = policy()
        .decide(
            &caller(),
            &g,
            &other,
            &request(Profile::Workload, None),
            now,
        )
        .unwrap();
    assert_eq!(
        chain.check_matches(&d, other.spki_der(), Duration::ZERO),
        Err(ChainError::KeyMismatch)
    );
    assert!(matches!(
        chain.check_matches(&d2, demo.spki_der(), Duration::ZERO),
        Err(ChainError::NamesDiffer { .. })
    ));
    // An intermediate where a leaf was decided is refused.
    let inter_d = IssuanceDecision::intermediate("x", &td(), 0, now, DAY, Duration::ZERO, "t");
    let ca_chain = root.sign(&inter_d, demo.public_key()).ready().unwrap();
    assert_eq!(
        ca_chain.check_matches(&d, demo.spki_der(), Duration::ZERO),
        Err(ChainError::CaMismatch)
    );
}

/// Verification results are remembered (CA links per process, the leaf per
/// chain, see `chain.rs`): a remembered success must never vouch for other
/// bytes or another issuer key.
#[test]
fn remembered_signatures_never_vouch_for_other_bytes() {
    let now = SystemTime::now();
    let (root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let g = grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
    let demo = csr(KeyAlgorithm::EcdsaP256, &[DEMO]);
    let d = policy()
        .decide(&caller(), &g, &demo, &request(Profile::Workload, None), now)
        .unwrap();
    let chain = ca.sign(&d, demo.public_key()).ready().unwrap();
    let bundle = root.trust_bundle().clone();
    let rebuilt = |leaf: Vec<u8>, inter: Vec<u8>| {
        signet_core::IssuedChain::new(leaf.into(), vec![inter.into()], bundle.clone()).unwrap()
    };
    let flip_last = |der: &[u8]| {
        let mut v = der.to_vec();
        *v.last_mut().unwrap() ^= 0x01;
        v
    };
    let leaf = chain.leaf().to_vec();
    let inter = chain.intermediates()[0].to_vec();
    // The genuine chain verifies, twice (the second time from memory).
    let genuine = rebuilt(leaf.clone(), inter.clone());
    genuine.verify(now).unwrap();
    genuine.verify(now).unwrap();
    chain.verify(now).unwrap();
    // Once the intermediate link is remembered, a forged intermediate
    // signature and a forged leaf signature are still caught.
    for forged in [
        rebuilt(leaf.clone(), flip_last(&inter)),
        rebuilt(flip_last(&leaf), inter.clone()),
    ] {
        assert!(
            matches!(forged.verify(now), Err(ChainError::Signature { .. })),
            "{:?}",
            forged.verify(now)
        );
    }

    // Two roots with the same name (a rotation): the leaf's remembered
    // issuer is the one that verified it, and the other is still tried first
    // and refused.
    let (root2, _) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let direct = root.sign(&d, demo.public_key()).ready().unwrap();
    let both = signet_core::TrustBundle::new(
        [root2.trust_bundle().roots(), root.trust_bundle().roots()].concat(),
    )
    .unwrap();
    let rotated =
        signet_core::IssuedChain::new(direct.leaf().clone(), vec![], both.clone()).unwrap();
    rotated.verify(now).unwrap();
    rotated.verify(now).unwrap();
    let wrong_root_only =
        signet_core::IssuedChain::new(direct.leaf().clone(), vec![], root2.trust_bundle().clone())
            .unwrap();
    assert!(matches!(
        wrong_root_only.verify(now),
        Err(ChainError::Signature { .. })
    ));
}

#[test]
fn a_pathlen_zero_ca_cannot_issue_cas() {
    let now = SystemTime::now();
    let (_root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let d = IssuanceDecision::intermediate("sub", &td(), 0, now, DAY, Duration::ZERO, "t");
    assert!(matches!(
        ca.sign(&d, &key).ready(),
        Err(SignError::BackendRejected(_))
    ));
}

#[test]
fn loading_refuses_non_cas_and_mismatched_keys() {
    let now = SystemTime::now();
    let (root, ca) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let roots = Some(root.trust_bundle().roots().to_vec());
    let wrong_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(
        LocalCa::new(
            ca.certificate().clone(),
            wrong_key,
            vec![],
            roots.clone(),
            now
        )
        .unwrap_err(),
        CaError::KeyMismatch
    );
    let leaf_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&leaf_key.csr_der(None, &[san(DEMO)]).unwrap()).unwrap();
    let d = policy()
        .decide(
            &caller(),
            &grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
            &csr,
            &request(Profile::Workload, None),
            now,
        )
        .unwrap();
    let leaf = ca.sign(&d, csr.public_key()).ready().unwrap();
    let leaf_cert: CertificateDer<'static> = leaf.leaf().clone();
    assert_eq!(
        LocalCa::new(leaf_cert, leaf_key, vec![], roots, now).unwrap_err(),
        CaError::NotACa
    );
}

#[test]
fn a_ca_prints_without_its_key() {
    let now = SystemTime::now();
    let (root, inter) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    for ca in [&root, &inter] {
        let pem = ca.private_key().unwrap().to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let shown = format!("{ca:?} {:?}", ca.key());
        assert!(shown.contains("redacted"), "{shown}");
        for window in body.as_bytes().chunks(16) {
            assert!(
                !shown.contains(std::str::from_utf8(window).unwrap()),
                "{shown}"
            );
        }
    }
}

#[test]
fn every_issued_spiffe_id_has_the_mesh_shape() {
    let now = SystemTime::now();
    let p = policy();
    // A grant of the whole trust domain: the shape rule still holds.
    let g = grant(
        &["spiffe://cluster.local/**", "**.example.com"],
        &Profile::ALL,
    );
    for id in [
        "spiffe://cluster.local/ns/ci/sa/x/ns/kube-system/sa/admin",
        "spiffe://cluster.local/x/ns/kube-system/sa/admin",
        "spiffe://cluster.local/ns/kube-system",
        "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe://cluster.local/NS/a/sa/b",
        "spiffe://cluster.local/ns/A/sa/b",
        "spiffe://cluster.local/ns/a_b/sa/b",
        "spiffe://cluster.local/ns/a/sa/B",
    ] {
        for profile in Profile::ALL {
            let sans: &[&str] = if profile == Profile::Server {
                &[id, "a.example.com"]
            } else {
                &[id]
            };
            let r = p.decide(
                &caller(),
                &g,
                &csr(KeyAlgorithm::EcdsaP256, sans),
                &request(profile, None),
                now,
            );
            assert!(
                matches!(r, Err(PolicyError::IdentityShape { .. })),
                "{id} {profile}: {r:?}"
            );
        }
        // CA decisions obey the same rule.
        let r = p.decide_ca(
            &caller(),
            &g,
            &csr(KeyAlgorithm::EcdsaP256, &[id]),
            &signet_core::policy::CaRequest::default(),
            now,
        );
        assert!(
            matches!(r, Err(PolicyError::IdentityShape { .. })),
            "{id} CA: {r:?}"
        );
    }
    // Paths without an `ns` segment are not the mesh's business.
    p.decide(
        &caller(),
        &g,
        &csr(
            KeyAlgorithm::EcdsaP256,
            &["spiffe://cluster.local/batch/job/7"],
        ),
        &request(Profile::Workload, None),
        now,
    )
    .unwrap();
    // `*` covers one segment: a grant for ns/ci/sa/* never reaches deeper.
    let ci = grant(&["spiffe://cluster.local/ns/ci/sa/*"], &[Profile::Workload]);
    let deep = csr(
        KeyAlgorithm::EcdsaP256,
        &["spiffe://cluster.local/ns/ci/sa/x/y"],
    );
    assert!(
        p.decide(
            &caller(),
            &ci,
            &deep,
            &request(Profile::Workload, None),
            now
        )
        .is_err()
    );
}

#[test]
fn only_policy_marks_a_certificate_renewable() {
    let now = SystemTime::now();
    let (_root, inter) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let p = policy();
    let g = grant(
        &["spiffe://cluster.local/**", "**.example.com"],
        &Profile::ALL,
    );
    let c = csr(KeyAlgorithm::EcdsaP256, &[DEMO]);
    let renewable = IssuanceRequest {
        renewable: true,
        ..request(Profile::Workload, None)
    };
    let d = p.decide(&caller(), &g, &c, &renewable, now).unwrap();
    assert!(d.renewable());
    let chain = inter.sign(&d, c.public_key()).ready().unwrap();
    chain.check(&d, &c, now, Duration::ZERO).unwrap();
    let r = signet_core::renewal::renewal_certificate(chain.leaf()).unwrap();
    assert_eq!(r.id.as_str(), DEMO);
    // Asked for another profile, renewability is not granted.
    let server = csr(KeyAlgorithm::EcdsaP256, &["a.example.com"]);
    let d2 = p
        .decide(
            &caller(),
            &g,
            &server,
            &IssuanceRequest {
                renewable: true,
                ..request(Profile::Server, None)
            },
            now,
        )
        .unwrap();
    assert!(!d2.renewable());
    // A certificate not marked cannot renew, and a chain whose marker
    // disagrees with the decision is refused (a backend copying CSR extensions).
    let plain = p
        .decide(&caller(), &g, &c, &request(Profile::Workload, None), now)
        .unwrap();
    let unmarked = inter.sign(&plain, c.public_key()).ready().unwrap();
    assert_eq!(
        signet_core::renewal::renewal_certificate(unmarked.leaf()),
        Err(signet_core::renewal::RenewalRefused::NotRenewable)
    );
    assert!(matches!(
        chain.check(&plain, &c, now, Duration::ZERO),
        Err(ChainError::RenewalMarker(_))
    ));
}

#[test]
fn the_root_a_chain_leads_to_goes_last_for_consumers_that_take_the_last_as_the_root() {
    let now = SystemTime::now();
    let root = |name: &str| {
        LocalCa::self_signed_root(
            name,
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            365 * DAY,
        )
        .unwrap()
    };
    let (current, next) = (root("current root"), root("next root"));
    let inter = signet_core::testing::intermediate_under(
        &current,
        "issuing",
        &td(),
        0,
        now,
        30 * DAY,
        Duration::ZERO,
    );
    let leaf = inter
        .sign(
            &policy()
                .decide(
                    &caller(),
                    &grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
                    &csr(
                        KeyAlgorithm::EcdsaP256,
                        &["spiffe://cluster.local/ns/a/sa/b"],
                    ),
                    &request(Profile::Workload, None),
                    now,
                )
                .unwrap(),
            &PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        )
        .ready()
        .unwrap();
    let current_der = current.trust_bundle().roots()[0].clone();
    let next_der = next.trust_bundle().roots()[0].clone();
    for order in [
        vec![current_der.clone(), next_der.clone()],
        vec![next_der.clone(), current_der.clone()],
    ] {
        let chain = signet_core::chain::IssuedChain::new(
            leaf.leaf().clone(),
            vec![inter.certificate().clone()],
            signet_core::chain::TrustBundle::new(order).unwrap(),
        )
        .unwrap();
        let pems = signet_core::pem::certificates(chain.trust_bundle_pem_anchor_last().as_bytes())
            .unwrap();
        assert_eq!(pems.len(), 2, "every root is still there");
        assert_eq!(pems[1], current_der.as_ref(), "the anchor is last");
    }
}

/// With `crl_distribution_points` every leaf names where its CRL is, and
/// the chain still verifies; without it no such extension is added.
#[test]
fn leaves_carry_the_configured_crl_distribution_point() {
    let now = SystemTime::now();
    let (_, inter) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let url = "https://signet.example/v1/crl/mesh";
    for with in [true, false] {
        let config = PolicyConfig {
            crl_distribution_points: if with { vec![url.to_owned()] } else { vec![] },
            ..PolicyConfig::default()
        };
        let policy = AuthorityPolicy::new(td(), config).unwrap();
        let csr = signet_core::testing::spiffe_csr(DEMO);
        let decision = policy
            .decide(
                &Caller::internal("t"),
                &grant(&["spiffe://cluster.local/**"], &[Profile::Workload]),
                &csr,
                &signet_core::testing::request(Profile::Workload),
                now,
            )
            .unwrap();
        let chain = inter.sign(&decision, csr.public_key()).ready().unwrap();
        chain.check(&decision, &csr, now, Duration::ZERO).unwrap();
        let (_, cert) = X509Certificate::from_der(chain.leaf()).unwrap();
        let points: Vec<String> = cert
            .extensions()
            .iter()
            .filter_map(|e| match e.parsed_extension() {
                ParsedExtension::CRLDistributionPoints(p) => Some(p),
                _ => None,
            })
            .flat_map(|p| p.points.iter())
            .filter_map(|p| match &p.distribution_point {
                Some(DistributionPointName::FullName(names)) => Some(names.clone()),
                _ => None,
            })
            .flatten()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(points, if with { vec![url.to_owned()] } else { vec![] });
    }
    // Anything but an http(s) URL is refused when the configuration loads.
    for bad in [
        "ldap://x/crl",
        "https://",
        "https://a b/crl",
        "/v1/crl/mesh",
    ] {
        let config = PolicyConfig {
            crl_distribution_points: vec![bad.to_owned()],
            ..PolicyConfig::default()
        };
        assert!(config.validate().is_err(), "{bad}");
    }
}

/// A presented client chain verifies only under the roots asked for: a leaf
/// from one hierarchy does not pass under another's root, not even with
/// that root appended to what the client sends, nor with the issuer's name
/// copied by a self-made CA.
#[test]
fn client_chains_verify_only_under_the_roots_given() {
    use signet_core::chain::verify_client_chain;
    let now = SystemTime::now();
    let (root_a, inter_a) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let (root_b, _) = hierarchy(now, KeyAlgorithm::EcdsaP256);
    let c = csr(KeyAlgorithm::EcdsaP256, &[DEMO]);
    let d = policy()
        .decide(
            &Caller::internal("t"),
            &grant(&[DEMO], &[Profile::Workload]),
            &c,
            &request(Profile::Workload, None),
            now,
        )
        .unwrap();
    let chain = inter_a.sign(&d, c.public_key()).ready().unwrap();
    let leaf = chain.leaf().to_vec();
    let inter = inter_a.certificate().to_vec();
    let roots_a = root_a.trust_bundle().roots().to_vec();
    let roots_b = root_b.trust_bundle().roots().to_vec();
    verify_client_chain(&[leaf.clone(), inter.clone()], &roots_a, now).expect("under A");
    assert!(verify_client_chain(&[leaf.clone(), inter.clone()], &roots_b, now).is_err());
    let b_root = roots_b[0].to_vec();
    assert!(
        verify_client_chain(&[leaf.clone(), inter.clone(), b_root], &roots_b, now).is_err(),
        "appending B's root does not help"
    );
    assert!(
        verify_client_chain(&[leaf], &roots_a, now).is_err(),
        "the intermediate is needed"
    );
    // Both test hierarchies share names ("test root", "test intermediate"):
    // B's root has A's root's name, and still does not verify A's chain.
    assert_eq!(
        signet_core::chain::subject_name(&roots_a[0]),
        signet_core::chain::subject_name(&roots_b[0])
    );
}
