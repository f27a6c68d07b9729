//! PEM (RFC 7468) reading and writing.
//!
//! Two readers: [`parse_strict`] for input from callers (a CSR posted to us),
//! where anything but whitespace outside the armour is refused, and
//! [`parse_lenient`] for operator-supplied files, where explanatory text
//! between blocks is allowed as RFC 7468 permits. Both accept LF and CRLF and
//! refuse encrypted PEM headers (`Proc-Type:`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    #[error("no PEM block found")]
    Empty,
    #[error("text outside the PEM armour (line {line})")]
    TrailingData { line: usize },
    #[error("PEM block {label:?} opened on line {line} is never closed")]
    Unterminated { label: String, line: usize },
    #[error("PEM END label {end:?} does not match BEGIN label {begin:?}")]
    LabelMismatch { begin: String, end: String },
    #[error("PEM block {label:?} has headers (encrypted keys are not supported)")]
    Headers { label: String },
    #[error("PEM block {label:?} is not valid base64")]
    Base64 { label: String },
    #[error("PEM block {label:?} is empty")]
    EmptyBlock { label: String },
    #[error("input is not UTF-8 text")]
    NotText,
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const DASHES: &str = "-----";

fn armour_label<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix(DASHES)
}

fn parse(input: &[u8], strict: bool) -> Result<Vec<PemBlock>, PemError> {
    let text = std::str::from_utf8(input).map_err(|_| PemError::NotText)?;
    let mut blocks = Vec::new();
    let mut current: Option<(String, usize, String)> = None; // label, begin line, base64
    for (idx, raw_line) in text.split('\n').enumerate() {
        let lineno = idx + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line).trim_end();
        match current.as_mut() {
            None => {
                if let Some(label) = armour_label(line.trim_start(), BEGIN) {
                    current = Some((label.to_owned(), lineno, String::new()));
                } else if strict && !line.trim().is_empty() {
                    return Err(PemError::TrailingData { line: lineno });
                }
            }
            Some((label, _, b64)) => {
                if let Some(end) = armour_label(line.trim_start(), END) {
                    if end != label {
                        return Err(PemError::LabelMismatch {
                            begin: label.clone(),
                            end: end.to_owned(),
                        });
                    }
                    let der = STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|_| PemError::Base64 {
                            label: label.clone(),
                        })?;
                    if der.is_empty() {
                        return Err(PemError::EmptyBlock {
                            label: label.clone(),
                        });
                    }
                    blocks.push(PemBlock {
                        label: std::mem::take(label),
                        der,
                    });
                    current = None;
                } else if line.contains(':') {
                    return Err(PemError::Headers {
                        label: label.clone(),
                    });
                } else {
                    b64.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
                }
            }
        }
    }
    if let Some((label, line, _)) = current {
        return Err(PemError::Unterminated { label, line });
    }
    if blocks.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(blocks)
}

/// Parses PEM where nothing but whitespace may surround the blocks.
pub fn parse_strict(input: &[u8]) -> Result<Vec<PemBlock>, PemError> {
    parse(input, true)
}

/// Parses PEM, ignoring explanatory text between blocks.
pub fn parse_lenient(input: &[u8]) -> Result<Vec<PemBlock>, PemError> {
    parse(input, false)
}

/// Encodes DER as PEM with 64-column lines and a final newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(BEGIN);
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(END);
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Encodes a certificate as PEM.
pub fn encode_certificate(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

/// Reads every `CERTIFICATE` block of an operator-supplied file.
pub fn certificates(input: &[u8]) -> Result<Vec<Vec<u8>>, PemError> {
    Ok(parse_lenient(input)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let der = (0u8..=200).collect::<Vec<_>>();
        let pem = encode("TEST", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let blocks = parse_strict(pem.as_bytes()).unwrap();
        assert_eq!(
            blocks,
            vec![PemBlock {
                label: "TEST".into(),
                der
            }]
        );
    }

    #[test]
    fn accepts_crlf_and_multiple_blocks() {
        let pem = format!("{}{}", encode("A", b"one"), encode("B", b"two")).replace('\n', "\r\n");
        let blocks = parse_strict(pem.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1].der, b"two");
    }

    #[test]
    fn strict_refuses_text_outside_armour_lenient_allows_it() {
        let pem = format!("hello\n{}", encode("A", b"x"));
        assert_eq!(
            parse_strict(pem.as_bytes()),
            Err(PemError::TrailingData { line: 1 })
        );
        assert_eq!(parse_lenient(pem.as_bytes()).unwrap().len(), 1);
        let pem = format!("{}garbage", encode("A", b"x"));
        assert!(matches!(
            parse_strict(pem.as_bytes()),
            Err(PemError::TrailingData { .. })
        ));
    }

    #[test]
    fn refuses_broken_armour() {
        assert_eq!(parse_strict(b""), Err(PemError::Empty));
        assert_eq!(parse_strict(b"   \n"), Err(PemError::Empty));
        assert!(matches!(
            parse_strict(b"-----BEGIN A-----\nAAAA\n"),
            Err(PemError::Unterminated { .. })
        ));
        assert!(matches!(
            parse_strict(b"-----BEGIN A-----\nAAAA\n-----END B-----\n"),
            Err(PemError::LabelMismatch { .. })
        ));
        assert!(matches!(
            parse_strict(b"-----BEGIN A-----\n!!!!\n-----END A-----\n"),
            Err(PemError::Base64 { .. })
        ));
        assert!(matches!(
            parse_strict(b"-----BEGIN A-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END A-----\n"),
            Err(PemError::Headers { .. })
        ));
        assert_eq!(parse_strict(&[0xff, 0xfe]), Err(PemError::NotText));
    }
}
