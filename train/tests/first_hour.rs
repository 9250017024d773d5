//! What a new user of `unmask-train sft` meets: the data is validated and described (format,
//! counts, truncation, the chat template), checkpoints are periodic and pruned by default,
//! `--resume` needs only `--out`, bad settings get clear messages without a stack trace, and a
//! signal during a checkpoint write leaves no partial folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_train::sft::{load_data, DataFormat, DataOptions};

fn tiny(dir: &Path) -> PathBuf {
    let hf = dir.join("tiny");
    SynthModel::new(Preset::Tiny, 5)
        .unwrap()
        .write_hf(&hf, 1 << 30)
        .unwrap();
    hf
}

const PAIRS: [(&str, &str); 3] = [
    ("def add(a, b):", " return a + b"),
    ("x = ", "[1, 2, 3]"),
    (
        "Write a function that reverses a list of integers and returns it",
        "def rev(xs):\n    return xs[::-1]\n",
    ),
];

fn pairs_json() -> String {
    let items: Vec<serde_json::Value> = PAIRS
        .iter()
        .map(|(p, r)| serde_json::json!({"prompt": p, "response": r}))
        .collect();
    serde_json::Value::Array(items).to_string()
}

fn pairs_jsonl(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    let text: String = PAIRS
        .iter()
        .map(|(p, r)| format!("{}\n", serde_json::json!({"prompt": p, "response": r})))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn train(args: &[&std::ffi::OsStr]) -> Output {
    let lr: &[&str] = if args.iter().any(|a| a.to_string_lossy().starts_with("--lr")) {
        &[]
    } else {
        &["--lr", "1e-3"]
    };
    Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .arg("sft")
        .args(args)
        .args(["--threads", "1", "--micro-batch", "2"])
        .args(lr)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn checkpoints(out: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort();
    steps
}

fn temporaries(out: &Path) -> Vec<String> {
    std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn a_json_array_is_read_as_pairs_and_reported_with_truncations_and_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let array = dir.path().join("array.json");
    std::fs::write(&array, pairs_json()).unwrap();
    let tokenizer = hf.join("tokenizer.json");
    let options = DataOptions {
        tokenizer_json: &tokenizer,
        max_len: 8,
        eos: None,
        chat: true,
        pack: false,
        response_len: None,
    };
    let (examples, report) = load_data(std::slice::from_ref(&array), &options).unwrap();
    assert_eq!(examples.len(), 3);
    assert_eq!(report.files[0].format, DataFormat::JsonArray);
    assert_eq!(
        report.files[0].truncated, 3,
        "the template alone exceeds 8 tokens"
    );
    assert!(report.chat);
    assert!(examples.iter().all(|e| e.tokens.len() <= 8));
    // The template is applied: the same pair without it is shorter.
    let plain = DataOptions {
        chat: false,
        max_len: 4096,
        ..options.clone()
    };
    let templated = DataOptions {
        max_len: 4096,
        ..options
    };
    let (raw, raw_report) = load_data(std::slice::from_ref(&array), &plain).unwrap();
    let (chat, _) = load_data(std::slice::from_ref(&array), &templated).unwrap();
    assert_eq!(raw_report.files[0].truncated, 0);
    for (r, c) in raw.iter().zip(&chat) {
        assert!(c.tokens.len() > r.tokens.len() + 10, "{r:?} vs {c:?}");
    }

    // The command line says all of it.
    let out = dir.path().join("run");
    let result = train(&[
        "--model".as_ref(),
        hf.as_os_str(),
        "--data".as_ref(),
        array.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--steps".as_ref(),
        "1".as_ref(),
        "--max-len".as_ref(),
        "8".as_ref(),
    ]);
    let all = text(&result);
    assert!(result.status.success(), "{all}");
    for needle in [
        "a JSON array of prompt/response pairs, 3 pairs",
        "3 of 3 pairs",
        "longer than --max-len 8 tokens",
        "chat template",
    ] {
        assert!(all.contains(needle), "{needle:?} missing:\n{all}");
    }
}

#[test]
fn a_json_file_that_is_not_an_array_of_pairs_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let object = dir.path().join("object.json");
    std::fs::write(&object, r#"{"prompt": "a", "response": "b"}"#).unwrap();
    let result = train(&[
        "--model".as_ref(),
        hf.as_os_str(),
        "--data".as_ref(),
        object.as_os_str(),
        "--out".as_ref(),
        dir.path().join("run").as_os_str(),
        "--steps".as_ref(),
        "1".as_ref(),
    ]);
    let all = text(&result);
    assert_eq!(result.status.code(), Some(1), "{all}");
    assert!(all.contains("must be an array of"), "{all}");
    assert!(all.contains("found a JSON object"), "{all}");
    assert!(!all.contains("backtrace"), "{all}");
}

#[test]
fn bad_settings_are_refused_with_the_reason_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs_jsonl(dir.path());
    let run_dir = dir.path().join("run");
    let base = |extra: &[&str], out: &Path| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--model".into(),
            hf.clone().into(),
            "--data".into(),
            data.clone().into(),
            "--out".into(),
            out.into(),
            "--steps".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|s| s.into()));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        train(&refs)
    };
    let cases: [(&[&str], &Path, &str); 4] = [
        (&["--lr", "1"], &run_dir, "lr 1 is outside (0, 0.01]"),
        (&["--lr=-1e-5"], &run_dir, "lr -0.00001 is outside"),
        (&["--beta2", "1.5"], &run_dir, "beta2 1.5 is not in [0, 1)"),
        (
            &["--min-lr-ratio", "2"],
            &run_dir,
            "min_lr_ratio 2 is not in [0, 1]",
        ),
    ];
    for (extra, out, fragment) in cases {
        let result = base(extra, out);
        let all = text(&result);
        assert_eq!(result.status.code(), Some(1), "{extra:?}: {all}");
        assert!(all.contains(fragment), "{fragment:?} missing: {all}");
        assert!(!all.contains("backtrace"), "{all}");
    }
    assert!(!run_dir.exists(), "a refused run wrote its folder");
    // clap refuses `--out ''`; a settings file can still give an empty path.
    let toml = dir.path().join("s.toml");
    std::fs::write(&toml, "out = \"\"\n").unwrap();
    let result = train(&[
        "--model".as_ref(),
        hf.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--config".as_ref(),
        toml.as_os_str(),
    ]);
    let all = text(&result);
    assert_eq!(result.status.code(), Some(1), "{all}");
    assert!(all.contains("--out is an empty path"), "{all}");
}

