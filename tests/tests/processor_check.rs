//! A processor without the instruction sets the build uses gets a clear error, not a crash.
//!
//! ggml is compiled for AVX2, FMA, F16C and BMI2 (`.cargo/config.toml`); on a processor without
//! them its first vector instruction would kill the program with SIGILL. The three programs
//! check the processor first. Here each runs under qemu's user-mode emulator posing as a Nehalem
//! (SSE4.2, no AVX) and must exit 1 with the error naming the missing sets; posing as a Haswell
//! (the oldest processor the build is for) `unmask devices` must run and report the AVX2 kernel.
//!
//! Needs `qemu-x86_64` (Debian's `qemu-user`, installed by `scripts/setup.sh --test`); on
//! processors other than x86-64 there is nothing to check and the test returns at once.

use std::path::PathBuf;
use std::process::{Command, Output};

fn binary(name: &str) -> PathBuf {
    unmask_tests::workspace_bin(name)
}

fn emulated(cpu: &str, program: &str, args: &[&str]) -> Output {
    let out = Command::new("qemu-x86_64")
        .arg("-cpu")
        .arg(cpu)
        .arg(binary(program))
        .args(args)
        .output();
    match out {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run qemu-x86_64 ({e}): install Debian's qemu-user (scripts/setup.sh --test)"
        ),
    }
}

#[test]
fn a_processor_without_avx2_gets_an_error_not_a_crash() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    for (program, args) in [
        ("unmask", &["devices"][..]),
        ("unmask-quantize", &["info", "no-such.gguf"][..]),
        (
            "unmask-train",
            &["reward", "--tasks", "no-such", "--completions", "no-such"][..],
        ),
    ] {
        let out = emulated("Nehalem", program, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A signal death has no exit code; SIGILL would show here as None.
        assert_eq!(
            out.status.code(),
            Some(1),
            "{program} under a Nehalem: {:?}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains("this processor lacks") && stderr.contains("avx2"),
            "{program}: {stderr}"
        );
    }
}

#[test]
fn a_haswell_runs_with_the_avx2_kernel() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let out = emulated("Haswell", "unmask", &["devices"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unmask devices under a Haswell: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("q8_0 products: avx2"), "{stdout}");
}
