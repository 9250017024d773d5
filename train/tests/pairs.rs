//! `unmask-train pairs` on Python standard-library files: every pair is a function's signature
//! and docstring plus the rest of its body, which Python parses when spliced back together and
//! which appears, re-indented, in its source file; a file that does not parse is counted, not
//! fatal; `sft` reads the output as prompt/response pairs.

use std::process::Command;
use unmask_train::function_pairs::FunctionPair;

#[test]
fn pairs_are_functions_cut_after_their_docstring() {
    let lib = unmask_train::corpus::python_stdlib(std::path::Path::new("python3")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for name in [
        "textwrap.py",
        "shlex.py",
        "fnmatch.py",
        "bisect.py",
        "heapq.py",
    ] {
        std::fs::copy(lib.join(name), src.join(name)).unwrap();
    }
    std::fs::write(src.join("broken.py"), "def f(:\n    pass\n").unwrap();
    let jsonl = dir.path().join("pairs.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(["pairs", "--data"])
        .arg(&src)
        .arg("--out")
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["files"], 6, "{report}");
    assert_eq!(report["unparsable"], 1, "{report}");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let pairs: Vec<FunctionPair> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(pairs.len() >= 30, "{report}");
    for p in &pairs {
        assert!(
            p.prompt.starts_with("def ") || p.prompt.starts_with("async def "),
            "{p:?}"
        );
        // The prompt ends with the docstring's closing quote.
        assert!(p.prompt.trim_end().ends_with(['"', '\'']), "{p:?}");
        assert!(p
            .response
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with(' ')));
        let source = std::fs::read_to_string(&p.source).unwrap();
        let first_body_line = p.response.lines().find(|l| !l.trim().is_empty()).unwrap();
        assert!(
            source.contains(first_body_line),
            "{}: {first_body_line}",
            p.name
        );
    }
    // Spliced back, every pair is valid Python (checked by Python's own parser).
    let check = dir.path().join("check.py");
    std::fs::write(
        &check,
        "import ast, json, sys\nfor l in open(sys.argv[1]):\n    p = json.loads(l)\n    ast.parse(p['prompt'] + p['response'])\nprint('ok')\n",
    )
    .unwrap();
    let parsed = Command::new("python3")
        .arg(&check)
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );

    // sft reads them as pairs.
    let tok = dir.path().join("tokenizer.json");
    let (json, _) = unmask_train::tokenizer_train::train_tokenizer(
        &[lib.join("textwrap.py"), lib.join("shlex.py")],
        600,
        2,
    )
    .unwrap();
    std::fs::write(&tok, json).unwrap();
    let options = unmask_train::sft::DataOptions {
        tokenizer_json: &tok,
        max_len: 512,
        eos: None,
        chat: true,
        pack: false,
        response_len: None,
    };
    let (examples, report) =
        unmask_train::sft::load_data(std::slice::from_ref(&jsonl), &options).unwrap();
    assert_eq!(examples.len(), pairs.len());
    assert!(report.chat, "the trained tokenizer has the chat markers");
}
