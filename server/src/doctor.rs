//! `signet doctor`: reads a live setup — the configured backends, and the
//! Kubernetes objects signet keeps — and reports what is broken or about to
//! be: roots that differ between the authority and what consumers hold,
//! chains that do not verify, CAs and certificates close to expiry, objects
//! missing. Each finding is one line; the exit code says whether any failed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt as _};
use rustls_pki_types::CertificateDer;
use signet_core::chain::{TrustBundle, validity, verify_path};
use signet_core::clock::rfc3339;
use signet_core::{Clock, Signer};

use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What was looked at, e.g. `configmap default/istio-ca-root-cert`.
    pub what: String,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        write!(f, "{level} {}: {}", self.what, self.detail)
    }
}

/// What the checks share.
struct Doctor {
    now: SystemTime,
    warn_within: Duration,
    findings: Vec<Finding>,
}

impl Doctor {
    fn note(&mut self, level: Level, what: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            level,
            what: what.into(),
            detail: detail.into(),
        });
    }

    /// Expiry of one certificate: FAIL when past, WARN within the window.
    fn expiry(&mut self, what: &str, der: &[u8]) {
        match validity(der) {
            Ok((_, not_after)) if not_after <= self.now => {
                self.note(
                    Level::Fail,
                    what,
                    format!("expired at {}", rfc3339(not_after)),
                );
            }
            Ok((_, not_after)) if not_after <= self.now + self.warn_within => {
                self.note(
                    Level::Warn,
                    what,
                    format!("expires at {}", rfc3339(not_after)),
                );
            }
            Ok(_) => {}
            Err(e) => self.note(Level::Fail, what, e.to_string()),
        }
    }

    /// Certificates from PEM a consumer holds; a FAIL if it is not PEM.
    fn pem_certs(&mut self, what: &str, pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
        match signet_core::pem::certificates(pem) {
            Ok(c) => Some(c.into_iter().map(CertificateDer::from).collect()),
            Err(e) => {
                self.note(Level::Fail, what, format!("not PEM certificates: {e}"));
                None
            }
        }
    }

    /// Whether PEM roots a consumer holds are exactly the authority's.
    fn same_roots_pem(&mut self, what: &str, pem: &[u8], bundle: &TrustBundle) -> bool {
        self.pem_certs(what, pem)
            .is_some_and(|held| self.same_roots(what, &held, bundle))
    }

    /// Whether `held` (what a consumer has) is exactly the authority's
    /// roots; a FAIL naming the difference if not.
    fn same_roots(
        &mut self,
        what: &str,
        held: &[CertificateDer<'static>],
        bundle: &TrustBundle,
    ) -> bool {
        let missing = bundle.roots().iter().filter(|r| !held.contains(r)).count();
        let extra = held.iter().filter(|r| !bundle.contains(r)).count();
        if missing == 0 && extra == 0 {
            return true;
        }
        self.note(
            Level::Fail,
            what,
            format!(
                "roots differ from the authority's: {missing} of its {} root(s) missing, {extra} root(s) it does not have",
                bundle.roots().len()
            ),
        );
        false
    }
}

/// Runs every check the configuration gives reason for.
pub async fn examine(
    config: &Config,
    clock: &Arc<dyn Clock>,
    warn_within: Duration,
) -> anyhow::Result<Vec<Finding>> {
    let mut built = BTreeMap::new();
    let mut unbuilt = Vec::new();
    for (name, b) in &config.backends {
        match signet_backends::build(name, b, clock.clone()).await {
            Ok(signer) => {
                built.insert(name.clone(), signer);
            }
            Err(e) => unbuilt.push(Finding {
                level: Level::Fail,
                what: format!("backend {name}"),
                detail: format!("cannot be set up: {e}"),
            }),
        }
    }
    // As the servers see them: with the rotation file's phases applied.
    let (backends, _slots) = crate::trust::slots(config, built)?;
    let mut findings = unbuilt;
    findings.extend(examine_with(config, &backends, clock, warn_within).await?);
    Ok(findings)
}

