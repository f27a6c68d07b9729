//! A strict DER reader for the parts of a request signet reads itself.
//!
//! x509-parser is tolerant (it reads BER in places, ignores what follows a
//! value it understood, takes the first value of a multi-valued attribute).
//! Tolerance is how two readers come to disagree about one request, so the
//! CSR is first walked here: every length definite and minimal, only
//! SEQUENCE and SET constructed among universal types, BOOLEAN `00`/`FF`,
//! INTEGER minimal, NULL empty, BIT STRING with at most 7 unused bits, OID
//! sub-identifiers minimal, and nothing after the last element of anything.
//! Only then does the tolerant parser read it, and both see the same thing.

/// Why a value is not strict DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DerError {
    /// Not a well-formed encoding at all (truncated, unreadable length).
    Malformed(&'static str),
    /// Bytes after the value.
    Trailing,
    /// Well-formed BER, but not the one DER encoding.
    NonCanonical(&'static str),
}

impl std::fmt::Display for DerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DerError::Malformed(w) | DerError::NonCanonical(w) => f.write_str(w),
            DerError::Trailing => f.write_str("bytes after the value"),
        }
    }
}

/// One TLV: its tag byte, its content and whatever follows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
}

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;
pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;

/// Reads one TLV with a definite, minimal length and a one-byte tag.
pub(crate) fn tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    use DerError::{Malformed, NonCanonical};
    let (&tag, rest) = input.split_first().ok_or(Malformed("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed("multi-byte tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(Malformed("truncated"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 {
            return Err(NonCanonical("indefinite length"));
        }
        if n > 4 || rest.len() < n {
            return Err(Malformed("bad length"));
        }
        if rest[0] == 0 {
            return Err(NonCanonical("non-minimal length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        if len < 0x80 {
            return Err(NonCanonical("non-minimal length"));
        }
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(Malformed("truncated"));
    }
    Ok((
        Tlv {
            tag,
            content: &rest[..len],
        },
        &rest[len..],
    ))
}

/// Reads exactly one TLV, with nothing after it.
pub(crate) fn single(input: &[u8]) -> Result<Tlv<'_>, DerError> {
    let (t, rest) = tlv(input)?;
    if !rest.is_empty() {
        return Err(DerError::Trailing);
    }
    Ok(t)
}

/// The elements of a constructed value's content.
pub(crate) fn elements(content: &[u8]) -> Result<Vec<Tlv<'_>>, DerError> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (t, r) = tlv(rest)?;
        out.push(t);
        rest = r;
    }
    Ok(out)
}

/// Encodes one TLV with a minimal definite length.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The parts of a signed structure (Certificate, CertificationRequest,
/// CertificateList: `SEQUENCE { toBeSigned, AlgorithmIdentifier, BIT
/// STRING }`): the encoded `toBeSigned` and the encoded algorithm.
pub(crate) fn split_signed(input: &[u8]) -> Result<(&[u8], &[u8]), DerError> {
    let outer = single(input)?;
    if outer.tag != SEQUENCE {
        return Err(DerError::Malformed("not a SEQUENCE"));
    }
    let (tbs, rest) = tlv(outer.content)?;
    let tbs_raw = &outer.content[..outer.content.len() - rest.len()];
    let (alg, after) = tlv(rest)?;
    let alg_raw = &rest[..rest.len() - after.len()];
    let sig = single(after)?;
    if tbs.tag != SEQUENCE || alg.tag != SEQUENCE || sig.tag != BIT_STRING {
        return Err(DerError::Malformed("not a signed structure"));
    }
    Ok((tbs_raw, alg_raw))
}

/// A signed structure from its encoded parts and the signature's bytes.
pub(crate) fn join_signed(tbs: &[u8], alg: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(signature);
    let bits = encode(BIT_STRING, &bits);
    let mut content = Vec::with_capacity(tbs.len() + alg.len() + bits.len());
    content.extend_from_slice(tbs);
    content.extend_from_slice(alg);
    content.extend_from_slice(&bits);
    encode(SEQUENCE, &content)
}

/// An unsigned big-endian number as a DER INTEGER.
pub(crate) fn unsigned_integer(bytes: &[u8]) -> Vec<u8> {
    let skip = bytes
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(bytes.len().saturating_sub(1));
    let digits = &bytes[skip..];
    let mut v = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(digits);
    encode(INTEGER, &v)
}

/// An ECDSA signature as PKCS#11 returns it (`r || s`, each the curve's
/// size) in the DER form X.509 carries (`SEQUENCE { INTEGER r, INTEGER s }`).
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut content = unsigned_integer(r);
    content.extend(unsigned_integer(s));
    Some(encode(SEQUENCE, &content))
}

