//! istiod's plug-in CA: the `cacerts` Secret, kept filled with an
//! intermediate issued by a backend.
//!
//! Minting: generate a key, ask the backend for an intermediate (CA:TRUE,
//! pathLen 0, keyCertSign, the trust domain's SPIFFE ID), and lay it out as
//! istiod reads it: `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`
//! (intermediate → … → root), `root-cert.pem` (every trusted root), or
//! `tls.crt`/`tls.key`/`ca.crt`. Nothing is written unless it validates: key
//! matches, is a CA with pathLen 0 and keyCertSign, chains to a root in
//! `root-cert.pem`, and is not about to expire. During a root change
//! `root-cert.pem` keeps the old roots until they expire (istiod accepts only
//! subset/superset root changes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use signet_core::chain::{TrustBundle, anchored_by, order_path, subject_name, validity};
use signet_core::duration::HumanDuration;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::mint::{IntermediateSpec, Minted, mint_intermediate};
use signet_core::revocation::{RevocationList, crl_next_update, crl_valid_for};
use signet_core::spiffe::TrustDomain;
use signet_core::{Clock, SignError, Signer, pem};

fn default_namespace() -> String {
    "istio-system".to_owned()
}
fn default_secret() -> String {
    "cacerts".to_owned()
}
fn default_ttl() -> HumanDuration {
    HumanDuration::from_secs(30 * 86_400)
}
fn default_common_name() -> String {
    "signet istio intermediate".to_owned()
}

/// How the Secret's files are named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`.
    #[default]
    Istio,
    /// `tls.crt` (intermediate and chain), `tls.key`, `ca.crt` (Istio 1.15+).
    Tls,
}

/// `frontends.istio_cacerts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacertsConfig {
    /// Name of an entry under `backends` that issues intermediates.
    pub backend: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_secret")]
    pub secret: String,
    /// Lifetime of each intermediate.
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// Renew this long before expiry; default a third of `ttl`.
    #[serde(default)]
    pub renew_before: Option<HumanDuration>,
    #[serde(default)]
    pub key: KeyAlgorithm,
    #[serde(default)]
    pub layout: Layout,
    #[serde(default = "default_common_name")]
    pub common_name: String,
    /// The longest workload certificate istiod issues from the plug-in CA
    /// (istiod's `MAX_WORKLOAD_CERT_TTL` as the mesh uses it): a root
    /// rotation of `backend` waits this long for them to expire.
    #[serde(default = "default_workload_ttl")]
    pub workload_ttl: HumanDuration,
    /// Revoked serials of workload certificates istiod issued from the
    /// plug-in CA (YAML, as `authorities.<name>.revocation_file`; `signet
    /// revoke --cacerts` writes it). With it the Secret carries
    /// `ca-crl.pem`, a CRL signed by the intermediate, which istiod
    /// publishes as the `istio-ca-crl` ConfigMap for proxies to enforce.
    #[serde(default)]
    pub revocation_file: Option<std::path::PathBuf>,
    /// CRLs (PEM) of the CAs above the backend's, which signet cannot sign:
    /// istiod wants one from every CA of the chain, root included.
    #[serde(default)]
    pub upstream_crl_files: Vec<std::path::PathBuf>,
}

/// The CRL file istiod reads beside the plug-in CA (`PILOT_ENABLE_CA_CRL`).
pub const CRL_FILE: &str = "ca-crl.pem";

/// A stored CRL is replaced when it would expire within this long.
const CRL_REFRESH_BEFORE: Duration = Duration::from_secs(12 * 3600);

fn default_workload_ttl() -> HumanDuration {
    HumanDuration::from_secs(86_400)
}

impl CacertsConfig {
    pub fn renew_before(&self) -> Duration {
        self.renew_before
            .map_or(self.ttl.get() / 3, HumanDuration::get)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.ttl.get() < Duration::from_secs(3600) {
            return Err(format!("ttl {} is below 1h", self.ttl));
        }
        if self.renew_before() >= self.ttl.get() {
            return Err("renew_before must be shorter than ttl".into());
        }
        Ok(())
    }
}

/// The four files, by name, for the configured layout.
pub type Files = BTreeMap<String, Vec<u8>>;

