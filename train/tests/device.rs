//! `unmask-train --device`: cpu and auto train on the CPU; cuda is refused with a clear message
//! (here: no CUDA backend library can be found), a non-zero exit code and no panic.

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
    for sub in ["sft", "grpo"] {
        let out = train(&[
            sub,
            "--model",
            "/nonexistent",
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
