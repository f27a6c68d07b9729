//! The one shape of every background loop: renewals, reconcilers, pollers.
//!
//! A worker runs *rounds*. Each round does its work and says when the next
//! one is due ([`Next`]): after a period, at a wall-clock time (a renewal at
//! [`RENEW_AT`](crate::clock::RENEW_AT) of a certificate's life), or never.
//! A failed round is retried with one backoff policy (exponential from
//! `base` to `max`, jittered, reset by the next success); whatever the
//! round keeps (a certificate, a bundle) stays in use meanwhile, so the
//! last good value is what the rest of the process sees. A worker may be
//! woken early by a `watch` channel (leadership gained or lost) and stops
//! when that channel's sender is dropped, when a round says
//! [`Next::Stop`] (its owner is gone), or when its task is aborted.
//!
//! The log follows the streak, not the round: the first failure of a
//! streak and every change of error are warnings, identical repeats are
//! debug lines (a file that stays broken does not flood the log), and the
//! recovery is an info line with the count. Wall-clock waits go through [`Clock`]; all sleeping is tokio's,
//! so tests run workers on paused time.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};

/// When a worker's next round is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After this long.
    In(Duration),
    /// At this wall-clock time (now, if it has passed).
    At(SystemTime),
    /// Never: the worker ends.
    Stop,
}

/// Exponential backoff with jitter: `base · 2^failures`, capped at `max`,
/// each wait drawn from `[d/2, d]` so replicas do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// One second doubling to five minutes: for calls to other systems.
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };

    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The same wait after every failure (a poll that keeps its period).
    pub const fn constant(every: Duration) -> Self {
        Self {
            base: every,
            max: every,
        }
    }

    /// The wait after `failures` consecutive failures (the first is 0).
    pub fn wait(&self, failures: u32) -> Duration {
        crate::resilience::backoff(self.base, self.max.max(self.base), failures)
    }
}

/// A background loop: its name (for logs), its backoff, what wakes it.
#[derive(Debug)]
pub struct Worker {
    name: String,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    first: Next,
    wake: Vec<Box<dyn WakeSource>>,
}

