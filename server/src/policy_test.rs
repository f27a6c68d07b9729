//! `signet policy test`: what a front-end of a configuration would decide
//! for a caller and a CSR, through the server's own decision code (the
//! REST front-end's grants, the Istio front-end's workload request, the
//! authority's policy), without contacting any backend.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use signet_core::caller::{AuthMethod, Caller, Principal};
use signet_core::clock::rfc3339;
use signet_core::duration::HumanDuration;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San};
use signet_core::policy::{AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest, Profile};
use signet_core::{Clock, SignError, VerifiedCsr};

use crate::config::Config;

/// Which front-end's rules to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Frontend {
    /// `frontends.rest`: the caller is a principal (`--principal`).
    Rest,
    /// `frontends.istio`: the caller is a workload (`--namespace`, `--service-account`).
    Istio,
}

/// `signet policy test` arguments.
#[derive(Debug, Args)]
pub struct PolicyTestArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum)]
    pub frontend: Frontend,
    /// REST: the caller (`token:<name>`, `uri:<SAN>`, `dns:<SAN>`, `anonymous`).
    #[arg(long)]
    pub principal: Option<String>,
    /// Istio: the workload's namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Istio: the workload's service account.
    #[arg(long)]
    pub service_account: Option<String>,
    /// A PEM CSR; without it one is made on a fresh key for `--san`.
    #[arg(long, conflicts_with_all = ["key", "san"])]
    pub csr: Option<PathBuf>,
    /// The key type of the CSR made for `--san`.
    #[arg(long, default_value = "ecdsa-p256")]
    pub key: KeyAlgorithm,
    /// A name for the CSR made here: `URI:spiffe://...`, `DNS:name`, `IP:addr`.
    #[arg(long)]
    pub san: Vec<String>,
    /// REST: the profile asked for (workload, server, client, mtls).
    #[arg(long)]
    pub profile: Option<String>,
    /// The lifetime asked for (REST `ttl`; Istio `validity_duration`).
    #[arg(long)]
    pub ttl: Option<HumanDuration>,
}

/// Prints the decision (exit 0) or the refusal with its code (an error).
pub fn run(args: PolicyTestArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let now = signet_core::SystemClock.now();
    let (authority, caller, grant, request) = inputs(&config, &args)?;
    let a = &config.authorities[&authority];
    println!(
        "front-end {}: authority {authority} (backend {}, not contacted)",
        match args.frontend {
            Frontend::Rest => "rest",
            Frontend::Istio => "istio",
        },
        a.backend
    );
    println!("caller: {}", caller.principal());
    let decided = (|| -> Result<IssuanceDecision, SignError> {
        let csr = csr(&args)?;
        let policy = AuthorityPolicy::new(config.trust_domain.clone(), a.policy.clone())
            .map_err(SignError::Internal)?;
        Ok(policy.decide(&caller, &grant?, &csr, &request?, now)?)
    })();
    match decided {
        Ok(d) => {
            print_decision(&d);
            Ok(())
        }
        Err(e) => {
            let wire = e.wire();
            println!(
                "refused: {}{} (HTTP {}, gRPC {:?}): {}",
                e.kind().code(),
                e.reason().map(|r| format!("/{r}")).unwrap_or_default(),
                wire.http_status,
                wire.grpc,
                e.public_message()
            );
            anyhow::bail!("refused: {}", e.kind().code())
        }
    }
}

type Inputs = (
    String,
    Caller,
    Result<Grant, SignError>,
    Result<IssuanceRequest, SignError>,
);

