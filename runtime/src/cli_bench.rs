//! `unmask bench`: seconds per step, tokens per second and peak RSS of a generation, and, in the
//! same run, libllama's forward pass over the same canvas configured as llama.cpp's diffusion
//! example does (logits for every position), plus the host-side scoring that example adds.
//!
//! The libllama passes are interleaved with unmask's steps (a pass every few steps, over the
//! canvas as it stands), so that a busy machine slows both sides alike and the ratio stays
//! meaningful. Peak RSS is read after the first step, before libllama is loaded: by then every
//! weight page and compute buffer unmask uses has been touched.

use crate::cli_decoding::{model_file_settings, settings_error, DecodingArgs, SamplingArgs};
use crate::cli_generate::{default_threads, load_model};
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;
use unmask_kernels::device::{DeviceKind, DeviceRequest, Placement};
use unmask_kernels::llama::LlamaForward;
use unmask_runtime::settings::{Layer, Setting, Settings, Source, Steps};
use unmask_runtime::{Control, Generator};

#[derive(clap::Args)]
#[command(after_help = BENCH_PRECEDENCE)]
pub struct BenchArgs {
    #[command(flatten)]
    model: crate::cli_model::ModelArg,
    #[arg(
        long = "gen",
        visible_alias = "max-new-tokens",
        value_name = "N",
        help = bench_help(Setting::MaxNewTokens, Some(GEN_ABOUT))
    )]
    gen: Option<usize>,
    #[arg(long, value_name = "N", help = bench_help(Setting::Steps, Some(STEPS_ABOUT)))]
    steps: Option<usize>,
    /// Prompt length in tokens (the benchmark text, repeated or cut).
    #[arg(long, default_value_t = 30)]
    prompt_tokens: usize,
    /// Threads for the forward pass and the scoring (libllama uses as many).
    #[arg(short, long, default_value_t = default_threads())]
    threads: usize,
    #[arg(long, help = bench_help(Setting::Temperature, Some(TEMPERATURE_ABOUT)))]
    temperature: Option<f32>,
    #[arg(long, help = bench_help(Setting::TopP, None))]
    top_p: Option<f32>,
    #[arg(long, value_name = "K", help = bench_help(Setting::TopK, None))]
    top_k: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    decoding: DecodingArgs,
    /// libllama forward passes to time, spread evenly over the generation.
    #[arg(long, default_value_t = 4)]
    llama_runs: usize,
    /// Skip the libllama comparison.
    #[arg(long)]
    no_llama: bool,
    /// Stop after this many forward passes (a partial run for large models: the seconds per
    /// pass stay meaningful, the tokens per second then cover only the passes run).
    #[arg(long, value_name = "N")]
    passes: Option<usize>,
    /// Where to run (cpu, cuda, cuda:N, auto, ggml-cpu; see `unmask generate --help`). On a GPU,
    /// libllama offloads every layer to it too.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Print one JSON object with every number instead of text, with every setting's value and
    /// source ("settings") and the model file's ignored values ("ignored_settings").
    #[arg(long)]
    json: bool,
}

/// The benchmark's own settings, over the model file's: a fixed length and step count, and greedy
/// sampling without filters (synthetic models have nearly flat distributions, which make nucleus
/// sampling unrepresentatively expensive).
pub fn bench_settings() -> Layer {
    Layer {
        max_new_tokens: Some(256),
        steps: Some(Steps::AtMost(64)),
        temperature: Some(0.0),
        top_p: Some(None),
        top_k: Some(None),
        ..Layer::default()
    }
}

/// The source name of [`bench_settings`] in reports.
const BENCH: Source = Source::Overlay("bench");

const BENCH_PRECEDENCE: &str = "Settings: a flag given wins; otherwise the benchmark's own \
settings (--gen, --steps, --temperature, --top-p, --top-k: a fixed workload); otherwise the model \
file's value (unmask.generation.*) where the setting has one and it is valid; otherwise the \
built-in default. Built-in < model file < benchmark < flags. A stored value out of range is \
ignored with a warning naming its key. --json reports every setting's value and source under \
\"settings\".";

