//! The reward end to end, with the real sandbox.

use std::path::Path;

use unmask_train::reward::{score_batch, score_completion};
use unmask_train::sandbox::{Sandbox, SandboxConfig};
use unmask_train::tasks::{load_tasks, Task};

fn add_task() -> Task {
    Task {
        id: None,
        question: "Write add(a, b).".into(),
        test_cases: vec![
            "assert add(1, 2) == 3".into(),
            "assert add(0, 0) == 0".into(),
            "assert add(-1, 1) == 0".into(),
            "assert add(2, 2) == 5".into(), // wrong on purpose: no solution passes it
        ],
    }
}

#[test]
fn passing_partial_and_malformed_solutions() {
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let t = add_task();
    let good =
        "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n<|im_end|><|dlm_pad|><|dlm_pad|>";
    let s = score_completion(&sb, &t, good).unwrap();
    assert_eq!((s.format, s.passed, s.run), (1.0, 3, 4));
    assert_eq!(s.pass_rate, 0.75);
    assert_eq!(s.reward, 2.0 * 0.75 + 0.5);

    // a * b passes one assert of four (add(0, 0) == 0).
    let partial = "```python\ndef add(a, b):\n    return a * b\n```\n";
    let s = score_completion(&sb, &t, partial).unwrap();
    assert_eq!((s.passed, s.run), (1, 4), "{s:?}");
    assert_eq!(s.reward, 2.0 * 0.25 + 0.5);

    // Syntax error: shape right, does not parse -> 0.5 format, tests not run.
    let s = score_completion(&sb, &t, "```python\ndef add(a, b)\n    return a + b\n```\n").unwrap();
    assert_eq!((s.format, s.run, s.reward), (0.5, 0, 0.25));

    // No block: 0, even if the code would pass.
    let s = score_completion(&sb, &t, "def add(a, b):\n    return a + b\n").unwrap();
    assert_eq!((s.format, s.reward), (0.0, 0.0));

    // Text after the block: format 0, nothing run.
    let s = score_completion(
        &sb,
        &t,
        "```python\ndef add(a, b):\n    return a + b\n```\nDone.",
    )
    .unwrap();
    assert_eq!((s.format, s.run, s.reward), (0.0, 0, 0.0));

    // Parses but raises at import: format 1.0, no test passes.
    let s = score_completion(&sb, &t, "```python\nraise SystemExit(3)\n```\n").unwrap();
    assert_eq!((s.format, s.passed, s.reward), (1.0, 0, 0.5));

    // `return` outside a function parses (ast.parse), fails when run.
    let s = score_completion(&sb, &t, "```python\nreturn 1\n```\n").unwrap();
    assert_eq!((s.format, s.passed), (1.0, 0));
}

#[test]
fn all_toy_solutions_score_full_marks_in_parallel() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let tasks = load_tasks(&dir.join("toy_tasks.jsonl")).unwrap();
    let sols: Vec<(usize, String)> = std::fs::read_to_string(dir.join("toy_solutions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["task"].as_u64().unwrap() as usize,
                v["completion"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(sols.len(), tasks.len());
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let mut items: Vec<(&Task, &str)> =
        sols.iter().map(|(i, c)| (&tasks[*i], c.as_str())).collect();
    // A wrong pairing (solution 0 for task 1) scores format only.
    items.push((&tasks[1], sols[0].1.as_str()));
    let scores = score_batch(&sb, &items);
    for (k, s) in scores.iter().enumerate() {
        let s = s.as_ref().unwrap();
        if k < sols.len() {
            assert_eq!(s.reward, 2.5, "toy task {k}: {s:?}");
        } else {
            assert_eq!((s.format, s.reward), (1.0, 0.5));
        }
    }
}
