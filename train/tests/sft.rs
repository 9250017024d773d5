//! The training loop: AdamW (ggml) against an f64 transcription of `torch.optim.AdamW`, SFT that
//! learns on the tiny model, kill -9 and bit-identical resume, checkpoints that convert to GGUF
//! and load in the runtime, and the same training on the device pipeline (`--device ggml-cpu`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::adamw::{AdamWState, AdamWStep};
use unmask_kernels::graph::param_store::ParamStore;
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_runtime::rng::Rng;
use unmask_train::metrics;
use unmask_train::policy::Policy;
use unmask_train::run_config::SftConfig;
use unmask_train::sft::{eval_loss, load_examples, train};

/// `torch.optim.AdamW.step` for one tensor, in f64 (PyTorch's single-tensor code path):
/// decay, moments, bias-corrected step with eps outside the square root.
#[allow(clippy::too_many_arguments)]
fn torch_adamw(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    step: i32,
    lr: f64,
    (b1, b2): (f64, f64),
    eps: f64,
    wd: f64,
) {
    let bc1 = 1.0 - b1.powi(step);
    let bc2 = 1.0 - b2.powi(step);
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let denom = v[i].sqrt() / bc2.sqrt() + eps;
        p[i] -= lr / bc1 * m[i] / denom;
    }
}

#[test]
fn adamw_on_ggml_matches_torch_semantics() {
    let shapes: Vec<(String, Vec<i64>)> = vec![
        ("a".into(), vec![7, 3]),
        ("b".into(), vec![5]),
        ("c".into(), vec![4, 2, 3]),
    ];
    let mut store = ParamStore::new(&shapes).unwrap();
    let mut rng = Rng::new(11);
    let mut normal = |scale: f64| (rng.uniform() - 0.5) * 2.0 * scale;
    let mut reference: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = Vec::new();
    for (name, shape) in &shapes {
        let n: i64 = shape.iter().product();
        let init: Vec<f32> = (0..n).map(|_| normal(1.0) as f32).collect();
        store.set(name, &init).unwrap();
        let p = init.iter().map(|&x| f64::from(x)).collect();
        reference.push((p, vec![0.0; n as usize], vec![0.0; n as usize]));
    }
    let mut state = AdamWState::new(&store).unwrap();
    let mut backend = Backend::new(2).unwrap();
    let (b1, b2, eps, wd) = (0.9, 0.99, 1e-8, 0.1);
    for (step, lr) in [(1u64, 1e-2), (2, 5e-3), (3, 2e-2), (4, 1e-3)] {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .map(|(_, s)| {
                let n: i64 = s.iter().product();
                // Mixed magnitudes, including exact zeros, to exercise eps.
                (0..n)
                    .map(|i| if i % 5 == 0 { 0.0 } else { normal(3.0) as f32 })
                    .collect()
            })
            .collect();
        let list: Vec<(&str, &[f32])> = shapes
            .iter()
            .zip(&grads)
            .map(|((n, _), g)| (n.as_str(), g.as_slice()))
            .collect();
        let hp = AdamWStep {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
            step,
        };
        state.step(&mut store, &list, &hp, &mut backend).unwrap();
        for (k, (p, m, v)) in reference.iter_mut().enumerate() {
            let g: Vec<f64> = grads[k].iter().map(|&x| f64::from(x)).collect();
            torch_adamw(p, &g, m, v, step as i32, lr, (b1, b2), eps, wd);
        }
        for (k, (name, _)) in shapes.iter().enumerate() {
            let got = store.get(name).unwrap();
            let (gm, gv) = state.moments(name).unwrap();
            let (p, m, v) = &reference[k];
            for i in 0..got.len() {
                let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-6 * (1.0 + b.abs());
                assert!(
                    close(got[i], p[i]),
                    "step {step} {name}[{i}]: {} vs {}",
                    got[i],
                    p[i]
                );
                assert!(close(gm[i], m[i]), "m {name}[{i}]");
                assert!(close(gv[i], v[i]), "v {name}[{i}]");
            }
        }
    }
    // Misuse is an error, not a ggml abort.
    let hp = AdamWStep {
        lr: 1e-3,
        beta1: b1,
        beta2: b2,
        eps,
        weight_decay: wd,
        step: 0,
    };
    let g = vec![0.0f32; 5];
    assert!(state
        .step(&mut store, &[("b", &g)], &hp, &mut backend)
        .is_err());
    let hp = AdamWStep { step: 1, ..hp };
    assert!(state
        .step(&mut store, &[("a", &g)], &hp, &mut backend)
        .is_err());
    assert!(state
        .step(&mut store, &[("zz", &g)], &hp, &mut backend)
        .is_err());
}