#[test]
fn checkpoints_are_periodic_and_pruned_by_default_and_keep_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs_jsonl(dir.path());
    let out = dir.path().join("default");
    let result = train(&[
        "--model".as_ref(),
        hf.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--steps".as_ref(),
        "10".as_ref(),
    ]);
    assert!(result.status.success(), "{}", text(&result));
    // Every tenth of the run (1 update), the newest three kept.
    assert_eq!(checkpoints(&out), vec![8, 9, 10]);
    assert!(String::from_utf8_lossy(&result.stderr).contains("removed"));

    let out = dir.path().join("keep");
    let result = train(&[
        "--model".as_ref(),
        hf.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--steps".as_ref(),
        "6".as_ref(),
        "--save-every".as_ref(),
        "2".as_ref(),
        "--keep".as_ref(),
        "0".as_ref(),
    ]);
    assert!(result.status.success(), "{}", text(&result));
    assert_eq!(checkpoints(&out), vec![2, 4, 6]);
}

#[test]
fn resume_needs_only_out_and_continues_with_the_recorded_settings() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs_jsonl(dir.path());
    let out = dir.path().join("run");
    let first = train(&[
        "--model".as_ref(),
        hf.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--steps".as_ref(),
        "4".as_ref(),
        "--save-every".as_ref(),
        "2".as_ref(),
        "--max-len".as_ref(),
        "64".as_ref(),
        "--seed".as_ref(),
        "3".as_ref(),
    ]);
    assert!(first.status.success(), "{}", text(&first));
    let resumed = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(["sft", "--resume", "--steps", "6"])
        .arg("--out")
        .arg(&out)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&resumed);
    assert!(resumed.status.success(), "{all}");
    assert!(all.contains("resumed from update 4"), "{all}");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&resumed.stdout).trim()).unwrap();
    assert_eq!(summary["step"], 6);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint-6/trainer_state.json")).unwrap(),
    )
    .unwrap();
    // The recorded settings carried over; the flag given on resume won.
    assert_eq!(state["config"]["max_len"], 64);
    assert_eq!(state["config"]["steps"], 6);
    assert_eq!(state["config"]["lr"], 1e-3);
    assert_eq!(state["seed"], 3);

    let nothing = dir.path().join("empty");
    let refused = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(["sft", "--resume"])
        .arg("--out")
        .arg(&nothing)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("no model"), "{}", text(&refused));
}

