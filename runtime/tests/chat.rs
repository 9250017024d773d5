//! `unmask chat` and `unmask generate --system`: the conversation's prompt is the Instruct chat
//! format spelled out here by hand (docs/model.md §5), each turn's answer is what
//! `unmask generate` gives for that prompt, `/reset` forgets the conversation, and the oldest
//! exchanges are left out when the conversation outgrows the context.

mod common;

use common::{tiny_model, unmask, unmask_with_input};
use serde_json::Value;
use std::path::Path;

const SETTINGS: [&str; 6] = ["--max-new-tokens", "8", "--steps", "8", "-t", "1"];

/// The JSON lines of `unmask chat --json` over `input`.
fn chat(model: &Path, extra: &[&str], input: &str) -> Vec<Value> {
    let mut args = vec!["chat", "-m", model.to_str().unwrap(), "--json"];
    args.extend_from_slice(&SETTINGS);
    args.extend_from_slice(extra);
    let out = unmask_with_input(&args, input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `unmask generate --json` with `args`.
fn generate(model: &Path, args: &[&str]) -> Value {
    let mut all = vec!["generate", "-m", model.to_str().unwrap(), "--json"];
    all.extend_from_slice(&SETTINGS);
    all.extend_from_slice(args);
    let out = unmask(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const SYSTEM: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";

fn user(text: &str) -> String {
    format!("<|im_start|>user\n{text}\n<|im_end|>\n")
}

fn assistant(text: &str) -> String {
    format!("<|im_start|>assistant\n{text}<|im_end|>\n")
}

const OPEN: &str = "<|im_start|>assistant\n";

#[test]
fn each_turn_sees_the_conversation_so_far_and_answers_as_generate_would() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    let turns = chat(&model, &[], "hello\n\nwrite more\n");
    assert_eq!(turns.len(), 2, "the empty line is no turn: {turns:?}");
    let first = turns[0]["answer"].as_str().unwrap();
    assert_eq!(
        turns[0]["prompt"],
        format!("{SYSTEM}{}{OPEN}", user("hello"))
    );
    assert_eq!(
        turns[1]["prompt"],
        format!(
            "{SYSTEM}{}{}{}{OPEN}",
            user("hello"),
            assistant(first),
            user("write more")
        )
    );
    // The first turn is `generate -p hello`; the second is `generate` on its full prompt.
    let one = generate(&model, &["-p", "hello"]);
    assert_eq!(turns[0]["tokens"], one["tokens"]);
    assert_eq!(turns[0]["answer"], one["text"]);
    let two = generate(
        &model,
        &["--no-chat", "-p", turns[1]["prompt"].as_str().unwrap()],
    );
    assert_eq!(turns[1]["tokens"], two["tokens"]);
}

#[test]
fn reset_forgets_the_conversation_and_a_backslash_continues_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    let turns = chat(
        &model,
        &[],
        "two\\\nlines\n/reset\nagain\n/exit\nnever read\n",
    );
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(
        turns[0]["prompt"],
        format!("{SYSTEM}{}{OPEN}", user("two\nlines"))
    );
    assert_eq!(
        turns[1]["prompt"],
        format!("{SYSTEM}{}{OPEN}", user("again"))
    );
}

#[test]
fn system_replaces_the_default_system_prompt_in_chat_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    let system = "<|im_start|>system\nAnswer in Python.<|im_end|>\n";
    let turns = chat(&model, &["--system", "Answer in Python."], "hi\n");
    assert_eq!(turns[0]["prompt"], format!("{system}{}{OPEN}", user("hi")));
    let with_system = generate(&model, &["-p", "hi", "--system", "Answer in Python."]);
    let spelled_out = generate(
        &model,
        &["--no-chat", "-p", &format!("{system}{}{OPEN}", user("hi"))],
    );
    assert_eq!(with_system["tokens"], spelled_out["tokens"]);
    assert_eq!(with_system["prompt_tokens"], spelled_out["prompt_tokens"]);
    assert_ne!(
        with_system["prompt_tokens"],
        generate(&model, &["-p", "hi"])["prompt_tokens"]
    );
}

#[test]
fn the_oldest_exchanges_are_left_out_when_the_conversation_outgrows_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    // About 1240 tokens per message: the tiny model's context of 4096 holds three.
    let long = "word ".repeat(600);
    let input = format!("{long}\n").repeat(5);
    let turns = chat(&model, &[], &input);
    assert_eq!(turns.len(), 5, "every turn is answered");
    let dropped: Vec<u64> = turns
        .iter()
        .map(|t| t["dropped_exchanges"].as_u64().unwrap())
        .collect();
    assert_eq!(dropped[..3], [0, 0, 0], "{dropped:?}");
    assert!(dropped[3..].iter().all(|&d| d > 0), "{dropped:?}");
    for t in &turns {
        let prompt = t["prompt"].as_str().unwrap();
        assert!(prompt.starts_with(SYSTEM), "the system prompt stays");
        assert!(prompt.ends_with(&format!("{}{OPEN}", user(long.as_str()))));
        assert!(t["prompt_tokens"].as_u64().unwrap() + 8 <= 4096);
    }
}

#[test]
fn system_with_no_chat_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    let out = unmask(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "hi",
        "--no-chat",
        "--system",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
