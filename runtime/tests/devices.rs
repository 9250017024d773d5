//! Device selection and the device code path.
//!
//! No GPU is needed: `--device cuda` without a CUDA backend must fail clearly, `auto` must fall
//! back to the CPU, and the device pipeline (weights copied into a device buffer, the head
//! picking hidden rows itself, scoring in graph operations with only summaries copied back) runs
//! on ggml's CPU device (`ggml-cpu`), where it must give the same logits and the same
//! generations as the built-in CPU path. On a GPU the very same graphs run on CUDA
//! (`scripts/gpu-check.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use unmask_kernels::device::{resolve, DeviceRequest, Placement};
use unmask_quantize::convert::{convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_runtime::{Algorithm, CacheMode, Control, GenerateParams, Generator, Model};

fn model_file(dir: &Path, ty: &str) -> PathBuf {
    let path = dir.join(format!("tiny-{ty}.gguf"));
    let options = ConvertOptions {
        target: ty.parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    convert_synth(&SynthModel::new(Preset::Tiny, 21).unwrap(), &path, &options).unwrap();
    path
}

fn unmask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unmask"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        // An empty directory: no backend library can be found there.
        .env("UNMASK_BACKEND_DIR", "/nonexistent-unmask-backends")
        .output()
        .expect("run unmask")
}

fn both(path: &Path) -> (Generator, Generator) {
    let cpu = Arc::new(Model::load(path).unwrap());
    let placement = resolve(&DeviceRequest::GgmlCpu).unwrap();
    assert!(matches!(placement, Placement::Device(_)));
    let dev = Arc::new(Model::load_on(path, &placement).unwrap());
    (
        Generator::new(cpu, 2).unwrap(),
        Generator::new(dev, 2).unwrap(),
    )
}

#[test]
fn device_logits_equal_the_cpu_path() {
    let dir = tempfile::tempdir().unwrap();
    for ty in ["f32", "q8_0"] {
        let (mut cpu, mut dev) = both(&model_file(dir.path(), ty));
        assert_eq!(cpu.device_name(), "CPU");
        let tokens: Vec<u32> = (0..300).map(|i| (i * 37 % 200) as u32).collect();
        let a = cpu.logits(&tokens).unwrap();
        let b = dev.logits(&tokens).unwrap();
        assert_eq!(a.len(), b.len());
        // The same ggml CPU kernels over the same weights: equal up to the order in which
        // threads sum (the head runs on 256 padded rows on the device path).
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{ty}: max abs error {err} (scale {scale})"
        );
    }
}

#[test]
fn device_generations_equal_the_cpu_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_file(dir.path(), "f16");
    let (mut cpu, mut dev) = both(&path);
    let prompt = [3u32, 14, 15, 92, 65];
    let mut settings = Vec::new();
    for alg in [
        Algorithm::MaskgitPlus,
        Algorithm::TopkMargin,
        Algorithm::Entropy,
    ] {
        for (new, steps, block) in [(32, 32, None), (40, 10, None), (48, 12, Some(16))] {
            settings.push(GenerateParams {
                max_new_tokens: new,
                steps,
                alg,
                temperature: 0.0,
                top_p: None,
                top_k: None,
                block_length: block,
                ..Default::default()
            });
        }
        // Sampling with filters (decided from the device's candidates or, where they do not
        // suffice, from a copied row) and without (always a copied row).
        for (t, p, k) in [
            (0.4, Some(0.95), None),
            (0.9, Some(0.5), Some(8)),
            (1.0, None, Some(5)),
            (0.7, None, None),
        ] {
            settings.push(GenerateParams {
                max_new_tokens: 32,
                steps: 16,
                alg,
                temperature: t,
                top_p: p,
                top_k: k,
                seed: 11,
                ..Default::default()
            });
        }
    }
    settings.push(GenerateParams {
        max_new_tokens: 32,
        steps: 16,
        alg: Algorithm::Origin,
        temperature: 0.5,
        seed: 5,
        ..Default::default()
    });
    let mut copied = 0;
    for params in &settings {
        let a = cpu
            .generate(&prompt, params, &mut |_| Control::Continue)
            .unwrap();
        let b = dev
            .generate(&prompt, params, &mut |_| Control::Continue)
            .unwrap();
        assert_eq!(a.tokens, b.tokens, "{params:?}");
        assert_eq!(a.commits, b.commits, "{params:?}");
        assert_eq!(a.bytes_to_host, 0, "the CPU path reads in place");
        assert!(b.bytes_to_host > 0);
        copied += b.bytes_to_host;
    }
    assert!(copied > 0);
}

