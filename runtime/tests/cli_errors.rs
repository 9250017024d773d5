//! `unmask generate` refuses bad input with a clear message and exit code 1, never a panic.

mod common;

use common::{tiny_model, unmask};
use std::process::{Command, Output};
use unmask_quantize::synth::{Preset, SynthModel};

fn assert_error(out: &Output, fragment: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, stderr: {stderr}"
    );
    assert!(
        stderr.contains(fragment),
        "expected {fragment:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn generation_parameters_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let m = model.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--steps", "0"], "steps must be at least 1"),
        (
            &["--max-new-tokens", "8", "--steps", "16"],
            "cannot exceed the number of new tokens",
        ),
        (
            &["--max-new-tokens", "0", "--steps", "1"],
            "max_new_tokens must be at least 1",
        ),
        (
            &[
                "--max-new-tokens",
                "12",
                "--steps",
                "12",
                "--block-length",
                "5",
            ],
            "block_length 5 must divide",
        ),
        (&["--top-p", "0"], "top_p 0 must be in (0, 1]"),
        (&["--eps", "1.5"], "eps 1.5 must be in (0, 1)"),
        (
            &["--max-new-tokens", "5000", "--steps", "10"],
            "exceeds the model's context of 4096 tokens",
        ),
    ];
    for (extra, fragment) in cases {
        let mut args = vec!["generate", "-m", m, "-p", "hello", "--threads", "1"];
        args.extend_from_slice(extra);
        assert_error(&unmask(&args), fragment);
    }
}

#[test]
fn bad_fast_decoding_settings_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let m = model.to_str().unwrap();
    let cases: [(&[&str], &str); 9] = [
        // The default block length (32) must divide the tokens.
        (
            &["--cache", "dual", "--max-new-tokens", "48", "--steps", "48"],
            "the default block_length (32) of the cached modes 32 must divide max_new_tokens 48",
        ),
        (
            &[
                "--cache",
                "prefix",
                "--max-new-tokens",
                "32",
                "--steps",
                "32",
                "--block-length",
                "12",
            ],
            "block_length 12 must divide max_new_tokens 32",
        ),
        (
            &[
                "--cache",
                "dual",
                "--max-new-tokens",
                "64",
                "--steps",
                "6",
                "--block-length",
                "16",
            ],
            "steps 6 must be a multiple of the number of blocks (4)",
        ),
        // One step per block would leave each block masked after its first token (§4).
        (
            &["--cache", "dual", "--max-new-tokens", "64", "--steps", "2"],
            "1 step per block in the fixed-step cached mode would leave each block masked",
        ),
        (
            &[
                "--threshold",
                "0",
                "--max-new-tokens",
                "32",
                "--steps",
                "32",
            ],
            "threshold 0 must be in (0, 1]",
        ),
        (
            &[
                "--threshold",
                "1.5",
                "--max-new-tokens",
                "32",
                "--steps",
                "32",
            ],
            "threshold 1.5 must be in (0, 1]",
        ),
        (
            &[
                "--threshold",
                "0.9",
                "--max-new-tokens",
                "32",
                "--steps",
                "12",
            ],
            "steps (12) must divide max_new_tokens (32)",
        ),
        (
            &[
                "--threshold",
                "0.9",
                "--max-new-tokens",
                "32",
                "--steps",
                "32",
                "--block-length",
                "8",
            ],
            "block_length applies to the cached modes",
        ),
        (
            &[
                "--cache",
                "dual",
                "--alg",
                "origin",
                "--max-new-tokens",
                "32",
                "--steps",
                "32",
            ],
            "alg origin has none",
        ),
    ];
    for (extra, fragment) in cases {
        let mut args = vec!["generate", "-m", m, "-p", "hello", "--threads", "1"];
        args.extend_from_slice(extra);
        assert_error(&unmask(&args), fragment);
    }
    // A usage error (clap's exit status 2) naming the choices.
    let out = unmask(&["generate", "-m", m, "-p", "hello", "--cache", "triple"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown cache `triple` (none, prefix, dual)"),
        "{stderr}"
    );
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let long = "word ".repeat(5000);
    let out = unmask(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        &long,
        "--max-new-tokens",
        "8",
        "--steps",
        "8",
    ]);
    assert_error(&out, "exceeds the model's context");
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let out = unmask(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,99999",
        "--max-new-tokens",
        "4",
        "--steps",
        "4",
    ]);
    assert_error(&out, "token id 99999 is outside the vocabulary");
}

