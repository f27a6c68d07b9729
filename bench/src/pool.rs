//! The CSR pool: one fresh EC P-256 key and one SPIFFE identity per CSR,
//! generated before the clock starts so that the load generator spends its
//! time sending, not signing.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

/// One pre-generated request.
#[derive(Debug)]
pub struct Csr {
    pub namespace: String,
    pub service_account: String,
    pub spiffe_id: String,
    pub pem: String,
    pub der: Vec<u8>,
}

/// `n` CSRs, each with its own key, for
/// `spiffe://<trust_domain>/ns/<namespace>/sa/w<i mod identities>`, made on
/// every core.
pub fn generate(
    n: usize,
    identities: usize,
    trust_domain: &str,
    namespace: &str,
) -> anyhow::Result<Vec<Csr>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + per).min(n))
                        .map(|i| one(i % identities.max(1), trust_domain, namespace))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("CSR thread panicked"))??,
            );
        }
        Ok(all)
    })
}

fn one(i: usize, trust_domain: &str, namespace: &str) -> anyhow::Result<Csr> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let service_account = format!("w{i}");
    let spiffe_id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(Csr {
        namespace: namespace.to_owned(),
        service_account,
        spiffe_id,
        pem: csr.pem()?,
        der: csr.der().to_vec(),
    })
}