#[test]
fn device_fast_modes_equal_the_cpu_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_file(dir.path(), "f16");
    let (mut cpu, mut dev) = both(&path);
    let prompt = [3u32, 14, 15, 92, 65];
    let mut settings = Vec::new();
    for cache in [CacheMode::Prefix, CacheMode::Dual] {
        for (threshold, steps, alg) in [
            (Some(0.05), 32, Algorithm::Entropy),
            (None, 16, Algorithm::Entropy),
            (None, 8, Algorithm::TopkMargin),
        ] {
            settings.push(GenerateParams {
                max_new_tokens: 32,
                steps,
                alg,
                temperature: 0.0,
                top_p: None,
                block_length: Some(8),
                cache,
                threshold,
                ..Default::default()
            });
        }
        // Sampled, with the default filters (top-p 0.95, top-k 50).
        settings.push(GenerateParams {
            max_new_tokens: 32,
            steps: 32,
            temperature: 0.7,
            block_length: Some(16),
            cache,
            threshold: Some(0.1),
            seed: 3,
            ..Default::default()
        });
    }
    settings.push(GenerateParams {
        max_new_tokens: 32,
        steps: 8,
        temperature: 0.0,
        top_p: None,
        threshold: Some(0.1),
        ..Default::default()
    });
    for params in &settings {
        let a = cpu
            .generate(&prompt, params, &mut |_| Control::Continue)
            .unwrap();
        let b = dev
            .generate(&prompt, params, &mut |_| Control::Continue)
            .unwrap();
        assert_eq!(a.tokens, b.tokens, "{params:?}");
        assert_eq!(a.commits, b.commits, "{params:?}");
        assert_eq!(a.rows_per_pass, b.rows_per_pass, "{params:?}");
        assert_eq!(a.forced, b.forced, "{params:?}");
        if params.cache != CacheMode::None {
            assert!(a.cache_bytes > 0 && a.cache_bytes == b.cache_bytes);
            assert!(a.rows_per_pass.iter().any(|&r| r < a.canvas.len()));
        }
    }
}

#[test]
fn greedy_device_steps_copy_only_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_file(dir.path(), "q8_0");
    let (_, mut dev) = both(&path);
    let n_vocab = dev.model().n_vocab;
    let k = unmask_runtime::head::DEVICE_CANDIDATES.min(n_vocab) as u64;
    // Bytes per masked row: argmax, max logit and denominator (3 x 4), then what the confidence
    // needs: the entropy (4), or for the margin the candidates (8 bytes each); never a logits
    // row, as long as the candidates are fewer than the vocabulary.
    for (alg, per_row) in [
        (Algorithm::Entropy, 16),
        (Algorithm::MaskgitPlus, 12),
        (Algorithm::TopkMargin, 12 + 8 * k),
    ] {
        let params = GenerateParams {
            max_new_tokens: 32,
            steps: 8,
            alg,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            ..Default::default()
        };
        let g = dev
            .generate(&[1, 2, 3], &params, &mut |_| Control::Continue)
            .unwrap();
        assert!(dev.forward_for(35).unwrap().scores_on_device());
        let mut masked = 32u64;
        let mut masked_rows = 0u64;
        for c in &g.commits {
            masked_rows += masked;
            masked -= c.len() as u64;
        }
        assert_eq!(g.forward_passes, 8);
        assert_eq!(g.bytes_to_host, masked_rows * per_row, "{alg:?}");
    }
}

