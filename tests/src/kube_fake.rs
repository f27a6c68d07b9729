//! An in-process fake of the Kubernetes API server, spoken to over HTTP by
//! the real `kube` client (through a generated kubeconfig).
//!
//! It keeps the semantics controllers depend on: one cluster-wide
//! `resourceVersion` counter; create (with `generateName`), get, list and
//! watch (history replay from a `resourceVersion`, bookmarks, 410 once history
//! is gone, server-side timeouts), update with optimistic concurrency (409 on
//! a stale `resourceVersion`), merge / strategic-merge / server-side-apply
//! patches (apply conflicts on fields owned by another manager unless forced),
//! `/status` and CSR `/approval` subresources, deletion with finalizers,
//! label and field selectors, CRDs registering their resources, and
//! TokenReview. Faults can be injected (conflict storms, dropped watches,
//! watches that lag behind reads).
//! `tests/KUBE_FAKE.md` lists what it does not model.

#![allow(clippy::result_large_err)] // handlers answer errors as ready responses

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// What the API server says about a token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub pod: Option<(String, String)>,
}

/// A resource type the fake serves.
#[derive(Debug, Clone)]
struct Kind {
    group: String,
    version: String,
    plural: String,
    kind: String,
    namespaced: bool,
    has_status: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    fn key(&self) -> String {
        key_of(&self.group, &self.version, &self.plural)
    }
}

fn key_of(group: &str, version: &str, plural: &str) -> String {
    format!("{group}/{version}/{plural}")
}

type ObjKey = (String, String, String); // kind key, namespace ("" if cluster), name

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: String,
    namespace: String,
    kind_name: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Faults {
    /// The next N writes answer 409 Conflict.
    conflicts: u32,
    /// Bumped to end every open watch.
    watch_generation: u64,
    /// While set, events wait here instead of reaching open watches (a
    /// lagging watch cache); reads and lists stay current.
    held: Option<Vec<Event>>,
}

#[derive(Debug)]
struct Store {
    rv: u64,
    kinds: HashMap<String, Kind>,
    objects: BTreeMap<ObjKey, Value>,
    /// Field path → field manager, per object (server-side apply).
    owners: HashMap<ObjKey, BTreeMap<String, String>>,
    history: VecDeque<Event>,
    tokens: HashMap<String, TokenInfo>,
    faults: Faults,
}

const HISTORY: usize = 2000;

/// A running fake API server.
#[derive(Debug, Clone)]
pub struct KubeFake {
    addr: std::net::SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Event>,
    reviews: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    accesses: Arc<Mutex<Vec<Access>>>,
    bookmark_every: Duration,
}

/// One request as RBAC sees it: verb, API group, resource (with
/// `/subresource`), namespace and object name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

fn builtin_kinds() -> HashMap<String, Kind> {
    let k = |group: &str,
             version: &str,
             plural: &str,
             kind: &str,
             namespaced: bool,
             has_status: bool| Kind {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        kind: kind.into(),
        namespaced,
        has_status,
    };
    [
        k("", "v1", "namespaces", "Namespace", false, true),
        k("", "v1", "pods", "Pod", true, true),
        k("", "v1", "secrets", "Secret", true, false),
        k("", "v1", "configmaps", "ConfigMap", true, false),
        k("", "v1", "serviceaccounts", "ServiceAccount", true, false),
        k(
            "certificates.k8s.io",
            "v1",
            "certificatesigningrequests",
            "CertificateSigningRequest",
            false,
            true,
        ),
        k(
            "certificates.k8s.io",
            "v1",
            "clustertrustbundles",
            "ClusterTrustBundle",
            false,
            false,
        ),
        k("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        k(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
        k(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            false,
            false,
        ),
    ]
    .into_iter()
    .map(|k| (k.key(), k))
    .collect()
}

fn status_response(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    (code, axum::Json(status_object(code, reason, message))).into_response()
}

fn status_object(code: StatusCode, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.into(), "reason": reason, "code": code.as_u16()
    })
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Leaf field paths of an object (objects recursed, everything else a leaf).
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated.
fn labels_match(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).and_then(Value::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

/// Field selectors the real API server supports for the kinds we serve.
fn fields_match(selector: &str, obj: &Value) -> Result<bool, String> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v, neg) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return Err(format!("invalid field selector {term:?}")),
            },
        };
        let path = match k.trim() {
            "metadata.name" => "metadata.name",
            "metadata.namespace" => "metadata.namespace",
            "spec.nodeName" => "spec.nodeName",
            "spec.signerName" => "spec.signerName",
            "spec.serviceAccountName" => "spec.serviceAccountName",
            other => return Err(format!("field label not supported: {other}")),
        };
        let have = get_path(obj, path).and_then(Value::as_str).unwrap_or("");
        if (have == v.trim()) == neg {
            return Ok(false);
        }
    }
    Ok(true)
}

struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl KubeFake {
    /// Starts on 127.0.0.1 on a free port (inside the current tokio runtime).
    pub async fn start() -> Self {
        let (events, _) = broadcast::channel(4096);
        let store = Store {
            rv: 1000,
            kinds: builtin_kinds(),
            objects: BTreeMap::new(),
            owners: HashMap::new(),
            history: VecDeque::new(),
            tokens: HashMap::new(),
            faults: Faults::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fake = Self {
            addr: listener.local_addr().expect("addr"),
            store: Arc::new(Mutex::new(store)),
            events,
            reviews: Arc::default(),
            writes: Arc::default(),
            accesses: Arc::default(),
            bookmark_every: Duration::from_millis(500),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-admin-token\n",
            self.url()
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Registers a token the API server will vouch for.
    pub fn add_token(&self, token: &str, info: TokenInfo) {
        crate::secrets::register(token);
        self.lock().tokens.insert(token.to_owned(), info);
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::SeqCst)
    }

    /// Successful writes (create, update, patch, delete) so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Every request served so far, in RBAC terms (what a least-privilege
    /// role must allow).
    pub fn accesses(&self) -> Vec<Access> {
        self.accesses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the next `n` writes fail with 409 Conflict.
    pub fn inject_conflicts(&self, n: u32) {
        self.lock().faults.conflicts = n;
    }

    /// Holds back watch events from open watches until
    /// [`release_watches`](Self::release_watches): controllers' caches lag
    /// behind what a GET returns, as a real API server's watch cache can.
    pub fn hold_watches(&self) {
        self.lock().faults.held.get_or_insert_with(Vec::new);
    }

    /// Delivers the events held since [`hold_watches`](Self::hold_watches).
    pub fn release_watches(&self) {
        let held = self.lock().faults.held.take().unwrap_or_default();
        for ev in held {
            let _ = self.events.send(ev);
        }
    }

    /// Ends every open watch (clients must re-watch or re-list).
    pub fn drop_watches(&self) {
        self.lock().faults.watch_generation += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces an object directly (test setup), as if by a client.
    pub fn apply(&self, object: Value) -> Value {
        let api_version = object["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_owned();
        let kind_name = object["kind"].as_str().expect("kind").to_owned();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), api_version.clone()),
        };
        let kind = {
            let s = self.lock();
            s.kinds
                .values()
                .find(|k| k.group == group && k.version == version && k.kind == kind_name)
                .cloned()
                .unwrap_or_else(|| panic!("unknown kind {api_version} {kind_name}"))
        };
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let mut s = self.lock();
        let key = (kind.key(), ns.clone(), name);
        let existed = s.objects.contains_key(&key);
        let mut obj = object;
        s.stamp(&mut obj, existed.then(|| key.clone()));
        s.objects.insert(key, obj.clone());
        let kind_name = if existed { "MODIFIED" } else { "ADDED" };
        s.record(&self.events, &kind.key(), &ns, kind_name, obj.clone());
        obj
    }

    /// Creates a namespace (with labels).
    pub fn add_namespace(&self, name: &str, labels: Value) {
        self.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } }));
    }

    /// Creates (or replaces) a pod running `service_account` on `node`.
    pub fn add_pod(&self, namespace: &str, name: &str, service_account: &str, node: &str) {
        self.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace },
            "spec": { "serviceAccountName": service_account, "nodeName": node, "containers": [{ "name": "app", "image": "app" }] },
            "status": { "phase": "Running" }
        }));
    }

    pub fn remove_pod(&self, namespace: &str, name: &str) {
        let mut s = self.lock();
        let key = (
            key_of("", "v1", "pods"),
            namespace.to_owned(),
            name.to_owned(),
        );
        if let Some(obj) = s.objects.remove(&key) {
            s.record(&self.events, &key.0, namespace, "DELETED", obj);
        }
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.lock()
            .objects
            .get(&(
                key_of(group, version, plural),
                namespace.to_owned(),
                name.to_owned(),
            ))
            .cloned()
    }

    /// All stored objects of a kind.
    pub fn list(&self, api_version: &str, plural: &str) -> Vec<Value> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let k = key_of(group, version, plural);
        self.lock()
            .objects
            .iter()
            .filter(|((kk, _, _), _)| *kk == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Sets server-owned metadata: uid/creationTimestamp on create (kept on
    /// update), resourceVersion always, generation when spec changes.
    fn stamp(&mut self, obj: &mut Value, existing: Option<ObjKey>) {
        let rv = self.next_rv();
        let old = existing.and_then(|k| self.objects.get(&k).cloned());
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        match &old {
            Some(old) => {
                meta.insert("uid".into(), old["metadata"]["uid"].clone());
                meta.insert(
                    "creationTimestamp".into(),
                    old["metadata"]["creationTimestamp"].clone(),
                );
                let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
                let spec_changed = old.get("spec") != obj.get("spec");
                let meta = obj["metadata"].as_object_mut().expect("metadata");
                meta.insert(
                    "generation".into(),
                    json!(if spec_changed {
                        generation + 1
                    } else {
                        generation
                    }),
                );
            }
            None => {
                meta.insert("uid".into(), json!(format!("uid-{rv}")));
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                meta.insert("generation".into(), json!(1));
            }
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    }

    fn record(
        &mut self,
        tx: &broadcast::Sender<Event>,
        kind: &str,
        ns: &str,
        kind_name: &'static str,
        object: Value,
    ) {
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.rv);
        let ev = Event {
            rv,
            kind: kind.to_owned(),
            namespace: ns.to_owned(),
            kind_name,
            object,
        };
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        match &mut self.faults.held {
            Some(held) => held.push(ev),
            None => {
                let _ = tx.send(ev);
            }
        }
    }

    fn conflict_injected(&mut self) -> bool {
        if self.faults.conflicts > 0 {
            self.faults.conflicts -= 1;
            true
        } else {
            false
        }
    }
}

fn parse_target(store: &Store, path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| store.kinds.get(&key_of(group, version, plural)).cloned();
    let t = |kind: Kind, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            let kind = find(plural)?;
            match tail {
                [] => Some(t(kind, Some(ns), None, None)),
                [name] => Some(t(kind, Some(ns), Some(name), None)),
                [name, sub] => Some(t(kind, Some(ns), Some(name), Some(sub))),
                _ => None,
            }
        }
        [plural] => Some(t(find(plural)?, None, None, None)),
        [plural, name] => Some(t(find(plural)?, None, Some(name), None)),
        [plural, name, sub] => Some(t(find(plural)?, None, Some(name), Some(sub))),
        _ => None,
    }
}

