//! An independent reader agrees: PyPI's `gguf` package reads every file we write, and its
//! metadata, shapes, types and dequantized values match the safetensors source (the checker is
//! `tests/python/check_gguf.py`; it parses safetensors itself, without our code).

use unmask_tests::{convert_to, describe, run_python, write_tiny_hf, ALL_TARGETS};

#[test]
fn python_gguf_reads_every_type_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 11);
    for target in ALL_TARGETS {
        let out = dir.path().join(format!("tiny-{target}.gguf"));
        convert_to(&hf, &out, target);
        let result = run_python(
            "check_gguf.py",
            &[
                "--gguf",
                out.to_str().unwrap(),
                "--hf",
                hf.to_str().unwrap(),
                "--expect-type",
                target,
            ],
        );
        assert!(result.status.success(), "{target}: {}", describe(&result));
    }
}

#[test]
fn the_python_check_fails_on_a_corrupted_tensor() {
    // The agreement above only means something if the checker can disagree: flip one weight of
    // an f32 file (the last tensor's last 4 bytes are weight data) and it must fail.
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 12);
    let out = dir.path().join("tiny-f32.gguf");
    convert_to(&hf, &out, "f32");
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    let value = f32::from_le_bytes(bytes[n - 4..].try_into().unwrap()) + 0.5;
    bytes[n - 4..].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&out, bytes).unwrap();
    let result = run_python(
        "check_gguf.py",
        &[
            "--gguf",
            out.to_str().unwrap(),
            "--hf",
            hf.to_str().unwrap(),
            "--expect-type",
            "f32",
        ],
    );
    assert_eq!(result.status.code(), Some(1), "{}", describe(&result));
    assert!(
        String::from_utf8_lossy(&result.stdout).contains("output.weight"),
        "{}",
        describe(&result)
    );
}

#[test]
fn python_checker_self_test() {
    let result = run_python("selftest_check_gguf.py", &[]);
    assert!(result.status.success(), "{}", describe(&result));
}