#[test]
fn asking_for_cuda_without_a_cuda_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_file(dir.path(), "q8_0");
    let m = model.to_str().unwrap();
    for cmd in [
        vec!["generate", "-m", m, "-p", "hi", "--device", "cuda"],
        vec!["generate", "-m", m, "-p", "hi", "--device", "cuda:1"],
        vec![
            "bench", "-m", m, "--gen", "8", "--steps", "2", "--device", "cuda",
        ],
    ] {
        let out = unmask(&cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(stderr.contains("no CUDA device is available"), "{stderr}");
        assert!(stderr.contains("libggml-cuda.so"), "{stderr}");
        assert!(stderr.contains("UNMASK_BACKEND_DIR"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = unmask(&["generate", "-m", m, "-p", "hi", "--device", "tpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("expected auto, cpu, cuda"), "{stderr}");
}

#[test]
fn auto_runs_on_the_cpu_without_a_gpu_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_file(dir.path(), "q8_0");
    let m = model.to_str().unwrap();
    let run = |device: &str| {
        let out = unmask(&[
            "generate",
            "-m",
            m,
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            "16",
            "--steps",
            "8",
            "--temperature",
            "0",
            "--json",
            "--device",
            device,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let auto = run("auto");
    let cpu = run("cpu");
    let dev = run("ggml-cpu");
    assert_eq!(auto["device"], "cpu");
    assert_eq!(auto["tokens"], cpu["tokens"]);
    assert_eq!(dev["tokens"], cpu["tokens"]);
    assert_eq!(cpu["bytes_to_host"], 0);
    assert!(dev["device"].as_str().unwrap().starts_with("CPU"));
    let out = unmask(&["devices"]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("CPU"), "{listing}");
    assert!(listing.contains("no libggml-cuda.so"), "{listing}");
    assert!(listing.contains("CPU code: ggml built for"), "{listing}");

    // The CPU code: ggml's build flags as .cargo/config.toml sets them, the processor's
    // instruction sets as this test detects them.
    let out = unmask(&["devices", "--json"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |key: &str| -> Vec<String> {
        report["cpu_code"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {report}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (built, machine, unused) = (list("ggml_built"), list("machine"), list("unused"));
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        assert!(built.iter().any(|f| f == "avx2"), "{report}");
        assert!(!built.iter().any(|f| f == "avx512"), "{report}");
        assert_eq!(
            machine.iter().any(|f| f == "avx2"),
            has!("avx2"),
            "{report}"
        );
        assert_eq!(
            machine.iter().any(|f| f == "avx512"),
            has!("avx512f"),
            "{report}"
        );
        assert_eq!(
            unused.iter().any(|f| f == "avx512"),
            has!("avx512f"),
            "{report}"
        );
        let simd = has!("avx2") && has!("fma") && has!("f16c");
        let vnni = has!("avx512vnni") && has!("avx512vl");
        // The test's environment may restrict the kernel to AVX2 (UNMASK_Q8_KERNEL).
        let avx2_only = std::env::var("UNMASK_Q8_KERNEL").is_ok_and(|v| v.trim() == "avx2");
        let want = match (simd, vnni && !avx2_only) {
            (false, _) => "ggml",
            (true, true) => "avx512vnni",
            (true, false) => "avx2",
        };
        assert_eq!(report["cpu_code"]["q8_0_products"], want, "{report}");
    }
    for f in &unused {
        assert!(machine.contains(f) && !built.contains(f), "{report}");
    }
    assert!(report["devices"][0]["name"].is_string(), "{report}");
}

/// The int8 GEMM's kernels (VNNI where the CPU has it, AVX2 when `UNMASK_Q8_KERNEL=avx2`
/// restricts it) give the same tokens: both compute the exact integer block sums
/// (`kernels/src/simd/qgemm.rs`, whose tests compare them bit for bit with the scalar code).
#[test]
fn the_q8_kernels_generate_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_file(dir.path(), "q8_0");
    let run = |kernel: Option<&str>, args: &[&str]| -> serde_json::Value {
        let mut c = Command::new(env!("CARGO_BIN_EXE_unmask"));
        c.args(args).env_remove("UNMASK_Q8_KERNEL");
        if let Some(k) = kernel {
            c.env("UNMASK_Q8_KERNEL", k);
        }
        let out = c.output().expect("run unmask");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let p = path.to_str().unwrap();
    let generate = [
        "generate",
        "-m",
        p,
        "-p",
        "def f(",
        "--max-new-tokens",
        "32",
        "--steps",
        "16",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--json",
    ];
    let best = run(None, &generate);
    let avx2 = run(Some("avx2"), &generate);
    assert_eq!(best["tokens"], avx2["tokens"]);
    assert_eq!(best["text"], avx2["text"]);
    let name = |kernel| run(kernel, &["devices", "--json"])["cpu_code"]["q8_0_products"].clone();
    let (best_name, avx2_name) = (name(None), name(Some("avx2")));
    eprintln!("q8_0 kernels compared: {best_name} and {avx2_name}");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            assert_eq!(avx2_name, "avx2");
            if has!("avx512vnni") && has!("avx512vl") {
                assert_eq!(
                    best_name, "avx512vnni",
                    "two different kernels were compared"
                );
            } else {
                eprintln!("this CPU has no AVX-512 VNNI: only the AVX2 kernel ran");
            }
        }
    }
}
