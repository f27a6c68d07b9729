//! What the core's integration tests share.

use std::time::{Duration, SystemTime};

use rustls_pki_types::UnixTime;
use signet_core::IssuedChain;
use signet_core::spiffe::TrustDomain;

pub fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

/// webpki, not our own verifier: the leaf chains to a root of its bundle
/// at `now`, for `usage`.
pub fn webpki_verify(
    chain: &IssuedChain,
    now: SystemTime,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchors: Vec<_> = chain
        .trust_bundle()
        .roots()
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let ee = webpki::EndEntityCert::try_from(chain.leaf())?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        chain.intermediates(),
        UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        usage,
        None,
        None,
    )
    .map(|_| ())
}
