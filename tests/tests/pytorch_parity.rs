//! Parity with the independent PyTorch reference (`tests/python/reference.py`: transformers'
//! Qwen2 with attention made bidirectional, plus Dream's denoising loop written in torch).
//!
//! 1. Forward: unmask's logits at every position agree with the reference's (f32 within 1e-4
//!    relative max-abs error; f16 and q8_0 within the tolerances below).
//! 2. Schedule: our f32 `linspace` and per-step commit counts equal torch's bit for bit.
//! 3. Generation: `unmask generate --json` produces the reference's token ids and per-step
//!    commits at temperature 0 for maskgit_plus, topk_margin and entropy, including steps < tokens,
//!    top-p/top-k filtered confidences and the block schedule.
//! 4. Sampling (temperature > 0, origin): empirical frequencies over many seeds match the
//!    reference's filtered distribution.

use std::process::Command;
use std::sync::Arc;
use unmask_runtime::schedule::{timesteps, transfer_count};
use unmask_runtime::{Algorithm, Control, GenerateParams, Generator, Model};
use unmask_tests::{convert_to, csv, read_npy, reference, rel_max_abs, unmask_bin, write_tiny_hf};

/// Relative max-abs error of the logits against the f32 PyTorch model, per stored weight type.
/// f32 is the exactness claim; f16/q8_0 measure the weights' own rounding.
const FORWARD_TOLERANCE: [(&str, f64); 3] = [("f32", 1e-4), ("f16", 5e-3), ("q8_0", 3e-2)];

fn sequences() -> Vec<Vec<u32>> {
    vec![
        (0..33).map(|i| (i * 53 + 7) % 456).collect(),
        vec![5, 460, 460, 460, 460, 460, 460, 460, 17],
        (0..12)
            .map(|i| 300 + i)
            .chain(std::iter::repeat_n(460, 40))
            .collect(),
    ]
}

#[test]
fn forward_logits_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 61);
    for (ty, tolerance) in FORWARD_TOLERANCE {
        let path = dir.path().join(format!("tiny-{ty}.gguf"));
        convert_to(&hf, &path, ty);
        let mut generator = Generator::new(Arc::new(Model::load(&path).unwrap()), 2).unwrap();
        for (n, seq) in sequences().iter().enumerate() {
            let npy = dir.path().join(format!("ref-{n}.npy"));
            if !npy.exists() {
                reference(&[
                    "logits",
                    "--hf",
                    hf.to_str().unwrap(),
                    "--ids",
                    &csv(seq),
                    "--out",
                    npy.to_str().unwrap(),
                ]);
            }
            let (want, shape) = read_npy(&npy);
            assert_eq!(shape, vec![seq.len(), 512]);
            let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
            let got = generator.logits(seq).unwrap();
            let err = rel_max_abs(&got, &want);
            println!(
                "{ty} sequence {n} ({} tokens): relative max-abs error {err:.2e}",
                seq.len()
            );
            assert!(err <= tolerance, "{ty}: {err:.3e} > {tolerance:.0e}");
        }
    }
}