const GEN_ABOUT: &str = "New tokens (canvas length after the prompt)";
const STEPS_ABOUT: &str =
    "Denoising steps (exact decoding: forward passes; see --threshold for the fast modes)";
const TEMPERATURE_ABOUT: &str = "Sampling temperature; 0 takes the most likely token (greedy by \
    default: synthetic models have nearly flat distributions, which make sampling \
    unrepresentatively expensive)";

/// A flag's help line under the benchmark's settings: `about` (or the setting's own) and the
/// default.
fn bench_help(setting: Setting, about: Option<&str>) -> String {
    format!(
        "{} {}",
        about.unwrap_or(setting.about()),
        setting.default_help(Some(&bench_settings()))
    )
}

pub const BENCH_TEXT: &str = "def quicksort(items):\n    \"\"\"Sort a list of numbers in ascending order using quicksort and return a new list.\"\"\"\n    # Write the body of this function. Pick the middle element as the pivot, partition, recurse.\n";

impl BenchArgs {
    /// The settings given on the command line.
    fn flags(&self) -> Layer {
        Layer {
            max_new_tokens: self.gen,
            steps: self.steps.map(Steps::Exactly),
            temperature: self.temperature,
            top_p: self.top_p.map(Layer::top_p_value),
            top_k: self.top_k.map(Layer::top_k_value),
            ..self.sampling.layer(&self.decoding)
        }
    }
}

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
    let load_start = Instant::now();
    let model_path = args.model.path()?;
    let (model, placement) = load_model(&model_path, &args.device)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let model = Arc::new(model);
    let gpu = matches!(&placement, Placement::Device(d) if d.kind() == DeviceKind::Gpu);
    let file_mib = std::fs::metadata(&model_path)?.len() as f64 / (1u64 << 20) as f64;
    let mut prompt = model.encode(BENCH_TEXT)?;
    while prompt.len() < args.prompt_tokens {
        prompt.extend_from_within(..prompt.len().min(args.prompt_tokens - prompt.len()));
    }
    prompt.truncate(args.prompt_tokens.max(1));
    // The tokenizer built for encoding is gone; give its memory back before measuring.
    unmask_kernels::heap::release_free_memory();
    let file = model_file_settings(&model);
    let settings = Settings::builtin()
        .with(Source::ModelFile, &file.layer)
        .with(BENCH, &bench_settings())
        .with(Source::Flag, &args.flags());
    let params = settings.params();
    params
        .validate()
        .map_err(|e| settings_error(e, &settings))?;
    let gen = params.max_new_tokens;
    let mut generator = Generator::new(model.clone(), args.threads)?;
    // Build the graphs once outside the timing, as a long-running user would have them.
    let compute_mib =
        generator.forward_for(prompt.len() + gen)?.compute_bytes() as f64 / (1u64 << 20) as f64;
    let runs = if args.no_llama {
        0
    } else {
        args.llama_runs.max(1)
    };
    let mut llama: Option<LlamaForward> = None;
    let mut llama_error: Option<anyhow::Error> = None;
    let mut rss = f64::NAN;
    let mut in_callback = 0f64;
    let mut forward_times = Vec::new();
    let mut scoring_times = Vec::new();
    let prompt_len = prompt.len();
    let result = generator.generate(&prompt, &params, &mut |event| {
        let start = Instant::now();
        if event.step == 0 {
            rss = peak_rss_mib();
        }
        // Spread over the passes that will run (fewer with --passes).
        let horizon = args
            .passes
            .map_or(event.total_steps, |n| n.min(event.total_steps));
        let every = (horizon / runs.max(1)).max(1);
        if runs > 0 && event.step % every == every / 2 && forward_times.len() < runs {
            match time_llama(
                &args,
                &model_path,
                gpu,
                &mut llama,
                event.canvas,
                prompt_len,
            ) {
                Ok((forward, scoring)) => {
                    forward_times.push(forward);
                    scoring_times.push(scoring);
                }
                Err(e) => {
                    llama_error = Some(e);
                    return Control::Cancel;
                }
            }
        }
        in_callback += start.elapsed().as_secs_f64();
        if args.passes.is_some_and(|n| event.step + 1 >= n) {
            return Control::Cancel;
        }
        Control::Continue
    });
    let result = result.map_err(|e| settings_error(e, &settings))?;
    if let Some(e) = llama_error {
        return Err(e.context("timing libllama"));
    }
    let unmask_seconds = result.seconds - in_callback;
    // Tokens committed by the passes run (all new tokens for a whole run).
    let committed = result.commits.iter().map(Vec::len).sum::<usize>() as f64;
    let per_step = unmask_seconds / result.steps as f64;
    let passes = result.forward_passes.max(1) as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let llama_forward = median(&mut forward_times);
    let llama_scoring = median(&mut scoring_times);
    // The whole job: libllama's forwards alone for exact decoding at the requested steps (one
    // forward per step, as llama.cpp's diffusion example runs), against this run.
    let llama_exact_run = llama_forward.map(|f| f * params.steps as f64);
    let forward = generator.forward_for(prompt.len() + gen)?;
    let (scores_on_device, attention) = (forward.scores_on_device(), forward.attention().name());
    let report = serde_json::json!({
        "model": model_path.display().to_string(),
        "file_mib": file_mib,
        "device": placement.describe(),
        "threads": args.threads,
        "load_seconds": load_seconds,
        "prompt_tokens": prompt.len(),
        "new_tokens": gen,
        "steps": params.steps,
        "alg": format!("{:?}", params.alg),
        "temperature": params.temperature,
        "forward_passes": result.forward_passes,
        "seconds_per_step": per_step,
        "tokens_per_second": committed / unmask_seconds,
        "partial": result.cancelled,
        "seconds": unmask_seconds,
        "cache": params.cache.name(),
        "threshold": params.threshold,
        "block_length": params.block_length.or((params.cache != unmask_runtime::CacheMode::None).then(|| params.cache_block())),
        "tokens_per_forward": committed / passes,
        "rows_per_pass_mean": result.rows_per_pass.iter().sum::<usize>() as f64 / passes,
        "refresh_passes": result.timings.refresh_passes,
        "seconds_per_refresh": per_pass(result.timings.refresh, result.timings.refresh_passes),
        "cached_passes": result.timings.cached_passes,
        "seconds_per_cached_pass": per_pass(result.timings.cached, result.timings.cached_passes),
        "cache_mib": result.cache_bytes as f64 / (1u64 << 20) as f64,
        "layers_seconds_per_pass": result.timings.body / passes,
        "head_and_scoring_seconds_per_pass": result.timings.head_and_scoring / passes,
        "bytes_to_host_per_step": result.bytes_to_host as f64 / result.steps as f64,
        "scores_on_device": scores_on_device,
        "attention": attention,
        "peak_rss_mib": rss,
        "compute_mib": compute_mib,
        "llama_forward_seconds": llama_forward,
        "llama_host_scoring_seconds": llama_scoring,
        "llama_logits_bytes": llama_forward.map(|_| (result.canvas.len() * model.n_vocab * 4) as u64),
        "ratio_llama_forward_over_unmask_step": llama_forward.map(|f| f / per_step),
        "ratio_llama_forward_and_scoring_over_unmask_step": llama_forward.zip(llama_scoring).map(|(f, s)| (f + s) / per_step),
        "llama_exact_run_seconds": llama_exact_run,
        "ratio_llama_exact_run_over_unmask_run": llama_exact_run.map(|r| r / unmask_seconds),
        "settings": settings.report(),
        "ignored_settings": file.ignored.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "model: {} ({file_mib:.1} MiB) on {}, threads {}",
        model_path.display(),
        placement.describe(),
        args.threads
    );
    println!(
        "canvas: {} prompt + {} new tokens, {} steps, alg {:?}, temperature {}",
        prompt.len(),
        gen,
        params.steps,
        params.alg,
        params.temperature
    );
    println!(
        "unmask: {:.3} s/step ({} forward passes), {:.2} tokens/s, {:.2} s total",
        per_step,
        result.forward_passes,
        committed / unmask_seconds,
        unmask_seconds
    );
    if params.is_fast() {
        println!(
            "unmask: cache {}, threshold {:?}, {:.2} tokens per forward; {} refresh passes of {:.3} s, {} cached passes of {:.3} s; cache {:.1} MiB",
            params.cache.name(),
            params.threshold,
            committed / passes,
            result.timings.refresh_passes,
            per_pass(result.timings.refresh, result.timings.refresh_passes).unwrap_or(0.0),
            result.timings.cached_passes,
            per_pass(result.timings.cached, result.timings.cached_passes).unwrap_or(0.0),
            result.cache_bytes as f64 / (1u64 << 20) as f64
        );
    }
    println!(
        "unmask: per step {:.3} s in the layers, {:.3} s in output projection + scoring ({} forward passes)",
        result.timings.body / passes,
        result.timings.head_and_scoring / passes,
        result.forward_passes
    );
    if !matches!(placement, Placement::Cpu) {
        println!(
            "unmask: {:.0} bytes copied device-to-host per step (scoring on the device: {}; attention: {})",
            result.bytes_to_host as f64 / result.steps as f64,
            scores_on_device, attention
        );
    }
    println!(
        "unmask: peak RSS {rss:.1} MiB (file {file_mib:.1} MiB + compute buffers {compute_mib:.1} MiB = {:.1} MiB)",
        file_mib + compute_mib
    );
    let (Some(llama_forward), Some(llama_scoring)) = (llama_forward, llama_scoring) else {
        return Ok(());
    };
    println!(
        "libllama: forward {:.3} s over the same {} tokens (logits for every position; median of {}, interleaved with unmask's steps), host copy + scoring of all masked rows {:.3} s",
        llama_forward,
        result.canvas.len(),
        forward_times.len(),
        llama_scoring
    );
    println!(
        "ratio: libllama forward alone / unmask whole step = {:.2}x; (forward + scoring) / unmask step = {:.2}x",
        llama_forward / per_step,
        (llama_forward + llama_scoring) / per_step
    );
    if let (true, Some(exact_run)) = (params.is_fast(), llama_exact_run) {
        println!(
            "ratio: libllama's forwards alone for exact decoding at {} steps ({exact_run:.2} s) / this run ({unmask_seconds:.2} s) = {:.2}x",
            params.steps,
            exact_run / unmask_seconds
        );
    }
    Ok(())
}

