//! The one request envelope every front-end wraps a signing request in:
//! shedding when full, a deadline, the outcome label, request metrics and
//! the log line. The Istio gRPC service, the REST endpoint, the Kubernetes
//! CSR signer and the cert-manager issuer each map the [`SignError`] that
//! comes out to their wire (a gRPC status, an HTTP answer, a condition) —
//! and do nothing else of the above themselves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::clock::{elapsed, monotonic};
use crate::error::{ErrorKind, SignError};
use crate::metrics::Metrics;

/// How one front-end serves requests for one authority.
#[derive(Debug, Clone)]
pub struct Envelope {
    frontend: &'static str,
    authority: String,
    /// Requests in flight before new ones are shed (`None`: never shed —
    /// a controller works through its queue instead).
    in_flight: Option<Arc<Semaphore>>,
    timeout: Duration,
    metrics: Metrics,
}

/// What a request's work reports besides its result: who asked (once
/// known), for the log line.
#[derive(Debug)]
pub struct Handled<T> {
    pub principal: Option<String>,
    /// `(route, authority)` when the front-end routed the request (metrics
    /// then name them instead of the envelope's own authority).
    pub route: Option<(String, String)>,
    pub result: Result<T, SignError>,
}

impl<T> Handled<T> {
    /// A result for a caller known by `principal`.
    pub fn by(principal: impl Into<String>, result: Result<T, SignError>) -> Self {
        Self {
            principal: Some(principal.into()),
            route: None,
            result,
        }
    }

    /// The same result, on the `(route, authority)` the work chose, if it
    /// chose one.
    pub fn routed(mut self, route: Option<(String, String)>) -> Self {
        self.route = route;
        self
    }

    /// A result before the caller is known (authentication failed).
    pub fn anonymous(result: Result<T, SignError>) -> Self {
        Self {
            principal: None,
            route: None,
            result,
        }
    }
}

impl Envelope {
    /// `max_in_flight`: requests served at once before new ones are shed
    /// with `overloaded` (`None` for controllers); `timeout`: the deadline
    /// after which a request answers `timeout`.
    pub fn new(
        frontend: &'static str,
        authority: impl Into<String>,
        max_in_flight: Option<usize>,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            frontend,
            authority: authority.into(),
            in_flight: max_in_flight.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            timeout,
            metrics,
        }
    }

    /// Runs `work` inside the envelope: shed at once when full, cut at the
    /// deadline, counted and timed under its outcome (`issued` or the error
    /// code), and logged when refused (`info`) or failed on our side or the
    /// upstream's (`error`). `peer` names the other end in the log line.
    pub async fn serve<T, F>(&self, peer: &str, work: F) -> Result<T, SignError>
    where
        F: Future<Output = Handled<T>>,
    {
        let started = monotonic();
        let permit = match &self.in_flight {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return self.finish(
                        started,
                        peer,
                        Handled::anonymous(Err(SignError::Overloaded { retry_after: None })),
                    );
                }
            },
            None => None,
        };
        let handled = match tokio::time::timeout(self.timeout, work).await {
            Ok(h) => h,
            Err(_) => Handled::anonymous(Err(SignError::Timeout)),
        };
        drop(permit);
        self.finish(started, peer, handled)
    }

    fn finish<T>(
        &self,
        started: tokio::time::Instant,
        peer: &str,
        handled: Handled<T>,
    ) -> Result<T, SignError> {
        let outcome = match &handled.result {
            Ok(_) => "issued",
            Err(e) => e.kind().code(),
        };
        let (route, authority) = match &handled.route {
            Some((r, a)) => (r.as_str(), a.as_str()),
            None => (crate::routing::DEFAULT_ROUTE, self.authority.as_str()),
        };
        self.metrics
            .observe(self.frontend, route, authority, outcome, elapsed(started));
        if let Err(e) = &handled.result {
            log_refusal(self.frontend, peer, handled.principal.as_deref(), route, e);
        }
        handled.result
    }
}

/// The log line for a request that did not get a certificate: an `error`
/// when signet or its upstream failed, `info` when the request was refused.
pub fn log_refusal(
    frontend: &str,
    peer: &str,
    principal: Option<&str>,
    route: &str,
    e: &SignError,
) {
    let principal = principal.unwrap_or("-");
    let code = e.kind().code();
    match e.kind() {
        ErrorKind::Internal
        | ErrorKind::BadChain
        | ErrorKind::BackendRejected
        | ErrorKind::BackendUnavailable => {
            tracing::error!(frontend, peer, principal, route, code, error = %e, "signing failed")
        }
        _ => {
            tracing::info!(frontend, peer, principal, route, code, reason = e.reason().unwrap_or("-"), error = %e, "request refused")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(max: Option<usize>, timeout: Duration) -> (Envelope, Metrics) {
        let metrics = Metrics::default();
        (
            Envelope::new("test", "mesh", max, timeout, metrics.clone()),
            metrics,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_envelope_sheds_and_a_slow_request_times_out() {
        let (env, metrics) = envelope(Some(1), Duration::from_secs(2));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let busy = {
            let env = env.clone();
            tokio::spawn(async move {
                env.serve("p", async move {
                    let _ = rx.await;
                    Handled::by("a", Ok(()))
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        let shed = env.serve("p", async { Handled::by("b", Ok(())) }).await;
        assert_eq!(shed.unwrap_err().kind(), ErrorKind::Overloaded);
        tx.send(()).unwrap();
        busy.await.unwrap().unwrap();

        let slow = env
            .serve("p", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Handled::by("c", Ok(()))
            })
            .await;
        assert_eq!(slow.unwrap_err().kind(), ErrorKind::Timeout);
        assert_eq!(metrics.count("test", "mesh", "issued"), 1);
        assert_eq!(metrics.count("test", "mesh", "overloaded"), 1);
        assert_eq!(metrics.count("test", "mesh", "timeout"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_envelope_never_sheds() {
        let (env, metrics) = envelope(None, Duration::from_secs(2));
        for _ in 0..3 {
            env.serve("p", async {
                Handled::<()>::anonymous(Err(SignError::NotReady("x".into())))
            })
            .await
            .unwrap_err();
        }
        assert_eq!(metrics.count("test", "mesh", "not_ready"), 3);
    }
}