/// The authority, caller, grant and request the front-end would use.
fn inputs(config: &Config, args: &PolicyTestArgs) -> anyhow::Result<Inputs> {
    match args.frontend {
        Frontend::Rest => {
            let rc = config
                .frontends
                .rest
                .as_ref()
                .context("the configuration has no frontends.rest")?;
            let name = args
                .principal
                .as_deref()
                .context("--principal is required for --frontend rest")?;
            let selector: signet_core::caller::PrincipalSelector = name
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--principal: {e}"))?;
            let signet_core::caller::PrincipalSelector::Exact(principal) = selector else {
                anyhow::bail!("--principal names one principal, not a kind of them");
            };
            let method = match &principal {
                Principal::Token(_) => AuthMethod::BearerToken,
                Principal::Anonymous => AuthMethod::Loopback,
                _ => AuthMethod::ClientCertificate,
            };
            let grants = crate::rest::Grants::new(&rc.principals);
            let grant = grants.require(&principal).cloned();
            let request = rest_request(args);
            Ok((
                rc.authority.clone(),
                Caller::new(principal, method),
                grant,
                request,
            ))
        }
        Frontend::Istio => {
            let ic = config
                .frontends
                .istio
                .as_ref()
                .context("the configuration has no frontends.istio")?;
            let (Some(ns), Some(sa)) = (&args.namespace, &args.service_account) else {
                anyhow::bail!(
                    "--namespace and --service-account are required for --frontend istio"
                );
            };
            let own = config.trust_domain.service_account_id(ns, sa)?;
            let a = &config.authorities[&ic.authority];
            let ttl = args.ttl.map_or(0, |t| t.get().as_secs() as i64);
            let built = signet_istio::service::workload_request(
                &own,
                own.clone(),
                AuthMethod::KubernetesToken {
                    cluster: "policy test".into(),
                },
                None,
                a.policy.backdate.get(),
                ttl,
                false,
            );
            let (caller, grant, request) = match built {
                Ok((c, g, r)) => (c, Ok(g), Ok(r)),
                Err(e) => (
                    Caller::new(Principal::Workload(own.to_string()), AuthMethod::Internal),
                    Err(e),
                    // Never read: the grant's error comes first.
                    Err(SignError::Internal(String::new())),
                ),
            };
            Ok((ic.authority.clone(), caller, grant, request))
        }
    }
}

/// What a REST body with `profile` and `ttl` asks for (the server's own
/// decoder reads the same JSON).
fn rest_request(args: &PolicyTestArgs) -> Result<IssuanceRequest, SignError> {
    crate::rest::request_of(&crate::rest::SignRequest {
        csr: String::new(),
        ttl: args.ttl.map(|t| t.to_string()),
        profile: args.profile.clone(),
    })
}

/// The CSR from `--csr`, or one made here for `--san` on a fresh key.
fn csr(args: &PolicyTestArgs) -> Result<VerifiedCsr, SignError> {
    if let Some(path) = &args.csr {
        let pem = std::fs::read(path).map_err(|e| {
            SignError::invalid_request("unreadable_csr", format!("{}: {e}", path.display()))
        })?;
        return Ok(VerifiedCsr::from_pem(&pem)?);
    }
    let sans = args
        .san
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKey::generate(args.key).map_err(|e| SignError::Internal(e.to_string()))?;
    let der = key
        .csr_der(None, &sans)
        .map_err(|e| SignError::Internal(e.to_string()))?;
    Ok(VerifiedCsr::from_der(&der)?)
}

fn parse_san(s: &str) -> Result<San, SignError> {
    let bad = |why: String| SignError::invalid_request("invalid_san", why);
    if let Some(uri) = s.strip_prefix("URI:") {
        return uri
            .parse()
            .map(San::Uri)
            .map_err(|e| bad(format!("{s}: {e}")));
    }
    if let Some(dns) = s.strip_prefix("DNS:") {
        return DnsName::new(dns)
            .map(San::Dns)
            .map_err(|e| bad(format!("{s}: {e}")));
    }
    if let Some(ip) = s.strip_prefix("IP:") {
        return ip
            .parse()
            .map(San::Ip)
            .map_err(|e| bad(format!("{s}: {e}")));
    }
    Err(bad(format!("{s}: write URI:..., DNS:... or IP:...")))
}

fn print_decision(d: &IssuanceDecision) {
    let lifetime = d
        .not_after()
        .duration_since(d.not_before())
        .unwrap_or_default();
    println!("decision: issue");
    println!("  profile: {}", d.profile().map_or("ca", Profile::as_str));
    for san in d.sans() {
        println!("  name: {san}");
    }
    println!(
        "  valid: {} to {} ({})",
        rfc3339(d.not_before()),
        rfc3339(d.not_after()),
        HumanDuration(lifetime)
    );
    println!("  key usage: {:?}", d.key_usage());
    println!("  extended key usage: {:?}", d.extended_key_usage());
}
