//! At most once, when a cache lags one's own writes.
//!
//! A Kubernetes controller reads objects from a watch cache and writes them
//! through the API. Right after it writes a certificate into an object, the
//! cache can still hand it the object as it was before (the watch event is a
//! few milliseconds behind), and a controller that forgot it had signed
//! would sign again. [`Finished`] remembers, for a while, the objects this
//! process has finished, so that a stale copy is recognised and left alone.
//! (The real API server showed this; the in-repo fake, whose watch is
//! synchronous, never did.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long a finished object is remembered: far longer than any watch lag.
pub const FINISHED_MEMORY: Duration = Duration::from_secs(600);

/// Object UIDs this process finished, with when.
#[derive(Debug, Default)]
pub struct Finished {
    done: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Finished {
    /// Records that `uid` is finished (its result is written).
    pub fn insert(&self, uid: &str) {
        let now = crate::clock::monotonic();
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.retain(|_, at| now.duration_since(*at) < FINISHED_MEMORY);
        done.insert(uid.to_owned(), now);
    }

    /// Whether `uid` was finished here recently (a copy without the result
    /// is then stale).
    pub fn contains(&self, uid: &str) -> bool {
        let now = crate::clock::monotonic();
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .is_some_and(|at| now.duration_since(*at) < FINISHED_MEMORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_for_a_while() {
        let f = Finished::default();
        assert!(!f.contains("a"));
        f.insert("a");
        assert!(f.contains("a"));
        tokio::time::advance(FINISHED_MEMORY + Duration::from_secs(1)).await;
        assert!(!f.contains("a"));
    }
}
