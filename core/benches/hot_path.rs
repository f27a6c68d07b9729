//! The signing hot path, stage by stage, and the crypto ceiling beneath it.
//!
//! `cargo bench -p signet-core --bench hot_path`
//!
//! - `csr/*`: PEM → `VerifiedCsr` (parse, key checks, signature verify) per key type;
//! - `policy/decide`: a workload decision for an exact SPIFFE identity;
//! - `sign/*`: a leaf signed by a local intermediate, per CA key type;
//! - `check/chain`: `IssuedChain::check` (path verification + leaf-matches-decision);
//! - `ceiling/*`: bare aws-lc-rs ECDSA P-256 sign and verify, the floor under all of it.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
use signet_core::testing::Ready as _;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use criterion::{Criterion, criterion_group, criterion_main};
use signet_core::caller::{AuthMethod, Caller};
use signet_core::csr::VerifiedCsr;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
};
use signet_core::spiffe::{SpiffeId, TrustDomain};

const ID: &str = "spiffe://cluster.local/ns/bench/sa/w1";
const DAY: Duration = Duration::from_secs(86_400);

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("trust domain")
}

/// root → intermediate (pathlen 0), both of `alg`.
fn intermediate(alg: KeyAlgorithm, now: SystemTime) -> LocalCa {
    let root = LocalCa::self_signed_root(
        "bench root",
        PrivateKey::generate(alg).expect("key"),
        now,
        3650 * DAY,
    )
    .expect("root");
    let signet_core::mint::IntermediateRequest { key, csr, decision } =
        signet_core::mint::IntermediateRequest::new(
            &signet_core::mint::IntermediateSpec {
                common_name: "bench intermediate",
                trust_domain: &td(),
                key: alg,
                ttl: 365 * DAY,
                requested_by: "bench",
            },
            now,
            true,
        )
        .expect("intermediate request");
    let chain = root
        .sign(&decision, csr.public_key())
        .ready()
        .expect("sign");
    LocalCa::new(
        chain.leaf().clone(),
        key,
        vec![],
        Some(root.trust_bundle().roots().to_vec()),
        now,
    )
    .expect("intermediate")
}

fn csr_pem(alg: KeyAlgorithm) -> String {
    let key = PrivateKey::generate(alg).expect("key");
    let der = key
        .csr_der(None, &[San::Uri(ID.parse().expect("id"))])
        .expect("csr");
    signet_core::pem::encode("CERTIFICATE REQUEST", &der)
}

const ALGS: [(&str, KeyAlgorithm); 4] = [
    ("ecdsa-p256", KeyAlgorithm::EcdsaP256),
    ("ecdsa-p384", KeyAlgorithm::EcdsaP384),
    ("rsa-2048", KeyAlgorithm::Rsa2048),
    ("ed25519", KeyAlgorithm::Ed25519),
];

fn pipeline(c: &mut Criterion) {
    let now = SystemTime::now();
    for (name, alg) in ALGS {
        let pem = csr_pem(alg);
        c.bench_function(&format!("csr/{name}"), |b| {
            b.iter(|| VerifiedCsr::from_pem(black_box(pem.as_bytes())).expect("csr"))
        });
    }

    let policy = AuthorityPolicy::new(td(), PolicyConfig::default()).expect("policy");
    let caller = Caller::new(
        signet_core::Principal::CertificateUri(ID.into()),
        AuthMethod::ClientCertificate,
    );
    let grant = Grant::exact_identity(SpiffeId::new(ID).expect("id"));
    let request = IssuanceRequest {
        profile: Profile::Workload,
        ttl: None,
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        request_id: None,
    };
    let csr = VerifiedCsr::from_pem(csr_pem(KeyAlgorithm::EcdsaP256).as_bytes()).expect("csr");
    c.bench_function("policy/decide", |b| {
        b.iter(|| {
            policy
                .decide(&caller, &grant, black_box(&csr), &request, now)
                .expect("decision")
        })
    });
    let decision = policy
        .decide(&caller, &grant, &csr, &request, now)
        .expect("decision");

    for (name, alg) in ALGS {
        let ca = intermediate(alg, now);
        c.bench_function(&format!("sign/{name}-ca"), |b| {
            b.iter(|| {
                ca.sign(black_box(&decision), csr.public_key())
                    .ready()
                    .expect("sign")
            })
        });
    }

    let ca = intermediate(KeyAlgorithm::EcdsaP256, now);
    let chain = ca.sign(&decision, csr.public_key()).ready().expect("sign");
    c.bench_function("check/chain", |b| {
        b.iter(|| {
            chain
                .check(black_box(&decision), &csr, now, Duration::ZERO)
                .expect("check")
        })
    });
}

fn ceiling(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .expect("key");
    let msg = [0x5a_u8; 600];
    let sig = key.sign(&rng, &msg).expect("sign");
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    c.bench_function("ceiling/p256-sign", |b| {
        b.iter(|| key.sign(&rng, black_box(&msg)).expect("sign"))
    });
    c.bench_function("ceiling/p256-verify", |b| {
        b.iter(|| {
            public
                .verify(black_box(&msg), sig.as_ref())
                .expect("verify")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = pipeline, ceiling
}
criterion_main!(benches);