async fn handle(
    State(fake): State<KubeFake>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = {
        let s = fake.lock();
        parse_target(&s, uri.path())
    };
    let Some(target) = target else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        );
    };
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if watching => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "unknown",
    };
    fake.accesses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Access {
            verb,
            group: target.kind.group.clone(),
            resource: match &target.sub {
                Some(sub) => format!("{}/{sub}", target.kind.plural),
                None => target.kind.plural.clone(),
            },
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        });
    if target.kind.plural == "tokenreviews" {
        return token_review(&fake, &body);
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match (&method, &target.name) {
        (&Method::GET, None) if watching => watch(&fake, &target, &q),
        (&Method::GET, None) => list(&fake, &target, &q),
        (&Method::GET, Some(_)) => get(&fake, &target),
        (&Method::POST, None) => create(&fake, &target, &body),
        (&Method::PUT, Some(_)) => update(&fake, &target, &q, &body),
        (&Method::PATCH, Some(_)) => patch(&fake, &target, &q, &content_type, &body),
        (&Method::DELETE, Some(_)) => delete(&fake, &target),
        _ => status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        ),
    }
}

fn obj_key(t: &Target, name: &str) -> ObjKey {
    (
        t.kind.key(),
        t.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

fn get(fake: &KubeFake, t: &Target) -> Response {
    let name = t.name.as_deref().unwrap_or_default();
    match fake.lock().objects.get(&obj_key(t, name)) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", t.kind.plural),
        ),
    }
}