/// The checks, on backends already built (the servers' view, each a
/// rotation slot when `trust` is configured): what `signet trust rotate`
/// runs before it moves a phase on.
pub async fn examine_with(
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
    clock: &Arc<dyn Clock>,
    warn_within: Duration,
) -> anyhow::Result<Vec<Finding>> {
    let mut d = Doctor {
        now: clock.now(),
        warn_within,
        findings: Vec::new(),
    };
    rotations(&mut d, config);
    let bundles = authority_bundles(&mut d, config, backends).await;
    if config.frontends.writes_to_kubernetes() {
        let client = crate::kubernetes::client(&config.kubernetes).await?;
        kubernetes(&mut d, config, &client, &bundles, backends).await;
    }
    Ok(d.findings)
}

/// Each recorded root rotation: its phase, and a warning when it could have
/// moved on more than an hour ago (nobody runs `signet trust rotate`, or
/// something it waits for never comes).
fn rotations(d: &mut Doctor, config: &Config) {
    let Some(trust) = &config.trust else { return };
    let file = match signet_core::rotation::RotationFile::read(&trust.state_file) {
        Ok(f) => f,
        Err(e) => {
            d.note(Level::Fail, "rotation file", e.to_string());
            return;
        }
    };
    for (backend, r) in &file.rotations {
        let what = format!("rotation of backend {backend}");
        let detail = format!(
            "{} -> {}, phase {} since {}",
            r.from_backend(backend),
            r.to,
            r.phase,
            rfc3339(r.since)
        );
        match r.earliest_end() {
            Some(end) if end + STUCK_AFTER <= d.now => d.note(
                Level::Warn,
                &what,
                format!(
                    "{detail}: stuck, it could have moved on at {} (run `signet trust status`)",
                    rfc3339(end)
                ),
            ),
            _ => d.note(Level::Ok, &what, detail),
        }
    }
}

/// How long past its earliest end a rotation phase may last before
/// `signet doctor` calls it stuck.
const STUCK_AFTER: Duration = Duration::from_secs(3600);

/// Each authority's roots (from its backend), their expiry, and the
/// issuing CA's where signet holds it.
async fn authority_bundles(
    d: &mut Doctor,
    config: &Config,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
) -> BTreeMap<String, TrustBundle> {
    let mut out = BTreeMap::new();
    for (name, a) in &config.authorities {
        let what = format!("authority {name}");
        let Some(backend) = backends.get(&a.backend) else {
            continue;
        };
        match backend.trust_bundle().await {
            Ok(bundle) => {
                for (i, root) in bundle.roots().iter().enumerate() {
                    d.expiry(&format!("{what} root {i}"), root);
                }
                if let Some(ca) = backend.issuing_ca() {
                    d.expiry(&format!("{what} issuing CA"), ca.certificate());
                }
                d.note(
                    Level::Ok,
                    &what,
                    format!("{} root(s)", bundle.roots().len()),
                );
                out.insert(name.clone(), bundle);
            }
            Err(e) => d.note(Level::Fail, &what, format!("its roots cannot be read: {e}")),
        }
    }
    out
}

async fn kubernetes(
    d: &mut Doctor,
    config: &Config,
    client: &Client,
    bundles: &BTreeMap<String, TrustBundle>,
    backends: &BTreeMap<String, Arc<dyn Signer>>,
) {
    let f = &config.frontends;
    if let Some(c) = &f.istio_cacerts
        && let Some(backend) = backends.get(&c.backend)
    {
        match backend.trust_bundle().await {
            Ok(bundle) => cacerts(d, client, c, &bundle).await,
            Err(e) => d.note(
                Level::Fail,
                format!("backend {}", c.backend),
                format!("its roots cannot be read: {e}"),
            ),
        }
    }
    if let Some(c) = &f.istio_root_cert
        && let Some(bundle) = bundles.get(&c.authority)
    {
        root_configmaps(d, client, c, bundle).await;
    }
    if let Some(c) = &f.istiod_tls
        && let Some(bundle) = bundles.get(&c.authority)
    {
        istiod_tls(d, client, c, bundle).await;
    }
    if f.cert_manager.is_some() {
        certificate_requests(d, client).await;
    }
    if let Some(c) = &f.cluster_trust_bundles {
        for b in &c.bundles {
            if let Some(bundle) = bundles.get(&b.authority) {
                cluster_trust_bundle(d, client, &b.object_name(), bundle).await;
            }
        }
    }
}

