//! Revocation: the serials an authority has revoked (a file signet and
//! `signet revoke` share) and the CRL its in-process issuing CA signs for
//! them.
//!
//! The file is YAML, one entry per revoked certificate:
//!
//! ```yaml
//! revoked:
//!   - serial: 4f1c0a...        # hex; `openssl x509 -serial`'s form (4F1C0A, 00:4F:..) reads the same
//!     revoked_at: 2026-12-06T10:00:00Z
//!     reason: key_compromise   # optional
//! ```
//!
//! A CRL's thisUpdate is the later of the start of the current hour and the
//! newest revocation (so a new entry always makes a newer CRL), its number
//! is thisUpdate in Unix seconds, and it is valid for [`CRL_VALIDITY`]:
//! replicas reading the same file agree on all three, and numbers only grow.
//! Its Authority Key Identifier is the CA certificate's own Subject Key
//! Identifier (CAs from Vault, AWS Private CA or OpenSSL use SHA-1 ones).

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::{from_unix_seconds, unix_seconds};
use crate::issuer::LocalCa;

/// How long a CRL signet makes is valid (its nextUpdate after thisUpdate).
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Why a certificate was revoked (RFC 5280 CRLReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
    ];

    /// The name in the revocation file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key_compromise",
            Reason::CaCompromise => "ca_compromise",
            Reason::AffiliationChanged => "affiliation_changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation_of_operation",
        }
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;

    /// `key_compromise` or `key-compromise`.
    fn from_str(s: &str) -> Result<Self, String> {
        let want = s.replace('-', "_");
        Reason::ALL
            .into_iter()
            .find(|r| r.name() == want)
            .ok_or_else(|| {
                let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
                format!("{s:?} is not a revocation reason ({})", names.join(", "))
            })
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// Lower-case hex without separators or leading zeros.
    pub serial: String,
    #[serde(with = "crate::clock::rfc3339_serde")]
    pub revoked_at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// Why a revocation list cannot be read or changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevocationError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("serial {0:?} is not a hexadecimal certificate serial number")]
    BadSerial(String),
    #[error("serial {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("signing the CRL: {0}")]
    Sign(String),
}

/// The revoked serials of one authority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// A serial as signet writes it: lower-case hex, no separators, no
/// leading zeros (`4F:1C:0A`, `0x4f1c0a` and `004f1c0a` are all `4f1c0a`).
pub fn normalise_serial(s: &str) -> Result<String, RevocationError> {
    let hex: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let trimmed = hex.trim_start_matches('0');
    if hex.is_empty() || trimmed.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(RevocationError::BadSerial(s.to_owned()));
    }
    if trimmed.is_empty() {
        return Err(RevocationError::BadSerial(s.to_owned()));
    }
    Ok(trimmed.to_owned())
}

