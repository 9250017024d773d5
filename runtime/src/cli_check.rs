//! `unmask check-device`: the backend agreement check. The same model file runs on the built-in
//! CPU backend and on a device (CUDA, or `ggml-cpu` to exercise the device code path without a
//! GPU); the logits of every position of a canvas must agree within a tolerance, and greedy
//! generations must be identical, or, where they are not, the first divergence must be explained
//! by a gap smaller than the measured disagreement (a near-tie that either backend may break).

use crate::cli_bench::BENCH_TEXT;
use crate::cli_generate::{default_threads, load_model};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::sync::Arc;
use unmask_kernels::device::{DeviceRequest, Placement};
use unmask_kernels::simd::vmath::top2;
use unmask_runtime::sampler::{score_row, Confidence, Filter, Scratch};
use unmask_runtime::{Algorithm, Control, GenerateParams, Generation, Generator};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The model (GGUF) to run on both the device and the CPU.
    #[arg(short, long)]
    model: PathBuf,
    /// The device to compare with the built-in CPU backend (cuda, cuda:N, ggml-cpu).
    #[arg(long, default_value = "cuda")]
    device: DeviceRequest,
    /// Largest accepted max-abs logit difference, relative to the largest |logit| on the CPU.
    #[arg(long, default_value_t = 5e-2)]
    tolerance: f32,
    /// The same model unquantized (f16 or f32), to report each backend's own quantization error
    /// (the quantized file against this one, on the same backend) next to their disagreement:
    /// the backends quantize activations differently (ggml's CPU products use q8_0/q8_K
    /// blocks, CUDA's q8_1). Reported only; the verdict uses --tolerance.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Prompt tokens of the test canvas.
    #[arg(long, default_value_t = 30)]
    prompt_tokens: usize,
    /// Masked tokens after the prompt (the logits canvas and the generation length).
    #[arg(long, default_value_t = 96)]
    gen: usize,
    /// Denoising steps of the greedy generations.
    #[arg(long, default_value_t = 48)]
    steps: usize,
    #[arg(short, long, default_value_t = default_threads())]
    threads: usize,
}

/// Largest |a - b| and largest |a|.
fn max_errors(a: &[f32], b: &[f32]) -> (f32, f32) {
    a.iter().zip(b).fold((0f32, 0f32), |(e, s), (x, y)| {
        (e.max((x - y).abs()), s.max(x.abs()))
    })
}

pub fn run(args: CheckArgs) -> Result<()> {
    let (device_model, placement) = load_model(&args.model, &args.device)?;
    if matches!(placement, Placement::Cpu) {
        bail!("check-device compares a device with the CPU: pass --device cuda (or ggml-cpu)");
    }
    let (cpu_model, _) = load_model(&args.model, &DeviceRequest::Cpu)?;
    let (cpu_model, device_model) = (Arc::new(cpu_model), Arc::new(device_model));
    let mut prompt = cpu_model.encode(BENCH_TEXT)?;
    while prompt.len() < args.prompt_tokens {
        prompt.extend_from_within(..prompt.len().min(args.prompt_tokens - prompt.len()));
    }
    prompt.truncate(args.prompt_tokens.max(1));
    let mut cpu = Generator::new(cpu_model.clone(), args.threads)?;
    let mut dev = Generator::new(device_model, args.threads)?;
    let n_vocab = cpu_model.n_vocab;
    let mask = cpu_model.special.mask;

    let mut canvas = prompt.clone();
    canvas.resize(prompt.len() + args.gen, mask);
    let a = cpu.logits(&canvas)?;
    let b = dev.logits(&canvas)?;
    let (err, scale) = max_errors(&a, &b);
    let rel = err / scale.max(f32::MIN_POSITIVE);
    let argmax = |l: &[f32]| {
        l.chunks(n_vocab)
            .map(|row| top2(row, 1.0).1)
            .collect::<Vec<_>>()
    };
    let same_argmax = argmax(&a)
        .iter()
        .zip(argmax(&b))
        .filter(|(x, y)| **x == *y)
        .count();

    let params = GenerateParams {
        max_new_tokens: args.gen,
        steps: args.steps,
        alg: Algorithm::Entropy,
        temperature: 0.0,
        top_p: None,
        top_k: None,
        ..GenerateParams::default()
    };
    let ga = cpu.generate(&prompt, &params, &mut |_| Control::Continue)?;
    let gb = dev.generate(&prompt, &params, &mut |_| Control::Continue)?;
    let identical = ga.tokens == gb.tokens && ga.commits == gb.commits;
    let divergence = if identical {
        serde_json::Value::Null
    } else {
        explain(&mut cpu, &mut dev, &prompt, mask, &ga, &gb)?
    };
    let explained = divergence
        .get("explained")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    // Each backend's own quantization error: the quantized file against the reference file on
    // the same backend.
    let own_errors = match &args.reference {
        Some(reference) => {
            let (ref_cpu, _) = load_model(reference, &DeviceRequest::Cpu)?;
            let (ref_dev, _) = load_model(reference, &args.device)?;
            let rc = Generator::new(Arc::new(ref_cpu), args.threads)?.logits(&canvas)?;
            let rd = Generator::new(Arc::new(ref_dev), args.threads)?.logits(&canvas)?;
            let (ec, sc) = max_errors(&a, &rc);
            let (ed, sd) = max_errors(&b, &rd);
            Some((
                ec / sc.max(f32::MIN_POSITIVE),
                ed / sd.max(f32::MIN_POSITIVE),
            ))
        }
        None => None,
    };
    let pass = rel <= args.tolerance && (identical || explained);
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "device": placement.describe(),
        "canvas": canvas.len(),
        "logits_max_abs_error": err,
        "logits_max_abs": scale,
        "logits_rel_error": rel,
        "tolerance": args.tolerance,
        "cpu_own_rel_error": own_errors.map(|e| e.0),
        "device_own_rel_error": own_errors.map(|e| e.1),
        "rows_same_argmax": same_argmax,
        "rows": canvas.len(),
        "greedy_identical": identical,
        "first_divergence": divergence,
        "device_bytes_to_host_per_step": gb.bytes_to_host as f64 / gb.steps.max(1) as f64,
        "pass": pass,
    });
    println!("{report}");
    if !pass {
        bail!("the backends disagree beyond the tolerance (see the report above)");
    }
    Ok(())
}

