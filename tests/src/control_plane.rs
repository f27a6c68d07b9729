//! A real Kubernetes control plane for the conformance tests: the
//! `controlplane` command of `tests/conformance/kube` (kube-apiserver from
//! k8s.io/kubernetes and an embedded etcd), built by
//! `scripts/conformance-build` and named by `SIGNET_CONTROLPLANE`.
//!
//! Each [`ControlPlane`] is its own cluster on 127.0.0.1 with its own
//! certificates and etcd data, gone when dropped (the process also stops when
//! its stdin closes, so a killed test leaves nothing behind).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `controlplane` binary, or a panic that says how to get it.
pub fn binary() -> PathBuf {
    match std::env::var_os("SIGNET_CONTROLPLANE") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "SIGNET_CONTROLPLANE is not set: run the suite with scripts/test or scripts/conformance \
             (they build kube-apiserver and etcd from their Go modules first)"
        ),
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
}

impl ControlPlane {
    /// Starts one; waits until `/readyz` answers (usually a few seconds).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra kube-apiserver flags. The harness picks free
    /// ports and releases them for etcd and kube-apiserver to bind; when
    /// another test's process took one in between, it starts again on new
    /// ones.
    pub fn start_with(apiserver_args: &[&str]) -> Self {
        let mut attempt = 0;
        loop {
            match Self::try_start(apiserver_args) {
                Ok(cp) => return cp,
                Err(log) if log.contains("address already in use") && attempt < 4 => {
                    attempt += 1;
                }
                Err(log) => panic!("the control plane did not become ready:\n{log}"),
            }
        }
    }

    fn try_start(apiserver_args: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(binary())
            .arg("--dir")
            .arg(dir.path())
            .arg("--apiserver-args")
            .arg(apiserver_args.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("controlplane starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = dir.path().join("controlplane.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut f = log_file;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{line}");
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("controlplane ready ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let server = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The log thread may still be copying the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        Ok(Self { child, dir, server })
    }

    /// The cluster CA (it signs the API server's serving certificate).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A kubeconfig with cluster-admin (system:masters) rights.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The directory the control plane works in (tests may add files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig that authenticates with a bearer `token` (a service
    /// account's, so that RBAC is what that account is granted).
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            self.server,
            self.ca().display()
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// The control plane's own log (kube-apiserver and etcd errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controlplane.log")).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
