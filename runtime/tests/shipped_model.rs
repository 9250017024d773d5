//! The model that ships in the repository (models/unmask-python-7m, trained by
//! scripts/train-model.sh; its model card states what it was trained on and how it scores):
//! `unmask generate` uses it when no `-m` is given (and `$UNMASK_MODEL` when set), and `unmask
//! eval` on held-out function prompts reproduces its parse rate above the floor the card states.
//! The held-out pairs come from standard-library files the model was never trained on.

mod common;

use common::{tiny_model, unmask};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The floor the model card states for the share of completions that parse, on the first
/// `EVAL_PAIRS` held-out pairs.
const PARSE_FLOOR: f64 = 0.5;
const EVAL_PAIRS: usize = 40;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/unmask-python-7m")
}

/// `unmask ARGS` with `UNMASK_MODEL` set to `model_env` (or removed).
fn unmask_env(args: &[&str], model_env: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unmask"));
    command.args(args).env("RUST_BACKTRACE", "0");
    match model_env {
        Some(p) => command.env("UNMASK_MODEL", p),
        None => command.env_remove("UNMASK_MODEL"),
    };
    command.output().expect("run unmask")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const PROMPT: &str = "def is_even(n):\n    \"\"\"Return True when n is even.\"\"\"\n";

#[test]
fn generate_without_a_model_flag_uses_the_shipped_model_or_unmask_model() {
    let model = shipped().join("model.gguf");
    let flags = ["generate", "-p", PROMPT, "--json", "--seed", "3"];
    let default = json(&unmask_env(&flags, None));
    let path = default["model"].as_str().unwrap();
    assert!(
        Path::new(path).canonicalize().unwrap() == model.canonicalize().unwrap(),
        "{path}"
    );
    assert!(!default["tokens"].as_array().unwrap().is_empty());
    // The same as naming it.
    let named = json(&unmask_env(
        &[&flags[..], &["-m", model.to_str().unwrap()]].concat(),
        None,
    ));
    assert_eq!(default["tokens"], named["tokens"]);

    // $UNMASK_MODEL is used when set, and -m wins over it.
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model(dir.path(), 4);
    let from_env = json(&unmask_env(&flags, Some(&tiny)));
    assert_eq!(from_env["model"].as_str().unwrap(), tiny.to_str().unwrap());
    let flag_wins = json(&unmask_env(
        &[&flags[..], &["-m", model.to_str().unwrap()]].concat(),
        Some(&tiny),
    ));
    assert_eq!(flag_wins["tokens"], named["tokens"]);

    // A missing model is a clear error naming it.
    let missing = dir.path().join("missing.gguf");
    let out = unmask_env(&flags, Some(&missing));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_shipped_model_writes_python_that_parses_above_the_stated_floor() {
    let dir = shipped();
    let pairs = dir.join("heldout-pairs.jsonl");
    let limit = EVAL_PAIRS.to_string();
    let report = json(&unmask(&[
        "eval",
        "--pairs",
        pairs.to_str().unwrap(),
        "--limit",
        &limit,
        "--json",
    ]));
    assert_eq!(report["pairs"].as_u64().unwrap() as usize, EVAL_PAIRS);
    let parse_rate = report["parse_rate"].as_f64().unwrap();
    assert!(
        parse_rate >= PARSE_FLOOR,
        "parse rate {parse_rate} on {EVAL_PAIRS} held-out pairs is below the floor {PARSE_FLOOR}"
    );
    // The model card's numbers are the full held-out set's (eval.json); this subset's rate is
    // within noise of it: at most 3 standard errors of a rate on EVAL_PAIRS prompts.
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    let full = card["parse_rate"].as_f64().unwrap();
    let se = (full * (1.0 - full) / EVAL_PAIRS as f64).sqrt().max(0.05);
    assert!(
        (parse_rate - full).abs() <= 3.0 * se,
        "subset {parse_rate} vs the card's {full}"
    );
}
