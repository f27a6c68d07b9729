//! Human-friendly durations in configuration and requests ("24h", "90m", "30d").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write them: `90s`, `15m`, `24h`, `30d`,
/// `1h30m`. Bare numbers are refused so that "24" never means 24 seconds by
/// accident.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write it like 90s, 15m, 24h or 30d)")]
pub struct DurationError {
    input: String,
    reason: String,
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DurationError {
            input: s.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        if trimmed.len() > 64 {
            return Err(err("too long"));
        }
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("a unit is required"));
        }
        if trimmed.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        humantime::parse_duration(trimmed)
            .map(HumanDuration)
            .map_err(|e| err(&e.to_string()))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if secs == 0 {
            return write!(f, "{}ms", self.0.as_millis());
        }
        let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let mut out = String::new();
        for (v, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
            if v > 0 {
                out.push_str(&format!("{v}{unit}"));
            }
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let h = |s: &str| s.parse::<HumanDuration>().unwrap().get().as_secs();
        assert_eq!(h("90s"), 90);
        assert_eq!(h("15m"), 900);
        assert_eq!(h("24h"), 86_400);
        assert_eq!(h("30d"), 30 * 86_400);
        assert_eq!(h("1h30m"), 5_400);
    }

    #[test]
    fn refuses_ambiguous_or_hostile_forms() {
        for bad in ["", "24", "-1h", "abc", "1y2", "h", &"9".repeat(100)] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(
            HumanDuration::from_secs(86_400 + 3_600 + 5).to_string(),
            "1d1h5s"
        );
    }
}