/// istiod's plug-in CA: valid the way istiod reads it, its roots the
/// backend's, its CA certificate not close to expiry.
async fn cacerts(
    d: &mut Doctor,
    client: &Client,
    c: &signet_istio::cacerts::CacertsConfig,
    bundle: &TrustBundle,
) {
    let what = format!("secret {}/{}", c.namespace, c.secret);
    let Some(files) = secret_files(d, client, &c.namespace, &c.secret, &what).await else {
        return;
    };
    match signet_istio::cacerts::validate(&files, c.layout, d.now) {
        Ok(v) => {
            if !bundle
                .current()
                .any(|r| signet_core::chain::anchored_by(&v.top, r))
            {
                d.note(
                    Level::Fail,
                    &what,
                    "its CA certificate is not under a current root of the backend (signet re-mints it within its poll)",
                );
            } else if let Some(problem) = stale_crl(c, &files, &v, d.now) {
                d.note(Level::Fail, &what, problem);
            } else if d.same_roots(&what, &v.roots, bundle) {
                if v.not_after <= d.now + d.warn_within {
                    d.note(
                        Level::Warn,
                        &what,
                        format!("its CA certificate expires at {}", rfc3339(v.not_after)),
                    );
                } else {
                    d.note(Level::Ok, &what, "valid, the backend's roots");
                }
            }
        }
        Err(e) => d.note(Level::Fail, &what, format!("istiod would refuse it: {e}")),
    }
}

/// With a revocation file: what is wrong with `ca-crl.pem`, if anything
/// (missing, expired, signed by another CA, or not listing exactly the
/// file's serials).
fn stale_crl(
    c: &signet_istio::cacerts::CacertsConfig,
    files: &signet_istio::cacerts::Files,
    v: &signet_istio::cacerts::Validated,
    now: SystemTime,
) -> Option<String> {
    let path = c.revocation_file.as_ref()?;
    let list = match signet_core::revocation::RevocationList::read(path) {
        Ok(l) => l,
        Err(e) => return Some(format!("its revocation file cannot be read: {e}")),
    };
    let crl = files
        .get(signet_istio::cacerts::CRL_FILE)
        .and_then(|p| signet_core::pem::parse_lenient(p).ok())
        .and_then(|b| b.into_iter().find(|b| b.label == "X509 CRL"));
    match crl {
        None => Some(format!("{} is missing", signet_istio::cacerts::CRL_FILE)),
        Some(b) if !list.crl_matches(v.ca.certificate(), &b.der, now) => Some(format!(
            "{} is expired, not the plug-in CA's, or does not list the {} revoked serial(s) of {}",
            signet_istio::cacerts::CRL_FILE,
            list.revoked.len(),
            path.display()
        )),
        Some(_) => None,
    }
}

/// `istio-ca-root-cert` in every selected namespace: present and exactly
/// the authority's roots.
async fn root_configmaps(
    d: &mut Doctor,
    client: &Client,
    c: &signet_istio::k8s::RootDistributionConfig,
    bundle: &TrustBundle,
) {
    let namespaces = match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&c.namespace_selector))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            d.note(Level::Fail, "namespaces", signet_kubernetes::kube_err(e));
            return;
        }
    };
    let mut good = 0;
    for ns in &namespaces {
        let ns = ns.name_any();
        let what = format!("configmap {ns}/{}", c.configmap);
        let Some(cm) = get(
            d,
            &Api::<ConfigMap>::namespaced(client.clone(), &ns),
            &c.configmap,
            &what,
        )
        .await
        else {
            continue;
        };
        let held = cm
            .data
            .as_ref()
            .and_then(|m| m.get("root-cert.pem"))
            .cloned()
            .unwrap_or_default();
        if d.same_roots_pem(&what, held.as_bytes(), bundle) {
            good += 1;
        }
    }
    if good == namespaces.len() {
        d.note(
            Level::Ok,
            format!("configmaps {}", c.configmap),
            format!("{good} namespace(s), the authority's roots"),
        );
    }
}