/// Something that wakes a worker: any `watch` receiver.
trait WakeSource: Send + Sync + std::fmt::Debug {
    /// Resolves when the value changes; false when the sender is gone.
    fn changed(&mut self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

impl<T: Send + Sync + std::fmt::Debug> WakeSource for watch::Receiver<T> {
    fn changed(&mut self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move { watch::Receiver::changed(self).await.is_ok() })
    }
}

impl Worker {
    /// A worker whose first round runs at once, with the default backoff.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            clock: Arc::new(SystemClock),
            backoff: Backoff::DEFAULT,
            first: Next::In(Duration::ZERO),
            wake: Vec::new(),
        }
    }

    /// The clock [`Next::At`] is measured on.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// When the first round is due (default: now).
    pub fn first(mut self, first: Next) -> Self {
        self.first = first;
        self
    }

    /// Runs a round as soon as `wake` changes (leadership, a rotation's
    /// phase); stops when its sender is dropped. May be given several.
    pub fn wake_on<T: Send + Sync + std::fmt::Debug + 'static>(
        mut self,
        wake: watch::Receiver<T>,
    ) -> Self {
        self.wake.push(Box::new(wake));
        self
    }

    /// Runs `round` on its own task until the worker stops.
    pub fn spawn<F, Fut, E>(self, round: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Next, E>> + Send + 'static,
        E: Display + 'static,
    {
        tokio::spawn(self.run(round))
    }

    /// Runs `round` on `owner` on its own task until the worker stops or
    /// `owner` is dropped (the worker holds it only during a round).
    pub fn spawn_for<T, F, Fut, E>(self, owner: &Arc<T>, mut round: F) -> JoinHandle<()>
    where
        T: Send + Sync + 'static,
        F: FnMut(Arc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Next, E>> + Send + 'static,
        E: Display + 'static,
    {
        let weak = Arc::downgrade(owner);
        self.spawn(move || {
            let round = weak.upgrade().map(&mut round);
            async move {
                match round {
                    Some(round) => round.await,
                    None => Ok(Next::Stop),
                }
            }
        })
    }

    /// Runs `round` until the worker stops.
    pub async fn run<F, Fut, E>(mut self, mut round: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Next, E>>,
        E: Display,
    {
        let mut next = self.first;
        let mut failures = 0u32;
        let mut last_error = String::new();
        loop {
            let wait = match next {
                Next::Stop => return,
                Next::In(d) => d,
                Next::At(t) => t.duration_since(self.clock.now()).unwrap_or_default(),
            };
            if !self.sleep(wait).await {
                return;
            }
            next = match round().await {
                Ok(next) => {
                    if failures > 0 {
                        tracing::info!(worker = %self.name, failures, "recovered");
                    }
                    failures = 0;
                    next
                }
                Err(e) => {
                    let retry_in = self.backoff.wait(failures);
                    failures = failures.saturating_add(1);
                    let error = e.to_string();
                    if failures == 1 || error != last_error {
                        tracing::warn!(worker = %self.name, %error, failures, ?retry_in, "round failed");
                    } else {
                        tracing::debug!(worker = %self.name, %error, failures, ?retry_in, "round failed again");
                    }
                    last_error = error;
                    Next::In(retry_in)
                }
            };
        }
    }

    /// Sleeps `wait`, or less if woken; false when a wake channel closed.
    async fn sleep(&mut self, wait: Duration) -> bool {
        if self.wake.is_empty() {
            tokio::time::sleep(wait).await;
            return true;
        }
        let mut changes: Vec<_> = self.wake.iter_mut().map(|w| w.changed()).collect();
        let any_change = std::future::poll_fn(|cx| {
            for c in &mut changes {
                if let std::task::Poll::Ready(open) = c.as_mut().poll(cx) {
                    return std::task::Poll::Ready(open);
                }
            }
            std::task::Poll::Pending
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            open = any_change => open,
        }
    }
}

/// A value kept fresh by a worker and published through `watch`: the last
/// good value stays published while refreshing fails.
pub fn publish<T, F, Fut, E>(
    worker: Worker,
    every: Duration,
    mut read: F,
) -> (watch::Receiver<Option<Arc<T>>>, JoinHandle<()>)
where
    T: PartialEq + Send + Sync + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let (tx, rx) = watch::channel(None::<Arc<T>>);
    let tx = Arc::new(tx);
    let handle = worker.spawn(move || {
        let value = read();
        let tx = tx.clone();
        async move {
            if tx.is_closed() {
                return Ok::<_, E>(Next::Stop);
            }
            let value = value.await?;
            tx.send_if_modified(|held| {
                if held.as_deref() == Some(&value) {
                    return false;
                }
                *held = Some(Arc::new(value));
                true
            });
            Ok(Next::In(every))
        }
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::clock::{ManualClock, elapsed, monotonic};

    /// Rounds record the paused-clock time they ran at, in whole seconds.
    fn recorder() -> (Arc<Mutex<Vec<u64>>>, tokio::time::Instant) {
        (Arc::new(Mutex::new(Vec::new())), monotonic())
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_run_when_each_says() {
        let (times, start) = recorder();
        let t = times.clone();
        let n = Arc::new(AtomicU32::new(0));
        Worker::new("test")
            .first(Next::In(Duration::from_secs(5)))
            .run(|| {
                t.lock().unwrap().push(elapsed(start).as_secs());
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    Ok::<_, String>(match i {
                        0 => Next::In(Duration::from_secs(10)),
                        1 => Next::In(Duration::from_secs(30)),
                        _ => Next::Stop,
                    })
                }
            })
            .await;
        assert_eq!(*times.lock().unwrap(), vec![5, 15, 45]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_within_bounds_and_success_resets() {
        let (times, start) = recorder();
        let t = times.clone();
        let n = Arc::new(AtomicU32::new(0));
        Worker::new("test")
            .backoff(Backoff::new(
                Duration::from_secs(4),
                Duration::from_secs(16),
            ))
            .run(|| {
                t.lock().unwrap().push(elapsed(start).as_millis() as u64);
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    match i {
                        0..=3 => Err("upstream down"),
                        4 => Ok(Next::In(Duration::from_secs(100))),
                        5 => Err("down again"),
                        _ => Ok(Next::Stop),
                    }
                }
            })
            .await;
        let times = times.lock().unwrap().clone();
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // Waits after failures 1..4: [2,4] s, [4,8] s, [8,16] s, [8,16] s (capped).
        let bounds = [(2000, 4000), (4000, 8000), (8000, 16000), (8000, 16000)];
        for (gap, (lo, hi)) in gaps.iter().zip(bounds) {
            assert!(
                (lo..=hi).contains(gap),
                "gap {gap} ms not in [{lo}, {hi}]: {gaps:?}"
            );
        }
        assert_eq!(gaps[4], 100_000, "success waits what it asked");
        // The streak after the success starts from the base again.
        assert!((2000..=4000).contains(&gaps[5]), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_deadlines_follow_the_clock() {
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let due = SystemTime::UNIX_EPOCH + Duration::from_secs(3600);
        let (times, start) = recorder();
        let t = times.clone();
        Worker::new("renewal")
            .clock(clock.clone())
            .first(Next::At(due))
            .run(|| {
                t.lock().unwrap().push(elapsed(start).as_secs());
                // A deadline already passed runs at once.
                let first = t.lock().unwrap().len() == 1;
                async move {
                    Ok::<_, String>(if first {
                        Next::At(SystemTime::UNIX_EPOCH)
                    } else {
                        Next::Stop
                    })
                }
            })
            .await;
        assert_eq!(*times.lock().unwrap(), vec![3600, 3600]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_runs_a_round_early_and_a_closed_channel_stops() {
        let (tx, rx) = watch::channel(false);
        let (times, start) = recorder();
        let t = times.clone();
        let worker = Worker::new("keeper").wake_on(rx).spawn(move || {
            t.lock().unwrap().push(elapsed(start).as_secs());
            async { Ok::<_, String>(Next::In(Duration::from_secs(60))) }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*times.lock().unwrap(), vec![0, 10]);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), worker)
            .await
            .expect("the worker stops when its wake channel closes")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_stops_when_its_owner_is_dropped() {
        let owner = Arc::new(AtomicU32::new(0));
        let worker = Worker::new("owned").spawn_for(&owner, |o| async move {
            o.fetch_add(1, Ordering::Relaxed);
            Ok::<_, String>(Next::In(Duration::from_secs(10)))
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(owner.load(Ordering::Relaxed), 3);
        drop(owner);
        tokio::time::timeout(Duration::from_secs(11), worker)
            .await
            .expect("the worker stops once its owner is gone")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn published_values_keep_the_last_good_one() {
        let n = Arc::new(AtomicU32::new(0));
        let (mut rx, task) = publish(
            Worker::new("bundle").backoff(Backoff::constant(Duration::from_secs(1))),
            Duration::from_secs(30),
            move || {
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    match i {
                        0 | 1 => Ok(String::from("root-a")),
                        2 => Err("read failed"),
                        _ => Ok(String::from("root-b")),
                    }
                }
            },
        );
        rx.changed().await.unwrap();
        assert_eq!(
            rx.borrow_and_update().as_deref().map(String::as_str),
            Some("root-a")
        );
        // An unchanged read publishes nothing; a failed one keeps root-a.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(!rx.has_changed().unwrap());
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_deref().map(String::as_str), Some("root-b"));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the publisher stops when nobody listens")
            .unwrap();
    }
}