fn tiny(dir: &Path) -> PathBuf {
    let hf = dir.join("tiny");
    SynthModel::new(Preset::Tiny, 5)
        .unwrap()
        .write_hf(&hf, 1 << 30)
        .unwrap();
    hf
}

fn pairs(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"def add(a, b):\", \"response\": \" return a + b\"}\n\
         {\"prompt\": \"x = \", \"response\": \"[1, 2, 3]\"}\n",
    )
    .unwrap();
    path
}

fn config(hf: &Path, data: &Path, out: &Path, steps: u64) -> SftConfig {
    SftConfig {
        model: Some(hf.to_path_buf()),
        data: vec![data.to_path_buf()],
        out: Some(out.to_path_buf()),
        steps,
        micro_batch: 2,
        lr: 1e-3,
        warmup_steps: Some(0),
        threads: Some(1),
        // The learning check evaluates on the plain pairs of `load_examples`: train on them too.
        chat: false,
        ..SftConfig::default()
    }
}

#[test]
fn sft_learns_fixed_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs(dir.path());
    let out = dir.path().join("out");
    let mut cfg = config(&hf, &data, &out, 40);
    cfg.save_dtype = Some(unmask_train::checkpoint::SaveDtype::F32);
    let policy = Policy::load_hf(&hf).unwrap();
    let eos = policy.config.eos_token_id;
    let examples = load_examples(&cfg.data, &hf.join("tokenizer.json"), 512, eos).unwrap();
    let mut backend = Backend::new(1).unwrap();
    let before = eval_loss(&policy, &examples, 99, 8, 1e-3, &mut backend).unwrap();
    drop(policy);
    let summary = train(&cfg, false, Duration::ZERO).unwrap();
    assert_eq!(summary.final_step, 40);
    let trained = Policy::load_hf(&summary.final_checkpoint).unwrap();
    let after = eval_loss(&trained, &examples, 99, 8, 1e-3, &mut backend).unwrap();
    eprintln!("SFT eval loss {before:.4} -> {after:.4}");
    assert!(after < 0.5 * before, "loss {before} -> {after}");
    let log = metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.len(), 40);
    assert!(log.iter().all(|m| m.loss.is_finite() && m.grad_norm > 0.0));
    // A second fresh run into the same folder is refused.
    assert!(train(&cfg, false, Duration::ZERO).is_err());
}

fn sft_cmd(hf: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unmask-train"));
    c.arg("sft")
        .arg("--model")
        .arg(hf)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--steps",
            "12",
            "--save-every",
            "4",
            "--micro-batch",
            "2",
            "--lr",
            "1e-3",
            "--warmup-steps",
            "2",
            "--threads",
            "1",
            "--seed",
            "7",
        ])
        .args(extra)
        .stdin(Stdio::null());
    c
}

fn logged_steps(out: &Path) -> Vec<u64> {
    let path = out.join("metrics.jsonl");
    if !path.exists() {
        return Vec::new();
    }
    metrics::read(&path)
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect()
}