#[cfg(unix)]
#[test]
fn a_signal_while_a_checkpoint_is_written_leaves_no_partial_folder() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs_jsonl(dir.path());
    for signal in ["TERM", "INT"] {
        let out = dir.path().join(format!("run-{signal}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
            .arg("sft")
            .arg("--model")
            .arg(&hf)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--steps", "100000", "--save-every", "1", "--keep", "2"])
            .args(["--threads", "1", "--micro-batch", "1", "--max-len", "16"])
            .args(["--lr", "1e-4", "--save-dtype", "f32"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Catch the process inside a save: the temporary folder exists.
        let start = Instant::now();
        loop {
            if out.exists() && temporaries(&out).iter().any(|n| n.starts_with(".tmp-ckpt")) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never saw a save"
            );
            assert!(child.try_wait().unwrap().is_none(), "the run ended");
        }
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert_eq!(temporaries(&out), Vec::<String>::new(), "{signal}");
        // What is left is complete: a resume can start from it.
        let latest = checkpoints(&out);
        assert!(latest.len() <= 3, "{latest:?}");
    }
}

#[test]
fn a_response_length_fills_each_response_with_pads_and_leaves_out_longer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs_jsonl(dir.path());
    let tokenizer_json = hf.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tokenizer_json).unwrap();
    let pad = tok
        .token_to_id("<|dlm_pad|>")
        .expect("the synthetic tokenizer has the pad");
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let encode = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
    // The responses as the template ends them, to pick a length between the shortest and longest.
    let lens: Vec<usize> = PAIRS
        .iter()
        .map(|(_, r)| encode(&format!("{r}<|im_end|>")).len())
        .collect();
    let (short, long) = (*lens.iter().min().unwrap(), *lens.iter().max().unwrap());
    assert!(short < long, "{lens:?}");
    let n = long - 1;
    let options = DataOptions {
        tokenizer_json: &tokenizer_json,
        max_len: 4096,
        eos: None,
        chat: true,
        pack: false,
        response_len: Some(n),
    };
    let (examples, report) = load_data(std::slice::from_ref(&data), &options).unwrap();
    let kept: Vec<usize> = (0..PAIRS.len()).filter(|&k| lens[k] <= n).collect();
    assert_eq!(examples.len(), kept.len());
    assert_eq!(report.files[0].too_long, PAIRS.len() - kept.len());
    assert!(report.lines().iter().any(|l| l.contains("--response-len")));
    for (e, &k) in examples.iter().zip(&kept) {
        let response = &e.tokens[e.prompt_len..];
        assert_eq!(response.len(), n, "pair {k}");
        let body = encode(&format!("{}<|im_end|>", PAIRS[k].1));
        assert_eq!(&response[..body.len()], &body[..], "pair {k}");
        assert_eq!(response[body.len() - 1], im_end);
        assert!(response[body.len()..].iter().all(|&t| t == pad), "pair {k}");
        let prompt = encode(&unmask_dream::chat::instruct_prompt(PAIRS[k].0));
        assert_eq!(&e.tokens[..e.prompt_len], &prompt[..], "pair {k}");
    }

    // A short --max-len: the prompt keeps its end and the padded response stays whole.
    let tight = DataOptions {
        max_len: n + 3,
        ..options.clone()
    };
    let (examples, _) = load_data(std::slice::from_ref(&data), &tight).unwrap();
    for e in &examples {
        assert_eq!(e.prompt_len, 3);
        assert_eq!(e.tokens.len(), n + 3);
    }
    // No room for a prompt: refused.
    let none = DataOptions {
        max_len: n,
        ..options
    };
    let err = load_data(std::slice::from_ref(&data), &none).unwrap_err();
    assert!(err.to_string().contains("--response-len"), "{err}");
}