fn matches(t: &Target, q: &HashMap<String, String>, ns: &str, obj: &Value) -> Result<bool, String> {
    if let Some(want) = &t.namespace
        && want != ns
    {
        return Ok(false);
    }
    if let Some(sel) = q.get("labelSelector").filter(|s| !s.is_empty())
        && !labels_match(sel, &obj["metadata"]["labels"])
    {
        return Ok(false);
    }
    match q.get("fieldSelector").filter(|s| !s.is_empty()) {
        Some(sel) => fields_match(sel, obj),
        None => Ok(true),
    }
}

fn list(fake: &KubeFake, t: &Target, q: &HashMap<String, String>) -> Response {
    let s = fake.lock();
    let mut items = Vec::new();
    for ((k, ns, _), obj) in &s.objects {
        if *k != t.kind.key() {
            continue;
        }
        match matches(t, q, ns, obj) {
            Ok(true) => items.push(obj.clone()),
            Ok(false) => {}
            Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", e),
        }
    }
    axum::Json(json!({
        "apiVersion": t.kind.api_version(),
        "kind": format!("{}List", t.kind.kind),
        "metadata": { "resourceVersion": s.rv.to_string() },
        "items": items,
    }))
    .into_response()
}

fn watch(fake: &KubeFake, t: &Target, q: &HashMap<String, String>) -> Response {
    if let Some(sel) = q.get("fieldSelector").filter(|s| !s.is_empty())
        && let Err(e) = fields_match(sel, &json!({}))
    {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", e);
    }
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let since: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let line = |v: Value| Ok::<_, Infallible>(Bytes::from(format!("{v}\n")));

    // Under the lock: the replay and the subscription, so nothing falls between.
    let (replay, mut live, generation, start_rv) = {
        let s = fake.lock();
        let mut replay = Vec::new();
        match since {
            None => {
                for ((k, ns, _), obj) in &s.objects {
                    if *k == t.kind.key() && matches(t, q, ns, obj).unwrap_or(false) {
                        replay.push(json!({ "type": "ADDED", "object": obj }));
                    }
                }
            }
            Some(rv) => {
                let oldest = s.history.front().map_or(s.rv, |e| e.rv);
                if rv + 1 < oldest && s.history.len() >= HISTORY {
                    replay.push(json!({ "type": "ERROR", "object": status_object(StatusCode::GONE, "Expired", format!("too old resource version: {rv} ({oldest})")) }));
                } else {
                    for e in s
                        .history
                        .iter()
                        .filter(|e| e.rv > rv && e.kind == t.kind.key())
                    {
                        if matches(t, q, &e.namespace, &e.object).unwrap_or(false) {
                            replay.push(json!({ "type": e.kind_name, "object": e.object }));
                        }
                    }
                }
            }
        }
        (
            replay,
            fake.events.subscribe(),
            s.faults.watch_generation,
            s.rv,
        )
    };
    let fake2 = fake.clone();
    let kind = t.kind.clone();
    let t_ns = t.namespace.clone();
    let q = q.clone();
    tokio::spawn(async move {
        let target = Target {
            kind: kind.clone(),
            namespace: t_ns,
            name: None,
            sub: None,
        };
        let gone = replay.iter().any(|e| e["type"] == "ERROR");
        for e in replay {
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_rv = start_rv;
        let mut tick = tokio::time::interval(fake2.bookmark_every);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick() => {
                    if fake2.lock().faults.watch_generation != generation {
                        return;
                    }
                    if bookmarks {
                        let bm = json!({ "type": "BOOKMARK", "object": {
                            "apiVersion": kind.api_version(), "kind": kind.kind,
                            "metadata": { "resourceVersion": last_rv.to_string(), "annotations": { "k8s.io/initial-events-end": "true" } }
                        }});
                        if tx.send(line(bm)).await.is_err() {
                            return;
                        }
                    }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        last_rv = last_rv.max(e.rv);
                        if e.kind == kind.key() && matches(&target, &q, &e.namespace, &e.object).unwrap_or(false)
                            && tx.send(line(json!({ "type": e.kind_name, "object": e.object }))).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| {
            status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("malformed body: {e}"),
            )
        })
}

fn create(fake: &KubeFake, t: &Target, body: &[u8]) -> Response {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut s = fake.lock();
    if s.conflict_injected() {
        return status_response(StatusCode::CONFLICT, "Conflict", "injected conflict");
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let rv = s.rv;
                obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", rv % 0xfffff));
            }
            None => {
                return status_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                );
            }
        }
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ns = t.namespace.clone().unwrap_or_default();
    if t.kind.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
        let ns_key = (key_of("", "v1", "namespaces"), String::new(), ns.clone());
        let any_ns = s.objects.keys().any(|k| k.0 == ns_key.0);
        if any_ns && !s.objects.contains_key(&ns_key) {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            );
        }
    }
    let key = (t.kind.key(), ns.clone(), name.clone());
    if s.objects.contains_key(&key) {
        return status_response(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.kind.plural),
        );
    }
    obj["apiVersion"] = json!(t.kind.api_version());
    obj["kind"] = json!(t.kind.kind);
    if t.kind.plural == "certificatesigningrequests" && obj.get("status").is_none() {
        obj["status"] = json!({});
    }
    s.stamp(&mut obj, None);
    if t.kind.plural == "customresourcedefinitions" {
        register_crd(&mut s, &obj);
    }
    s.objects.insert(key, obj.clone());
    s.record(&fake.events, &t.kind.key(), &ns, "ADDED", obj.clone());
    fake.writes.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

