//! signet's fuzz targets; see `targets.rs`.

#![allow(
    clippy::disallowed_methods,
    reason = "tests and benchmarks run real servers and processes on real time"
)]
#![allow(missing_docs)]

pub mod targets;
