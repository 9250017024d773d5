//! The command line's errors name the problem, exit non-zero, and leave no output behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unmask_quantize::safetensors::{write_file, Dtype, SafetensorsFile};
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
