//! A recording, fault-injecting HTTP proxy for JSON APIs.
//!
//! Put it between a client and a real (or emulated) server to see exactly
//! what the client sent — where the emulator ignores a field, the request is
//! the evidence — and to answer chosen calls with errors the emulator never
//! produces (throttling, "still in progress").
//!
//! Calls are named by their `X-Amz-Target` header (`ACMPrivateCA.IssueCertificate`)
//! or, without one, by `METHOD /path`.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Debug, Clone)]
struct Fault {
    operation: String,
    remaining: u32,
    status: u16,
    body: Value,
}

#[derive(Debug, Default)]
struct Inner {
    upstream: String,
    recorded: Vec<(String, Value)>,
    faults: Vec<Fault>,
    /// (operation, JSON pointer, value) set in every successful answer.
    patches: Vec<(String, String, Value)>,
}

/// A running proxy on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct JsonProxy {
    addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl JsonProxy {
    /// Starts a proxy to `upstream` (e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let proxy = Self {
            addr: listener.local_addr().expect("addr"),
            inner,
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the next `times` calls of `operation` with `status` and a JSON body.
    pub fn fail(&self, operation: &str, times: u32, status: u16, body: Value) {
        self.lock().faults.push(Fault {
            operation: operation.to_owned(),
            remaining: times,
            status,
            body,
        });
    }

    /// Sets `pointer` (e.g. `/CertificateAuthority/UsageMode`) to `value` in
    /// every successful answer to `operation`: what the emulator does not
    /// model (moto reports every CA as SHORT_LIVED_CERTIFICATE).
    pub fn patch(&self, operation: &str, pointer: &str, value: Value) {
        self.lock()
            .patches
            .push((operation.to_owned(), pointer.to_owned(), value));
    }

    /// The JSON bodies sent for `operation`, in order (failed ones included).
    pub fn requests(&self, operation: &str) -> Vec<Value> {
        self.lock()
            .recorded
            .iter()
            .filter(|(op, _)| op == operation)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn handle(
    State(proxy): State<JsonProxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{method} {}", uri.path()));
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (fault, upstream, patches) = {
        let mut inner = proxy.lock();
        inner.recorded.push((operation.clone(), json));
        let fault = inner
            .faults
            .iter_mut()
            .find(|f| f.operation == operation && f.remaining > 0)
            .map(|f| {
                f.remaining -= 1;
                f.clone()
            });
        let patches: Vec<(String, Value)> = inner
            .patches
            .iter()
            .filter(|(op, _, _)| *op == operation)
            .map(|(_, p, v)| (p.clone(), v.clone()))
            .collect();
        (fault, inner.upstream.clone(), patches)
    };
    if let Some(f) = fault {
        return (
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [("content-type", "application/x-amz-json-1.1")],
            f.body.to_string(),
        )
            .into_response();
    }
    let client = reqwest::Client::new();
    let target = format!(
        "{upstream}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut request = client.request(method, target).body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status();
            let mut out = HeaderMap::new();
            for (name, value) in r.headers() {
                if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                    out.insert(name.clone(), value.clone());
                }
            }
            let mut bytes = r.bytes().await.unwrap_or_default();
            if status.is_success()
                && !patches.is_empty()
                && let Ok(mut json) = serde_json::from_slice::<Value>(&bytes)
            {
                for (pointer, value) in patches {
                    if let Some(slot) = json.pointer_mut(&pointer) {
                        *slot = value;
                    } else if let Some((parent, key)) = pointer.rsplit_once('/')
                        && let Some(Value::Object(o)) = json.pointer_mut(parent)
                    {
                        o.insert(key.to_owned(), value);
                    }
                }
                bytes = serde_json::to_vec(&json).unwrap_or_default().into();
            }
            (status, out, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
