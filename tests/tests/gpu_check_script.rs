//! `scripts/gpu-check.sh` runs end to end on its CPU path (no nvcc or GPU here): it builds ggml's
//! CPU backend as a loadable library from the vendored source, loads it as the "device", runs
//! the backend agreement check and the benchmark, and writes its report. Small shapes keep it
//! short; the backend build is kept in the target directory between runs.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn gpu_check_runs_end_to_end_on_the_cpu_path() {
    let bin_dir = unmask_tests::unmask_bin()
        .parent()
        .expect("bin dir")
        .to_path_buf();
    assert!(bin_dir.join("unmask-quantize").exists());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = bin_dir.join("gpu-check-work");
    // Keep only the backend build from an earlier run (the script resumes from what it finds).
    let _ = std::fs::remove_dir_all(work.join("models"));
    for f in ["rows-agree.md", "rows-bench.md", "gpu-check.jsonl"] {
        let _ = std::fs::remove_file(work.join(f));
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg("--cpu")
        .env("OUT", out_dir.path())
        .env("WORK", &work)
        .env("BIN_DIR", &bin_dir)
        .env("BUNDLE", out_dir.path().join("no-bundle"))
        .env("CHECK_PRESETS", "tiny")
        .env("BIG_PRESET", "tiny")
        .env("BENCH_GEN", "32")
        .env("BENCH_STEPS", "16 4")
        .output()
        .expect("run gpu-check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = std::fs::read_to_string(out_dir.path().join("gpu-report.md")).unwrap();
    assert!(report.contains("mode: cpu"), "{report}");
    // Three agreement rows (f16, q8_0, q4_k), all passing with identical generations.
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| tiny |"))
        .collect();
    assert_eq!(rows.len(), 3, "{report}");
    for row in rows {
        assert!(
            row.ends_with("| pass |") && row.contains("identical"),
            "{row}"
        );
    }
    // Two benchmark rows with libllama's numbers.
    let bench: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| 16 |") || l.starts_with("| 4 |"))
        .collect();
    assert_eq!(bench.len(), 2, "{report}");
    for row in bench {
        assert!(!row.contains("| - |"), "libllama missing: {row}");
    }
    let jsonl = std::fs::read_to_string(out_dir.path().join("gpu-check.jsonl")).unwrap();
    for line in jsonl.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("one JSON object per line");
    }
    assert_eq!(jsonl.lines().count(), 5);
}

#[test]
fn scripts_parse() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for script in ["gpu-check.sh", "build-ggml-backend.sh", "gpu-bundle.sh"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(root.join("scripts").join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
