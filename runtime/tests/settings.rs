//! Generation settings are layered built-in < model file < flags: a GGUF file's
//! `unmask.generation.*` values apply unless a flag is given, a stored value out of range is
//! ignored with a warning naming its key, and `--json` says where every value comes from.

mod common;

use common::{tiny_model, unmask};
use serde_json::Value;
use std::path::{Path, PathBuf};
use unmask_kernels::gguf::{GgufFile, GgufValue};
use unmask_quantize::restamp::with_generation_settings;
use unmask_runtime::settings::{FileSettings, Settings, Source};
use unmask_runtime::{GenerateParams, ModelSpec};

/// A copy of `src` whose `unmask.generation.<key>` entries are replaced (`Some`) or removed
/// (`None`), every other entry and tensor as they were.
fn with_generation(src: &Path, name: &str, edits: &[(&str, Option<GgufValue>)]) -> PathBuf {
    let dst = src.with_file_name(name);
    with_generation_settings(src, &dst, edits).unwrap();
    dst
}

/// `unmask generate --json` on `model` with `args`: the report and stderr.
fn generate(model: &Path, args: &[&str]) -> (Value, String) {
    let mut all = vec![
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--json",
        "-t",
        "1",
    ];
    all.extend_from_slice(args);
    let out = unmask(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

fn setting(report: &Value, name: &str) -> (Value, String) {
    let s = &report["settings"][name];
    assert!(s.is_object(), "{name} missing from {}", report["settings"]);
    (
        s["value"].clone(),
        s["source"].as_str().unwrap().to_string(),
    )
}

/// A file with its own settings: 16 steps per 32 tokens, temperature 0.2, maskgit_plus, top-k 7.
fn own_settings(dir: &Path) -> PathBuf {
    with_generation(
        &tiny_model(dir, 4),
        "own.gguf",
        &[
            ("max_new_tokens", Some(GgufValue::U32(32))),
            ("steps", Some(GgufValue::U32(16))),
            ("temperature", Some(GgufValue::F32(0.2))),
            ("alg", Some(GgufValue::String("maskgit_plus".into()))),
            ("top_k", Some(GgufValue::U32(7))),
            ("top_p", None),
        ],
    )
}

#[test]
fn the_model_files_settings_apply_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = own_settings(dir.path());
    let (json, stderr) = generate(&model, &[]);
    assert!(!stderr.contains("warning"), "{stderr}");
    for (name, value) in [
        ("max_new_tokens", serde_json::json!(32)),
        ("steps", serde_json::json!(16)),
        ("temperature", serde_json::json!(0.2)),
        ("alg", serde_json::json!("maskgit_plus")),
        ("top_k", serde_json::json!(7)),
        ("eps", serde_json::json!(0.001)),
    ] {
        assert_eq!(setting(&json, name), (value, "model file".into()), "{name}");
    }
    // Not in this file (top_p) or never in a file (seed, cache): built-in.
    for (name, value) in [
        ("top_p", serde_json::json!(0.95)),
        ("seed", serde_json::json!(0)),
        ("cache", serde_json::json!("none")),
        ("threshold", Value::Null),
    ] {
        assert_eq!(setting(&json, name), (value, "built-in".into()), "{name}");
    }
    assert_eq!(json["tokens"].as_array().unwrap().len(), 32);
    assert_eq!(json["steps"], 16);
    assert_eq!(json["ignored_settings"], serde_json::json!([]));

    // The file's steps per token apply to the length asked for.
    let (json, _) = generate(&model, &["--max-new-tokens", "64"]);
    assert_eq!(
        setting(&json, "max_new_tokens"),
        (serde_json::json!(64), "flag".into())
    );
    assert_eq!(
        setting(&json, "steps"),
        (serde_json::json!(32), "model file".into())
    );
    assert_eq!(json["steps"], 32);

    // Flags win.
    let (json, _) = generate(
        &model,
        &[
            "--steps",
            "8",
            "--temperature",
            "0",
            "--alg",
            "entropy",
            "--top-k",
            "0",
            "--seed",
            "5",
        ],
    );
    for (name, value) in [
        ("steps", serde_json::json!(8)),
        ("temperature", serde_json::json!(0.0)),
        ("alg", serde_json::json!("entropy")),
        ("top_k", Value::Null),
        ("seed", serde_json::json!(5)),
    ] {
        assert_eq!(setting(&json, name), (value, "flag".into()), "{name}");
    }
    assert_eq!(
        setting(&json, "max_new_tokens"),
        (serde_json::json!(32), "model file".into())
    );

    // A refused combination names the file's values it involves.
    let out = unmask(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--steps",
        "40",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("steps (40) cannot exceed the number of new tokens (32)")
            && stderr.contains("from the model file: max_new_tokens 32"),
        "{stderr}"
    );
}

#[test]
fn invalid_stored_values_are_ignored_with_a_warning_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = with_generation(
        &tiny_model(dir.path(), 4),
        "bad.gguf",
        &[
            ("top_p", Some(GgufValue::F32(1.5))),
            ("alg", Some(GgufValue::String("fastest".into()))),
            ("temperature", Some(GgufValue::F32(f32::NAN))),
            ("top_k", Some(GgufValue::F32(7.5))),
            ("steps", Some(GgufValue::I32(-3))),
            ("eps", Some(GgufValue::String("small".into()))),
            ("max_new_tokens", Some(GgufValue::U32(24))),
        ],
    );
    let (json, stderr) = generate(&model, &[]);
    let ignored: Vec<String> = json["ignored_settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_string())
        .collect();
    for key in ["top_p", "alg", "temperature", "top_k", "steps", "eps"] {
        let key = format!("unmask.generation.{key}");
        assert!(ignored.contains(&key), "{key} not in {ignored:?}");
        assert!(
            stderr.contains(&format!("warning: the model file's {key} = ")),
            "{key}: {stderr}"
        );
    }
    assert!(
        stderr.contains("top_p 1.5 must be in (0, 1]") && stderr.contains("unknown algorithm"),
        "{stderr}"
    );
    let top_p = json["ignored_settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "unmask.generation.top_p")
        .unwrap();
    assert_eq!(top_p["value"], "1.5");
    // The built-in values stand in; the valid length applies, one step per token.
    assert_eq!(
        setting(&json, "top_p"),
        (serde_json::json!(0.95), "built-in".into())
    );
    assert_eq!(
        setting(&json, "temperature"),
        (serde_json::json!(0.4), "built-in".into())
    );
    assert_eq!(
        setting(&json, "alg"),
        (serde_json::json!("entropy"), "built-in".into())
    );
    assert_eq!(
        setting(&json, "max_new_tokens"),
        (serde_json::json!(24), "model file".into())
    );
    assert_eq!(
        setting(&json, "steps"),
        (serde_json::json!(24), "built-in".into())
    );
    // Loading the file as a library does not fail either.
    let spec = ModelSpec::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    assert_eq!(FileSettings::of(&spec).ignored.len(), 6);
}

#[test]
fn synthetic_models_store_the_builtin_settings() {
    // Every test model stores DiffuCoder-Instruct's settings, so applying the file changes none
    // of their generations; only the reported source says "model file".
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    let spec = ModelSpec::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    let file = FileSettings::of(&spec);
    assert!(file.ignored.is_empty(), "{:?}", file.ignored);
    let settings = Settings::builtin().with(Source::ModelFile, &file.layer);
    assert_eq!(settings.params(), GenerateParams::default());
    assert!(settings.from_model_file().is_empty());
    let (json, stderr) = generate(&model, &["--max-new-tokens", "8"]);
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_eq!(json["steps"], 8);
    assert_eq!(
        setting(&json, "temperature"),
        (serde_json::json!(0.4), "model file".into())
    );
}

#[test]
fn bench_keeps_its_workload_over_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = own_settings(dir.path());
    let m = model.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "-m", m, "--no-llama", "--json", "-t", "1"];
        args.extend_from_slice(extra);
        let out = unmask(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let json = run(&["--gen", "32"]);
    assert_eq!(
        setting(&json, "max_new_tokens"),
        (serde_json::json!(32), "flag".into())
    );
    // The benchmark's 64 steps, at most one per token.
    assert_eq!(
        setting(&json, "steps"),
        (serde_json::json!(32), "bench".into())
    );
    assert_eq!(
        setting(&json, "temperature"),
        (serde_json::json!(0.0), "bench".into())
    );
    assert_eq!(setting(&json, "top_k"), (Value::Null, "bench".into()));
    // Settings the benchmark leaves alone come from the file.
    assert_eq!(
        setting(&json, "alg"),
        (serde_json::json!("maskgit_plus"), "model file".into())
    );
    assert_eq!(json["steps"], 32);
    let json = run(&["--gen", "16", "--steps", "4", "--temperature", "0.5"]);
    assert_eq!(
        setting(&json, "steps"),
        (serde_json::json!(4), "flag".into())
    );
    assert!(json["forward_passes"].as_u64().unwrap() <= 4);
    assert_eq!(
        setting(&json, "temperature"),
        (serde_json::json!(0.5), "flag".into())
    );
}

#[test]
fn help_states_each_default_and_the_precedence() {
    // Whitespace collapsed: clap wraps long lines.
    let page = |args: &[&str]| {
        let text = String::from_utf8(unmask(args).stdout).unwrap();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let generate = page(&["generate", "--help"]);
    for needle in [
        "[default: the model file's value, else 0.4]",
        "[default: the model file's value, else one per new token]",
        "[default: the model file's value, else 256]",
        "[default: the model file's value, else 50]",
        "[default: the model file's value, else entropy]",
        "Built-in < model file < flags",
    ] {
        assert!(generate.contains(needle), "{needle:?} missing:\n{generate}");
    }
    let bench = page(&["bench", "--help"]);
    for needle in [
        "[default: 0; the model file's value is not used]",
        "[default: 64, at most one per new token; the model file's value is not used]",
        "[default: the model file's value, else entropy]",
        "Built-in < model file < benchmark < flags",
    ] {
        assert!(bench.contains(needle), "{needle:?} missing:\n{bench}");
    }
}
