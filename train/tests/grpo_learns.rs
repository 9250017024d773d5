//! Coupled-GRPO end to end on the tiny synthetic model: with the verifiable toy reward
//! `toy-even-ids` (fraction of even token ids in the completion) the mean reward rises from
//! chance (~0.5) to most of the maximum (1.0) in a short CPU run, and the code reward path runs
//! a round through the sandbox. The learning run's `metrics.jsonl` is kept as an artefact in
//! `target/artefacts/grpo_learns_metrics.jsonl`.

use std::path::{Path, PathBuf};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_train::grpo::{train, GrpoMetrics};
use unmask_train::run_config::{GrpoConfig, RewardKind};

fn tiny(dir: &Path) -> PathBuf {
    let hf = dir.join("tiny");
    SynthModel::new(Preset::Tiny, 5)
        .unwrap()
        .write_hf(&hf, 1 << 30)
        .unwrap();
    hf
}

fn tasks() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/toy_tasks.jsonl")
}

fn read_metrics(out: &Path) -> Vec<GrpoMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `target/artefacts` next to the test binary's target dir.
fn artefact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    target.join("artefacts")
}

fn toy_config(hf: &Path, out: &Path, steps: u64) -> GrpoConfig {
    GrpoConfig {
        model: Some(hf.to_path_buf()),
        tasks: Some(tasks()),
        out: Some(out.to_path_buf()),
        reward: RewardKind::ToyEvenIds,
        steps,
        prompts_per_round: 2,
        num_generations: 8,
        mu: 2,
        beta: 0.01,
        micro_batch: 8,
        lr: 1e-3,
        min_lr_ratio: 0.1,
        warmup_steps: Some(0),
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        ref_sync_steps: 8,
        prompt_tokens: 24,
        completion_tokens: 8,
        diffusion_steps: 8,
        threads: Some(2),
        seed: 3,
        ..GrpoConfig::default()
    }
}

#[test]
fn grpo_learns_the_toy_reward() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let out = dir.path().join("out");
    let steps = 60;
    let summary = train(&toy_config(&hf, &out, steps), false).unwrap();
    assert_eq!(summary.final_step, steps);
    let log = read_metrics(&out);
    assert_eq!(log.len(), steps as usize);
    let artefacts = artefact_dir();
    std::fs::create_dir_all(&artefacts).unwrap();
    let kept = artefacts.join("grpo_learns_metrics.jsonl");
    std::fs::copy(out.join("metrics.jsonl"), &kept).unwrap();
    eprintln!("metrics kept at {}", kept.display());
    let curve: Vec<String> = log
        .iter()
        .filter(|m| m.step % 2 == 1)
        .map(|m| format!("{:.3}", m.reward_mean))
        .collect();
    eprintln!("reward per round: {}", curve.join(" "));
    for m in &log {
        assert!(m.loss.is_finite() && m.grad_norm.is_finite() && m.kl >= 0.0);
        assert!((0.0..=1.0).contains(&m.clip_fraction));
    }
    let mean = |ms: &[GrpoMetrics]| ms.iter().map(|m| m.reward_mean).sum::<f64>() / ms.len() as f64;
    let first = mean(&log[..6]);
    let last = mean(&log[log.len() - 6..]);
    eprintln!("mean reward: first 3 rounds {first:.3}, last 3 rounds {last:.3}");
    assert!(
        first < 0.7,
        "the untrained model should be near chance: {first}"
    );
    assert!(
        last > 0.8 && last > first + 0.2,
        "reward did not rise: {first:.3} -> {last:.3}"
    );
    // A second fresh run into the same folder is refused; the final checkpoint has the reference.
    assert!(train(&toy_config(&hf, &out, steps), false).is_err());
    assert!(summary
        .final_checkpoint
        .join(unmask_train::checkpoint::REFERENCE_FILE)
        .is_file());
}

#[test]
fn resume_repeats_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let full = dir.path().join("full");
    let cut = dir.path().join("cut");
    let mut cfg = toy_config(&hf, &full, 6);
    cfg.save_every = Some(2);
    cfg.ref_sync_steps = 3;
    // One ggml thread: the tests of this file run side by side on few cores.
    cfg.threads = Some(1);
    train(&cfg, false).unwrap();
    // An interruption after update 4 (the cosine schedule depends on `steps`, so the run is
    // "interrupted" by deleting its last checkpoint rather than by a shorter run).
    let mut cfg_cut = cfg.clone();
    cfg_cut.out = Some(cut.clone());
    train(&cfg_cut, false).unwrap();
    std::fs::remove_dir_all(cut.join("checkpoint-6")).unwrap();
    let summary = train(&cfg_cut, true).unwrap();
    assert_eq!(summary.resumed_from, 4);
    let a = read_metrics(&full);
    let b = read_metrics(&cut);
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.step, x.reward_mean, x.loss, x.kl, x.grad_norm),
            (y.step, y.reward_mean, y.loss, y.kl, y.grad_norm)
        );
    }
    let wa = std::fs::read(full.join("checkpoint-6/model.safetensors")).unwrap();
    let wb = std::fs::read(cut.join("checkpoint-6/model.safetensors")).unwrap();
    assert!(wa == wb, "resumed weights differ");
}