/// `0a1b2c` → `0a:1b:2c`, as Vault and AWS Private CA write serials (an
/// odd length gets a leading zero).
pub fn colon_serial(serial_hex: &str) -> String {
    let padded = if serial_hex.len() % 2 == 1 {
        format!("0{serial_hex}")
    } else {
        serial_hex.to_owned()
    };
    padded
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

impl RevocationList {
    /// Reads `path`; a missing file is an empty list.
    pub fn read(path: &Path) -> Result<Self, RevocationError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(RevocationError::Read(
                    path.display().to_string(),
                    e.to_string(),
                ));
            }
        };
        let mut list: Self = serde_yaml_ng::from_str(&text)
            .map_err(|e| RevocationError::Read(path.display().to_string(), e.to_string()))?;
        // Entries written by hand may carry `openssl x509 -serial`'s form.
        for r in &mut list.revoked {
            r.serial = normalise_serial(&r.serial)?;
        }
        Ok(list)
    }

    /// Adds a revocation; refuses a bad or already revoked serial.
    pub fn revoke(
        &mut self,
        serial: &str,
        at: SystemTime,
        reason: Option<Reason>,
    ) -> Result<&Revoked, RevocationError> {
        let serial = normalise_serial(serial)?;
        if self.contains(&serial) {
            return Err(RevocationError::AlreadyRevoked(serial));
        }
        self.revoked.push(Revoked {
            serial,
            revoked_at: at,
            reason,
        });
        Ok(self.revoked.last().expect("just pushed"))
    }

    pub fn contains(&self, serial: &str) -> bool {
        normalise_serial(serial).is_ok_and(|s| self.revoked.iter().any(|r| r.serial == s))
    }

    /// Adds one revocation to the file at `path` under an exclusive lock
    /// (`<path>` with extension `lock`), so concurrent `signet revoke`s on one host do not
    /// lose each other's entries; nothing is written when it is refused.
    pub fn revoke_in_file(
        path: &Path,
        serial: &str,
        at: SystemTime,
        reason: Option<Reason>,
    ) -> Result<(Revoked, usize), RevocationError> {
        let _lock = crate::fsutil::lock_beside(path)
            .map_err(|(p, e)| RevocationError::Read(p.display().to_string(), e.to_string()))?;
        let mut list = Self::read(path)?;
        let entry = list.revoke(serial, at, reason)?.clone();
        list.write(path)?;
        Ok((entry, list.revoked.len()))
    }

    /// Writes the list to `path` atomically (a temporary file, then a rename).
    pub fn write(&self, path: &Path) -> Result<(), RevocationError> {
        let text = serde_yaml_ng::to_string(self)
            .map_err(|e| RevocationError::Read(path.display().to_string(), e.to_string()))?;
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
            .map_err(|e| RevocationError::Read(path.display().to_string(), e.to_string()))
    }

    /// The CRL `ca` signs for this list at `now` (DER).
    pub async fn crl(&self, ca: &LocalCa, now: SystemTime) -> Result<Vec<u8>, RevocationError> {
        self.crl_valid_for(ca, now, CRL_VALIDITY).await
    }

    /// The CRL `ca` signs for this list at `now`, valid for `validity`
    /// (for a CA whose key is about to be discarded: its CRL must last as
    /// long as the certificates it issued).
    pub async fn crl_valid_for(
        &self,
        ca: &LocalCa,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Vec<u8>, RevocationError> {
        let hour = from_unix_seconds(unix_seconds(now).div_euclid(3600) * 3600);
        let newest = self
            .revoked
            .iter()
            .map(|r| r.revoked_at.min(now))
            .max()
            .unwrap_or(hour);
        let this_update = from_unix_seconds(unix_seconds(hour.max(newest)));
        let revoked_certs = self
            .revoked
            .iter()
            .map(|r| {
                let bytes = hex::decode(if r.serial.len() % 2 == 1 {
                    format!("0{}", r.serial)
                } else {
                    r.serial.clone()
                })
                .map_err(|_| RevocationError::BadSerial(r.serial.clone()))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&bytes),
                    revocation_time: offset(r.revoked_at.min(this_update)),
                    reason_code: r.reason.map(Reason::rcgen),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, RevocationError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: offset(this_update),
            next_update: offset(this_update + validity),
            crl_number: rcgen::SerialNumber::from(
                u64::try_from(unix_seconds(this_update)).unwrap_or(0),
            ),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: match subject_key_id(ca.certificate()) {
                Some(id) => rcgen::KeyIdMethod::PreSpecified(id),
                None => rcgen::KeyIdMethod::Sha256,
            },
        };
        ca.sign_crl(&params)
            .await
            .map_err(|e| RevocationError::Sign(e.to_string()))
    }
}

/// The last CRL signed for an endpoint, by what it was made from: the list,
/// the CA and the hour. A CRL is the same for those (bar its signature), so
/// it is signed again only when one of them changes: a CA key in a store
/// makes every signature a call to it, and CRL endpoints are open to all.
/// Callers that miss together wait for one signature.
#[derive(Debug, Default)]
pub struct CrlCache {
    last: tokio::sync::Mutex<Option<([u8; 32], Vec<u8>)>>,
}

