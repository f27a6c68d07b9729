//! Routing: which authority signs a request, when a front-end serves
//! several (`frontends.<name>.routes`).
//!
//! A route names an authority and what it matches: namespaces (by name or
//! by labels), service accounts, trust domains, the Istio `CertSigner`
//! metadata, the Kubernetes signer name. Within one field any value
//! matches; every field a route sets must match. Routes are tried in order
//! and the first match wins; a request no route matches goes to the
//! front-end's own `authority`, the route named [`DEFAULT_ROUTE`]. A route
//! that sets nothing matches everything (a catch-all before the default).
//!
//! Namespace labels come from the cluster ([`NamespaceLabels`]); a route
//! that needs them never guesses: while a namespace's labels are unknown
//! the request is refused as retryable (`not_ready`), so a tenant's
//! workload is never signed by another tenant's authority because a cache
//! was cold.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::authority::Authority;
use crate::error::SignError;
use crate::spiffe::TrustDomain;

/// The name of the route to the front-end's own `authority`.
pub const DEFAULT_ROUTE: &str = "default";

/// One entry of `routes` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Names the route in metrics, audit lines and `signet policy test`.
    pub name: String,
    /// Name of an entry under `authorities`.
    pub authority: String,
    /// Namespace names.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels the namespace carries, all of them (`key: value`).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Service accounts as `<namespace>/<name>`; `*` for the name matches
    /// every account of the namespace.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// The trust domain of the identity being certified.
    #[serde(default)]
    pub trust_domains: Vec<TrustDomain>,
    /// The Istio `CertSigner` request metadata (istio-agent sends
    /// `ISTIO_META_CERT_SIGNER`).
    #[serde(default)]
    pub cert_signers: Vec<String>,
    /// The Kubernetes signer name (CSR or PodCertificateRequest).
    #[serde(default)]
    pub signer_names: Vec<String>,
}

impl RouteConfig {
    /// What makes a route unusable, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name == DEFAULT_ROUTE {
            return Err(format!(
                "route name {:?} is reserved or empty (`{DEFAULT_ROUTE}` is the front-end's own authority)",
                self.name
            ));
        }
        // The workload names its CertSigner itself: alone, it would let any
        // workload take another tenant's authority for its identity.
        if !self.cert_signers.is_empty()
            && self.namespaces.is_empty()
            && self.namespace_labels.is_empty()
            && self.service_accounts.is_empty()
        {
            return Err(format!(
                "route {:?}: cert_signers is chosen by the workload; combine it with namespaces, namespace_labels or service_accounts",
                self.name
            ));
        }
        for sa in &self.service_accounts {
            let ok = sa.split_once('/').is_some_and(|(ns, name)| {
                !ns.is_empty() && !name.is_empty() && !name.contains('/')
            });
            if !ok {
                return Err(format!(
                    "service account {sa:?} must be <namespace>/<name> or <namespace>/*"
                ));
            }
        }
        Ok(())
    }

    /// Whether this route needs namespace labels to decide.
    pub fn needs_labels(&self) -> bool {
        !self.namespace_labels.is_empty()
    }

    fn matches(&self, s: &RouteSubject<'_>, labels: Option<&BTreeMap<String, String>>) -> bool {
        fn any<T: PartialEq + ?Sized>(wanted: &[impl AsRef<T>], have: Option<&T>) -> bool {
            wanted.is_empty() || have.is_some_and(|h| wanted.iter().any(|w| w.as_ref() == h))
        }
        let accounts = self.service_accounts.is_empty()
            || match (s.namespace, s.service_account) {
                (Some(ns), Some(sa)) => self.service_accounts.iter().any(|w| {
                    w.split_once('/')
                        .is_some_and(|(wn, wa)| wn == ns && (wa == "*" || wa == sa))
                }),
                _ => false,
            };
        let labelled = self.namespace_labels.is_empty()
            || labels.is_some_and(|l| {
                self.namespace_labels
                    .iter()
                    .all(|(k, v)| l.get(k).is_some_and(|have| have == v))
            });
        let domains = self.trust_domains.is_empty()
            || s.trust_domain
                .is_some_and(|td| self.trust_domains.iter().any(|w| w.as_str() == td));
        any::<str>(&self.namespaces, s.namespace)
            && accounts
            && labelled
            && domains
            && any::<str>(&self.cert_signers, s.cert_signer)
            && any::<str>(&self.signer_names, s.signer_name)
    }
}

