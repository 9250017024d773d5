//! `unmask eval`: the scoring is checked on completions whose verdicts are known (the reference
//! bodies parse and match their first lines; broken code does neither; a mix scores the mix),
//! and a generating run on the tiny model reports every measure, the held-out loss included.
//! Bad input is a clear error.

mod common;

use common::{tiny_model, unmask};

const PAIRS: &str = r#"{"prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "response": "    return a + b\n"}
{"prompt": "def first(xs):\n    \"\"\"The first item, or None.\"\"\"\n", "response": "    if not xs:\n        return None\n    return xs[0]\n"}
{"prompt": "async def wait(t):\n    '''Sleep t seconds.'''\n", "response": "    import asyncio\n    await asyncio.sleep(t)\n"}
{"prompt": "def square(x):\n    \"\"\"x squared.\"\"\"\n", "response": "    return x * x\n"}
"#;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn scoring_and_a_generating_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 3);
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, PAIRS).unwrap();
    let write = |name: &str, completions: &[&str]| {
        let path = dir.path().join(name);
        let lines: Vec<String> = completions
            .iter()
            .map(|c| serde_json::json!({ "completion": c }).to_string())
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    };
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let score = |completions: &std::path::Path| {
        json(&unmask(&[
            "eval",
            "-m",
            &s(&model),
            "--pairs",
            &s(&pairs),
            "--completions",
            &s(completions),
            "--json",
        ]))
    };
    let reference: Vec<String> = PAIRS
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["response"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let refs: Vec<&str> = reference.iter().map(String::as_str).collect();
    let r = score(&write("ref.jsonl", &refs));
    assert_eq!(
        (r["parse_rate"].as_f64(), r["first_line_exact"].as_f64()),
        (Some(1.0), Some(1.0)),
        "{r}"
    );
    let broken = [
        "    return (a +\n",
        "    if xs\n",
        "  await (\n",
        "    ) x\n",
    ];
    let r = score(&write("broken.jsonl", &broken));
    assert_eq!(
        (r["parse_rate"].as_f64(), r["first_line_exact"].as_f64()),
        (Some(0.0), Some(0.0)),
        "{r}"
    );
    // Right first line but broken later; a different body that parses; two references.
    let mixed = [
        "    return a + b\n    )\n",
        "    return xs[0] if xs else None\n",
        refs[2],
        refs[3],
    ];
    let r = score(&write("mixed.jsonl", &mixed));
    assert_eq!(r["parse_rate"].as_f64(), Some(0.75), "{r}");
    assert_eq!(r["first_line_exact"].as_f64(), Some(0.75), "{r}");
    assert_eq!(r["empty_rate"].as_f64(), Some(0.0), "{r}");
    // An empty body: the prompt alone parses (its docstring is a statement), and scores nothing.
    let empty = ["", "\n\n", "   ", refs[3]];
    let r = score(&write("empty.jsonl", &empty));
    assert_eq!(r["parse_rate"].as_f64(), Some(0.25), "{r}");
    assert_eq!(r["empty_rate"].as_f64(), Some(0.75), "{r}");
    assert_eq!(r["first_line_exact"].as_f64(), Some(0.25), "{r}");

    // Generating on the tiny model (random weights: the verdicts are whatever they are).
    let text = dir.path().join("held-out.py");
    std::fs::write(
        &text,
        "def f(x):\n    return [i * x for i in range(10)]\n".repeat(40),
    )
    .unwrap();
    let saved = dir.path().join("saved.jsonl");
    let r = json(&unmask(&[
        "eval",
        "-m",
        &s(&model),
        "--pairs",
        &s(&pairs),
        "--save-completions",
        &s(&saved),
        "--limit",
        "2",
        "--max-new-tokens",
        "16",
        "--steps",
        "8",
        "--text",
        &s(&text),
        "--window",
        "64",
        "--windows",
        "3",
        "--json",
    ]));
    assert_eq!(r["pairs"], 2, "{r}");
    let rate = r["parse_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate), "{r}");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let loss = r["heldout_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{r}");
    // The saved completions, scored again, give the same verdicts.
    assert_eq!(std::fs::read_to_string(&saved).unwrap().lines().count(), 2);
    let again = json(&unmask(&[
        "eval",
        "-m",
        &s(&model),
        "--pairs",
        &s(&pairs),
        "--limit",
        "2",
        "--completions",
        &s(&saved),
        "--json",
    ]));
    for key in ["parse_rate", "first_line_exact", "empty_rate"] {
        assert_eq!(again[key], r[key], "{key}: {again} vs {r}");
    }

    // Clear errors.
    let short = write("short.jsonl", &refs[..2]);
    let out = unmask(&[
        "eval",
        "-m",
        &s(&model),
        "--pairs",
        &s(&pairs),
        "--completions",
        &s(&short),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 completions for 4 pairs"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": 1}\n").unwrap();
    let out = unmask(&["eval", "-m", &s(&model), "--pairs", &s(&bad)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:1"));
}
