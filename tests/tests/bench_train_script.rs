//! `scripts/bench-train.sh --quick` runs end to end: it makes a fresh tiny checkpoint, times SFT
//! updates of `unmask-train sft` and of the PyTorch loop (`tests/python/bench_train_torch.py`) on
//! it, and writes a report with a speed for each side and their ratio. (The full runs, at the
//! 5 M-parameter and 0.5b shapes, are recorded in docs/performance.md.)

use std::path::PathBuf;
use std::process::Command;

/// The number in the second cell of the report row that starts with `| {label} |`.
fn tokens_per_s(report: &str, label: &str) -> f64 {
    let row = report
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no {label} row:\n{report}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    cells[2]
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {row}"))
}

#[test]
fn bench_train_quick_writes_its_report() {
    let bin_dir = unmask_tests::unmask_bin()
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/bench-train.sh"))
        .arg("--quick")
        .env("BIN_DIR", &bin_dir)
        .env("OUT_DIR", out_dir.path())
        .env("UNMASK_PYTHON", unmask_tests::python())
        .output()
        .expect("run bench-train.sh");
    assert!(out.status.success(), "{}", unmask_tests::describe(&out));
    let report = std::fs::read_to_string(out_dir.path().join("report.md")).unwrap();
    let ours = tokens_per_s(&report, "unmask-train");
    let theirs = tokens_per_s(&report, "PyTorch");
    assert!(ours > 0.0 && theirs > 0.0, "{report}");
    let ratio_line = report
        .lines()
        .find(|l| l.starts_with("unmask / PyTorch: **"))
        .unwrap_or_else(|| panic!("no ratio:\n{report}"));
    let ratio: f64 = ratio_line
        .trim_start_matches("unmask / PyTorch: **")
        .trim_end_matches("x**")
        .parse()
        .unwrap_or_else(|_| panic!("{ratio_line}"));
    assert!(
        (ratio - ours / theirs).abs() < 0.01 + 0.01 * ratio,
        "{report}"
    );
    assert!(report.contains("Machine: "), "{report}");
}
