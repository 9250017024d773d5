//! `ffi/examples/generate.py` drives the installed shared library through Python's ctypes
//! (standard library only) and gets exactly `unmask generate --json`'s ids, text and per-step
//! commit positions; cancelling from the Python callback works too.

mod common;

use common::{cli_json, describe, json_ids, python, Setup};
use std::process::Command;

fn run_example(setup: &Setup, prompt: &str, options: &[&str]) -> serde_json::Value {
    run_example_on(setup, &setup.model, prompt, options)
}

fn run_example_on(
    setup: &Setup,
    model: &std::path::Path,
    prompt: &str,
    options: &[&str],
) -> serde_json::Value {
    let script = common::repo_root().join("ffi/examples/generate.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(model)
        .arg(prompt)
        .arg("--lib")
        .arg(setup.shared_lib())
        .arg("--json")
        .args(options)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(out.status.success(), "generate.py: {}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from generate.py")
}

#[test]
fn python_ctypes_example_matches_the_cli() {
    let setup = Setup::new();
    let prompt = "Write a function that reverses a string";
    let cases: [&[&str]; 3] = [
        &[
            "--max-new-tokens",
            "32",
            "--steps",
            "16",
            "--seed",
            "3",
            "--threads",
            "1",
        ],
        &[
            "--max-new-tokens",
            "24",
            "--steps",
            "6",
            "--alg",
            "maskgit_plus",
            "--temperature",
            "0",
            "--block-length",
            "12",
            "--no-chat",
            "--threads",
            "1",
        ],
        &[
            "--max-new-tokens",
            "32",
            "--steps",
            "32",
            "--cache",
            "dual",
            "--block-length",
            "8",
            "--threshold",
            "0.2",
            "--temperature",
            "0",
            "--threads",
            "1",
        ],
    ];
    for options in cases {
        let py = run_example(&setup, prompt, options);
        let cli = cli_json(&setup.model, prompt, options);
        assert_eq!(py["status"], 0, "{options:?}");
        assert_eq!(
            json_ids(&py["tokens"]),
            json_ids(&cli["tokens"]),
            "{options:?}"
        );
        assert_eq!(py["text"], cli["text"], "{options:?}");
        assert_eq!(py["commits"], cli["commits"], "{options:?}");
        assert_eq!(py["prompt_tokens"], cli["prompt_tokens"], "{options:?}");
    }
    let cancelled = run_example(
        &setup,
        prompt,
        &[
            "--max-new-tokens",
            "16",
            "--steps",
            "8",
            "--threads",
            "1",
            "--cancel-at",
            "3",
        ],
    );
    assert_eq!(cancelled["status"], 1, "UNMASK_CANCELLED");
    assert_eq!(cancelled["steps"], 4);
    assert_eq!(cancelled["commits"].as_array().unwrap().len(), 4);
}

#[test]
fn python_ctypes_example_applies_the_model_files_settings_as_the_cli_does() {
    let setup = Setup::new();
    let model = common::own_settings_model(&setup);
    let prompt = "def add(a, b):";
    // The file stores 16 steps per 32 new tokens.
    for (options, steps) in [
        (&["--threads", "1"][..], 16),
        (&["--max-new-tokens", "48", "--threads", "1"], 24),
    ] {
        let py = run_example_on(&setup, &model, prompt, options);
        let cli = cli_json(&model, prompt, options);
        assert_eq!(py["status"], 0, "{options:?}");
        assert_eq!(cli["settings"]["temperature"]["source"], "model file");
        assert_eq!(
            json_ids(&py["tokens"]),
            json_ids(&cli["tokens"]),
            "{options:?}"
        );
        assert_eq!(py["commits"], cli["commits"], "{options:?}");
        assert_eq!(cli["steps"], steps, "{options:?}");
        assert_eq!(
            py["commits"].as_array().unwrap().len(),
            steps,
            "{options:?}"
        );
    }
}