/// What a validated `cacerts` holds.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The plug-in CA as istiod will load it.
    pub ca: Arc<LocalCa>,
    pub not_after: SystemTime,
    pub roots: Vec<CertificateDer<'static>>,
    /// The highest certificate below the roots: what chains to one of them.
    pub top: CertificateDer<'static>,
}

fn names(layout: Layout) -> [&'static str; 4] {
    match layout {
        // cert, key, chain, roots
        Layout::Istio => [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ],
        Layout::Tls => ["tls.crt", "tls.key", "tls.crt", "ca.crt"],
    }
}

fn certs(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let c: Vec<CertificateDer<'static>> = pem::certificates(bytes)
        .map_err(|e| format!("{what}: {e}"))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if c.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    Ok(c)
}

/// Checks a set of files the way istiod will use them, and more.
pub fn validate(files: &Files, layout: Layout, now: SystemTime) -> Result<Validated, String> {
    let [cert_name, key_name, chain_name, roots_name] = names(layout);
    let get = |n: &str| files.get(n).ok_or_else(|| format!("{n} missing"));
    let mut cert_and_chain = certs(get(cert_name)?, cert_name)?;
    let cert = cert_and_chain.remove(0);
    let chain = match layout {
        Layout::Istio => {
            let mut c = certs(get(chain_name)?, chain_name)?;
            if c.first() != Some(&cert) {
                return Err(format!("{chain_name} must start with {cert_name}"));
            }
            c.remove(0);
            c
        }
        Layout::Tls => cert_and_chain,
    };
    let roots = certs(get(roots_name)?, roots_name)?;
    let key = PrivateKey::from_pem(get(key_name)?).map_err(|e| format!("{key_name}: {e}"))?;
    let (_, not_after) = validity(&cert).map_err(|e| e.to_string())?;
    let top = chain
        .iter()
        .rfind(|c| !roots.contains(c))
        .unwrap_or(&cert)
        .clone();
    let ca = LocalCa::new(cert.clone(), key, chain, Some(roots.clone()), now)
        .map_err(|e| format!("{cert_name}: {e}"))?;
    // istiod's reference intermediate: CA:TRUE pathlen:0, keyCertSign.
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) =
        x509_parser::certificate::X509Certificate::from_der(&cert).map_err(|e| e.to_string())?;
    let bc = parsed
        .basic_constraints()
        .ok()
        .flatten()
        .ok_or("no basicConstraints")?;
    if bc.value.path_len_constraint != Some(0) {
        return Err(format!("{cert_name} must have pathLenConstraint 0"));
    }
    let ku = parsed.key_usage().ok().flatten().ok_or("no keyUsage")?;
    if !ku.value.key_cert_sign() {
        return Err(format!("{cert_name} lacks keyCertSign"));
    }
    if now >= ca.not_after() {
        return Err(format!("{cert_name} has expired"));
    }
    Ok(Validated {
        ca: Arc::new(ca),
        not_after,
        roots,
        top,
    })
}

/// Mints intermediates for istiod from a backend.
#[derive(Debug)]
pub struct Cacerts {
    backend: Arc<dyn Signer>,
    config: CacertsConfig,
    trust_domain: TrustDomain,
    clock: Arc<dyn Clock>,
}

