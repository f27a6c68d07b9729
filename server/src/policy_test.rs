//! `signet policy test`: what a front-end of a configuration would decide
//! for a caller and a CSR, through the server's own decision code (the
//! REST front-end's grants, the Istio front-end's workload request, the
//! authority's policy), without contacting any backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use signet_core::caller::{AuthMethod, Caller, Principal};
use signet_core::clock::rfc3339;
use signet_core::duration::HumanDuration;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San};
use signet_core::policy::{AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest, Profile};
use signet_core::routing::{DEFAULT_ROUTE, FixedLabels, RouteConfig, RouteSubject, Routes};
use signet_core::{Clock, SignError, VerifiedCsr};

use crate::config::Config;

/// Which front-end's rules to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Frontend {
    /// `frontends.rest`: the caller is a principal (`--principal`).
    Rest,
    /// `frontends.istio`: the caller is a workload (`--namespace`, `--service-account`).
    Istio,
    /// `frontends.pod_certificates`: a pod (`--namespace`,
    /// `--service-account`, `--pod`) asking through `--signer-name`; the
    /// key is `--key` (the kubelet's stub CSR names nothing).
    PodCertificates,
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
    /// The lifetime asked for (REST `ttl`; Istio `validity_duration`;
    /// a PodCertificateRequest's `maxExpirationSeconds`).
    #[arg(long)]
    pub ttl: Option<HumanDuration>,
    /// Istio: the `CertSigner` metadata sent (for routes by `cert_signers`).
    #[arg(long)]
    pub cert_signer: Option<String>,
    /// A label of `--namespace`, `key=value` (for routes by
    /// `namespace_labels`; repeat for several).
    #[arg(long)]
    pub namespace_label: Vec<String>,
    /// Pod certificates: the signer name the pod asks.
    #[arg(long)]
    pub signer_name: Option<String>,
    /// Pod certificates: the pod's name.
    #[arg(long, default_value = "pod")]
    pub pod: String,
}

/// Prints the decision (exit 0) or the refusal with its code (an error).
pub fn run(args: PolicyTestArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let now = signet_core::SystemClock.now();
    let Inputs {
        route,
        authority,
        caller,
        grant,
        request,
        sans,
    } = inputs(&config, &args)?;
    let route = match route {
        Ok(r) => r,
        Err(e) => return refused(&args, &e),
    };
    let a = &config.authorities[&authority];
    println!(
        "front-end {}: route {route}, authority {authority} (backend {}, not contacted)",
        match args.frontend {
            Frontend::Rest => "rest",
            Frontend::Istio => "istio",
            Frontend::PodCertificates => "pod_certificates",
        },
        a.backend
    );
    println!("caller: {}", caller.principal());
    let decided = (|| -> Result<IssuanceDecision, SignError> {
        let mut csr = csr(&args)?;
        if let Some(sans) = sans {
            csr = csr.naming(sans);
        }
        let policy = AuthorityPolicy::new(config.trust_domain.clone(), a.policy.clone())
            .map_err(SignError::Internal)?;
        Ok(policy.decide(&caller, &grant?, &csr, &request?, now)?)
    })();
    match decided {
        Ok(d) => {
            print_decision(&d);
            Ok(())
        }
        Err(e) => refused(&args, &e),
    }
}

/// Prints a refusal the way the front-end's wire says it; an error.
fn refused(args: &PolicyTestArgs, e: &SignError) -> anyhow::Result<()> {
    let wire = e.wire();
    let on_wire = match args.frontend {
        // The signer writes nothing for these and tries again later.
        Frontend::PodCertificates if e.kind().may_succeed_later() => {
            "PodCertificateRequest: no condition, retried".to_owned()
        }
        Frontend::PodCertificates => format!(
            "PodCertificateRequest {} {}",
            wire.pod_certificate.0, wire.pod_certificate.1
        ),
        _ => format!("HTTP {}, gRPC {:?}", wire.http_status, wire.grpc),
    };
    println!(
        "refused: {}{} ({on_wire}): {}",
        e.kind().code(),
        e.reason().map(|r| format!("/{r}")).unwrap_or_default(),
        e.public_message()
    );
    anyhow::bail!("refused: {}", e.kind().code())
}

/// What the front-end would use: the route (or why none can be chosen),
/// its authority, the caller, grant and request, and the names it chooses
/// itself (pod certificates) instead of the CSR's.
struct Inputs {
    route: Result<String, SignError>,
    authority: String,
    caller: Caller,
    grant: Result<Grant, SignError>,
    request: Result<IssuanceRequest, SignError>,
    sans: Option<Vec<San>>,
}