impl CrlCache {
    /// `list`'s CRL from `ca` at `now` (DER), signed at most once an hour
    /// per list and CA.
    pub async fn crl(
        &self,
        list: &RevocationList,
        ca: &LocalCa,
        now: SystemTime,
    ) -> Result<Vec<u8>, RevocationError> {
        let text = serde_yaml_ng::to_string(list)
            .map_err(|e| RevocationError::Sign(format!("the list: {e}")))?;
        let hour = unix_seconds(now).div_euclid(3600);
        let key = crate::crypto::sha256(
            &[
                text.as_bytes(),
                ca.certificate().as_ref(),
                &hour.to_be_bytes(),
            ]
            .concat(),
        );
        let mut last = self.last.lock().await;
        if let Some((k, der)) = last.as_ref()
            && *k == key
        {
            return Ok(der.clone());
        }
        let der = list.crl(ca, now).await?;
        *last = Some((key, der.clone()));
        Ok(der)
    }
}

impl RevocationList {
    /// Whether `crl_der` is a CRL issued by `ca_cert` (same issuer name and
    /// key identifier) that lists exactly this list's serials and stays
    /// valid until `until`: a keeper that stores a CRL (`cacerts`'
    /// `ca-crl.pem`) replaces it only when this is false.
    pub fn crl_matches(&self, ca_cert: &[u8], crl_der: &[u8], until: SystemTime) -> bool {
        use x509_parser::prelude::FromDer as _;
        if !crl_valid_for(crl_der, ca_cert, until) {
            return false;
        }
        let Ok((_, crl)) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der)
        else {
            return false;
        };
        let mut listed: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| {
                hex::encode(r.raw_serial())
                    .trim_start_matches('0')
                    .to_owned()
            })
            .collect();
        let mut wanted: Vec<String> = self
            .revoked
            .iter()
            .map(|r| r.serial.trim_start_matches('0').to_owned())
            .collect();
        listed.sort();
        wanted.sort();
        listed == wanted
    }
}

/// When a CRL says the next one is due (`None`: unparseable or open-ended).
pub fn crl_next_update(crl_der: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer as _;
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der).ok()?;
    crl.next_update().map(|n| from_unix_seconds(n.timestamp()))
}

/// Whether `crl_der` is a CRL issued by `ca_cert` (its issuer is the CA's
/// subject, and its authority key identifier the CA's subject key
/// identifier when both have one) that is still valid at `until`. The
/// signature is not checked: this is for CRLs signet signed or was given,
/// to decide whether one is there and fresh.
pub fn crl_valid_for(crl_der: &[u8], ca_cert: &[u8], until: SystemTime) -> bool {
    use x509_parser::prelude::FromDer as _;
    let (Ok((_, ca)), Ok((_, crl))) = (
        x509_parser::certificate::X509Certificate::from_der(ca_cert),
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der),
    ) else {
        return false;
    };
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    let aki = crl
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    if let (Some(aki), Some(ski)) = (aki, crate::chain::subject_key_id(&ca))
        && aki != ski
    {
        return false;
    }
    crl.next_update()
        .is_some_and(|n| from_unix_seconds(n.timestamp()) > until)
}

