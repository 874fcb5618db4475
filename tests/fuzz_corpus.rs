//! Every committed fuzz corpus entry (`fuzz/corpus/<target>/`, seeds and what `cargo fuzz`
//! found) replayed through its target: the corpora double as regression tests.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_corpus_entry_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in x402_gateway::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} fails its target",
                path.display()
            );
            n += 1;
        }
        assert!(n >= 4, "{name}: only {n} corpus entries");
        eprintln!("fuzz corpus {name}: {n} entries replayed");
    }
}
