//! `signet-bench`: the load generator and crypto ceiling behind
//! `scripts/bench.sh`.
//!
//! - `load`: drives a signing endpoint — signet's REST API or Istio CA gRPC
//!   service, OpenBao's `pki/sign`, or `cfssl serve` — from a pool of
//!   pre-generated CSRs (distinct keys and identities) over N concurrent TLS
//!   connections, closed-loop or at a fixed rate, and reports throughput,
//!   latency percentiles and errors by code, as JSON.
//! - `ceiling`: ECDSA P-256 signs and verifies per second on one core, with
//!   aws-lc-rs (signet's provider) and ring.
//! - `startup`: time from spawning a command to its `/readyz` answering 200.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
mod ceiling;
mod client;
mod load;
mod peers;
mod pool;
mod report;
mod startup;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "signet-bench", version, about)]
enum Command {
    /// Drive a signing endpoint and report throughput, latency and errors.
    Load(Box<load::Args>),
    /// ECDSA P-256 sign and verify per second on one core.
    Ceiling(ceiling::Args),
    /// Milliseconds from spawning a command until its readiness URL answers 200.
    Startup(startup::Args),
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match Command::parse() {
        Command::Ceiling(args) => ceiling::run(&args),
        Command::Load(args) => runtime()?.block_on(load::run(*args)),
        Command::Startup(args) => runtime()?.block_on(startup::run(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
