//! `scripts/gpu-check.sh` runs end to end on its CPU path (no nvcc or GPU here): it builds ggml's
//! CPU backend as a loadable library from the vendored source, loads it as the "device", runs
//! the backend agreement check, the shipped model's evaluation on both backends and the benchmark
//! (exact and dual cache + threshold), and writes its report. Small shapes and a few held-out
//! pairs keep it short; the backend build is kept in the target directory between runs.

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
    for f in [
        "rows-agree.md",
        "rows-eval.md",
        "rows-bench.md",
        "gpu-check.jsonl",
    ] {
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
        .env("EVAL_PAIRS", "4")
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
    // The shipped model on both backends, exact and dual cache + threshold: four rows, the
    // device's saying how many of its 4 completions equal the CPU's.
    let eval: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| exact | ") || l.starts_with("| dual cache + threshold 0.9 | "))
        .filter(|l| l.contains("| cpu |") || l.contains("| ggml-cpu |"))
        .collect();
    assert_eq!(eval.len(), 4, "{report}");
    assert_eq!(
        eval.iter().filter(|l| l.ends_with("/4 |")).count(),
        2,
        "{report}"
    );
    // Three benchmark rows with libllama's numbers, the device computing fused attention.
    let bench: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.starts_with("| exact | 16 |")
                || l.starts_with("| exact | 4 |")
                || l.starts_with("| dual cache + threshold 0.9 | 16 |")
        })
        .collect();
    assert_eq!(bench.len(), 3, "{report}");
    for row in bench {
        assert!(!row.contains("| - |"), "libllama missing: {row}");
        assert!(row.contains("| fused |"), "{row}");
    }
    let jsonl = std::fs::read_to_string(out_dir.path().join("gpu-check.jsonl")).unwrap();
    for line in jsonl.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("one JSON object per line");
    }
    // 3 agreement reports, 4 evaluations, 3 benchmarks.
    assert_eq!(jsonl.lines().count(), 10);
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