/// What a request says about itself, for routing. Absent facts match no
/// route that asks for them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSubject<'a> {
    pub namespace: Option<&'a str>,
    pub service_account: Option<&'a str>,
    pub trust_domain: Option<&'a str>,
    pub cert_signer: Option<&'a str>,
    pub signer_name: Option<&'a str>,
}

impl fmt::Display for RouteSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut field = |f: &mut fmt::Formatter<'_>, k: &str, v: Option<&str>| {
            if let Some(v) = v {
                let r = write!(f, "{sep}{k}={v}");
                sep = " ";
                r
            } else {
                Ok(())
            }
        };
        field(f, "namespace", self.namespace)?;
        field(f, "service_account", self.service_account)?;
        field(f, "trust_domain", self.trust_domain)?;
        field(f, "cert_signer", self.cert_signer)?;
        field(f, "signer_name", self.signer_name)
    }
}

/// Where namespace labels come from (the cluster's Namespaces, watched).
pub trait NamespaceLabels: Send + Sync + fmt::Debug {
    /// The namespace's labels, or `None` while it is not known.
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
}

/// Labels from a fixed table (tests, `signet policy test --namespace-label`).
#[derive(Debug, Default, Clone)]
pub struct FixedLabels(pub BTreeMap<String, BTreeMap<String, String>>);

impl NamespaceLabels for FixedLabels {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.0.get(namespace).cloned()
    }
}

/// A front-end's routes, resolved to authorities (running ones in the
/// server; their names in `signet policy test`, which contacts nothing).
#[derive(Debug, Clone)]
pub struct Routes<A = Arc<Authority>> {
    routes: Vec<(RouteConfig, A)>,
    default: A,
    labels: Option<Arc<dyn NamespaceLabels>>,
}

/// The route a request takes.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'a, A = Arc<Authority>> {
    pub route: &'a str,
    pub authority: &'a A,
}

impl Routes<Arc<Authority>> {
    /// Every authority a request may reach (the default first, no repeats).
    pub fn authorities(&self) -> Vec<Arc<Authority>> {
        let mut all = vec![self.default.clone()];
        for (_, a) in &self.routes {
            if !all.iter().any(|b| Arc::ptr_eq(a, b)) {
                all.push(a.clone());
            }
        }
        all
    }
}

impl<A> Routes<A> {
    /// One authority, no routes.
    pub fn single(authority: A) -> Self {
        Self {
            routes: Vec::new(),
            default: authority,
            labels: None,
        }
    }

    /// `routes` tried in order, then `default`. `labels` is required when a
    /// route matches on namespace labels.
    pub fn new(
        routes: Vec<(RouteConfig, A)>,
        default: A,
        labels: Option<Arc<dyn NamespaceLabels>>,
    ) -> Result<Self, String> {
        for (r, _) in &routes {
            r.validate()?;
            if r.needs_labels() && labels.is_none() {
                return Err(format!(
                    "route {:?} matches namespace labels, which need the cluster (`kubernetes`)",
                    r.name
                ));
            }
        }
        Ok(Self {
            routes,
            default,
            labels,
        })
    }

    /// The front-end's own authority.
    pub fn default_authority(&self) -> &A {
        &self.default
    }

