//! `signet-bench load`: N workers, each with its own connection, send
//! requests built from the CSR pool. Closed loop by default (each worker
//! sends its next request when the previous one is answered); with `--rate`,
//! requests follow a fixed schedule and latency is measured from the
//! scheduled time whenever the worker was still waiting for its previous
//! answer at that time, so a server that falls behind is not flattered
//! (no coordinated omission). A worker that was idle is woken by tokio's
//! timer, which rounds up to the next millisecond; that lateness is the load
//! generator's, so its latency is measured from when it actually sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use serde_json::json;
use signet_istio::pb::IstioCertificateRequest;
use signet_istio::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::client::{self, Origin};
use crate::pool::{self, Csr};
use crate::report::{Recorder, Report};

/// What is being driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// signet's `POST /v1/sign`.
    SignetRest,
    /// signet's Istio CA service (`CreateCertificate`), as istio-agent calls it.
    SignetGrpc,
    /// OpenBao's or Vault's `POST /v1/<mount>/sign/<role>`.
    Vault,
    /// `cfssl serve`'s `POST /api/v1/cfssl/sign`.
    Cfssl,
    /// smallstep step-ca's `POST /1.0/sign`, each request with a fresh
    /// one-time token of a JWK provisioner.
    StepCa,
    /// The SPIRE server's `SVID/MintX509SVID` on its TCP API, over mutual
    /// TLS with an admin X509-SVID.
    Spire,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The endpoint's kind.
    #[arg(long, value_enum)]
    target: Target,
    /// Base URL, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    url: String,
    /// PEM file of the CA(s) to trust for the endpoint's TLS certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Concurrent connections (gRPC: clients, each with its own connection).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measure for this long after the warm-up (the default mode).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", conflicts_with = "requests")]
    duration: Duration,
    /// Instead of a duration: send exactly this many requests, connections
    /// included in the timing (a restart storm), and stop.
    #[arg(long)]
    requests: Option<u64>,
    /// Total requests per second on a fixed schedule (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Load before measuring starts (duration mode only).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Distinct CSRs (keys and identities) in the pool; defaults to
    /// `--requests` when given, else 2000.
    #[arg(long)]
    csrs: Option<usize>,
    /// Identities the CSRs belong to, in turn (default: one per CSR). With
    /// `--identities` equal to `--connections`, each connection is one
    /// workload sending its own token every time, as istio-agent does (HPACK
    /// then sends the token as an index after the first request); with one
    /// identity per CSR every request carries a new token (the worst case).
    #[arg(long)]
    identities: Option<usize>,
    /// Trust domain of the CSRs' SPIFFE IDs.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of the CSRs' SPIFFE IDs.
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Requested lifetime.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    ttl: Duration,
    /// A file holding one token: REST bearer token, `X-Vault-Token`, or the
    /// gRPC bearer token for every request.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// gRPC: mint one service-account token per identity with the
    /// development issuer in this directory (`signet serve --dev`'s data dir).
    #[arg(long, conflicts_with = "token_file")]
    dev_issuer: Option<PathBuf>,
    /// step-ca: the JWK provisioner's private key (EC P-256, PKCS#8 PEM).
    #[arg(long)]
    provisioner_key: Option<PathBuf>,
    /// step-ca: the provisioner's name (the token's issuer).
    #[arg(long, default_value = "bench")]
    provisioner: String,
    /// step-ca: the provisioner key's `kid`.
    #[arg(long, default_value = "bench")]
    kid: String,
    /// SPIRE: the admin X509-SVID (PEM chain) and its key.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Vault: the signing path after /v1/.
    #[arg(long, default_value = "pki/sign/bench")]
    vault_path: String,
    /// Per-request timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Retry an answer that says "later" (gRPC UNAVAILABLE,
    /// RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED; HTTP 429, 503) the way
    /// istio-agent does — exponential backoff from 100 ms, doubling to
    /// 3.2 s, with jitter — until this long after the first attempt. The
    /// latency is then the workload's: from the first attempt to the
    /// certificate.
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_for: Option<Duration>,
    /// Start the load at this Unix time (seconds), after the preparation:
    /// several load generators (one per tenant) then start together.
    #[arg(long)]
    start_at: Option<f64>,
    /// A name for the run, copied into the report.
    #[arg(long)]
    label: Option<String>,
    /// Also write the report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One request, built before the clock starts.
