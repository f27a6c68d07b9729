//! A value read from an outside system and kept fresh: re-read when older
//! than a maximum age, one read at a time, the last good value kept while a
//! re-read fails for a reason that may pass, and the last error kept for
//! readiness. AWS Private CA's and Google CAS's trust bundles use it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::clock::{elapsed, monotonic};
use crate::error::SignError;

#[derive(Debug)]
struct Stamped<T> {
    value: Arc<T>,
    read_at: tokio::time::Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Refreshed<T> {
    current: ArcSwapOption<Stamped<T>>,
    last_error: ArcSwapOption<String>,
    reading: tokio::sync::Mutex<()>,
}

impl<T> Default for Refreshed<T> {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            reading: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Refreshed<T> {
    /// The last value read, however old.
    pub fn latest(&self) -> Option<Arc<T>> {
        self.current.load_full().map(|s| s.value.clone())
    }

    /// Why the last read failed, if it did.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// Reads now (after any read in progress), keeping the value or the
    /// error.
    pub async fn refresh<F>(&self, read: F) -> Result<Arc<T>, SignError>
    where
        F: Future<Output = Result<T, SignError>>,
    {
        let _one = self.reading.lock().await;
        match read.await {
            Ok(value) => {
                let value = Arc::new(value);
                self.current.store(Some(Arc::new(Stamped {
                    value: value.clone(),
                    read_at: monotonic(),
                })));
                self.last_error.store(None);
                Ok(value)
            }
            Err(e) => {
                self.last_error.store(Some(Arc::new(e.to_string())));
                Err(e)
            }
        }
    }

    /// The value while younger than `max_age`; else a new read, or — when
    /// that fails for a reason that may pass — the last good value (logged
    /// as `what`).
    pub async fn get<F>(
        &self,
        max_age: Duration,
        what: &str,
        read: impl FnOnce() -> F,
    ) -> Result<Arc<T>, SignError>
    where
        F: Future<Output = Result<T, SignError>>,
    {
        if let Some(s) = self.current.load_full()
            && elapsed(s.read_at) < max_age
        {
            return Ok(s.value.clone());
        }
        match self.refresh(read()).await {
            Ok(v) => Ok(v),
            Err(e) => match self.latest() {
                Some(v) if e.kind().is_retryable() => {
                    tracing::warn!(what, error = %e, "refresh failed; using the previous value");
                    Ok(v)
                }
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fresh_values_are_reused_and_the_last_good_one_outlives_an_outage() {
        let r: Refreshed<u32> = Refreshed::default();
        let age = Duration::from_secs(60);
        assert_eq!(*r.get(age, "n", || async { Ok(1) }).await.unwrap(), 1);
        // Fresh: not read again.
        assert_eq!(*r.get(age, "n", || async { Ok(2) }).await.unwrap(), 1);
        tokio::time::advance(age).await;
        // Stale and the source is down: the last good value, and the error kept.
        let down = || async { Err(SignError::BackendUnavailable("down".into())) };
        assert_eq!(*r.get(age, "n", down).await.unwrap(), 1);
        assert!(r.last_error().is_some());
        // A permanent failure is not papered over.
        let refused = || async { Err(SignError::BackendRejected("no".into())) };
        assert!(r.get(age, "n", refused).await.is_err());
        assert_eq!(*r.get(age, "n", || async { Ok(3) }).await.unwrap(), 3);
        assert!(r.last_error().is_none());
    }
}