#[test]
fn files_that_are_not_dream_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    assert_error(
        &unmask(&["generate", "-m", missing.to_str().unwrap(), "-p", "x"]),
        "No such file",
    );

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    assert_error(
        &unmask(&["generate", "-m", garbage.to_str().unwrap(), "-p", "x"]),
        "is not a GGUF file: it is a text file",
    );

    let model = tiny_model(dir.path(), 9);
    let bytes = std::fs::read(&model).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(
        &unmask(&["generate", "-m", truncated.to_str().unwrap(), "-p", "x"]),
        "runs past the end of the file",
    );

    // A valid GGUF of another architecture: rewrite "dream" in general.architecture.
    let pos = bytes.windows(5).position(|w| w == b"dream").unwrap();
    let mut other = bytes.clone();
    other[pos..pos + 5].copy_from_slice(b"llama");
    let llama = dir.path().join("llama.gguf");
    std::fs::write(&llama, other).unwrap();
    assert_error(
        &unmask(&["generate", "-m", llama.to_str().unwrap(), "-p", "x"]),
        "expected \"dream\"",
    );
}

#[test]
fn json_output_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let out = unmask(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "def f():",
        "--max-new-tokens",
        "16",
        "--steps",
        "8",
        "--json",
        "--order",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "prompt_tokens",
        "tokens",
        "text",
        "steps",
        "seconds",
        "tokens_per_second",
        "ar_ness",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["tokens"].as_array().unwrap().len(), 16);
    assert_eq!(json["steps"], 8);
    // The chat template is on by default for a tokenizer with <|im_start|>: the prompt is longer
    // than the three or so tokens of the bare text.
    assert!(json["prompt_tokens"].as_u64().unwrap() > 10);
}

#[test]
fn a_folder_as_the_model_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    SynthModel::new(Preset::Tiny, 3)
        .unwrap()
        .write_hf(&hf, 1 << 30)
        .unwrap();
    let out = unmask(&["generate", "-m", hf.to_str().unwrap(), "-p", "x"]);
    assert_error(&out, "is a folder (a Hugging Face checkpoint)");
    assert_error(&out, "unmask-quantize");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("No such device"), "{stderr}");

    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let empty = unmask(&["generate", "-m", models.to_str().unwrap(), "-p", "x"]);
    assert_error(&empty, "is a folder, not a model file");
    std::fs::rename(tiny_model(dir.path(), 9), models.join("tiny.gguf")).unwrap();
    let holding = unmask(&["generate", "-m", models.to_str().unwrap(), "-p", "x"]);
    assert_error(&holding, "it holds tiny.gguf: pass -m");

    let shard = hf.join("model.safetensors");
    let first = std::fs::read_dir(&hf)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    std::fs::rename(first, &shard).unwrap();
    assert_error(
        &unmask(&["generate", "-m", shard.to_str().unwrap(), "-p", "x"]),
        "it is a safetensors file",
    );
}

#[test]
fn steps_follow_the_length_and_too_many_threads_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let m = model.to_str().unwrap();
    // Without --steps: one step per new token, whatever --max-new-tokens is (it used to fail:
    // "steps (256) cannot exceed the number of new tokens (32)").
    let out = unmask(&[
        "generate",
        "-m",
        m,
        "-p",
        "hello",
        "--max-new-tokens",
        "32",
        "--json",
        "-t",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["steps"], 32);
    assert!(!stderr.contains("warning"), "{stderr}");
    // More threads than CPUs: it runs, with a warning that says why it is slow and what to use.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let many = (cpus + 1).to_string();
    let out = unmask(&[
        "generate",
        "-m",
        m,
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "4",
        "-t",
        &many,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: {many} threads on {cpus} CPUs")),
        "{stderr}"
    );
    // Piped stderr: no progress bar drawn.
    assert!(!stderr.contains("tokens, step"), "{stderr}");
}

/// `unmask ARGS` with its standard streams on a pseudo-terminal (util-linux's `script`, part of
/// every Debian and Ubuntu system): what a user at a terminal sees.
fn on_a_terminal(args: &[&str]) -> String {
    let command = std::iter::once(env!("CARGO_BIN_EXE_unmask"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs the command on a pseudo-terminal");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_terminal_shows_a_step_progress_bar_unless_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 9);
    let m = model.to_str().unwrap();
    let args = [
        "generate",
        "-m",
        m,
        "-p",
        "hello",
        "--max-new-tokens",
        "16",
        "-t",
        "1",
    ];
    let shown = on_a_terminal(&args);
    assert!(shown.contains("/16 tokens, step "), "{shown}");
    assert!(shown.contains("tokens/s"), "{shown}");
    assert!(shown.contains(" left"), "the time left: {shown}");
    let quiet = on_a_terminal(&[&args[..], &["--quiet"]].concat());
    assert!(!quiet.contains("/16 tokens, step "), "{quiet}");
    assert!(
        quiet.contains("16 tokens, 16 steps"),
        "the summary stays: {quiet}"
    );
}
