//! The TLS accept loop shared by signet's HTTP listeners.
//!
//! Each connection gets a handshake deadline, its peer information (address
//! and, when a client certificate was verified, its principal) attached to
//! every request, and HTTP/1.1 or HTTP/2 by ALPN. A connection with no
//! request in flight for `idle_timeout` is closed gracefully (HTTP/2 has no
//! idle timeout of its own: its keep-alive pings would hold it open for
//! ever). Shutdown stops accepting, lets in-flight requests finish within a
//! grace period, then closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

pub use signet_core::caller::PeerInfo;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl From<&crate::config::RestLimits> for ListenerLimits {
    fn from(l: &crate::config::RestLimits) -> Self {
        Self {
            handshake_timeout: l.handshake_timeout.get(),
            max_connections: l.max_connections,
            shutdown_grace: l.shutdown_grace.get(),
            idle_timeout: l.idle_timeout.get(),
        }
    }
}

impl From<&signet_istio::config::IstioLimits> for ListenerLimits {
    fn from(l: &signet_istio::config::IstioLimits) -> Self {
        Self {
            handshake_timeout: l.handshake_timeout.get(),
            max_connections: l.max_connections,
            shutdown_grace: l.shutdown_grace.get(),
            idle_timeout: l.idle_timeout.get(),
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    base: tokio::time::Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: signet_core::clock::monotonic(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        signet_core::clock::elapsed(self.base).as_millis() as u64
    }

    fn enter(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(self.clone())
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let builder = Arc::new(http_builder(&limits));
    let local = listener.local_addr().ok();

    loop {
        let (tcp, addr) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, max = limits.max_connections, "connection limit reached; closing new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            builder: builder.clone(),
            stop: shutdown.clone(),
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        };
        tokio::spawn(async move {
            let _permit = permit;
            conn.serve(tcp, addr).await;
        });
    }
    drop(listener);
    tracing::info!(addr = ?local, grace = ?limits.shutdown_grace, "listener closed; draining connections");
    // Every connection holds a permit until it has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(addr = ?local, "grace period over; closing remaining connections");
    }
}

/// HTTP/1.1 with a header deadline, HTTP/2 with keep-alive pings.
fn http_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// What one accepted connection needs.
struct Connection {
    acceptor: TlsAcceptor,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Connection {
    /// The TLS handshake within its deadline, then requests until the peer
    /// leaves, the connection idles out, or shutdown drains it.
    async fn serve(mut self, tcp: tokio::net::TcpStream, addr: std::net::SocketAddr) {
        let tls =
            match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
        let presented = tls.get_ref().1.peer_certificates();
        let client_cert = presented
            .and_then(|c| c.first())
            .map(|c| Arc::<[u8]>::from(c.as_ref()));
        let client_chain = presented.map(|c| {
            c.iter()
                .map(|d| d.as_ref().to_vec())
                .collect::<Arc<[Vec<u8>]>>()
        });
        let peer = PeerInfo {
            addr,
            client_cert,
            client_chain,
        };
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let router = self.router.clone();
        let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let guard = seen.enter();
            let call = router.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let r = call.await;
                drop(guard);
                r
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
            .into_owned();
        tokio::pin!(conn);
        let mut tick =
            tokio::time::interval((self.idle_timeout / 4).max(Duration::from_millis(100)));
        let mut closing = *self.stop.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick(), if !closing => {
                    if activity.idle_for() >= self.idle_timeout {
                        tracing::debug!(peer = %addr, "closing idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}
