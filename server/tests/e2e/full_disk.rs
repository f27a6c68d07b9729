//! A full disk under the data directory (a small tmpfs, mounted in a
//! private mount namespace that ends with the process): creating the dev
//! PKI fails with the path and the OS error, leaves no temporary or partial
//! file, and a later start with room repairs what is missing; a full disk
//! that already holds the PKI does not stop signet from serving.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;
use signet_tests::hostile;
use signet_tests::process::Signet;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
}

/// `unshare` arguments that mount a `size` tmpfs on `dir` (after copying
/// `seed` into it, then filling it up) and exec the rest.
fn in_full_tmpfs(dir: &Path, size: &str, seed: Option<&Path>) -> Vec<String> {
    // Root may create mount namespaces directly; others need a user namespace.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let mut args: Vec<String> = vec![if root { "-m" } else { "-rm" }.into()];
    let seed = seed.map_or_else(String::new, |s| {
        format!(
            "cp -p {}/* \"$0\"/ && (dd if=/dev/zero of=\"$0\"/filler bs=1k 2>/dev/null; true) && ",
            s.display()
        )
    });
    args.extend([
        "sh".into(),
        "-c".into(),
        // After signet, what the full disk holds (names, and for a fresh
        // disk the contents, to check they are whole), before the mount goes.
        format!(
            "mount -t tmpfs -o size={size},mode=0700 tmpfs \"$0\" && {seed}\"$@\"; rc=$?; \
             echo FILES: $(ls -A \"$0\"); {dump}exit $rc",
            dump = if seed.is_empty() {
                "cat \"$0\"/* 2>/dev/null; "
            } else {
                ""
            }
        ),
        dir.display().to_string(),
        bin().display().to_string(),
    ]);
    args
}

fn unshare_works() -> bool {
    let args = in_full_tmpfs(Path::new("/tmp"), "4k", None);
    Command::new("unshare")
        .args(&args[..args.len() - 1])
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_fails_cleanly_and_a_full_disk_with_the_pki_serves() {
    assert!(
        unshare_works(),
        "this test needs `unshare` and tmpfs mounts (util-linux; root or user namespaces)"
    );
    let tmp = tempfile::tempdir().unwrap();

    // 1. No room for the PKI: one 4 KiB page holds the first file only.
    let data = tmp.path().join("full");
    std::fs::create_dir(&data).unwrap();
    let out = Command::new("unshare")
        .args(in_full_tmpfs(&data, "4k", None))
        .args(["serve", "--dev", "--data-dir"])
        .arg(&data)
        .args(["--rest-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a full disk: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains(&data.display().to_string()),
        "names the path: {stderr}"
    );
    signet_tests::secrets::assert_clean("signet serve", &stderr);
    // What was left on the full disk: no temporary file, and whatever is
    // there is whole (every PEM block that begins also ends).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let files = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FILES:"))
        .expect("listing");
    let files: Vec<&str> = files.split_whitespace().collect();
    assert!(
        !files.iter().any(|f| f.ends_with(".tmp")),
        "temporary files left: {files:?}"
    );
    assert!(
        files.contains(&"root-key.pem"),
        "the first file fits: {files:?}"
    );
    assert!(
        !files.contains(&"root.pem"),
        "the second does not: {files:?}"
    );
    assert_eq!(
        stdout.matches("-----BEGIN").count(),
        stdout.matches("-----END").count(),
        "a partial file: {files:?}"
    );
    // The mount went with the process; the directory beneath is untouched.
    assert!(names(&data).is_empty(), "{:?}", names(&data));

    // 2. A disk that is full but already holds the PKI: signet reads what
    // it needs, writes nothing, and serves.
    let seed = tmp.path().join("seed");
    assert!(Signet::dev(&bin(), &seed).unwrap().terminate());
    let seeded = names(&seed);
    let full = tmp.path().join("full-with-pki");
    std::fs::create_dir(&full).unwrap();
    let mut args = in_full_tmpfs(&full, "64k", Some(&seed));
    let data_arg = full.display().to_string();
    args.extend(
        [
            "serve",
            "--dev",
            "--data-dir",
            &data_arg,
            "--rest-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--exit-with-stdin",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let signet = Signet::start(Path::new("unshare"), &args).expect("serves from a full disk");
    let client = signet_tests::http::client(&seed.join("root.pem"));
    let r = client
        .post(format!("{}/v1/sign", signet.url()))
        .json(&json!({ "csr": hostile::csr_corpus_good() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // (The runtime keeps running meanwhile, so the client's idle
    // connection closes and signet's drain ends at once.)
    drop(client);
    assert!(tokio::task::block_in_place(|| signet.close_stdin()));
    assert!(!seeded.is_empty());
}
