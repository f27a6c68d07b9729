//! The `openssl` command line as an independent CSR maker and verifier.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Key types `openssl` can make CSRs for.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    EcP256,
    EcP384,
    EcP521,
    Rsa(u32),
    Ed25519,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("running openssl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Makes a key and a CSR in `dir` named `<name>.key` / `<name>.csr`, with
/// `san` (OpenSSL syntax, e.g. `URI:spiffe://...`) and optional extra `-addext`s.
pub fn csr(dir: &Path, name: &str, key: Key, san: Option<&str>, extra: &[&str]) -> PathBuf {
    let keyfile = dir.join(format!("{name}.key"));
    let csrfile = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-nodes", "-subj", "/", "-keyout"])
        .arg(&keyfile)
        .arg("-out")
        .arg(&csrfile);
    match key {
        Key::EcP256 => cmd.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        Key::EcP384 => cmd.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        Key::EcP521 => cmd.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"]),
        Key::Rsa(bits) => cmd.args(["-newkey".to_owned(), format!("rsa:{bits}")]),
        Key::Ed25519 => cmd.args(["-newkey", "ed25519"]),
    };
    if let Some(san) = san {
        cmd.args(["-addext", &format!("subjectAltName={san}")]);
    }
    for e in extra {
        cmd.args(["-addext", e]);
    }
    run(&mut cmd).unwrap_or_else(|e| panic!("openssl req: {e}"));
    csrfile
}

/// An organisation root made by openssl in `dir`: `root.pem` (CN `org
/// root`, CA:TRUE, keyCertSign and cRLSign, 30 days) and its P-256 key
/// `root.key` (PKCS#8, unencrypted).
pub fn root_ca(dir: &Path) -> PathBuf {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ])
    .args(["-subj", "/CN=org root", "-days", "30"])
    .args(["-addext", "basicConstraints=critical,CA:TRUE"])
    .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    .arg("-keyout")
    .arg(dir.join("root.key"))
    .arg("-out")
    .arg(dir.join("root.pem"));
    run(&mut cmd).unwrap_or_else(|e| panic!("openssl req -x509: {e}"));
    dir.join("root.pem")
}

/// `openssl verify -CAfile root -untrusted chain cert`, with an optional
/// `-purpose`. A chain file with no certificate (a root CA's leaf has no
/// intermediate) is left out: OpenSSL refuses an empty `-untrusted` file.
pub fn verify(
    root: &Path,
    chain: Option<&Path>,
    cert: &Path,
    purpose: Option<&str>,
) -> Result<(), String> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(root);
    if let Some(chain) = chain
        && std::fs::read_to_string(chain).is_ok_and(|t| t.contains("-----BEGIN CERTIFICATE-----"))
    {
        cmd.arg("-untrusted").arg(chain);
    }
    if let Some(p) = purpose {
        cmd.args(["-purpose", p]);
    }
    cmd.arg(cert);
    let out = run(&mut cmd)?;
    if out.contains(": OK") {
        Ok(())
    } else {
        Err(out)
    }
}

/// `openssl x509 -noout -text` of a PEM certificate file.
pub fn text(cert: &Path) -> String {
    run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert))
    .unwrap_or_else(|e| panic!("openssl x509: {e}"))
}

/// `openssl x509 -noout -<field>` (e.g. `enddate`, `startdate`, `serial`).
pub fn field(cert: &Path, field: &str) -> String {
    run(Command::new("openssl")
        .args(["x509", "-noout", &format!("-{field}"), "-in"])
        .arg(cert))
    .unwrap_or_else(|e| panic!("openssl x509: {e}"))
    .trim()
    .to_owned()
}