impl Cacerts {
    pub fn new(
        backend: Arc<dyn Signer>,
        config: CacertsConfig,
        trust_domain: TrustDomain,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            backend,
            config,
            trust_domain,
            clock,
        }
    }

    pub fn config(&self) -> &CacertsConfig {
        &self.config
    }

    /// Changes with the backend's root-rotation phase
    /// ([`Signer::issuer_changes`]), so that the keeper acts at once.
    pub fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.backend.issuer_changes()
    }

    /// A new intermediate, laid out and validated. `previous_roots` (from the
    /// Secret being replaced) are kept while unexpired.
    pub async fn mint(
        &self,
        previous_roots: &[CertificateDer<'static>],
        previous: Option<&Previous>,
    ) -> Result<Files, SignError> {
        let now = self.clock.now();
        let spec = IntermediateSpec {
            common_name: &self.config.common_name,
            trust_domain: &self.trust_domain,
            key: self.config.key,
            ttl: self.config.ttl.get(),
            requested_by: "signet:istio-cacerts",
        };
        let Minted { key, chain, .. } =
            mint_intermediate(self.backend.as_ref(), &spec, now).await?;
        let roots = self.root_set(chain.trust_bundle(), previous_roots, now);
        let path = order_path(
            chain.leaf(),
            [chain.intermediates(), chain.trust_bundle().roots()].concat(),
        );
        let files = layout(self.config.layout, chain.leaf(), &path, &roots, &key);
        let v = validate(
            &files,
            self.config.layout,
            chain.installable_at(self.clock.now()),
        )
        .map_err(|e| {
            SignError::BadChain(signet_core::chain::ChainError::Parse {
                what: "cacerts".into(),
                detail: e,
            })
        })?;
        let mut files = files;
        // Like the CRL itself: a failure is logged, the plug-in CA written.
        let carry = match previous.map(|p| self.last_crls(p)) {
            Some(Ok(crls)) => crls,
            Some(Err(e)) => {
                tracing::error!(error = %e, "the replaced plug-in CA's last CRL cannot be signed");
                Vec::new()
            }
            None => Vec::new(),
        };
        if let Err(e) = self.refresh_crl(&mut files, &v.ca, self.clock.now(), carry) {
            tracing::error!(error = %e, "the plug-in CA is written without its CRL");
        }
        tracing::info!(
            target: "signet::audit",
            serial = chain.serial_hex(),
            principal = "signet:istio-cacerts",
            profile = "intermediate",
            not_after = %signet_core::clock::rfc3339(v.not_after),
            backend = %self.backend.describe().name,
            "istio plug-in CA intermediate issued"
        );
        Ok(files)
    }

    /// The backend's roots plus earlier ones that have not expired, except
    /// those a finished root rotation dropped.
    pub fn root_set(
        &self,
        bundle: &TrustBundle,
        previous: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Vec<CertificateDer<'static>> {
        let mut roots: Vec<CertificateDer<'static>> = bundle.roots().to_vec();
        for r in previous {
            let alive = validity(r).is_ok_and(|(_, na)| na > now);
            if alive && !roots.contains(r) && !bundle.dropped().contains(r) {
                roots.push(r.clone());
            }
        }
        roots
    }

    /// What to do with the files currently stored (if any).
    pub async fn plan(&self, current: Option<&Files>) -> Plan {
        let now = self.clock.now();
        let Some(files) = current else {
            return Plan::Mint {
                previous_roots: vec![],
                previous: None,
            };
        };
        let v = match validate(files, self.config.layout, now) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "the stored cacerts are not usable; replacing them");
                let roots = files
                    .get(names(self.config.layout)[3])
                    .and_then(|r| certs(r, "roots").ok())
                    .unwrap_or_default();
                return Plan::Mint {
                    previous_roots: roots,
                    previous: None,
                };
            }
        };
        let previous = Some(Previous {
            ca: v.ca.clone(),
            crls: crls_in(files.get(CRL_FILE).map(Vec::as_slice).unwrap_or_default()),
        });
        if v.not_after <= now + self.config.renew_before() {
            return Plan::Mint {
                previous_roots: v.roots,
                previous,
            };
        }
        let bundle = match self.backend.trust_bundle().await {
            Ok(b) => b,
            // The roots cannot be read now; the CRL is signet's to keep fresh.
            Err(_) => {
                let mut updated = files.clone();
                return match self.refresh_crl(&mut updated, &v.ca, now, Vec::new()) {
                    Ok(true) => Plan::Write(updated),
                    _ => Plan::Keep,
                };
            }
        };
        // A root rotation moved issuing to another root (or the upstream
        // did): a new intermediate under a current root, the old roots kept.
        if !bundle.current().any(|r| anchored_by(&v.top, r)) {
            tracing::info!(
                "the cacerts intermediate is not under a current root; minting a new one"
            );
            return Plan::Mint {
                previous_roots: v.roots,
                previous,
            };
        }
        let mut updated = files.clone();
        let mut changed = self.update_roots(&mut updated, &bundle, &v.roots, now);
        match self.refresh_crl(&mut updated, &v.ca, now, Vec::new()) {
            Ok(c) => changed |= c,
            // The CRL keeps what it had (istiod keeps enforcing it); the
            // keeper's log says why.
            Err(e) => tracing::warn!(error = %e, "the cacerts CRL cannot be refreshed"),
        }
        if changed {
            Plan::Write(updated)
        } else {
            Plan::Keep
        }
    }

    /// Adds a new root of `bundle` beside the ones istiod already trusts,
    /// and removes one a finished rotation dropped (istiod accepts a
    /// superset or a subset); returns whether `files` changed.
    fn update_roots(
        &self,
        files: &mut Files,
        bundle: &TrustBundle,
        held: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> bool {
        let added = bundle.roots().iter().any(|r| !held.contains(r));
        let dropped = held.iter().any(|r| bundle.dropped().contains(r));
        if !added && !dropped {
            return false;
        }
        let roots = self.root_set(bundle, held, now);
        files.insert(
            names(self.config.layout)[3].to_owned(),
            roots
                .iter()
                .map(|r| pem::encode_certificate(r))
                .collect::<String>()
                .into_bytes(),
        );
        true
    }

    /// Writes `ca-crl.pem` into `files` unless the one there is still good;
    /// returns whether it wrote. istiod (and Envoy) want a CRL from *every*
    /// CA of the plug-in chain, root included, or refuse the plug-in CA: the
    /// intermediate's lists the revocation file's serials (signet signs it);
    /// the backend's own CA's, when signet holds its key (the `local`
    /// backend), lists nothing; the rest come from `upstream_crl_files`.
    /// When a CA of the chain would have none, nothing is written and the
    /// error says which (the Secret keeps working without revocation;
    /// `signet doctor` fails it).
    fn refresh_crl(
        &self,
        files: &mut Files,
        ca: &LocalCa,
        now: SystemTime,
        carry: Vec<Vec<u8>>,
    ) -> Result<bool, String> {
        let Some(path) = &self.config.revocation_file else {
            return Ok(false);
        };
        let list = RevocationList::read(path).map_err(|e| e.to_string())?;
        let given = self.upstream_crls()?;
        let chain = plug_in_chain(ca);
        let stored = crls_in(files.get(CRL_FILE).map(Vec::as_slice).unwrap_or_default());
        let until = now + CRL_REFRESH_BEFORE;
        // CRLs signet signs are renewed ahead of their end; given ones only
        // need to be valid (signing again would not extend them).
        let fresh = carry.is_empty()
            && stored
                .iter()
                .any(|c| list.crl_matches(ca.certificate(), c, until))
            && chain[1..].iter().all(|cert| {
                stored.iter().any(|c| {
                    crl_valid_for(c, cert, until)
                        || (given.contains(c) && crl_valid_for(c, cert, now))
                })
            })
            && given.iter().all(|g| stored.contains(g));
        if fresh {
            return Ok(false);
        }
        // CRLs of earlier plug-in CAs (signed when they were replaced), kept
        // while valid: their workload certificates are still in use.
        let carried: Vec<Vec<u8>> = stored
            .into_iter()
            .chain(carry)
            .filter(|c| {
                !chain
                    .iter()
                    .any(|cert| crl_valid_for(c, cert, SystemTime::UNIX_EPOCH))
                    && !given.contains(c)
                    && crl_next_update(c).is_some_and(|n| n > now)
            })
            .collect();
        let mut crls = vec![list.crl(ca, now).map_err(|e| e.to_string())?];
        if let Some(up) = self.backend.issuing_ca()
            && chain.contains(up.certificate())
        {
            crls.push(
                RevocationList::default()
                    .crl(&up, now)
                    .map_err(|e| e.to_string())?,
            );
        }
        crls.extend(given);
        let uncovered: Vec<String> = chain
            .iter()
            .filter(|cert| !crls.iter().any(|c| crl_valid_for(c, cert, now)))
            .map(|cert| subject_name(cert))
            .collect();
        if !uncovered.is_empty() {
            return Err(format!(
                "no valid CRL for {} (istiod refuses a plug-in CA whose ca-crl.pem lacks one for any CA of its chain): add it to upstream_crl_files; ca-crl.pem not written",
                uncovered.join(", ")
            ));
        }
        for c in carried {
            if !crls.contains(&c) {
                crls.push(c);
            }
        }
        let pem: String = crls.iter().map(|c| pem::encode("X509 CRL", c)).collect();
        files.insert(CRL_FILE.to_owned(), pem.into_bytes());
        Ok(true)
    }

    /// What a plug-in CA about to be replaced leaves behind (with a
    /// revocation file): its own last CRL, valid for `workload_ttl` and an
    /// hour more (its key is discarded with the old Secret), and the
    /// earlier ones its `ca-crl.pem` carried.
    fn last_crls(&self, previous: &Previous) -> Result<Vec<Vec<u8>>, String> {
        let Some(path) = &self.config.revocation_file else {
            return Ok(Vec::new());
        };
        let list = RevocationList::read(path).map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let own = list
            .crl_valid_for(
                &previous.ca,
                now,
                self.config.workload_ttl.get() + Duration::from_secs(3600),
            )
            .map_err(|e| e.to_string())?;
        let mut out = vec![own];
        out.extend(
            previous
                .crls
                .iter()
                .filter(|c| !crl_valid_for(c, previous.ca.certificate(), SystemTime::UNIX_EPOCH))
                .cloned(),
        );
        Ok(out)
    }

    /// The CRLs of `upstream_crl_files` (PEM), DER each.
    fn upstream_crls(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for f in &self.config.upstream_crl_files {
            let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let crls = crls_in(&bytes);
            if crls.is_empty() {
                return Err(format!("{}: no X509 CRL block", f.display()));
            }
            out.extend(crls);
        }
        Ok(out)
    }
}