struct Prepared {
    /// HTTP targets: the JSON body.
    body: Bytes,
    /// gRPC: the PEM CSR.
    csr: String,
    /// gRPC: `Bearer <token>` for this identity.
    grpc_auth: Option<AsciiMetadataValue>,
    /// step-ca: the identity its token names.
    spiffe_id: String,
    /// SPIRE: the DER CSR.
    der: Vec<u8>,
}

enum Plan {
    /// Closed or scheduled load between `start` and `end`.
    Timed { measure_from: Instant, end: Instant },
    /// Exactly `total` requests.
    Count { total: u64 },
}

struct Shared {
    args: Args,
    prepared: Vec<Prepared>,
    origin: Option<Origin>,
    http_auth: Option<(http::HeaderName, http::HeaderValue)>,
    step_ca: Option<crate::peers::StepCaTokens>,
    spire_tls: Option<Arc<rustls::ClientConfig>>,
    path: http::uri::PathAndQuery,
    plan: Plan,
    t0: Instant,
    next: AtomicU64,
}

enum Conn {
    Http(SendRequest<Full<Bytes>>),
    Grpc(IstioCertificateServiceClient<client::H2>),
    Spire(tonic::client::Grpc<Channel>),
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "--connections must be positive");
    if let Some(r) = args.rate {
        anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
    }
    let n = args
        .csrs
        .unwrap_or_else(|| args.requests.map_or(2000, |r| r.min(100_000) as usize))
        .max(1);
    let started = Instant::now();
    if let Some(ids) = args.identities {
        anyhow::ensure!(ids > 0, "--identities must be positive");
        anyhow::ensure!(
            n.is_multiple_of(ids),
            "--csrs ({n}) must be a multiple of --identities ({ids}), so that each connection keeps its identity"
        );
    }
    let csrs = pool::generate(
        n,
        args.identities.unwrap_or(n),
        &args.trust_domain,
        &args.namespace,
    )?;
    let prepared = prepare(&args, &csrs)?;
    eprintln!(
        "signet-bench: {} CSRs and requests prepared in {:.1?}",
        prepared.len(),
        started.elapsed()
    );

    let origin = transport(&args)?;
    let http_auth = http_auth(&args)?;
    let path = target_path(&args);
    let step_ca = match (args.target, &args.provisioner_key) {
        (Target::StepCa, Some(key)) => {
            let origin = origin.as_ref().context("step-ca needs an https URL")?;
            let host = origin.server_name.to_str();
            Some(crate::peers::StepCaTokens::new(
                key,
                &args.kid,
                &args.provisioner,
                &format!("https://{host}/1.0/sign"),
            )?)
        }
        (Target::StepCa, None) => anyhow::bail!("step-ca needs --provisioner-key"),
        _ => None,
    };
    let spire_tls = match (args.target, &args.ca, &args.client_cert, &args.client_key) {
        (Target::Spire, Some(ca), Some(cert), Some(key)) => {
            Some(crate::peers::spire_tls(ca, cert, key)?)
        }
        (Target::Spire, ..) => anyhow::bail!("SPIRE needs --ca, --client-cert and --client-key"),
        _ => None,
    };
    if let Some(at) = args.start_at {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs_f64();
        if now > at {
            eprintln!(
                "signet-bench: started {:.2} s after --start-at (slow preparation)",
                now - at
            );
        }
        tokio::time::sleep(Duration::from_secs_f64((at - now).max(0.0))).await;
    }
    let t0 = Instant::now();
    let plan = match args.requests {
        Some(total) => Plan::Count { total },
        None => {
            let measure_from = t0 + args.warmup;
            Plan::Timed {
                measure_from,
                end: measure_from + args.duration,
            }
        }
    };
    let shared = Arc::new(Shared {
        step_ca,
        spire_tls,
        path: path.parse()?,
        prepared,
        origin,
        http_auth,
        plan,
        t0,
        next: AtomicU64::new(0),
        args,
    });
    let workers: Vec<_> = (0..shared.args.connections)
        .map(|w| tokio::spawn(worker(w, shared.clone())))
        .collect();
    let mut recorder = Recorder::default();
    for w in workers {
        recorder.merge(w.await?);
    }
    let elapsed = match shared.plan {
        Plan::Timed { measure_from, end } => end.min(Instant::now()) - measure_from,
        Plan::Count { .. } => recorder.last_done.map_or(Duration::ZERO, |d| d - t0),
    };
    let a = &shared.args;
    let report = Report::new(
        a.label.clone(),
        a.target,
        &a.url,
        a.connections,
        a.rate,
        a.requests,
        elapsed,
        recorder,
    );
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &a.json {
        std::fs::write(path, &text).with_context(|| path.display().to_string())?;
    }
    eprintln!("{}", report.summary());
    println!("{text}");
    Ok(())
}