/// Checks that `input` is exactly one value in canonical DER, recursively.
pub(crate) fn check_canonical(input: &[u8]) -> Result<(), DerError> {
    check_tlv(single(input)?, 0)
}

const MAX_DEPTH: usize = 32;

fn check_tlv(t: Tlv<'_>, depth: usize) -> Result<(), DerError> {
    use DerError::NonCanonical;
    if depth > MAX_DEPTH {
        return Err(DerError::Malformed("nested too deeply"));
    }
    let constructed = t.tag & 0x20 != 0;
    let universal = t.tag & 0xc0 == 0;
    if constructed {
        if universal && t.tag != SEQUENCE && t.tag != SET {
            return Err(NonCanonical("constructed encoding of a primitive type"));
        }
        for e in elements(t.content)? {
            check_tlv(e, depth + 1)?;
        }
        return Ok(());
    }
    if !universal {
        return Ok(());
    }
    let c = t.content;
    match t.tag {
        BOOLEAN if c != [0x00] && c != [0xff] => Err(NonCanonical("BOOLEAN not 00 or FF")),
        INTEGER if c.is_empty() => Err(NonCanonical("empty INTEGER")),
        INTEGER
            if c.len() > 1
                && ((c[0] == 0x00 && c[1] & 0x80 == 0) || (c[0] == 0xff && c[1] & 0x80 != 0)) =>
        {
            Err(NonCanonical("non-minimal INTEGER"))
        }
        BIT_STRING if c.is_empty() || c[0] > 7 || (c.len() == 1 && c[0] != 0) => {
            Err(NonCanonical("malformed BIT STRING"))
        }
        NULL if !c.is_empty() => Err(NonCanonical("NULL with content")),
        OID if c.is_empty() || c[c.len() - 1] & 0x80 != 0 => Err(NonCanonical("malformed OID")),
        OID if c
            .iter()
            .enumerate()
            .any(|(i, b)| *b == 0x80 && (i == 0 || c[i - 1] & 0x80 == 0)) =>
        {
            Err(NonCanonical("non-minimal OID"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_der() {
        for good in [
            &[0x30, 0x00][..],
            &[0x30, 0x03, 0x02, 0x01, 0x05],
            &[0x01, 0x01, 0xff],
            &[0x02, 0x02, 0x00, 0x80],
            &[0x06, 0x03, 0x55, 0x1d, 0x11],
            &[0x04, 0x02, 0x30, 0x00],
        ] {
            assert!(check_canonical(good).is_ok(), "{good:x?}");
        }
        for bad in [
            &[0x30, 0x80, 0x00, 0x00][..],         // indefinite length
            &[0x30, 0x81, 0x00],                   // long form for a short length
            &[0x30, 0x82, 0x00, 0x00],             // leading zero length byte
            &[0x01, 0x01, 0x01],                   // BOOLEAN 01
            &[0x02, 0x02, 0x00, 0x05],             // INTEGER with a redundant 00
            &[0x02, 0x02, 0xff, 0x85],             // INTEGER with a redundant ff
            &[0x24, 0x04, 0x04, 0x02, 0x30, 0x00], // constructed OCTET STRING
            &[0x05, 0x01, 0x00],                   // NULL with content
            &[0x06, 0x02, 0x80, 0x01],             // OID with a leading 80
            &[0x30, 0x00, 0x00],                   // trailing byte
            &[0x30, 0x03, 0x02, 0x01],             // truncated
            &[0x1f, 0x01, 0x00],                   // multi-byte tag
            &[0x03, 0x01, 0x01],                   // BIT STRING of no bits, 1 unused
        ] {
            assert!(check_canonical(bad).is_err(), "{bad:x?} accepted");
        }
    }

    #[test]
    fn signed_structures_split_and_join() {
        let long = vec![0x42u8; 300];
        let tbs = encode(SEQUENCE, &encode(OCTET_STRING, &long));
        let alg = encode(SEQUENCE, &encode(OID, &[0x2a, 0x86, 0x48]));
        let signed = join_signed(&tbs, &alg, &[1, 2, 3]);
        assert!(check_canonical(&signed).is_ok());
        assert_eq!(split_signed(&signed).unwrap(), (&tbs[..], &alg[..]));
        assert!(split_signed(&tbs).is_err());
    }

    #[test]
    fn ecdsa_signatures_become_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 0x01; // s is 1 after its zeros
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert!(check_canonical(&der).is_ok());
        let seq = single(&der).unwrap();
        let ints = elements(seq.content).unwrap();
        assert_eq!(ints[0].content.len(), 33);
        assert_eq!(ints[1].content, [0x01]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }
}