/// istiod's serving certificate: chains to the authority's roots, not
/// close to expiry.
async fn istiod_tls(
    d: &mut Doctor,
    client: &Client,
    c: &signet_istio::k8s::IstiodTlsConfig,
    bundle: &TrustBundle,
) {
    let what = format!("secret {}/{}", c.namespace, c.secret);
    let Some(files) = secret_files(d, client, &c.namespace, &c.secret, &what).await else {
        return;
    };
    let crt = files.get("tls.crt").map(Vec::as_slice).unwrap_or_default();
    let Some(mut certs) = d.pem_certs(&what, crt) else {
        return;
    };
    if certs.is_empty() {
        d.note(Level::Fail, &what, "tls.crt holds no certificate");
        return;
    }
    let leaf = certs.remove(0);
    match verify_path(&leaf, &certs, bundle, d.now) {
        Ok(()) => {
            let before = d.findings.len();
            d.expiry(&what, &leaf);
            if d.findings.len() == before {
                d.note(Level::Ok, &what, "chains to the authority's roots");
            }
        }
        Err(e) => d.note(
            Level::Fail,
            &what,
            format!("does not chain to the authority's roots: {e}"),
        ),
    }
}

async fn cluster_trust_bundle(d: &mut Doctor, client: &Client, name: &str, bundle: &TrustBundle) {
    let what = format!("clustertrustbundle {name}");
    let Some(ctb) = get(
        d,
        &Api::<ClusterTrustBundle>::all(client.clone()),
        name,
        &what,
    )
    .await
    else {
        return;
    };
    if d.same_roots_pem(&what, ctb.spec.trust_bundle.as_bytes(), bundle) {
        d.note(Level::Ok, &what, "the authority's roots");
    }
}

/// CertificateRequests signet's issuers signed (issuerRef group
/// `signet.dev`, Ready) and still valid: each `status.certificate` must
/// chain to its `status.ca` — what cert-manager writes as `ca.crt`, and what
/// breaks silently when an upstream changes its chain.
async fn certificate_requests(d: &mut Doctor, client: &Client) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            d.note(
                Level::Fail,
                "certificaterequests",
                signet_kubernetes::kube_err(e),
            );
            return;
        }
    };
    let good = list.iter().filter(|cr| certificate_request(d, cr)).count();
    d.note(
        Level::Ok,
        "certificaterequests",
        format!("{good} valid request(s) signed by signet's issuers chain to their ca.crt"),
    );
}

/// One CertificateRequest: true when signet's issuer signed it, it is
/// valid, and it chains to its `status.ca`; a FAIL when it does not.
fn certificate_request(d: &mut Doctor, cr: &kube::api::DynamicObject) -> bool {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    };
    let spec = &cr.data["spec"];
    let status = &cr.data["status"];
    let ready = status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    if spec["issuerRef"]["group"] != "signet.dev" || !ready {
        return false;
    }
    let what = format!(
        "certificaterequest {}/{}",
        cr.namespace().unwrap_or_default(),
        cr.name_any()
    );
    let (Some(cert), Some(ca)) = (b64(&status["certificate"]), b64(&status["ca"])) else {
        d.note(
            Level::Fail,
            &what,
            "Ready without status.certificate and status.ca",
        );
        return false;
    };
    let (Some(mut chain), Some(roots)) = (d.pem_certs(&what, &cert), d.pem_certs(&what, &ca))
    else {
        return false;
    };
    if chain.is_empty() || roots.is_empty() {
        d.note(
            Level::Fail,
            &what,
            "status.certificate or status.ca holds no certificate",
        );
        return false;
    }
    let leaf = chain.remove(0);
    if validity(&leaf).is_ok_and(|(_, not_after)| not_after <= d.now) {
        return false;
    }
    let bundle = match TrustBundle::new(roots) {
        Ok(b) => b,
        Err(e) => {
            d.note(Level::Fail, &what, format!("status.ca: {e}"));
            return false;
        }
    };
    match verify_path(&leaf, &chain, &bundle, d.now) {
        Ok(()) => true,
        Err(e) => {
            d.note(
                Level::Fail,
                &what,
                format!("status.certificate does not chain to status.ca (ca.crt): {e}"),
            );
            false
        }
    }
}

/// A Secret's data by key; a FAIL when it is missing or unreadable.
async fn secret_files(
    d: &mut Doctor,
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
) -> Option<signet_istio::cacerts::Files> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let secret = get(d, &api, name, what).await?;
    Some(signet_istio::k8s::secret_files(&secret))
}

/// Reads one object; a FAIL when it is missing or unreadable.
async fn get<K>(d: &mut Doctor, api: &Api<K>, name: &str, what: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(o)) => Some(o),
        Ok(None) => {
            d.note(Level::Fail, what, "missing");
            None
        }
        Err(e) => {
            d.note(Level::Fail, what, signet_kubernetes::kube_err(e));
            None
        }
    }
}