/// Where the load connects: an HTTPS origin (HTTP/1.1, or HTTP/2 for
/// gRPC), or none for SPIRE, which has its own transport.
fn transport(args: &Args) -> anyhow::Result<Option<Origin>> {
    let alpn: &[u8] = match args.target {
        Target::Spire => return Ok(None),
        Target::SignetGrpc => b"h2",
        _ => b"http/1.1",
    };
    let tls = match &args.ca {
        Some(ca) => Some(client::tls_config(ca, &[alpn])?),
        None => None,
    };
    Ok(Some(Origin::parse(&args.url, tls)?))
}

/// The header that carries the token on HTTP targets.
fn http_auth(args: &Args) -> anyhow::Result<Option<(http::HeaderName, http::HeaderValue)>> {
    Ok(match (&args.token_file, args.target) {
        (Some(f), Target::SignetRest | Target::Vault) => {
            let token = read_token(f)?;
            Some(if args.target == Target::Vault {
                (
                    http::HeaderName::from_static("x-vault-token"),
                    http::HeaderValue::from_str(&token)?,
                )
            } else {
                (
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(&format!("Bearer {token}"))?,
                )
            })
        }
        _ => None,
    })
}

/// The request path of the target's signing endpoint.
fn target_path(args: &Args) -> String {
    match args.target {
        Target::SignetRest => "/v1/sign".to_owned(),
        Target::Vault => format!("/v1/{}", args.vault_path.trim_start_matches('/')),
        Target::Cfssl => "/api/v1/cfssl/sign".to_owned(),
        Target::StepCa => "/1.0/sign".to_owned(),
        Target::SignetGrpc | Target::Spire => "/".to_owned(),
    }
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let token = token.trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "{}: empty token", path.display());
    Ok(token)
}

fn prepare(args: &Args, csrs: &[Csr]) -> anyhow::Result<Vec<Prepared>> {
    let issuer = args
        .dev_issuer
        .as_deref()
        .map(signet_istio::dev::DevIssuer::in_dir);
    let shared_grpc = match (&args.token_file, args.target) {
        (Some(f), Target::SignetGrpc) => Some(format!("Bearer {}", read_token(f)?).parse()?),
        _ => None,
    };
    let ttl = args.ttl.as_secs();
    csrs.iter()
        .map(|c| {
            let body = match args.target {
                Target::SignetRest => json!({ "csr": c.pem, "ttl": format!("{ttl}s") }),
                Target::Vault => {
                    json!({ "csr": c.pem, "uri_sans": c.spiffe_id, "ttl": format!("{ttl}s") })
                }
                Target::Cfssl => json!({ "certificate_request": c.pem }),
                Target::SignetGrpc | Target::StepCa | Target::Spire => serde_json::Value::Null,
            };
            let grpc_auth = match (&issuer, args.target) {
                (Some(issuer), Target::SignetGrpc) => {
                    let token = issuer
                        .mint(
                            &c.namespace,
                            &c.service_account,
                            Duration::from_secs(3600),
                            SystemTime::now(),
                        )
                        .map_err(|e| anyhow::anyhow!("minting a token: {e}"))?;
                    Some(format!("Bearer {token}").parse()?)
                }
                _ => shared_grpc.clone(),
            };
            Ok(Prepared {
                body: Bytes::from(serde_json::to_vec(&body)?),
                csr: c.pem.clone(),
                grpc_auth,
                spiffe_id: c.spiffe_id.clone(),
                der: c.der.clone(),
            })
        })
        .collect()
}

