//! `unmask bench`: seconds per step, tokens per second and peak RSS of a generation, and, in the
//! same run, libllama's forward pass over the same canvas configured as llama.cpp's diffusion
//! example does (logits for every position), plus the host-side scoring that example adds.

use crate::cli_generate::default_threads;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use unmask_kernels::llama::LlamaForward;
use unmask_runtime::chat::encode;
use unmask_runtime::{Algorithm, Control, GenerateParams, Generator, Model};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(short, long)]
    model: PathBuf,
    /// New tokens (canvas length after the prompt).
    #[arg(long, default_value_t = 256)]
    gen: usize,
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 30)]
    prompt_tokens: usize,
    #[arg(short, long, default_value_t = default_threads())]
    threads: usize,
    #[arg(long, default_value = "entropy")]
    alg: Algorithm,
    /// Sampling temperature (0: greedy). Synthetic models have nearly flat distributions, which
    /// make nucleus sampling unrepresentatively expensive, so the benchmark is greedy by default.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// libllama forward passes to time.
    #[arg(long, default_value_t = 3)]
    llama_runs: usize,
    /// Skip the libllama comparison.
    #[arg(long)]
    no_llama: bool,
}

const BENCH_TEXT: &str = "def quicksort(items):\n    \"\"\"Sort a list of numbers in ascending order using quicksort and return a new list.\"\"\"\n    # Write the body of this function. Pick the middle element as the pivot, partition, recurse.\n";

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let model = Arc::new(
        Model::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?,
    );
    let file_mib = std::fs::metadata(&args.model)?.len() as f64 / (1u64 << 20) as f64;
    let mut prompt = encode(&model, BENCH_TEXT)?;
    while prompt.len() < args.prompt_tokens {
        prompt.extend_from_within(..prompt.len().min(args.prompt_tokens - prompt.len()));
    }
    prompt.truncate(args.prompt_tokens.max(1));
    // The tokenizer built for encoding is gone; give its memory back before measuring.
    unmask_kernels::heap::release_free_memory();
    let params = GenerateParams {
        max_new_tokens: args.gen,
        steps: args.steps,
        alg: args.alg,
        temperature: args.temperature,
        top_p: None,
        top_k: None,
        ..GenerateParams::default()
    };
    let mut generator = Generator::new(model.clone(), args.threads)?;
    // Build the graphs once outside the timing, as a long-running user would have them.
    generator.forward_for(prompt.len() + args.gen)?;
    let result = generator.generate(&prompt, &params, &mut |_| Control::Continue)?;
    let per_step = result.seconds / result.steps as f64;
    let rss = peak_rss_mib();
    let compute_mib = generator
        .forward_for(prompt.len() + args.gen)?
        .compute_bytes() as f64
        / (1u64 << 20) as f64;
    println!(
        "model: {} ({file_mib:.1} MiB), threads {}",
        args.model.display(),
        args.threads
    );
    println!(
        "canvas: {} prompt + {} new tokens, {} steps, alg {:?}, temperature {}",
        prompt.len(),
        args.gen,
        args.steps,
        args.alg,
        args.temperature
    );
    println!(
        "unmask: {:.3} s/step ({} forward passes), {:.2} tokens/s, {:.2} s total",
        per_step,
        result.forward_passes,
        result.tokens.len() as f64 / result.seconds,
        result.seconds
    );
    println!(
        "unmask: per step {:.3} s in the layers, {:.3} s in output projection + scoring ({} forward passes)",
        result.timings.body / result.forward_passes.max(1) as f64,
        result.timings.head_and_scoring / result.forward_passes.max(1) as f64,
        result.forward_passes
    );
    println!(
        "unmask: peak RSS {rss:.1} MiB (file {file_mib:.1} MiB + compute buffers {compute_mib:.1} MiB = {:.1} MiB)",
        file_mib + compute_mib
    );
    if args.no_llama {
        return Ok(());
    }
    let canvas: Vec<i32> = result.canvas.iter().map(|&t| t as i32).collect();
    let mut llama = LlamaForward::new(&args.model, canvas.len(), args.threads)?;
    let n_vocab = llama.n_vocab();
    llama.logits(&canvas)?; // warm-up
    let mut forward_times = Vec::new();
    let mut scoring_times = Vec::new();
    for _ in 0..args.llama_runs.max(1) {
        let start = Instant::now();
        let logits = llama.logits(&canvas)?;
        forward_times.push(start.elapsed().as_secs_f64());
        // What the diffusion example then does on the host: copy every masked row's logits and
        // score it (here: the generated part of the canvas, all masked at the first step).
        let start = Instant::now();
        let mut copy = vec![0f32; n_vocab];
        let mut checksum = 0f32;
        for row in prompt.len() - 1..canvas.len() - 1 {
            copy.copy_from_slice(&logits[row * n_vocab..(row + 1) * n_vocab]);
            let max = copy.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = copy.iter().map(|&x| (x - max).exp()).sum();
            checksum += sum;
        }
        std::hint::black_box(checksum);
        scoring_times.push(start.elapsed().as_secs_f64());
    }
    forward_times.sort_by(f64::total_cmp);
    scoring_times.sort_by(f64::total_cmp);
    let llama_forward = forward_times[forward_times.len() / 2];
    let llama_scoring = scoring_times[scoring_times.len() / 2];
    println!(
        "libllama: forward {:.3} s over the same {} tokens (logits for every position; median of {}), host copy + scoring of all masked rows {:.3} s",
        llama_forward,
        canvas.len(),
        forward_times.len(),
        llama_scoring
    );
    println!(
        "ratio: libllama forward alone / unmask whole step = {:.2}x; (forward + scoring) / unmask step = {:.2}x",
        llama_forward / per_step,
        (llama_forward + llama_scoring) / per_step
    );
    Ok(())
}