/// The certificate's Subject Key Identifier, if it has one.
fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    crate::chain::subject_key_id(&cert)
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyAlgorithm, PrivateKey};

    #[test]
    fn reasons_parse_by_their_file_names() {
        for r in Reason::ALL {
            assert_eq!(r.name().parse::<Reason>().unwrap(), r);
            let yaml = serde_yaml_ng::to_string(&r).unwrap();
            assert_eq!(yaml.trim(), r.name(), "the file spells it the same way");
        }
        assert_eq!(
            "key-compromise".parse::<Reason>().unwrap(),
            Reason::KeyCompromise
        );
        assert!("bogus".parse::<Reason>().is_err());
    }

    #[test]
    fn serials_are_normalised_and_bad_ones_refused() {
        for s in ["4F:1C:0A", "0x4f1c0a", "004f1c0a", " 4f1c0a "] {
            assert_eq!(normalise_serial(s).unwrap(), "4f1c0a", "{s}");
        }
        for s in ["", "0", "xyz", "4f-1c", &"f".repeat(41)] {
            assert!(normalise_serial(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn a_serial_is_revoked_once_and_the_list_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.yaml");
        let at = from_unix_seconds(1_800_000_000);
        let mut list = RevocationList::read(&path).unwrap();
        assert!(list.revoked.is_empty(), "a missing file is an empty list");
        list.revoke("AB:CD", at, Some(Reason::KeyCompromise))
            .unwrap();
        assert_eq!(
            list.revoke("abcd", at, None).unwrap_err(),
            RevocationError::AlreadyRevoked("abcd".into())
        );
        list.write(&path).unwrap();
        assert_eq!(RevocationList::read(&path).unwrap(), list);
        // Through the file, under its lock: added once, refused twice.
        let (entry, count) = RevocationList::revoke_in_file(&path, "0x0fee", at, None).unwrap();
        assert_eq!((entry.serial.as_str(), count), ("fee", 2));
        assert_eq!(
            RevocationList::revoke_in_file(&path, "FEE", at, None).unwrap_err(),
            RevocationError::AlreadyRevoked("fee".into())
        );
        assert_eq!(RevocationList::read(&path).unwrap().revoked.len(), 2);
        // A hand-written entry in openssl's form reads as the same serial.
        std::fs::write(
            &path,
            "revoked:\n  - serial: 00ABCD\n    revoked_at: 2027-01-15T08:00:00Z\n",
        )
        .unwrap();
        assert!(RevocationList::read(&path).unwrap().contains("abcd"));
    }

    #[tokio::test]
    async fn a_stored_crl_matches_only_its_ca_its_list_and_its_validity() {
        let now = from_unix_seconds(1_800_001_234);
        let root = |name| {
            LocalCa::self_signed_root(
                name,
                PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
                now - Duration::from_secs(3600),
                Duration::from_secs(86_400),
            )
            .unwrap()
        };
        let (ca, other) = (root("crl root"), root("crl root"));
        let mut list = RevocationList::default();
        list.revoke("0a1b", now, None).unwrap();
        let der = list.crl(&ca, now).await.unwrap();
        let cert = ca.certificate().as_ref();
        assert!(list.crl_matches(cert, &der, now + Duration::from_secs(3600)));
        assert!(
            !list.crl_matches(cert, &der, now + Duration::from_secs(2 * 86_400)),
            "expires before the wanted time"
        );
        assert!(
            !list.crl_matches(other.certificate(), &der, now),
            "same name, another key"
        );
        assert!(!list.crl_matches(cert, b"not a CRL", now));
        list.revoke("ff00ff", now, None).unwrap();
        assert!(!list.crl_matches(cert, &der, now), "a serial missing");
    }

    #[tokio::test]
    async fn the_crl_is_signed_by_the_ca_and_names_each_serial() {
        use x509_parser::prelude::*;
        let now = from_unix_seconds(1_800_001_234);
        let ca = LocalCa::self_signed_root(
            "crl root",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now - Duration::from_secs(3600),
            Duration::from_secs(86_400),
        )
        .unwrap();
        let mut list = RevocationList::default();
        list.revoke("0a1b", now, Some(Reason::Superseded)).unwrap();
        list.revoke("ff00ff", now, None).unwrap();
        let der = list.crl(&ca, now).await.unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec!["0a1b", "00ff00ff"]);
        assert_eq!(
            crl.last_update().timestamp(),
            1_800_001_234,
            "thisUpdate is the newest revocation, later than the hour's start"
        );
        let older = RevocationList::default().crl(&ca, now).await.unwrap();
        let (_, older) = CertificateRevocationList::from_der(&older).unwrap();
        assert_eq!(
            older.last_update().timestamp(),
            1_800_000_000,
            "the hour's start"
        );
        // The CRL's AKI is the CA's SKI.
        let (_, cert) = X509Certificate::from_der(ca.certificate()).unwrap();
        let ski = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = crl
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
        // OpenSSL, not our parser, checks the signature.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crl.der"), &der).unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            crate::pem::encode_certificate(ca.certificate()),
        )
        .unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "crl", "-inform", "DER", "-in", "crl.der", "-CAfile", "ca.pem", "-noout",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.contains("verify OK"), "{said}");
    }
}