/// The canvas before step `step` of a run: the prompt, then the tokens committed earlier.
fn canvas_before(prompt: &[u32], mask: u32, g: &Generation, step: usize) -> Vec<u32> {
    let mut canvas = prompt.to_vec();
    canvas.resize(g.canvas.len(), mask);
    for commits in &g.commits[..step] {
        for &p in commits {
            canvas[p] = g.canvas[p];
        }
    }
    canvas
}

/// Looks at the first step where the two runs differ: on the canvas both had then, compare the
/// gap that decided the CPU's choice with the disagreement of the two backends there.
fn explain(
    cpu: &mut Generator,
    dev: &mut Generator,
    prompt: &[u32],
    mask: u32,
    ga: &Generation,
    gb: &Generation,
) -> Result<serde_json::Value> {
    let step = (0..ga.commits.len().min(gb.commits.len()))
        .find(|&s| {
            ga.commits[s] != gb.commits[s]
                || ga.commits[s].iter().any(|&p| ga.canvas[p] != gb.canvas[p])
        })
        .unwrap_or(ga.commits.len().min(gb.commits.len()));
    let canvas = canvas_before(prompt, mask, ga, step);
    let n_vocab = cpu.model().n_vocab;
    let a = cpu.logits(&canvas)?;
    let b = dev.logits(&canvas)?;
    let masked: Vec<usize> = (prompt.len()..canvas.len())
        .filter(|&p| canvas[p] == mask)
        .collect();
    let row = |l: &[f32], p: usize| l[(p - 1) * n_vocab..p * n_vocab].to_vec();
    let mut logit_err = 0f32;
    let mut token_gap = f32::INFINITY;
    let mut conf = Vec::new();
    let mut conf_err = 0f32;
    let mut scratch = Scratch::default();
    for &p in &masked {
        let (ra, rb) = (row(&a, p), row(&b, p));
        logit_err = logit_err.max(max_errors(&ra, &rb).0);
        let sa = score_row(
            &ra,
            &Filter::GREEDY,
            Confidence::NegEntropy,
            0.0,
            &mut scratch,
        );
        let sb = score_row(
            &rb,
            &Filter::GREEDY,
            Confidence::NegEntropy,
            0.0,
            &mut scratch,
        );
        if sa.token != sb.token {
            token_gap = token_gap.min(ra[sa.token as usize] - ra[sb.token as usize]);
        }
        conf_err = conf_err.max((sa.confidence - sb.confidence).abs());
        conf.push(sa.confidence);
    }
    // The CPU ranking's smallest gap between neighbours around the commit boundary.
    conf.sort_by(|x, y| y.total_cmp(x));
    let k = ga.commits.get(step).map_or(0, Vec::len);
    let conf_gap = if k > 0 && k < conf.len() {
        conf[k - 1] - conf[k]
    } else {
        f32::INFINITY
    };
    let token_flip = token_gap.is_finite();
    let explained = if token_flip {
        token_gap <= 2.0 * logit_err
    } else {
        conf_gap <= 2.0 * conf_err
    };
    Ok(serde_json::json!({
        "step": step,
        "kind": if token_flip { "argmax flip" } else { "commit order" },
        "cpu_top_gap": if token_flip { Some(token_gap) } else { None },
        "logits_max_abs_error_at_step": logit_err,
        "cpu_confidence_gap_at_boundary": if conf_gap.is_finite() { Some(conf_gap) } else { None },
        "confidence_max_abs_error_at_step": conf_err,
        "explained": explained,
    }))
}