/// `routes` over authority names, with `--namespace-label` as the labels.
fn routes_of(
    default: &str,
    routes: &[RouteConfig],
    args: &PolicyTestArgs,
) -> anyhow::Result<Routes<String>> {
    let mut labels = BTreeMap::new();
    for l in &args.namespace_label {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--namespace-label {l:?}: write key=value"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let fixed = args
        .namespace
        .clone()
        .map(|ns| FixedLabels(BTreeMap::from([(ns, labels)])))
        .unwrap_or_default();
    Routes::new(
        routes
            .iter()
            .map(|r| (r.clone(), r.authority.clone()))
            .collect(),
        default.to_owned(),
        Some(Arc::new(fixed)),
    )
    .map_err(anyhow::Error::msg)
}

/// The route's name and authority, or why none can be chosen (the
/// front-end's default authority stands in for printing).
fn choose(
    routes: &Routes<String>,
    subject: &RouteSubject<'_>,
) -> (Result<String, SignError>, String) {
    match routes.choose(subject) {
        Ok(c) => (Ok(c.route.to_owned()), c.authority.clone()),
        Err(e) => (Err(e), routes.default_authority().clone()),
    }
}

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
            Ok(Inputs {
                route: Ok(DEFAULT_ROUTE.to_owned()),
                authority: rc.authority.clone(),
                caller: Caller::new(principal, method),
                grant,
                request,
                sans: None,
            })
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
            let routes = routes_of(&ic.authority, &ic.routes, args)?;
            let (route, authority) = choose(
                &routes,
                &RouteSubject {
                    namespace: Some(ns),
                    service_account: Some(sa),
                    trust_domain: Some(config.trust_domain.as_str()),
                    cert_signer: args.cert_signer.as_deref(),
                    signer_name: None,
                },
            );
            let a = &config.authorities[&authority];
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
            let (mut caller, grant, request) = match built {
                Ok((c, g, r)) => (c, Ok(g), Ok(r)),
                Err(e) => (
                    Caller::new(Principal::Workload(own.to_string()), AuthMethod::Internal),
                    Err(e),
                    // Never read: the grant's error comes first.
                    Err(SignError::Internal(String::new())),
                ),
            };
            if let (true, Ok(r)) = (routes.is_routed(), &route) {
                caller = caller.on_route(r.clone());
            }
            Ok(Inputs {
                route,
                authority,
                caller,
                grant,
                request,
                sans: None,
            })
        }
        Frontend::PodCertificates => pod_inputs(config, args),
    }
}

/// What the PodCertificateRequest signer would ask for a pod it found as
/// the request says (the server checks the pod, node and service account
/// against the cluster first).
fn pod_inputs(config: &Config, args: &PolicyTestArgs) -> anyhow::Result<Inputs> {
    use signet_kubernetes::pod_certificates::{PodFacts, pod_request, route_subject};
    let pc = config
        .frontends
        .pod_certificates
        .as_ref()
        .context("the configuration has no frontends.pod_certificates")?;
    let (Some(ns), Some(sa)) = (&args.namespace, &args.service_account) else {
        anyhow::bail!(
            "--namespace and --service-account are required for --frontend pod-certificates"
        );
    };
    let signer = args
        .signer_name
        .as_deref()
        .context("--signer-name is required for --frontend pod-certificates")?;
    anyhow::ensure!(
        pc.signer_names.iter().any(|s| s == signer),
        "signet does not sign for {signer:?} (frontends.pod_certificates.signer_names)"
    );
    anyhow::ensure!(
        args.san.is_empty() && args.csr.is_none(),
        "pod certificates take no --san or --csr: the kubelet's CSR names nothing, signet names the pod"
    );
    let routes = routes_of(&pc.authority, &pc.routes, args)?;
    let (route, authority) = choose(
        &routes,
        &route_subject(ns, sa, signer, &config.trust_domain),
    );
    let a = &config.authorities[&authority];
    let max = args
        .ttl
        .map(|t| i32::try_from(t.get().as_secs()).unwrap_or(i32::MAX));
    let built = pod_request(
        pc,
        &config.trust_domain,
        a.policy.backdate.get(),
        &PodFacts {
            namespace: ns,
            service_account: sa,
            pod: &args.pod,
            max_expiration_seconds: max,
        },
    );
    Ok(match built {
        Ok(mut p) => {
            if let (true, Ok(r)) = (routes.is_routed(), &route) {
                p.caller = p.caller.on_route(r.clone());
            }
            Inputs {
                route,
                authority,
                caller: p.caller,
                grant: Ok(p.grant),
                request: Ok(p.request),
                sans: Some(p.sans),
            }
        }
        Err(e) => Inputs {
            route,
            authority,
            caller: Caller::new(
                Principal::Kubernetes(format!("system:serviceaccount:{ns}:{sa}")),
                AuthMethod::Internal,
            ),
            grant: Err(e),
            request: Err(SignError::Internal(String::new())),
            sans: None,
        },
    })
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
