//! The command line's errors name the problem, exit non-zero, and leave no output behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unmask_dream::safetensors::{write_file, Dtype, SafetensorsFile};
use unmask_quantize::synth::{Preset, SynthModel};

fn quantize(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unmask-quantize"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run unmask-quantize")
}

fn tiny(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    SynthModel::new(Preset::Tiny, 5)
        .unwrap()
        .write_hf(&hf, 1 << 30)
        .unwrap();
    hf
}

/// Rewrites every shard of `hf` through `edit`, which sees (name, dtype, shape, bytes) and may
/// change or drop the tensor; the index is rewritten to match.
fn edit_checkpoint(hf: &Path, edit: impl Fn(&mut (String, Dtype, Vec<u64>, Vec<u8>)) -> bool) {
    let index_path = hf.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let mut weight_map = serde_json::Map::new();
    let shards: std::collections::BTreeSet<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for shard in shards {
        let path = hf.join(&shard);
        let file = SafetensorsFile::open(&path).unwrap();
        let mut tensors = Vec::new();
        for (name, entry) in file.entries() {
            let mut t = (
                name.clone(),
                entry.dtype,
                entry.shape.clone(),
                file.map(entry).unwrap().to_vec(),
            );
            if edit(&mut t) {
                weight_map.insert(t.0.clone(), shard.clone().into());
                tensors.push(t);
            }
        }
        drop(file);
        write_file(&path, &tensors).unwrap();
    }
    index["weight_map"] = weight_map.into();
    std::fs::write(&index_path, index.to_string()).unwrap();
}

fn assert_fails_cleanly(out: &Output, output_file: &Path, fragment: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(fragment),
        "expected {fragment:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !output_file.exists(),
        "{} was left behind",
        output_file.display()
    );
    let dir = output_file.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn convert_args<'a>(hf: &'a Path, out: &'a Path, ty: &'a str) -> Vec<&'a std::ffi::OsStr> {
    vec![
        hf.as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        ty.as_ref(),
        "-q".as_ref(),
    ]
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    edit_checkpoint(&hf, |t| t.0 != "model.layers.1.mlp.up_proj.weight");
    let out = dir.path().join("out.gguf");
    assert_fails_cleanly(
        &quantize(&convert_args(&hf, &out, "q8_0")),
        &out,
        "model.layers.1.mlp.up_proj.weight` is missing",
    );
}

#[test]
fn unexpected_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    edit_checkpoint(&hf, |t| {
        if t.0 == "model.layers.0.self_attn.k_proj.weight" {
            t.2 = vec![t.2[1], t.2[0]]; // transposed
        }
        true
    });
    let out = dir.path().join("out.gguf");
    assert_fails_cleanly(
        &quantize(&convert_args(&hf, &out, "f16")),
        &out,
        "k_proj.weight` has shape [256, 128], expected [128, 256]",
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    edit_checkpoint(&hf, |t| {
        if t.0 == "model.norm.weight" {
            t.1 = Dtype::Other {
                name: "I16",
                size: 2,
            };
        }
        true
    });
    let out = dir.path().join("out.gguf");
    assert_fails_cleanly(
        &quantize(&convert_args(&hf, &out, "f32")),
        &out,
        "`model.norm.weight` has unsupported dtype `I16`",
    );
}

#[test]
fn nan_weights_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    edit_checkpoint(&hf, |t| {
        if t.0 == "lm_head.weight" {
            let nan = half::bf16::NAN.to_bits().to_le_bytes();
            t.3[2 * 1000..2 * 1000 + 2].copy_from_slice(&nan);
        }
        true
    });
    let out = dir.path().join("out.gguf");
    assert_fails_cleanly(
        &quantize(&convert_args(&hf, &out, "q4_k_m")),
        &out,
        "`lm_head.weight` contains a non-finite value (NaN or infinity) at element 1000",
    );
}

#[test]
fn a_model_that_is_not_dream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let config_path = hf.join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let text = text
        .replace("DreamModel", "LlamaForCausalLM")
        .replace("\"Dream\"", "\"llama\"");
    std::fs::write(&config_path, text).unwrap();
    let out = dir.path().join("out.gguf");
    assert_fails_cleanly(
        &quantize(&convert_args(&hf, &out, "q8_0")),
        &out,
        "not a Dream/DiffuCoder checkpoint",
    );
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let out = dir.path().join("out.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let result = quantize(&convert_args(&hf, &out, "q8_0"));
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("already exists (pass --force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let mut args = convert_args(&hf, &out, "q8_0");
    args.push("--force".as_ref());
    assert!(quantize(&args).status.success());
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");
}

#[test]
fn unknown_type_lists_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let result = quantize(&convert_args(dir.path(), &out, "q3_k_xl"));
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("q4_k_m"));
}

