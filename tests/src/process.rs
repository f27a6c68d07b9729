//! Runs the real `signet` binary for end-to-end tests. Everything the
//! process writes (stdout and stderr) is kept, and scanned for secrets
//! ([`crate::secrets`]) when the process ends: a leak fails the test.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// A running `signet` process; killed when dropped.
#[derive(Debug)]
pub struct Signet {
    child: Child,
    /// The REST listener (`None` for a configuration without one).
    pub rest_addr: Option<SocketAddr>,
    /// Where the Istio CA gRPC service listens, if it does.
    pub grpc_addr: Option<SocketAddr>,
    /// The plain-HTTP admin listener (`admin.listen`), if configured.
    pub admin_addr: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Signet {
    /// Starts `bin` with `args` (JSON logs added) and waits until it logs
    /// `ready`, learning the REST and Istio listener addresses on the way.
    pub fn start(bin: &Path, args: &[&str]) -> Result<Self, String> {
        Self::start_in(bin, args, Path::new("."))
    }

    /// [`Signet::start`] with `cwd` as the working directory (relative paths
    /// in a config resolve against it).
    pub fn start_in(bin: &Path, args: &[&str], cwd: &Path) -> Result<Self, String> {
        Self::start_with_env(bin, args, cwd, &[])
    }

    /// [`Signet::start_in`] with extra environment variables.
    pub fn start_with_env(
        bin: &Path,
        args: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let serve = args.first() == Some(&"serve");
        let mut child = Command::new(bin)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .args(args)
            .args(["--log-format", "json"])
            .args(if serve {
                &["--exit-with-stdin"][..]
            } else {
                &[][..]
            })
            // signet stops when this pipe closes, even if the test is killed.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        let out_sink = logs.clone();
        let mut readers = vec![std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                out_sink
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
            }
        })];
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let what = v["message"].as_str().unwrap_or_default();
                    if what.ends_with(" listening") || what == "ready" {
                        let _ = tx.send((
                            what.to_owned(),
                            v["addr"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        }));
        // Every listener logs its address; "ready" follows the last one.
        let (mut rest_addr, mut grpc_addr, mut admin_addr) = (None, None, None);
        while let Ok((what, addr)) = rx.recv_timeout(Duration::from_secs(30)) {
            if what == "ready" {
                return Ok(Self {
                    child,
                    rest_addr,
                    grpc_addr,
                    admin_addr,
                    logs,
                    readers,
                });
            }
            let parsed: SocketAddr = addr
                .parse()
                .map_err(|e| format!("bad addr {addr:?}: {e}"))?;
            if what.starts_with("REST") {
                rest_addr = Some(parsed);
            } else if what.starts_with("Istio") {
                grpc_addr = Some(parsed);
            } else if what.starts_with("admin") {
                admin_addr = Some(parsed);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        Err(format!(
            "signet did not start:\n{}",
            logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
        ))
    }

    /// `signet serve --dev` with its data in `data_dir`, REST on an ephemeral loopback port.
    pub fn dev(bin: &Path, data_dir: &Path) -> Result<Self, String> {
        let data = data_dir.to_str().ok_or("non-UTF-8 data dir")?;
        Self::start(
            bin,
            &[
                "serve",
                "--dev",
                "--data-dir",
                data,
                "--rest-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ],
        )
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!(
            "https://{}",
            self.rest_addr.expect("this signet has no REST listener")
        )
    }

    /// Log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Log lines containing `needle`, waiting up to five seconds for at least
    /// `at_least` of them (logs arrive asynchronously).
    pub fn logs_containing(&self, needle: &str, at_least: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found: Vec<String> = self
                .logs()
                .into_iter()
                .filter(|l| l.contains(needle))
                .collect();
            if found.len() >= at_least || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited
    /// successfully (if not, its last log lines go to standard error).
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                if !status.success() {
                    self.print_last_logs();
                }
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.print_last_logs();
        false
    }

    fn print_last_logs(&self) {
        let logs = self.logs();
        eprintln!(
            "signet's last log lines:\n{}",
            logs[logs.len().saturating_sub(30)..].join("\n")
        );
    }

    /// Closes signet's standard input (it was started with
    /// `--exit-with-stdin`) and waits; returns whether it exited successfully.
    pub fn close_stdin(mut self) -> bool {
        drop(self.child.stdin.take());
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Signet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipes close with the process: the readers have every line.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let found = crate::secrets::scan(logs.iter().map(String::as_str));
        if !found.is_empty() && !std::thread::panicking() {
            panic!("signet logged secrets: {found:?}");
        }
    }
}
