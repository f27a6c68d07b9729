//! The crypto ceiling: what one core can do with ECDSA P-256 alone, with
//! signet's provider (aws-lc-rs) and with ring. A signing request costs at
//! least one verify (the CSR's signature) and one sign (the certificate), so
//! `1 / (t_sign + t_verify)` bounds requests per second per core.
//!
//! The two libraries are measured in alternating rounds and each figure is
//! the median of its rounds, so a shared host's slow moment does not decide
//! which library looks faster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Time per measurement (one operation, one library, one round).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    duration: Duration,
    /// Rounds; each figure is the median of its rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
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
    rounds: usize,
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

/// A library's sign and verify operations, ready to be timed.
struct Ops {
    sign: Box<dyn FnMut()>,
    verify: Box<dyn FnMut()>,
}

macro_rules! ops {
    ($lib:ident, $from_pkcs8:expr) => {{
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
        Ops {
            sign: Box::new(move || {
                std::hint::black_box(key.sign(&rng, &msg).ok());
            }),
            verify: Box::new(move || {
                std::hint::black_box(public.verify(&msg, sig.as_ref()).is_ok());
            }),
        }
    }};
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

// The closures name their crate in full: the macro body imports both crates' items.
#[allow(unused_qualifications)]
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    // ring's from_pkcs8 also takes the RNG; aws-lc-rs's does not.
    let mut aws = ops!(aws_lc_rs, |p: &[u8], _: &_| {
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            p,
        )
    });
    let mut ring = ops!(ring, |p: &[u8], rng: &_| {
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            p,
            rng,
        )
    });
    let d = args.duration;
    let (mut aws_rounds, mut ring_rounds) = ((vec![], vec![]), (vec![], vec![]));
    for _ in 0..args.rounds {
        aws_rounds.0.push(rate(d, &mut aws.sign));
        ring_rounds.0.push(rate(d, &mut ring.sign));
        aws_rounds.1.push(rate(d, &mut aws.verify));
        ring_rounds.1.push(rate(d, &mut ring.verify));
    }
    let ceiling = Ceiling {
        rounds: args.rounds,
        aws_lc_rs: Figures::new(median(aws_rounds.0), median(aws_rounds.1)),
        ring: Figures::new(median(ring_rounds.0), median(ring_rounds.1)),
    };
    let text = serde_json::to_string_pretty(&ceiling)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    println!("{text}");
    Ok(())
}
