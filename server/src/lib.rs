//! The `signet` binary's library: CLI, configuration, wiring, the REST
//! endpoint and the TLS listener. `main.rs` only calls [`cli::main`].

pub mod admin;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod doctor;
pub mod istio;
pub mod istio_client;
pub mod kubernetes;
pub mod listener;
pub mod policy_test;
pub mod rest;
pub mod tls;
pub mod trust;
