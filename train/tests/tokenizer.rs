//! `unmask-train tokenizer` on real code: trained on a slice of the Python standard library of
//! the machine's interpreter, the tokenizer round-trips every held-out file of another slice
//! byte for byte, holds Dream's special tokens at the ids right after its BPE entries (the same
//! ids when trained again), compresses code, and survives the GGUF token arrays.

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use tokenizers::Tokenizer;
use unmask_dream::tokens::SPECIAL_TOKENS;

/// The standard library folder of `python3` (what `unmask-train corpus` takes by default).
fn stdlib() -> PathBuf {
    unmask_train::corpus::python_stdlib(std::path::Path::new("python3")).unwrap()
}

#[test]
fn trained_on_stdlib_files_it_round_trips_the_held_out_ones() {
    let lib = stdlib();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    assert!(
        files.len() > 100,
        "{} has {} .py files",
        lib.display(),
        files.len()
    );
    // Every third file trains, the next one is held out.
    let train: Vec<PathBuf> = files.iter().step_by(3).take(60).cloned().collect();
    let held_out: Vec<PathBuf> = files.iter().skip(1).step_by(3).take(60).cloned().collect();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tokenizer.json");
    let mut args = vec![
        "tokenizer".to_string(),
        "--vocab-size".into(),
        "2048".into(),
    ];
    args.extend(["--out".into(), out.display().to_string()]);
    for f in &train {
        args.extend(["--data".into(), f.display().to_string()]);
    }
    let run = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["files"], train.len(), "{report}");
    assert_eq!(report["vocab_size"], 2048, "{report}");
    let json = std::fs::read_to_string(&out).unwrap();
    let tok = Tokenizer::from_str(&json).unwrap();
    let first = report["first_special_id"].as_u64().unwrap() as u32;
    assert_eq!(first as usize + SPECIAL_TOKENS.len(), 2048);
    for (k, t) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(t), Some(first + k as u32), "{t}");
    }

    let (mut bytes, mut tokens) = (0usize, 0usize);
    for f in &held_out {
        let text = std::fs::read_to_string(f).unwrap();
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert!(
            ids.iter().all(|&id| id < first),
            "{}: a special token from plain text",
            f.display()
        );
        let back = tok.decode(&ids, false).unwrap();
        assert!(back == text, "{} does not round-trip", f.display());
        bytes += text.len();
        tokens += ids.len();
    }
    // A byte-level BPE of 2048 entries trained on code: well under one token per two bytes.
    let ratio = bytes as f64 / tokens as f64;
    assert!(ratio > 2.5, "{ratio:.2} bytes per token on held-out code");
    println!("held-out: {bytes} bytes, {tokens} tokens, {ratio:.2} bytes/token");

    // Trained again on the same files: the same document.
    let again = dir.path().join("again.json");
    let pos = args.iter().position(|a| a == "--out").unwrap();
    args[pos + 1] = again.display().to_string();
    let run = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(&args)
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        json,
        "deterministic"
    );

    // Through the GGUF token arrays the converter writes and the runtime rebuilds a tokenizer
    // from, it encodes held-out code to the same ids and keeps the specials' ids.
    use unmask_dream::tokenizer_meta::{tokenizer_from_vocab, vocab_from_tokenizer_json};
    let vocab = vocab_from_tokenizer_json(&json, 2048).unwrap();
    let rebuilt = tokenizer_from_vocab(&vocab.tokens, &vocab.token_types, &vocab.merges).unwrap();
    for t in SPECIAL_TOKENS {
        assert_eq!(rebuilt.token_to_id(t), tok.token_to_id(t), "{t}");
    }
    let sample = std::fs::read_to_string(&held_out[0]).unwrap();
    assert_eq!(
        rebuilt.encode(sample.as_str(), false).unwrap().get_ids(),
        tok.encode(sample.as_str(), false).unwrap().get_ids()
    );

    // Bad settings are clear errors that write nothing.
    let bad = dir.path().join("bad.json");
    let run = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(["tokenizer", "--vocab-size", "10", "--out"])
        .arg(&bad)
        .arg("--data")
        .arg(&train[0])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("vocabulary"));
    assert!(!bad.exists());
}