async fn worker(w: usize, shared: Arc<Shared>) -> Recorder {
    let mut rec = Recorder::default();
    let mut conn: Option<Conn> = None;
    let conns = shared.args.connections as u64;
    let mut k: u64 = 0;
    let mut previous_done = shared.t0;
    loop {
        let seq = match shared.plan {
            Plan::Count { total } => {
                let n = shared.next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                n
            }
            Plan::Timed { .. } => {
                k += 1;
                (k - 1) * conns + w as u64
            }
        };
        // `scheduled` decides which window the request belongs to; `start`
        // is what its latency is measured from.
        let (scheduled, start) = match shared.args.rate {
            Some(rate) => {
                let at = shared.t0 + Duration::from_secs_f64(seq as f64 / rate);
                if previous_done >= at {
                    // Late because the server was: count the wait.
                    (at, at)
                } else {
                    tokio::time::sleep_until(at.into()).await;
                    (at, Instant::now())
                }
            }
            None => {
                let now = Instant::now();
                (now, now)
            }
        };
        if let Plan::Timed { end, .. } = shared.plan
            && scheduled >= end
        {
            break;
        }
        let measured = match shared.plan {
            Plan::Timed { measure_from, .. } => scheduled >= measure_from,
            Plan::Count { .. } => true,
        };
        let req = &shared.prepared[(seq % shared.prepared.len() as u64) as usize];
        let mut attempt = 0u32;
        let outcome = loop {
            let outcome = tokio::time::timeout(shared.args.timeout, once(&shared, &mut conn, req))
                .await
                .unwrap_or_else(|_| {
                    conn = None;
                    Err("timeout".to_owned())
                });
            match (&outcome, shared.args.retry_for) {
                (Err(code), Some(limit)) if retryable(code) => {
                    let wait = agent_backoff(attempt, seq);
                    if start.elapsed() + wait > limit {
                        break outcome;
                    }
                    if measured {
                        rec.retried(code.clone());
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => break outcome,
            }
        };
        let done = Instant::now();
        previous_done = done;
        if measured {
            match outcome {
                Ok(()) => rec.ok(done - start, done),
                Err(code) => rec.error(code, done),
            }
        }
    }
    rec
}

/// Whether an answer means "try again later".
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "DEADLINE_EXCEEDED" | "timeout" | "connect_error"
    ) || code.starts_with("http_429")
        || code.starts_with("http_503")
}