fn register_crd(s: &mut Store, crd: &Value) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_owned();
    let plural = spec["names"]["plural"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kind = spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespaced = spec["scope"] == "Namespaced";
    for v in spec["versions"].as_array().into_iter().flatten() {
        let version = v["name"].as_str().unwrap_or_default().to_owned();
        let has_status = v["subresources"]["status"].is_object();
        let k = Kind {
            group: group.clone(),
            version,
            plural: plural.clone(),
            kind: kind.clone(),
            namespaced,
            has_status,
        };
        s.kinds.insert(k.key(), k);
    }
}

/// Applies a full replacement `new` to the stored object under the rules of
/// the (sub)resource: main resource keeps status (if it has a status
/// subresource), `/status` changes only status, `/approval` only conditions.
fn replace_into(
    kind: &Kind,
    sub: Option<&str>,
    current: &Value,
    new: &Value,
) -> Result<Value, Response> {
    let mut out = match sub {
        None => {
            let mut o = new.clone();
            if kind.has_status {
                match current.get("status") {
                    Some(st) => o["status"] = st.clone(),
                    None => {
                        o.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            if kind.plural == "certificatesigningrequests" && current.get("spec") != o.get("spec") {
                return Err(status_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "spec: Forbidden: updates to certificatesigningrequest spec are forbidden",
                ));
            }
            o
        }
        Some("status") => {
            let mut o = current.clone();
            o["status"] = new.get("status").cloned().unwrap_or(json!({}));
            if kind.plural == "certificatesigningrequests" {
                // /status may not change approval conditions.
                let conds = |v: &Value| {
                    v["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                };
                let approvals = |c: Vec<Value>| {
                    c.into_iter()
                        .filter(|c| c["type"] == "Approved" || c["type"] == "Denied")
                        .collect::<Vec<_>>()
                };
                if approvals(conds(current)) != approvals(conds(&o)) {
                    return Err(status_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "status.conditions: Forbidden: updates may not add or remove Approved/Denied conditions",
                    ));
                }
            }
            o
        }
        Some("approval") if kind.plural == "certificatesigningrequests" => {
            let mut o = current.clone();
            o["status"]["conditions"] = new["status"]["conditions"].clone();
            o
        }
        Some(other) => {
            return Err(status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("subresource {other} not found"),
            ));
        }
    };
    out["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    Ok(out)
}

fn write_back(
    fake: &KubeFake,
    s: &mut Store,
    t: &Target,
    key: ObjKey,
    mut obj: Value,
    manager: &str,
    changed: &Value,
) -> Response {
    // Non-apply writes take ownership of the fields they set.
    let mut fields = Vec::new();
    leaves(changed, "", &mut fields);
    let owners = s.owners.entry(key.clone()).or_default();
    for (path, _) in fields
        .iter()
        .filter(|(p, _)| !p.starts_with("metadata.resourceVersion"))
    {
        owners.insert(path.clone(), manager.to_owned());
    }
    s.stamp(&mut obj, Some(key.clone()));
    let finalizers_empty = obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    if obj["metadata"].get("deletionTimestamp").is_some() && finalizers_empty {
        s.objects.remove(&key);
        s.owners.remove(&key);
        s.record(&fake.events, &t.kind.key(), &key.1, "DELETED", obj.clone());
    } else {
        s.objects.insert(key.clone(), obj.clone());
        s.record(&fake.events, &t.kind.key(), &key.1, "MODIFIED", obj.clone());
    }
    fake.writes.fetch_add(1, Ordering::SeqCst);
    axum::Json(obj).into_response()
}

fn update(fake: &KubeFake, t: &Target, q: &HashMap<String, String>, body: &[u8]) -> Response {
    let new = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = t.name.clone().unwrap_or_default();
    let key = obj_key(t, &name);
    let mut s = fake.lock();
    if s.conflict_injected() {
        return status_response(StatusCode::CONFLICT, "Conflict", "injected conflict");
    }
    let Some(current) = s.objects.get(&key).cloned() else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", t.kind.plural),
        );
    };
    if let Some(rv) = new["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return status_response(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.kind.plural
            ),
        );
    }
    let obj = match replace_into(&t.kind, t.sub.as_deref(), &current, &new) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    write_back(fake, &mut s, t, key, obj, &manager, &new)
}