#[test]
fn schedule_matches_torch_bit_for_bit() {
    let step_counts = [1usize, 2, 3, 5, 7, 16, 63, 64, 100, 255, 256, 512, 1000];
    let mut args = vec!["linspace".to_string(), "--steps".to_string()];
    args.extend(step_counts.iter().map(usize::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runs: serde_json::Value = serde_json::from_str(&reference(&args)).unwrap();
    for (run, &steps) in runs.as_array().unwrap().iter().zip(&step_counts) {
        let want: Vec<u32> = run["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u32)
            .collect();
        let got: Vec<u32> = timesteps(steps, 1e-3).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "linspace for {steps} steps");
    }
    let pairs = [
        (256usize, 256usize),
        (256, 64),
        (512, 512),
        (100, 7),
        (33, 33),
        (64, 5),
    ];
    let ns: Vec<String> = pairs.iter().map(|p| p.0.to_string()).collect();
    let ss: Vec<String> = pairs.iter().map(|p| p.1.to_string()).collect();
    let mut args = vec!["schedule", "--n"];
    args.extend(ns.iter().map(String::as_str));
    args.push("--steps");
    args.extend(ss.iter().map(String::as_str));
    let runs: serde_json::Value = serde_json::from_str(&reference(&args)).unwrap();
    for (run, &(n, steps)) in runs.as_array().unwrap().iter().zip(&pairs) {
        let want: Vec<usize> = run["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as usize)
            .collect();
        let ts = timesteps(steps, 1e-3);
        let mut masked = n;
        let got: Vec<usize> = (0..steps)
            .map(|i| {
                let k = transfer_count(masked, i, steps, &ts);
                masked -= k;
                k
            })
            .collect();
        assert_eq!(got, want, "schedule n={n} steps={steps}");
    }
}

struct Case {
    prompt: Vec<u32>,
    new: usize,
    steps: usize,
    extra: Vec<&'static str>,
}

#[test]
fn greedy_generation_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 62);
    let gguf = dir.path().join("tiny-f32.gguf");
    convert_to(&hf, &gguf, "f32");
    let cases = [
        Case {
            prompt: vec![10, 20, 30, 40, 50],
            new: 16,
            steps: 16,
            extra: vec![],
        },
        Case {
            prompt: (100..112).collect(),
            new: 24,
            steps: 6,
            extra: vec![],
        },
        Case {
            prompt: vec![7],
            new: 12,
            steps: 12,
            extra: vec!["--top-p", "0.9"],
        },
        Case {
            prompt: vec![3, 1, 4, 1, 5, 9, 2, 6],
            new: 20,
            steps: 10,
            extra: vec!["--top-k", "5"],
        },
        Case {
            prompt: (200..210).collect(),
            new: 32,
            steps: 8,
            extra: vec!["--block-length", "8"],
        },
        Case {
            prompt: vec![44, 45],
            new: 30,
            steps: 15,
            extra: vec!["--block-length", "10", "--top-p", "0.8"],
        },
    ];
    let mut runs = Vec::new();
    for alg in ["maskgit_plus", "topk_margin", "entropy"] {
        for case in &cases {
            let mut args: Vec<String> = vec![
                "--prompt-ids".into(),
                csv(&case.prompt),
                "--max-new-tokens".into(),
                case.new.to_string(),
                "--steps".into(),
                case.steps.to_string(),
                "--alg".into(),
                alg.into(),
                "--temperature".into(),
                "0".into(),
            ];
            args.extend(case.extra.iter().map(|s| s.to_string()));
            if !case.extra.contains(&"--top-p") {
                args.extend(["--top-p".to_string(), "1".to_string()]);
            }
            // The reference applies no top-k unless asked; unmask's default is Dream's
            // effective 50 (docs/model.md §4).
            if !case.extra.contains(&"--top-k") {
                args.extend(["--top-k".to_string(), "0".to_string()]);
            }
            runs.push(args);
        }
    }
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&runs).unwrap()).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&reference(&[
        "generate-many",
        "--hf",
        hf.to_str().unwrap(),
        "--cases",
        cases_file.to_str().unwrap(),
    ]))
    .unwrap();
    for (args, theirs) in runs.iter().zip(theirs.as_array().unwrap()) {
        let out = Command::new(unmask_bin())
            .args([
                "generate",
                "-m",
                gguf.to_str().unwrap(),
                "--json",
                "--threads",
                "2",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ours["tokens"], theirs["tokens"], "tokens differ: {args:?}");
        assert_eq!(
            ours["commits"], theirs["commits"],
            "commit order differs: {args:?}"
        );
    }
}