/// Every CA of the plug-in chain, the plug-in CA first and the root last:
/// the CAs istiod wants a CRL from.
fn plug_in_chain(ca: &LocalCa) -> Vec<CertificateDer<'static>> {
    let top = ca.chain().last();
    let root = ca.trust_bundle().roots().iter().filter(|r| match top {
        Some(top) => anchored_by(top, r) && top != *r,
        None => anchored_by(ca.certificate(), r),
    });
    std::iter::once(ca.certificate().clone())
        .chain(ca.chain().iter().cloned())
        .chain(root.cloned())
        .collect()
}

/// The DER of every `X509 CRL` block in `pem`.
fn crls_in(pem: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_lenient(pem)
        .map(|blocks| {
            blocks
                .into_iter()
                .filter(|b| b.label == "X509 CRL")
                .map(|b| b.der)
                .collect()
        })
        .unwrap_or_default()
}

/// The plug-in CA a new one replaces.
#[derive(Debug, Clone)]
pub struct Previous {
    pub ca: Arc<LocalCa>,
    /// The CRLs its `ca-crl.pem` held.
    pub crls: Vec<Vec<u8>>,
}

/// The outcome of [`Cacerts::plan`].
#[derive(Debug)]
pub enum Plan {
    Keep,
    Mint {
        previous_roots: Vec<CertificateDer<'static>>,
        /// The plug-in CA being replaced, when it is still usable: with a
        /// revocation file it signs one last CRL that lasts as long as its
        /// workload certificates (Envoy wants a CRL for every CA of a chain).
        previous: Option<Previous>,
    },
    Write(Files),
}

