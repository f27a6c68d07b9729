//! The crypto ceiling: what one core can do with ECDSA P-256 alone, with
//! signet's provider (aws-lc-rs) and with ring. A signing request costs at
//! least one verify (the CSR's signature) and one sign (the certificate), so
//! `1 / (t_sign + t_verify)` bounds requests per second per core.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Time per measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    duration: Duration,
    /// Also write the result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Figures {
    sign_per_s: f64,
    verify_per_s: f64,
    /// Sign + verify pairs per second (one request's minimum).
    sign_and_verify_per_s: f64,
}

impl Figures {
    fn new(sign_per_s: f64, verify_per_s: f64) -> Self {
        Self {
            sign_per_s,
            verify_per_s,
            sign_and_verify_per_s: 1.0 / (1.0 / sign_per_s + 1.0 / verify_per_s),
        }
    }
}

#[derive(Debug, Serialize)]
struct Ceiling {
    #[serde(rename = "aws-lc-rs")]
    aws_lc_rs: Figures,
    ring: Figures,
}

/// Calls `f` until `d` has passed; returns calls per second.
fn rate(d: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

macro_rules! measure {
    ($lib:ident, $d:expr, $from_pkcs8:expr) => {{
        use $lib::rand::SystemRandom;
        use $lib::signature::{self, EcdsaKeyPair, KeyPair as _};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let key =
            $from_pkcs8(pkcs8.as_ref(), &rng).map_err(|_| anyhow::anyhow!("key parsing failed"))?;
        // About the size of a to-be-signed certificate.
        let msg = [0x5a_u8; 600];
        let sig = key
            .sign(&rng, &msg)
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            key.public_key().as_ref().to_vec(),
        );
        public
            .verify(&msg, sig.as_ref())
            .map_err(|_| anyhow::anyhow!("verification failed"))?;
        let sign = rate($d, || {
            std::hint::black_box(key.sign(&rng, &msg).ok());
        });
        let verify = rate($d, || {
            std::hint::black_box(public.verify(&msg, sig.as_ref()).is_ok());
        });
        Figures::new(sign, verify)
    }};
}

// The closures name their crate in full: the macro body imports both crates' items.
#[allow(unused_qualifications)]
pub fn run(args: &Args) -> anyhow::Result<()> {
    let ceiling = Ceiling {
        // ring's from_pkcs8 also takes the RNG; aws-lc-rs's does not.
        aws_lc_rs: measure!(aws_lc_rs, args.duration, |p: &[u8], _: &_| {
            aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                p,
            )
        }),
        ring: measure!(ring, args.duration, |p: &[u8], rng: &_| {
            ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                p,
                rng,
            )
        }),
    };
    let text = serde_json::to_string_pretty(&ceiling)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    println!("{text}");
    Ok(())
}