    /// Whether there is more than one way to go.
    pub fn is_routed(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The first route `subject` matches, else the default. Refused as
    /// retryable when a route needs the labels of a namespace not known yet.
    pub fn choose(&self, subject: &RouteSubject<'_>) -> Result<Chosen<'_, A>, SignError> {
        let mut labels: Option<Option<BTreeMap<String, String>>> = None;
        for (route, authority) in &self.routes {
            let l = if route.needs_labels() {
                let fetched = labels.get_or_insert_with(|| {
                    subject
                        .namespace
                        .and_then(|ns| self.labels.as_ref().and_then(|l| l.labels(ns)))
                });
                if fetched.is_none() && subject.namespace.is_some() {
                    return Err(SignError::NotReady(format!(
                        "the labels of namespace {} are not known yet (route {})",
                        subject.namespace.unwrap_or_default(),
                        route.name
                    )));
                }
                fetched.as_ref()
            } else {
                None
            };
            if route.matches(subject, l) {
                return Ok(Chosen {
                    route: &route.name,
                    authority,
                });
            }
        }
        Ok(Chosen {
            route: DEFAULT_ROUTE,
            authority: &self.default,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> RouteConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn subject<'a>(ns: &'a str, sa: &'a str) -> RouteSubject<'a> {
        RouteSubject {
            namespace: Some(ns),
            service_account: Some(sa),
            trust_domain: Some("cluster.local"),
            ..Default::default()
        }
    }

    #[test]
    fn every_field_a_route_sets_must_match_and_any_value_within_one() {
        let r = route(
            "{name: a, authority: x, namespaces: [a, b], service_accounts: ['a/*', 'b/web'], cert_signers: [tenant-a]}",
        );
        let mut s = subject("a", "anything");
        assert!(!r.matches(&s, None), "no CertSigner sent");
        s.cert_signer = Some("tenant-a");
        assert!(r.matches(&s, None));
        assert!(r.matches(
            &RouteSubject {
                cert_signer: Some("tenant-a"),
                ..subject("b", "web")
            },
            None
        ));
        assert!(!r.matches(
            &RouteSubject {
                cert_signer: Some("tenant-a"),
                ..subject("b", "db")
            },
            None
        ));
        let all = route("{name: all, authority: x}");
        assert!(all.matches(&RouteSubject::default(), None));
        let td = route("{name: td, authority: x, trust_domains: [other.example]}");
        assert!(!td.matches(&subject("a", "b"), None));
    }

    #[test]
    fn labels_match_all_given_pairs() {
        let r = route("{name: l, authority: x, namespace_labels: {tenant: a, tier: prod}}");
        let mut l = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        assert!(!r.matches(&subject("n", "s"), Some(&l)));
        l.insert("tier".into(), "prod".into());
        assert!(r.matches(&subject("n", "s"), Some(&l)));
        assert!(!r.matches(&subject("n", "s"), None));
    }

    #[test]
    fn the_first_matching_route_wins_and_unknown_labels_wait() {
        let labels = FixedLabels(BTreeMap::from([(
            "shop".to_owned(),
            BTreeMap::from([("tenant".to_owned(), "b".to_owned())]),
        )]));
        let routes = Routes::new(
            vec![
                (route("{name: a, authority: x, namespaces: [team-a]}"), "A"),
                (
                    route("{name: b, authority: y, namespace_labels: {tenant: b}}"),
                    "B",
                ),
                (
                    route("{name: a2, authority: x, namespaces: [team-a, shop]}"),
                    "A",
                ),
            ],
            "D",
            Some(Arc::new(labels)),
        )
        .unwrap();
        let pick = |ns| {
            routes
                .choose(&subject(ns, "web"))
                .map(|c| (c.route.to_owned(), *c.authority))
        };
        assert_eq!(pick("team-a").unwrap(), ("a".to_owned(), "A"));
        assert_eq!(pick("shop").unwrap(), ("b".to_owned(), "B"));
        let e = pick("elsewhere").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotReady, "{e}");
        let no_labels = Routes::new(
            vec![(route("{name: a, authority: x, namespaces: [team-a]}"), "A")],
            "D",
            None,
        )
        .unwrap();
        let c = no_labels.choose(&subject("other", "web")).unwrap();
        assert_eq!((c.route, *c.authority), (DEFAULT_ROUTE, "D"));
        assert!(
            Routes::new(
                vec![(
                    route("{name: b, authority: y, namespace_labels: {t: b}}"),
                    "B"
                )],
                "D",
                None
            )
            .is_err()
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(route("{name: default, authority: x}").validate().is_err());
        assert!(
            route("{name: a, authority: x, service_accounts: [web]}")
                .validate()
                .unwrap_err()
                .contains("<namespace>/<name>")
        );
    }
}
