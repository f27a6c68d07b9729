//! signet-core: the domain of signet.
//!
//! Everything that decides *what* gets signed lives here, free of HTTP, gRPC,
//! Kubernetes and cloud SDKs. The pipeline has one type per stage:
//!
//! [`csr::VerifiedCsr`] (parsed, key and signature checked) → [`caller::Caller`]
//! (who asks) → [`policy::IssuanceDecision`] (what policy chose) →
//! [`signer::Signer::sign`] → [`chain::IssuedChain`] (checked to chain before it
//! is returned). [`authority::Authority`] runs the pipeline for front-ends.
//!
//! Errors are data: [`error::SignError`] has a stable [`error::ErrorKind`] that
//! each front-end maps to its wire exactly once.

pub mod authority;
pub mod caller;
pub mod chain;
pub mod clock;
pub mod crypto;
pub mod csr;
pub mod delegated;
mod der;
pub mod duration;
pub mod envelope;
pub mod error;
pub mod fsutil;
pub mod issuer;
pub mod key;
pub mod layout;
pub mod metrics;
pub mod mint;
pub mod names;
pub mod once;
pub mod pem;
pub mod policy;
pub mod refresh;
pub mod renewal;
pub mod resilience;
pub mod revocation;
pub mod rotation;
pub mod routing;
pub mod signer;
pub mod spiffe;
pub mod spiffe_bundle;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use authority::Authority;
pub use caller::{AuthMethod, Caller, Principal};
pub use chain::{IssuedChain, TrustBundle};
pub use clock::{Clock, SystemClock};
pub use csr::VerifiedCsr;
pub use error::{ErrorKind, SignError};
pub use policy::{IssuanceDecision, Profile};
pub use signer::{BackendInfo, Signer};
