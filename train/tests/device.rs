//! `unmask-train --device`: a CUDA request without a GPU is refused with a clear message, a
//! non-zero exit code and no panic. (Training on the device pipeline is in `sft.rs` and
//! `grpo_learns.rs`.)

use std::process::Command;

fn train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("UNMASK_BACKEND_DIR", "/nonexistent-unmask-backends")
        .output()
        .expect("run unmask-train")
}

#[test]
fn cuda_is_refused_clearly() {
    for (sub, input) in [("sft", "--data"), ("grpo", "--tasks")] {
        let out = train(&[
            sub,
            "--model",
            "/nonexistent",
            input,
            "/nonexistent.jsonl",
            "--out",
            "/nonexistent-out",
            "--device",
            "cuda",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sub}: {stderr}");
        assert!(stderr.contains("no CUDA device is available"), "{stderr}");
        assert!(stderr.contains("libggml-cuda.so"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let out = train(&[sub, "--model", "/x", "--out", "/y", "--device", "quantum"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("unknown device `quantum`"), "{stderr}");
    }
}