fn patch(
    fake: &KubeFake,
    t: &Target,
    q: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Response {
    let p = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = t.name.clone().unwrap_or_default();
    let key = obj_key(t, &name);
    let apply = content_type.starts_with("application/apply-patch");
    if !apply
        && !content_type.starts_with("application/merge-patch")
        && !content_type.starts_with("application/strategic-merge-patch")
    {
        return status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake does not support patch type {content_type}"),
        );
    }
    let manager = q.get("fieldManager").cloned();
    if apply && manager.is_none() {
        return status_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "fieldManager: Required value: is required for apply patch",
        );
    }
    let manager = manager.unwrap_or_else(|| "unknown".into());
    let force = q.get("force").is_some_and(|v| v == "true");
    let mut s = fake.lock();
    if s.conflict_injected() {
        return status_response(StatusCode::CONFLICT, "Conflict", "injected conflict");
    }
    let current = match s.objects.get(&key).cloned() {
        Some(c) => c,
        None if apply && t.sub.is_none() => {
            drop(s);
            let mut obj = p.clone();
            obj["metadata"]["name"] = json!(name);
            let r = create(fake, t, obj.to_string().as_bytes());
            if r.status() == StatusCode::CREATED {
                let mut s = fake.lock();
                let mut fields = Vec::new();
                leaves(&p, "", &mut fields);
                let owners = s.owners.entry(key).or_default();
                for (path, _) in fields {
                    owners.insert(path, manager.clone());
                }
            }
            return r;
        }
        None => {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", t.kind.plural),
            );
        }
    };
    if let Some(rv) = p["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return status_response(
            StatusCode::CONFLICT,
            "Conflict",
            format!("the object \"{name}\" has been modified"),
        );
    }
    if apply && !force {
        let mut fields = Vec::new();
        leaves(&p, "", &mut fields);
        let owners = s.owners.get(&key).cloned().unwrap_or_default();
        let conflicts: Vec<String> = fields
            .iter()
            .filter(|(path, value)| {
                !matches!(
                    path.as_str(),
                    "apiVersion" | "kind" | "metadata.name" | "metadata.namespace"
                ) && owners.get(path).is_some_and(|o| *o != manager)
                    && get_path(&current, path) != Some(value)
            })
            .map(|(path, _)| format!(".{path} (owned by {})", owners[path]))
            .collect();
        if !conflicts.is_empty() {
            return status_response(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            );
        }
    }
    let mut merged = current.clone();
    merge(&mut merged, &p);
    let obj = match replace_into(&t.kind, t.sub.as_deref(), &current, &merged) {
        Ok(o) => o,
        Err(r) => return r,
    };
    write_back(fake, &mut s, t, key, obj, &manager, &p)
}

