//! Injectable time: the only module that reads a clock.
//!
//! - **Wall-clock time** (certificate validity, condition timestamps, lease
//!   times) comes from a [`Clock`] handed in by whoever builds the
//!   component; tests pin or move it ([`ManualClock`]).
//! - **Monotonic time** (timeouts, cache ages, rate limits, latency) comes
//!   from [`monotonic`] and [`elapsed`], which follow tokio's clock, so tests
//!   pause and advance it (`#[tokio::test(start_paused = true)]`).
//!
//! clippy's `disallowed-methods` (see `clippy.toml`) refuses
//! `SystemTime::now`, `Instant::now`, `Instant::elapsed`, `jiff::Timestamp::now`
//! and the like everywhere else in the product's code.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods, reason = "the one wall-clock read")]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Now, on the monotonic clock (tokio's, so paused time applies in tests).
#[allow(clippy::disallowed_methods, reason = "the one monotonic-clock read")]
pub fn monotonic() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Time passed since `start` (a [`monotonic`] reading), zero if none.
pub fn elapsed(start: tokio::time::Instant) -> Duration {
    monotonic().saturating_duration_since(start)
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    pub fn new(now: SystemTime) -> Self {
        Self {
            now: Mutex::new(now),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds since the Unix epoch, saturating at zero for times before it.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The `SystemTime` for seconds since the Unix epoch (clamped at the epoch).
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs <= 0 {
        SystemTime::UNIX_EPOCH
    } else {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }
}

/// RFC 3339 rendering (UTC, seconds precision) for APIs and logs.
pub fn rfc3339(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| unix_seconds(t).to_string())
}

/// The fraction of a certificate's (or lease's) life after which signet
/// renews it unless configured otherwise: two thirds, as Istio, SPIRE and
/// cert-manager do.
pub const RENEW_AT: f64 = 2.0 / 3.0;

/// When something valid from `not_before` to `not_after` is due for
/// renewal: `fraction` of the way through its life.
pub fn renew_time(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life.mul_f64(fraction.clamp(0.0, 1.0))
}

/// RFC 3339 timestamps in files signet writes (revocations, rotations).
pub(crate) mod rfc3339_serde {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::clock::rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 with nanoseconds, for instants compared with the clock (a
/// re-key request against the time an intermediate was installed).
pub(crate) mod rfc3339_nanos_serde {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_nanos(*t).to_string())
    }

    pub use super::rfc3339_serde::deserialize;
}