/// Draws the single masked position of `prompt ++ [MASK]` `n` times with different seeds and
/// compares the frequencies with the reference's filtered distribution (5 sigma per token,
/// and tokens of probability 0 must never appear).
fn check_sampling(alg: Algorithm, temperature: f32, top_p: Option<f32>, top_k: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 63);
    let gguf = dir.path().join("tiny-f32.gguf");
    convert_to(&hf, &gguf, "f32");
    let prompt: Vec<u32> = vec![12, 99, 250, 31];
    let mut ids = prompt.clone();
    ids.push(460);
    let npy = dir.path().join("dist.npy");
    let (t, p, k) = (
        temperature.to_string(),
        top_p.unwrap_or(1.0).to_string(),
        top_k.unwrap_or(0).to_string(),
    );
    reference(&[
        "dist",
        "--hf",
        hf.to_str().unwrap(),
        "--ids",
        &csv(&ids),
        "--position",
        &prompt.len().to_string(),
        "--temperature",
        &t,
        "--top-p",
        &p,
        "--top-k",
        &k,
        "--out",
        npy.to_str().unwrap(),
    ]);
    let (probs, _) = read_npy(&npy);
    // One thread: the tests of this file run in parallel, and ggml's spinning workers slow down
    // badly when there are more of them than cores.
    let mut generator = Generator::new(Arc::new(Model::load(&gguf).unwrap()), 1).unwrap();
    let n = 4000;
    let mut counts = vec![0usize; probs.len()];
    for seed in 0..n {
        let params = GenerateParams {
            max_new_tokens: 1,
            steps: 1,
            alg,
            temperature,
            top_p,
            top_k,
            seed,
            ..GenerateParams::default()
        };
        let g = generator
            .generate(&prompt, &params, &mut |_| Control::Continue)
            .unwrap();
        counts[g.tokens[0] as usize] += 1;
    }
    let mut tv = 0.0;
    for (token, (&c, &p)) in counts.iter().zip(&probs).enumerate() {
        let freq = c as f64 / n as f64;
        tv += (freq - p).abs() / 2.0;
        if p == 0.0 {
            assert_eq!(
                c, 0,
                "token {token} has probability 0 but was drawn {c} times"
            );
        } else {
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (freq - p).abs() <= 5.0 * sigma + 1e-3,
                "token {token}: frequency {freq:.4} vs probability {p:.4}"
            );
        }
    }
    // Reported, not asserted: with a few hundred possible tokens and 4000 draws, sampling noise
    // alone puts the total variation near 0.1; the per-token 5-sigma bounds above are the test.
    println!("{alg:?} T={temperature} top_p={top_p:?} top_k={top_k:?}: total variation {tv:.4}");
}

#[test]
fn sampling_matches_the_filtered_distribution() {
    check_sampling(Algorithm::Entropy, 0.8, Some(0.9), None);
    check_sampling(Algorithm::MaskgitPlus, 1.3, None, Some(20));
}

#[test]
fn origin_samples_from_the_same_distribution() {
    check_sampling(Algorithm::Origin, 0.6, Some(0.95), Some(50));
}

#[test]
fn origin_reveals_each_position_with_probability_one_minus_s_over_t() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 64);
    let gguf = dir.path().join("tiny-f32.gguf");
    convert_to(&hf, &gguf, "f32");
    let mut generator = Generator::new(Arc::new(Model::load(&gguf).unwrap()), 1).unwrap();
    let (new, steps, runs) = (16usize, 4usize, 400u64);
    let ts = timesteps(steps, 1e-3);
    let p0 = f64::from(1.0 - ts[1] / ts[0]);
    let mut first_step = 0usize;
    for seed in 0..runs {
        let params = GenerateParams {
            max_new_tokens: new,
            steps,
            alg: Algorithm::Origin,
            temperature: 0.7,
            seed,
            ..Default::default()
        };
        let g = generator
            .generate(&[1, 2, 3], &params, &mut |_| Control::Continue)
            .unwrap();
        first_step += g.commits[0].len();
    }
    let mean = first_step as f64 / runs as f64;
    let expected = new as f64 * p0;
    let sigma = (new as f64 * p0 * (1.0 - p0) / runs as f64).sqrt();
    assert!(
        (mean - expected).abs() < 5.0 * sigma,
        "mean reveals {mean:.3}, expected {expected:.3}"
    );
}
