//! Replays every fuzz corpus entry and crash artifact
//! (`fuzz/corpus/<target>/`, `fuzz/artifacts/<target>/`) through the very
//! target bodies that `cargo fuzz` runs (`fuzz/src/targets.rs`), with the
//! stable toolchain, so that what the fuzzer once found stays fixed.

use std::path::Path;

#[path = "../../../fuzz/src/targets.rs"]
mod targets;

#[test]
fn every_fuzz_corpus_entry_and_artifact_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut failures = Vec::new();
    for (name, target) in targets::TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("directory entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                if std::panic::catch_unwind(|| target(&data)).is_err() {
                    failures.push(path.display().to_string());
                }
                inputs += 1;
            }
        }
        assert!(inputs > 0, "fuzz target {name} has no corpus");
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
