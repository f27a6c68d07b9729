//! The Kubernetes writers of the Istio integration, one file each: the
//! `cacerts` keeper for the plug-in CA, root distribution
//! (`istio-ca-root-cert`), and istiod's serving certificate. The CSR signer
//! istiod's RA mode uses, leader election and the shared Kubernetes helpers
//! are in `signet-kubernetes`.
//!
//! Every replica runs them; only the leader writes (`leader` turns false the
//! moment leadership is lost, and writers check it before each write). All
//! writes carry the resourceVersion that was read: a conflict means someone
//! else changed the object, so the controller reads again and re-decides.

mod cacerts_keeper;
mod istiod_tls;
mod roots;

pub use cacerts_keeper::{CacertsKeeper, secret_files};
pub use istiod_tls::{IstiodTlsConfig, IstiodTlsKeeper};
pub use roots::{RootDistributionConfig, RootDistributor};