/// istio-agent's wait before retry `attempt`: 100 ms doubling, at most
/// 3.2 s, with ±10% jitter (from the request's number: no RNG needed).
fn agent_backoff(attempt: u32, seq: u64) -> Duration {
    let base = 100.0 * f64::from(1u32 << attempt.min(5));
    let spread = ((seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 2001) as f64 / 10_000.0 - 0.1;
    Duration::from_secs_f64(base * (1.0 + spread) / 1000.0)
}

/// One request on the worker's connection, connecting first if needed.
/// `Err` holds the error's code for the report.
async fn once(shared: &Shared, conn: &mut Option<Conn>, req: &Prepared) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(connect(shared).await.map_err(|e| {
            show_connect_error(&e);
            "connect_error".to_owned()
        })?);
    }
    match conn.as_mut().expect("connected") {
        Conn::Http(sender) => {
            let mut builder = http::Request::post(shared.path.as_str())
                .header(
                    http::header::HOST,
                    shared.origin.as_ref().expect("origin").authority.as_str(),
                )
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some((name, value)) = &shared.http_auth {
                builder = builder.header(name, value);
            }
            // step-ca: a token of its own for every request.
            let body = match &shared.step_ca {
                Some(tokens) => {
                    let ott = tokens.mint(&req.spiffe_id).map_err(|e| e.to_string())?;
                    Bytes::from(json!({ "csr": req.csr, "ott": ott }).to_string())
                }
                None => req.body.clone(),
            };
            let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
            match client::send(sender, request).await {
                Ok((status, body)) if status.is_success() && has_certificate(&body) => Ok(()),
                Ok((status, body)) => Err(http_code(status, &body)),
                Err(_) => {
                    *conn = None;
                    Err("io_error".to_owned())
                }
            }
        }
        Conn::Grpc(client) => {
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: req.csr.clone(),
                validity_duration: shared.args.ttl.as_secs() as i64,
                metadata: None,
            });
            if let Some(auth) = &req.grpc_auth {
                request.metadata_mut().insert("authorization", auth.clone());
            }
            match client.create_certificate(request).await {
                Ok(resp) if resp.get_ref().cert_chain.len() >= 2 => Ok(()),
                Ok(_) => Err("short_chain".to_owned()),
                Err(status) => Err(grpc_code(status.code())),
            }
        }
        Conn::Spire(grpc) => {
            if grpc.ready().await.is_err() {
                *conn = None;
                return Err("io_error".to_owned());
            }
            let request = tonic::Request::new(crate::peers::MintX509SvidRequest {
                csr: req.der.clone(),
                ttl: i32::try_from(shared.args.ttl.as_secs()).unwrap_or(i32::MAX),
            });
            let answer: Result<tonic::Response<crate::peers::MintX509SvidResponse>, _> = grpc
                .unary(
                    request,
                    http::uri::PathAndQuery::from_static(crate::peers::MINT_X509_SVID),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            match answer {
                Ok(resp)
                    if resp
                        .get_ref()
                        .svid
                        .as_ref()
                        .is_some_and(|s| !s.cert_chain.is_empty()) =>
                {
                    Ok(())
                }
                Ok(_) => Err("short_chain".to_owned()),
                Err(status) => Err(grpc_code(status.code())),
            }
        }
    }
}

async fn connect(shared: &Shared) -> anyhow::Result<Conn> {
    if let Some(tls) = &shared.spire_tls {
        let uri: http::Uri = shared.args.url.parse()?;
        let authority = uri.authority().context("SPIRE URL without host:port")?;
        let channel = crate::peers::spire_channel(authority.as_str(), tls.clone()).await?;
        return Ok(Conn::Spire(tonic::client::Grpc::new(channel)));
    }
    let origin = shared.origin.as_ref().expect("origin");
    if shared.args.target == Target::SignetGrpc {
        return Ok(Conn::Grpc(
            IstioCertificateServiceClient::new(origin.connect_h2().await?)
                .max_decoding_message_size(4 * 1024 * 1024),
        ));
    }
    Ok(Conn::Http(origin.connect().await?))
}

/// Connection failures are counted, and the first few are shown.
fn show_connect_error(e: &anyhow::Error) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("signet-bench: connect failed: {e:#}");
    }
}

fn has_certificate(body: &[u8]) -> bool {
    body.windows(17).any(|w| w == b"BEGIN CERTIFICATE")
}

/// `http_<status>` plus signet's error code when the body carries one.
fn http_code(status: http::StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("code"))
                .or_else(|| v.get("code"))
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        });
    match code {
        Some(c) => format!("http_{}:{c}", status.as_u16()),
        None if status.is_success() => "no_certificate".to_owned(),
        None => format!("http_{}", status.as_u16()),
    }
}

fn grpc_code(code: tonic::Code) -> String {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
    .to_owned()
}