fn layout(
    layout: Layout,
    cert: &CertificateDer<'_>,
    path: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    key: &PrivateKey,
) -> Files {
    let cert_pem = pem::encode_certificate(cert);
    let chain_pem: String = std::iter::once(cert_pem.clone())
        .chain(path.iter().map(|c| pem::encode_certificate(c)))
        .collect();
    let roots_pem: String = roots.iter().map(|r| pem::encode_certificate(r)).collect();
    let key_pem = key.to_pem();
    let mut files = Files::new();
    match layout {
        Layout::Istio => {
            files.insert("ca-cert.pem".into(), cert_pem.into_bytes());
            files.insert("ca-key.pem".into(), key_pem.as_bytes().to_vec());
            files.insert("cert-chain.pem".into(), chain_pem.into_bytes());
            files.insert("root-cert.pem".into(), roots_pem.into_bytes());
        }
        Layout::Tls => {
            // tls.crt: the intermediate and what is above it, without the root.
            let above: String = path
                .iter()
                .filter(|c| !roots.contains(c))
                .map(|c| pem::encode_certificate(c))
                .collect();
            files.insert("tls.crt".into(), format!("{cert_pem}{above}").into_bytes());
            files.insert("tls.key".into(), key_pem.as_bytes().to_vec());
            files.insert("ca.crt".into(), roots_pem.into_bytes());
        }
    }
    files
}

/// Writes `files` into `dir` (the key 0600), for `signet istio cacerts`.
pub fn write_dir(files: &Files, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        let mode = if name.ends_with("key.pem") || name == "tls.key" {
            0o600
        } else {
            0o644
        };
        signet_core::fsutil::write_atomic(&dir.join(name), bytes, mode)?;
    }
    Ok(())
}
