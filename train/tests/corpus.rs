//! `unmask-train corpus` on the machine's Python standard library: every file listed in the
//! manifest is in its part's folder with the recorded hash and size, none comes from a test
//! suite or a cache, no content appears twice, the held-out share is near the asked 5%, a file's
//! part follows from its content alone, and a second run gives the same manifest.

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use unmask_train::corpus::{Manifest, Part, EXCLUDED_DIRS};

fn corpus(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .arg("corpus")
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_standard_library_corpus_is_deduplicated_split_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let run = corpus(&a, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let text = std::fs::read_to_string(a.join("manifest.json")).unwrap();
    let manifest: Manifest = serde_json::from_str(&text).unwrap();
    assert!(manifest.files.len() > 300, "{report}");

    let mut hashes = HashSet::new();
    for f in &manifest.files {
        assert!(hashes.insert(f.sha256.clone()), "{} twice", f.sha256);
        assert!(
            !f.source.split('/').any(|c| EXCLUDED_DIRS.contains(&c)),
            "{} is in an excluded folder",
            f.source
        );
        let bytes = std::fs::read(a.join(f.part.folder()).join(&f.name)).unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{}", f.source);
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, f.sha256, "{}", f.source);
        assert!(
            !a.join(other(f.part)).join(&f.name).exists(),
            "{} in both",
            f.name
        );
    }
    let held = manifest
        .files
        .iter()
        .filter(|f| f.part == Part::HeldOut)
        .count();
    let share = held as f64 / manifest.files.len() as f64;
    assert!(
        (0.02..0.09).contains(&share),
        "held out {held} of {}",
        manifest.files.len()
    );
    assert_eq!(report["held_out"]["files"], held);

    // Again: the same manifest, byte for byte; and a file's part does not depend on the others.
    let b = dir.path().join("b");
    assert!(corpus(&b, &[]).status.success());
    assert_eq!(
        std::fs::read_to_string(b.join("manifest.json")).unwrap(),
        text
    );
    let small = dir.path().join("small-src");
    std::fs::create_dir(&small).unwrap();
    let picked: Vec<_> = manifest.files.iter().step_by(7).take(20).collect();
    for f in &picked {
        let src = a.join(f.part.folder()).join(&f.name);
        std::fs::copy(src, small.join(&f.name)).unwrap();
    }
    let c = dir.path().join("c");
    let run = corpus(&c, &["--data", small.to_str().unwrap()]);
    assert!(run.status.success());
    let sub: Manifest =
        serde_json::from_str(&std::fs::read_to_string(c.join("manifest.json")).unwrap()).unwrap();
    for f in &picked {
        let g = sub.files.iter().find(|g| g.sha256 == f.sha256).unwrap();
        assert_eq!(g.part, f.part, "{}", f.name);
    }

    // Clear errors, nothing written.
    let run = corpus(&a, &[]);
    assert!(!run.status.success(), "an existing folder");
    let d = dir.path().join("d");
    let run = corpus(&d, &["--held-out-percent", "60"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("at most 50"));
    assert!(!d.exists());
}

fn other(part: Part) -> &'static str {
    match part {
        Part::Train => Part::HeldOut.folder(),
        Part::HeldOut => Part::Train.folder(),
    }
}