/// Seconds per pass, when any ran.
fn per_pass(seconds: f64, passes: usize) -> Option<f64> {
    (passes > 0).then(|| seconds / passes as f64)
}

/// One libllama forward pass over `canvas` (loading libllama on first use, with a warm-up pass),
/// then what the diffusion example does on the host: copy every masked row's logits and score it
/// (here: the generated part of the canvas, all of it masked at the first step).
fn time_llama(
    args: &BenchArgs,
    model_path: &std::path::Path,
    gpu: bool,
    llama: &mut Option<LlamaForward>,
    canvas: &[u32],
    prompt_len: usize,
) -> Result<(f64, f64)> {
    let canvas: Vec<i32> = canvas.iter().map(|&t| t as i32).collect();
    if llama.is_none() {
        let mut loaded = LlamaForward::with_gpu(model_path, canvas.len(), args.threads, gpu)?;
        loaded.logits(&canvas)?; // warm-up
        *llama = Some(loaded);
    }
    let llama = llama.as_mut().expect("loaded above");
    let n_vocab = llama.n_vocab();
    let start = Instant::now();
    let logits = llama.logits(&canvas)?;
    let forward = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut copy = vec![0f32; n_vocab];
    let mut checksum = 0f32;
    for row in prompt_len - 1..canvas.len() - 1 {
        copy.copy_from_slice(&logits[row * n_vocab..(row + 1) * n_vocab]);
        let max = copy.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = copy.iter().map(|&x| (x - max).exp()).sum();
        checksum += sum;
    }
    std::hint::black_box(checksum);
    Ok((forward, start.elapsed().as_secs_f64()))
}