#[test]
fn code_reward_round_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let out = dir.path().join("out");
    let cfg = GrpoConfig {
        reward: RewardKind::Code,
        steps: 2,
        prompts_per_round: 2,
        num_generations: 2,
        micro_batch: 2,
        reward_jobs: Some(2),
        threads: Some(1),
        prompt_tokens: 200,
        completion_tokens: 16,
        diffusion_steps: 8,
        ..toy_config(&hf, &out, 2)
    };
    let summary = train(&cfg, false).unwrap();
    assert_eq!(summary.final_step, 2);
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        for field in [
            "step",
            "round",
            "reward_mean",
            "reward_std",
            "loss",
            "kl",
            "clip_fraction",
            "grad_norm",
            "lr",
            "tokens_per_s",
            "seconds",
        ] {
            assert!(l.get(field).is_some(), "metrics line lacks `{field}`: {l}");
        }
        let r = l["reward_mean"].as_f64().unwrap();
        assert!((0.0..=2.5).contains(&r), "reward {r}");
    }
}

/// The binary with the toy settings of [`toy_config`], 12 updates, a checkpoint every 2.
fn grpo_cmd(hf: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_unmask-train"));
    cmd.arg("grpo")
        .arg("--model")
        .arg(hf)
        .arg("--tasks")
        .arg(tasks())
        .arg("--out")
        .arg(out)
        .args([
            "--reward",
            "toy-even-ids",
            "--steps",
            "12",
            "--save-every",
            "2",
            "--prompts-per-round",
            "2",
            "--num-generations",
            "8",
            "--mu",
            "2",
            "--micro-batch",
            "8",
            "--lr",
            "1e-3",
            "--warmup-steps",
            "0",
            "--weight-decay",
            "0",
            "--max-grad-norm",
            "1",
            "--ref-sync-steps",
            "3",
            "--prompt-tokens",
            "24",
            "--completion-tokens",
            "8",
            "--diffusion-steps",
            "8",
            "--threads",
            "1",
            "--seed",
            "3",
        ])
        .args(extra);
    cmd
}

fn logged_steps(out: &Path) -> Vec<u64> {
    match std::fs::read_to_string(out.join("metrics.jsonl")) {
        // A line being written when the process died may be cut: count complete lines only.
        Ok(text) => text
            .lines()
            .filter_map(|l| serde_json::from_str::<GrpoMetrics>(l).ok())
            .map(|m| m.step)
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn kill_9_during_grpo_then_resume_matches_the_uninterrupted_run() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let whole = dir.path().join("whole");
    let st = grpo_cmd(&hf, &whole, &[]).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let cut = dir.path().join("cut");
    let mut child = grpo_cmd(&hf, &cut, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let steps = logged_steps(&cut);
        if cut.join("checkpoint-4/trainer_state.json").exists() && steps.iter().any(|&s| s > 4) {
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !cut.join("checkpoint-12").exists(),
        "killed too late to test anything"
    );
    for e in std::fs::read_dir(&cut).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            for f in [
                "trainer_state.json",
                "model.safetensors",
                "reference.safetensors",
            ] {
                assert!(e.path().join(f).is_file(), "{name} lacks {f}");
            }
        }
    }
    let resumed = grpo_cmd(&hf, &cut, &["--resume"]).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(logged_steps(&cut), (1..=12).collect::<Vec<u64>>());
    let a = read_metrics(&whole);
    let b = read_metrics(&cut);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.step, x.reward_mean, x.loss, x.kl, x.grad_norm),
            (y.step, y.reward_mean, y.loss, y.kl, y.grad_norm)
        );
    }
    let wa = std::fs::read(whole.join("checkpoint-12/model.safetensors")).unwrap();
    let wb = std::fs::read(cut.join("checkpoint-12/model.safetensors")).unwrap();
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run's"
    );
}

/// Coupled-GRPO on the device pipeline (`--device ggml-cpu`: parameters, reference, AdamW and the
/// rollouts' graphs in the backend's buffers, as on a GPU) does the updates the built-in CPU
/// backend does: the same rollouts (the same seeds over probabilities that agree to rounding),
/// hence the same rewards, and losses and gradient norms that agree to rounding.
#[test]
fn grpo_on_the_device_pipeline_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny(dir.path());
    let steps = 4;
    let mut runs = Vec::new();
    for device in ["cpu", "ggml-cpu"] {
        let out = dir.path().join(device);
        let cfg = GrpoConfig {
            device: Some(device.into()),
            ..toy_config(&hf, &out, steps)
        };
        let summary = train(&cfg, false).unwrap();
        assert_eq!(summary.final_step, steps, "{device}");
        runs.push(read_metrics(&out));
    }
    let (cpu, dev) = (&runs[0], &runs[1]);
    assert_eq!(cpu.len(), dev.len());
    for (a, b) in cpu.iter().zip(dev) {
        eprintln!(
            "update {}: reward {:.4} / {:.4}, loss {:.6e} / {:.6e}, grad norm {:.6e} / {:.6e}",
            a.step, a.reward_mean, b.reward_mean, a.loss, b.loss, a.grad_norm, b.grad_norm
        );
        assert_eq!(a.reward_mean, b.reward_mean, "update {}: rewards", a.step);
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(y.abs()) + 1e-9;
        assert!(close(a.loss, b.loss), "update {}: loss", a.step);
        assert!(
            close(a.grad_norm, b.grad_norm),
            "update {}: grad norm",
            a.step
        );
        assert!(close(a.kl, b.kl), "update {}: kl", a.step);
    }
}
