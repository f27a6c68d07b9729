//! SoftHSM2 (Debian's `softhsm2`) as a PKCS#11 token, with keys made by
//! OpenSC's `pkcs11-tool`: someone else's tools set the token up, signet
//! only uses it.
//!
//! Tokens live where `$SOFTHSM2_CONF` says (`scripts/setup` points it at
//! `.tools/softhsm2.conf`); each [`Token`] has a label of its own and is
//! deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The user PIN of every test token (registered as a secret no log line
/// may hold: long enough for [`crate::secrets::register`]).
pub const PIN: &str = "4321-signet-user-pin";
const SO_PIN: &str = "so-87654321";

/// SoftHSM2's PKCS#11 module: `$SIGNET_SOFTHSM_MODULE` or Debian's path.
pub fn module() -> PathBuf {
    if let Ok(p) = std::env::var("SIGNET_SOFTHSM_MODULE") {
        return PathBuf::from(p);
    }
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("SoftHSM2 is not installed (Debian: apt-get install softhsm2 opensc); scripts/setup installs it")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// SoftHSM2's token directory (`directories.tokendir` of `$SOFTHSM2_CONF`).
fn token_dir() -> PathBuf {
    let conf =
        std::env::var("SOFTHSM2_CONF").unwrap_or_else(|_| "/etc/softhsm/softhsm2.conf".into());
    std::fs::read_to_string(&conf)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("directories.tokendir"))
        .and_then(|v| v.trim().strip_prefix('='))
        .map(|v| PathBuf::from(v.trim()))
        .unwrap_or_else(|| panic!("no directories.tokendir in {conf}"))
}

/// An initialised token with a user PIN.
#[derive(Debug)]
pub struct Token {
    pub label: String,
    /// A file holding [`PIN`].
    pub pin_file: PathBuf,
    /// Where SoftHSM2 keeps this token's objects.
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl Token {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let label = format!(
            "signet-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let before: Vec<_> = std::fs::read_dir(token_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        run(Command::new("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            &label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ]));
        crate::secrets::register(PIN);
        let dir = tempfile::tempdir().expect("temp dir");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin file");
        let store = std::fs::read_dir(token_dir())
            .expect("token directory")
            .flatten()
            .map(|e| e.path())
            .find(|p| !before.contains(p))
            .expect("the new token's directory");
        Self {
            label,
            pin_file,
            store,
            _dir: dir,
        }
    }

    /// Generates a key pair in the token (`EC:prime256v1`, `EC:secp384r1`,
    /// `rsa:2048`), private key not extractable, labelled `key_label` with
    /// ID `id` (hex).
    pub fn generate(&self, key_type: &str, key_label: &str, id: &str) {
        self.tool(
            true,
            &[
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                key_label,
                "--id",
                id,
                "--usage-sign",
            ],
        );
    }

    /// OpenSC's `pkcs11-tool` on this token (logged in as the user or not).
    fn tool(&self, login: bool, args: &[&str]) -> String {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.args(["--module", module().to_str().expect("UTF-8 path")])
            .args(["--token-label", &self.label]);
        if login {
            cmd.args(["--login", "--pin", PIN]);
        }
        run(cmd.args(args))
    }

    /// The `key:` entry of a backend for `key_label` (YAML flow mapping).
    pub fn key_yaml(&self, key_label: &str) -> String {
        self.yaml(&format!("key_label: {key_label}"))
    }

    /// The `key:` entry of a delegated intermediate whose keys signet
    /// makes in this token (YAML flow mapping; `algorithm` as signet names it).
    pub fn store_yaml(&self, algorithm: &str) -> String {
        self.yaml(&format!("algorithm: {algorithm}"))
    }

    fn yaml(&self, rest: &str) -> String {
        format!(
            "{{ type: pkcs11, module: {}, token_label: {}, pin_file: {}, {rest} }}",
            module().display(),
            self.label,
            self.pin_file.display()
        )
    }

    /// The token's private keys, as `pkcs11-tool --list-objects` shows
    /// them: each label and its `Access:` line.
    pub fn private_keys(&self) -> Vec<(String, String)> {
        let listed = self.tool(true, &["--list-objects", "--type", "privkey"]);
        let mut keys = Vec::new();
        let mut label = None;
        for line in listed.lines().map(str::trim) {
            if let Some(l) = line.strip_prefix("label:") {
                label = Some(l.trim().to_owned());
            } else if let Some(a) = line.strip_prefix("Access:")
                && let Some(l) = label.take()
            {
                keys.push((l, a.trim().to_owned()));
            }
        }
        keys
    }

    /// The EC point of the public key labelled `label` (what
    /// SubjectPublicKeyInfo's BIT STRING holds), from `pkcs11-tool
    /// --list-objects` (its `--read-object` cannot read P-384 keys).
    pub fn ec_point(&self, label: &str) -> Vec<u8> {
        let listed = self.tool(false, &["--list-objects", "--type", "pubkey"]);
        let mut point = None;
        for line in listed.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("EC_POINT:") {
                point = Some(p.trim().to_owned());
            } else if line.strip_prefix("label:").map(str::trim) == Some(label) {
                break;
            }
        }
        let der = hex::decode(point.expect("an EC public key")).expect("hex");
        // An OCTET STRING (0x04, one length byte) around the point.
        der[2..].to_vec()
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Where the token's objects wait while it is away: beside the token
    /// directory (SoftHSM2 takes any directory inside it for a token).
    fn away(&self) -> PathBuf {
        let name = self.store.file_name().expect("a token directory");
        token_dir()
            .parent()
            .expect("the token directory's parent")
            .join(format!("{}.away", name.to_string_lossy()))
    }

    /// The token disappears, as a removed or failed HSM does (its objects
    /// are moved out of SoftHSM2's token directory).
    pub fn go_away(&self) {
        std::fs::rename(&self.store, self.away()).expect("moving the token away");
    }

    /// The token is back, with the same keys.
    pub fn come_back(&self) {
        std::fs::rename(self.away(), &self.store).expect("bringing the token back");
    }
}

impl Default for Token {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.label])
            .output();
    }
}