fn delete(fake: &KubeFake, t: &Target) -> Response {
    let name = t.name.clone().unwrap_or_default();
    let key = obj_key(t, &name);
    let mut s = fake.lock();
    let Some(mut obj) = s.objects.get(&key).cloned() else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", t.kind.plural),
        );
    };
    let has_finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    fake.writes.fetch_add(1, Ordering::SeqCst);
    if has_finalizers {
        if obj["metadata"].get("deletionTimestamp").is_none() {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            s.stamp(&mut obj, Some(key.clone()));
            s.objects.insert(key.clone(), obj.clone());
            s.record(&fake.events, &t.kind.key(), &key.1, "MODIFIED", obj.clone());
        }
        return axum::Json(obj).into_response();
    }
    s.objects.remove(&key);
    s.owners.remove(&key);
    let rv = s.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    s.record(&fake.events, &t.kind.key(), &key.1, "DELETED", obj.clone());
    axum::Json(obj).into_response()
}

fn token_review(fake: &KubeFake, body: &[u8]) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "malformed TokenReview",
        );
    };
    fake.reviews.fetch_add(1, Ordering::SeqCst);
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let info = fake.lock().tokens.get(token).cloned();
    let status_obj = match info {
        Some(info) if wanted.is_empty() || wanted.iter().any(|a| info.audiences.contains(a)) => {
            let mut extra = Map::new();
            if let Some((pod, uid)) = &info.pod {
                extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
                extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
            }
            let auds: Vec<&String> = info
                .audiences
                .iter()
                .filter(|a| wanted.is_empty() || wanted.contains(a))
                .collect();
            json!({
                "authenticated": true,
                "audiences": auds,
                "user": {
                    "username": format!("system:serviceaccount:{}:{}", info.namespace, info.service_account),
                    "uid": "sa-uid",
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", info.namespace), "system:authenticated"],
                    "extra": extra,
                }
            })
        }
        Some(_) => json!({ "authenticated": false, "error": "token audiences do not match" }),
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    let mut out = review;
    out["status"] = status_obj;
    out["metadata"] = json!({ "creationTimestamp": null });
    (StatusCode::CREATED, axum::Json(out)).into_response()
}
