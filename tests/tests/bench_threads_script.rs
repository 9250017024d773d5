//! `scripts/bench-threads.sh --quick` runs end to end: it makes the tiny model, runs `unmask
//! bench` at 1 and 2 threads, quiet and beside a busy process, sleeping and polling, and writes
//! a report with a number in every cell it measured. (The full run, with 4 threads and the 0.5b
//! model, is recorded in docs/performance.md.)

use std::path::PathBuf;
use std::process::Command;

#[test]
fn bench_threads_quick_writes_its_report() {
    let bin_dir = unmask_tests::unmask_bin()
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/bench-threads.sh"))
        .arg("--quick")
        .env("BIN_DIR", &bin_dir)
        .env("OUT_DIR", out_dir.path())
        .output()
        .expect("run bench-threads.sh");
    assert!(out.status.success(), "{}", unmask_tests::describe(&out));
    let report = std::fs::read_to_string(out_dir.path().join("report.md")).unwrap();
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| tiny |"))
        .collect();
    assert_eq!(rows.len(), 4, "busy no/yes x poll 0/50:\n{report}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | tiny | busy | poll | 1 thread | 2 threads | 4 threads |
        for cell in &cells[4..6] {
            let seconds: f64 = cell
                .trim_end_matches(" s")
                .parse()
                .unwrap_or_else(|_| panic!("{row}"));
            assert!(seconds > 0.0, "{row}");
        }
        assert_eq!(cells[6], "-", "4 threads are not run by --quick: {row}");
    }
    assert!(report.starts_with("Machine: "), "{report}");
}
