//! The README's example, run as written against a dev server.

use std::path::PathBuf;

use signet_tests::process::Signet;

#[test]
fn readme_example_runs_and_verifies() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = readme
        .split("<!-- readme-example:")
        .nth(1)
        .expect("marked example in README");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("sh block");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("signet-data");
    let signet = Signet::dev(&PathBuf::from(env!("CARGO_BIN_EXE_signet")), &data).unwrap();
    let script = block.replace("127.0.0.1:8443", &signet.rest_addr.unwrap().to_string());
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo.pem: OK"), "{stdout}");
}

/// docs/istio.md's local walk-through, run as written against a dev server.
#[test]
fn the_istio_walkthrough_runs_and_verifies() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/istio.md")).unwrap();
    let after = doc
        .split("<!-- istio-walkthrough:")
        .nth(1)
        .expect("marked walk-through");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("sh block");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("signet-data");
    let signet = Signet::dev(&PathBuf::from(env!("CARGO_BIN_EXE_signet")), &data).unwrap();
    let script = block
        .replace(
            "cargo run -q --release -p signet --",
            env!("CARGO_BIN_EXE_signet"),
        )
        .replace("127.0.0.1:15012", &signet.grpc_addr.unwrap().to_string());
    assert!(!script.contains("cargo run"), "{script}");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo-istio/cert.pem: OK"), "{stdout}");
}

/// Every relative link in the README, docs/ and examples/ points at a file
/// or directory that exists.
#[test]
fn relative_links_resolve() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut pages = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs"), root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                pages.push(p);
            }
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap();
            if !page.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(pages.len() > 10);
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