#[test]
fn disk_full_is_reported_and_cleaned_up() {
    // A 512 KiB tmpfs holds the header but not the 5.5 MiB of f32 weights.
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mount)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "this test needs root to mount a small tmpfs (CI runs as root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());
    let out = mount.join("out.gguf");
    let result = quantize(&convert_args(&hf, &out, "f32"));
    assert_fails_cleanly(&result, &out, "No space left on device");
}

#[test]
fn info_describes_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let out = dir.path().join("out.gguf");
    assert!(quantize(&convert_args(&hf, &out, "q4_k_m"))
        .status
        .success());
    let result = quantize(&["info".as_ref(), out.as_os_str()]);
    let text = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success());
    for needle in [
        "general.architecture",
        "\"dream\"",
        "blk.1.ffn_down.weight",
        "q6_K",
        "1444096 parameters",
        "bits per weight",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

/// Runs unmask-quantize with RUST_BACKTRACE=1, as a user who set it for another program would.
fn quantize_with_backtrace(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unmask-quantize"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run unmask-quantize")
}

fn no_temporaries(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_text_file_input_is_named_with_its_kind_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("checkpoint-4")).unwrap();
    std::fs::write(run.join("latest"), "checkpoint-4\n").unwrap();
    let out = dir.path().join("out.gguf");
    let result = quantize_with_backtrace(&convert_args(&run.join("latest"), &out, "q8_0"));
    assert_fails_cleanly(&result, &out, "is not a GGUF file: it is a text file");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("`latest` pointer"), "{stderr}");
    assert!(stderr.contains("checkpoint-4"), "{stderr}");
    assert!(!stderr.contains("bad magic"), "{stderr}");
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    for (bytes, kind) in [
        (&b"{\"architectures\": []}"[..], "a JSON document"),
        (b"PK\x03\x04\x14\0\0\0", "a zip archive"),
        (b"", "an empty file"),
    ] {
        let input = dir.path().join("input.bin");
        std::fs::write(&input, bytes).unwrap();
        let result = quantize_with_backtrace(&convert_args(&input, &out, "q8_0"));
        assert_fails_cleanly(&result, &out, kind);
    }
}

#[test]
fn a_folder_as_output_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let gguf = dir.path().join("tiny.gguf");
    assert!(quantize(&convert_args(&hf, &gguf, "f32")).status.success());
    let empty = dir.path().join("emptydir");
    std::fs::create_dir(&empty).unwrap();
    let mut args = convert_args(&gguf, &empty, "q8_0");
    args.push("--force".as_ref());
    let result = quantize(&args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a folder"), "{stderr}");
    assert!(empty.is_dir());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    no_temporaries(dir.path());
}

#[test]
fn a_failed_final_rename_removes_the_temporary() {
    // The library path, past the CLI's folder check: the rename onto a non-empty folder fails.
    use unmask_kernels::gguf::{GgufValue, GgufWriter};
    let dir = tempfile::tempdir().unwrap();
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::String("dream".into()));
    let data = w.begin(&busy, true).unwrap();
    assert!(data.finish().is_err());
    no_temporaries(dir.path());
}

#[test]
fn requantizing_needs_allow_requantize_and_says_the_cost() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let q8 = dir.path().join("q8.gguf");
    assert!(quantize(&convert_args(&hf, &q8, "q8_0")).status.success());
    let out = dir.path().join("q5.gguf");
    let result = quantize(&convert_args(&q8, &out, "q5_k"));
    assert_fails_cleanly(&result, &out, "already quantized (q8_0)");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("--allow-requantize"), "{stderr}");
    assert!(stderr.contains("worse"), "{stderr}");
    let mut args = convert_args(&q8, &out, "q5_k");
    args.push("--allow-requantize".as_ref());
    assert!(quantize(&args).status.success());
    assert!(out.exists());
    // Dequantizing to f32 loses nothing more and needs no flag; an f32 source needs none either.
    let f32_out = dir.path().join("f32.gguf");
    assert!(quantize(&convert_args(&q8, &f32_out, "f32"))
        .status
        .success());
    let again = dir.path().join("again.gguf");
    assert!(quantize(&convert_args(&f32_out, &again, "q4_k_m"))
        .status
        .success());
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_during_a_conversion_leave_no_temporary() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    for signal in ["INT", "TERM"] {
        let out = dir.path().join(format!("out-{signal}.gguf"));
        let mut args = convert_args(&hf, &out, "q8_0");
        args.push("--throttle-ms".as_ref());
        args.push("200".as_ref());
        let mut child = Command::new(env!("CARGO_BIN_EXE_unmask-quantize"))
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the temporary exists, i.e. the conversion is under way.
        let start = Instant::now();
        let temp_exists = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        };
        while !temp_exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no temporary appeared"
            );
            assert!(child.try_wait().unwrap().is_none(), "finished too early");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(!status.success(), "{signal}: {status:?}");
        assert!(!out.exists(), "{signal}: the output was written");
        no_temporaries(dir.path());
    }
}