#[test]
fn kill_9_then_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs(dir.path());

    // Uninterrupted reference run.
    let whole = dir.path().join("whole");
    let st = sft_cmd(&hf, &data, &whole, &[]).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    // Interrupted run: SIGKILL once checkpoint-4 exists and a later update is logged.
    let cut = dir.path().join("cut");
    let mut child = sft_cmd(&hf, &data, &cut, &["--throttle-ms", "150"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = cut.join("checkpoint-4/trainer_state.json").exists()
            && logged_steps(&cut).iter().any(|&s| s > 4);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !cut.join("checkpoint-12").exists(),
        "killed too late to test anything"
    );
    // Every visible checkpoint is complete, and `latest` names one.
    for e in std::fs::read_dir(&cut).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            assert!(e.path().join("trainer_state.json").exists(), "{name}");
            assert!(e.path().join("model.safetensors").exists(), "{name}");
        }
    }
    let latest = std::fs::read_to_string(cut.join("latest")).unwrap();
    let latest_step: u64 = latest
        .trim()
        .trim_start_matches("checkpoint-")
        .parse()
        .unwrap();
    assert!(cut.join(latest.trim()).join("trainer_state.json").exists());
    // A torn save of a later checkpoint is ignored and removed.
    let torn = cut.join(".tmp-ckpt-99");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("model.safetensors"), b"garbage").unwrap();

    let resumed = sft_cmd(&hf, &data, &cut, &["--resume"]).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&resumed.stdout).expect("summary line");
    let from = summary["resumed_from"].as_u64().unwrap();
    assert!(
        from >= 4 && from >= latest_step && from < 12,
        "resumed from {from}"
    );
    assert!(!torn.exists(), "partial checkpoint removed");
    assert_eq!(logged_steps(&cut), (1..=12).collect::<Vec<u64>>());
    assert_eq!(logged_steps(&whole), (1..=12).collect::<Vec<u64>>());

    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(whole.join("checkpoint-12").join(file)).unwrap();
        let b = std::fs::read(cut.join("checkpoint-12").join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between the resumed and the uninterrupted run"
        );
    }
    let losses = |out: &Path| -> Vec<u64> {
        metrics::read(&out.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|m| m.loss.to_bits())
            .collect()
    };
    assert_eq!(losses(&whole), losses(&cut), "same losses at every update");

    // The final checkpoint converts to GGUF and loads in the runtime.
    let gguf = dir.path().join("trained.gguf");
    let options = unmask_quantize::convert::ConvertOptions {
        target: "q8_0".parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    unmask_quantize::convert::convert(&cut.join("checkpoint-12"), &gguf, &options).unwrap();
    let model = unmask_runtime::Model::load(&gguf).unwrap();
    drop(model);
}

/// 12 SFT updates of the tiny model on `device` (`sft_cmd`), every checkpoint kept, in f32.
fn sft_on(hf: &Path, data: &Path, out: &Path, device: &str, extra: &[&str]) {
    let st = sft_cmd(
        hf,
        data,
        out,
        &["--keep", "0", "--save-dtype", "f32", "--device", device],
    )
    .args(extra)
    .output()
    .unwrap();
    assert!(
        st.status.success(),
        "sft on {device}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn losses(out: &Path) -> Vec<f64> {
    metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.loss)
        .collect()
}

/// The device pipeline (`--device ggml-cpu`: parameters, AdamW moments and graphs in the
/// backend's buffers, ggml's products, as a GPU runs them) trains as the built-in CPU backend
/// does, and resumes bit for bit.
#[test]
fn the_device_pipeline_trains_like_the_cpu_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let data = pairs(dir.path());
    let cpu = dir.path().join("cpu");
    let device = dir.path().join("device");
    sft_on(&hf, &data, &cpu, "cpu", &[]);
    sft_on(&hf, &data, &device, "ggml-cpu", &[]);
    // The same objective, data and updates; only the product kernels' rounding differs (the
    // gradients agree within 2e-5 in tests/tests/train_grad_parity.rs).
    let (a, b) = (losses(&cpu), losses(&device));
    assert_eq!((a.len(), b.len()), (12, 12));
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        let rel = (x - y).abs() / x.abs().max(1e-12);
        assert!(
            rel < 1e-3,
            "update {}: loss {x} on cpu, {y} on ggml-cpu",
            step + 1
        );
    }
    assert!(
        b[11] < b[0],
        "the device run learns: loss {} -> {}",
        b[0],
        b[11]
    );
    let params = |out: &Path| -> Vec<f32> {
        let bytes = std::fs::read(out.join("checkpoint-12/model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        bytes[8 + n..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let (pa, pb) = (params(&cpu), params(&device));
    assert_eq!(pa.len(), pb.len());
    let scale = pa.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = pa
        .iter()
        .zip(&pb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("final parameters: max |cpu - ggml-cpu| = {diff:.2e} (max |w| = {scale:.2e})");
    assert!(diff <= 1e-3 * scale, "final parameters differ by {diff}");

    // Resume on the device from checkpoint 4 of a copy of the run: the same checkpoint 12.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for entry in std::fs::read_dir(&device).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "checkpoint-8" || name == "checkpoint-12" {
            continue;
        }
        let to = cut.join(&name);
        if entry.path().is_dir() {
            std::fs::create_dir(&to).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    std::fs::write(cut.join("latest"), "checkpoint-4\n").unwrap();
    sft_on(&hf, &data, &cut, "ggml-cpu", &["--resume"]);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let x = std::fs::read(device.join("checkpoint-12").join(file)).unwrap();
        let y = std::fs::read(cut.join("checkpoint-12").join(file)).unwrap();
        assert!(x == y, "{file}: the resumed device run differs");
    }
    let bits = |v: Vec<f64>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(losses(&device)), bits(losses(&cut)));
}
