//! Latency recording and the JSON report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::Target;

/// What one worker saw; merged at the end.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Latencies of successful requests, in microseconds.
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// Answers that were retried (`--retry-for`), by code.
    retried: BTreeMap<String, u64>,
    pub last_done: Option<Instant>,
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration, done: Instant) {
        self.latencies_us
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        self.done(done);
    }

    pub fn error(&mut self, code: String, done: Instant) {
        *self.errors.entry(code).or_default() += 1;
        self.done(done);
    }

    /// An answer the worker retried.
    pub fn retried(&mut self, code: String) {
        *self.retried.entry(code).or_default() += 1;
    }

    fn done(&mut self, at: Instant) {
        self.last_done = Some(self.last_done.map_or(at, |d| d.max(at)));
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (code, n) in other.retried {
            *self.retried.entry(code).or_default() += n;
        }
        if let Some(at) = other.last_done {
            self.done(at);
        }
    }
}

/// Latency of successful requests, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub target: Target,
    pub url: String,
    pub connections: usize,
    /// Offered rate (requests/s) when the load was scheduled.
    pub rate: Option<f64>,
    /// Requests sent in count mode (a storm).
    pub requests: Option<u64>,
    /// Measured wall time: the measurement window, or in count mode from the
    /// first connection to the last answer.
    pub elapsed_s: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Answers retried before the final one (`--retry-for`), by code.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub retried: BTreeMap<String, u64>,
    /// Successful signings per second.
    pub throughput: f64,
    pub latency_ms: Option<Latency>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: Option<String>,
        target: Target,
        url: &str,
        connections: usize,
        rate: Option<f64>,
        requests: Option<u64>,
        elapsed: Duration,
        mut rec: Recorder,
    ) -> Self {
        rec.latencies_us.sort_unstable();
        let l = &rec.latencies_us;
        let ms = |us: u32| f64::from(us) / 1000.0;
        let pct = |p: f64| ms(l[((p * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1]);
        let latency_ms = (!l.is_empty()).then(|| Latency {
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            max: ms(*l.last().expect("non-empty")),
            mean: l.iter().map(|&u| f64::from(u)).sum::<f64>() / l.len() as f64 / 1000.0,
        });
        let ok = l.len() as u64;
        let secs = elapsed.as_secs_f64();
        Self {
            label,
            target,
            url: url.to_owned(),
            connections,
            rate,
            requests,
            elapsed_s: secs,
            ok,
            errors: rec.errors,
            retried: rec.retried,
            throughput: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            latency_ms,
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let lat = self.latency_ms.as_ref().map_or("-".to_owned(), |l| {
            format!(
                "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.p50, l.p90, l.p99, l.max
            )
        });
        let errors: u64 = self.errors.values().sum();
        let retried: u64 = self.retried.values().sum();
        format!(
            "{}: {} ok in {:.2} s = {:.0}/s; {lat}; {errors} errors {:?}; {retried} retried",
            self.label.as_deref().unwrap_or(&self.url),
            self.ok,
            self.elapsed_s,
            self.throughput,
            self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut rec = Recorder::default();
        let now = Instant::now();
        for us in 1..=100u64 {
            rec.ok(Duration::from_micros(us * 1000), now);
        }
        rec.error("UNAVAILABLE".into(), now);
        let r = Report::new(
            None,
            Target::SignetGrpc,
            "x",
            1,
            None,
            None,
            Duration::from_secs(2),
            rec,
        );
        let l = r.latency_ms.expect("latency");
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(r.ok, 100);
        assert_eq!(r.throughput, 50.0);
        assert_eq!(r.errors.get("UNAVAILABLE"), Some(&1));
    }
}
