//! `scripts/gpu-check.sh` runs end to end on its CPU path (no nvcc or GPU here): it builds ggml's
//! CPU backend as a loadable library from the vendored source, loads it as the "device", runs
//! the backend agreement check, the shipped model's evaluation on both backends and the benchmark
//! (exact and dual cache + threshold), the training checks (gradients and SFT updates on the CPU
//! and on the device), and writes its report. Small shapes and a few held-out pairs keep it
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
    assert!(bin_dir.join("unmask-train").exists());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = bin_dir.join("gpu-check-work");
    // Keep only the backend build from an earlier run (the script resumes from what it finds).
    let _ = std::fs::remove_dir_all(work.join("models"));
    let _ = std::fs::remove_dir_all(work.join("train"));
    for f in [
        "rows-agree.md",
        "rows-eval.md",
        "rows-bench.md",
        "rows-train-grad.md",
        "rows-train-speed.md",
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
        .env("TRAIN_UPDATES", "2")
        .env("UNMASK_PYTHON", unmask_tests::python())
        .output()
        .expect("run gpu-check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = std::fs::read_to_string(out_dir.path().join("gpu-report.md")).unwrap();
    assert!(report.contains("mode: cpu"), "{report}");
    // Three agreement rows (f16, q8_0, q4_k), all passing; f16 and q8_0 with identical
    // generations. q4_k products differ between the two paths (the CPU path's int8 GEMM
    // quantizes activations per 32 values, ggml's q4_K product per 256), so there a generation
    // may part at a near-tie, which the script must have explained.
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| tiny |"))
        .collect();
    assert_eq!(rows.len(), 3, "{report}");
    for row in rows {
        let same = row.contains("identical")
            || (row.starts_with("| tiny | q4_k |") && row.contains("explained: True"));
        assert!(row.ends_with("| pass |") && same, "{row}");
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
    // Training: both losses' gradients agree between the CPU and the device pipeline, and SFT
    // updates ran on both.
    let grads: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| sft | ") || l.starts_with("| coupled-grpo | "))
        .collect();
    assert_eq!(grads.len(), 2, "{report}");
    for row in grads {
        assert!(row.ends_with("| pass |"), "{row}");
    }
    let speed: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| cpu | 2 | ") || l.starts_with("| ggml-cpu | 3 | "))
        .collect();
    assert_eq!(speed.len(), 2, "{report}");
    let jsonl = std::fs::read_to_string(out_dir.path().join("gpu-check.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    // 3 agreement reports, 4 evaluations, 3 benchmarks, 2 gradient checks, 1 speed comparison.
    assert_eq!(lines.len(), 13, "{jsonl}");
    let speed = lines
        .iter()
        .find(|v| v.get("train_speed").is_some())
        .expect("a training speed line");
    // The first update starts from the same weights and data on both: the same loss.
    let (a, b) = (
        speed["loss_1_cpu"].as_f64().unwrap(),
        speed["loss_1_device"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4 * a.abs(), "first loss {a} vs {b}");
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
