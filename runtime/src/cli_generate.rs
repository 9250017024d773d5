//! `unmask generate`.

use crate::cli_decoding::{
    model_file_settings, settings_error, DecodingArgs, SamplingArgs, PRECEDENCE,
};
use anyhow::{bail, Context, Result};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use unmask_dream::chat::{answer_text, conversation_prompt, instruct_prompt, Message, Role};
use unmask_kernels::device::{self, DeviceRequest, Placement};
use unmask_runtime::order::{global_ar_ness, local_ar_ness};
use unmask_runtime::settings::{FileSettings, Layer, Setting, Settings, Source, Steps};
use unmask_runtime::{Control, GenerateParams, Generator, Model, StepEvent};

#[derive(clap::Args)]
#[command(after_help = PRECEDENCE)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: crate::cli_model::ModelArg,
    /// The prompt (with --chat, the user's message).
    #[arg(short, long, conflicts_with_all = ["file", "prompt_ids"])]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short, long, conflicts_with = "prompt_ids")]
    file: Option<PathBuf>,
    /// The prompt as comma-separated token ids, used as is (no chat template).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// The system prompt of the chat template. Default: "You are a helpful assistant."
    /// (Dream's). For a conversation of several turns, use `unmask chat`.
    #[arg(long, conflicts_with_all = ["no_chat", "prompt_ids"])]
    system: Option<String>,
    #[command(flatten)]
    pub flags: GenerationFlags,
    /// Use the prompt as is, without the Instruct chat template (on by default when the model's
    /// tokenizer has <|im_start|>).
    #[arg(long)]
    no_chat: bool,
    /// Show the canvas filling in, live, on the terminal.
    #[arg(long)]
    visual: bool,
    /// Report the decoding order's AR-ness (docs/model.md §6).
    #[arg(long)]
    order: bool,
    /// Print one JSON object instead of text, with every setting's value and source
    /// ("settings") and the model file's ignored values ("ignored_settings").
    #[arg(long)]
    json: bool,
    /// No progress bar (it is shown on a terminal only, never when stderr is piped).
    #[arg(short, long)]
    quiet: bool,
}

/// The flags of a generation's settings, device and threads: shared by `generate` and `chat`.
#[derive(clap::Args)]
pub struct GenerationFlags {
    #[arg(long, value_name = "N", help = Setting::MaxNewTokens.help(None))]
    max_new_tokens: Option<usize>,
    #[arg(long, value_name = "N", help = Setting::Steps.help(None))]
    steps: Option<usize>,
    #[arg(long, help = Setting::Temperature.help(None))]
    temperature: Option<f32>,
    #[arg(long, help = Setting::TopP.help(None))]
    top_p: Option<f32>,
    #[arg(long, value_name = "K", help = Setting::TopK.help(None))]
    top_k: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    decoding: DecodingArgs,
    /// Threads for the forward pass and the scoring. Default: the physical cores (more threads
    /// than free cores make every pass much slower).
    #[arg(short, long, default_value_t = default_threads())]
    pub threads: usize,
    /// Where to run: cpu, cuda (cuda:N for the N-th GPU), or auto (CUDA when a CUDA backend
    /// library and a GPU are present, else the CPU). ggml-cpu runs the GPU code path on the CPU.
    /// The CUDA backend (libggml-cuda.so) is looked for in $UNMASK_BACKEND_DIR, next to this
    /// program and in ../lib/unmask.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
}

pub use unmask_kernels::backend::default_threads;

/// The settings of a run: where each came from, what the file stored, and the parameters.
pub struct Resolved {
    pub file: FileSettings,
    pub settings: Settings,
    pub params: GenerateParams,
}

impl GenerationFlags {
    /// The settings given on the command line (the flags not given are left to the layers
    /// below: the model file, then the built-in defaults).
    pub fn layer(&self) -> Layer {
        Layer {
            max_new_tokens: self.max_new_tokens,
            steps: self.steps.map(Steps::Exactly),
            temperature: self.temperature,
            top_p: self.top_p.map(Layer::top_p_value),
            top_k: self.top_k.map(Layer::top_k_value),
            ..self.sampling.layer(&self.decoding)
        }
    }

    /// The settings in effect on `model`: built-in < the model file's (each ignored stored value
    /// announced as a warning) < these flags, checked.
    pub fn resolve(&self, model: &Model) -> Result<Resolved> {
        let file = model_file_settings(model);
        let settings = Settings::builtin()
            .with(Source::ModelFile, &file.layer)
            .with(Source::Flag, &self.layer());
        let params = settings.params();
        params
            .validate()
            .map_err(|e| settings_error(e, &settings))?;
        Ok(Resolved {
            file,
            settings,
            params,
        })
    }

    /// Warns on stderr when `--threads` exceeds the machine's CPUs.
    pub fn warn_oversubscription(&self) {
        if let Some(warning) = unmask_kernels::backend::oversubscription_warning(self.threads) {
            eprintln!("warning: {warning}");
        }
    }
}

/// Resolves `--device` and loads the model there.
pub fn load_model(path: &std::path::Path, request: &DeviceRequest) -> Result<(Model, Placement)> {
    let placement = device::resolve(request)?;
    let model = Model::load_on(path, &placement)
        .with_context(|| format!("loading {} on {}", path.display(), placement.describe()))?;
    Ok((model, placement))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let model_path = args.model.path()?;
    let (model, placement) = load_model(&model_path, &args.flags.device)?;
    let model = Arc::new(model);
    let prompt_ids = match (&args.prompt_ids, &args.prompt, &args.file) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(text), _) => prompt_tokens(&model, text, &args)?,
        (None, None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            prompt_tokens(&model, &text, &args)?
        }
        (None, None, None) => bail!("give a prompt with -p TEXT, -f FILE or --prompt-ids"),
    };
    let Resolved {
        file,
        settings,
        params,
    } = args.flags.resolve(&model)?;
    // The tokenizer is not kept while the model computes (it is as large as a small model's
    // compute buffers); the live view needs it, so only then it stays.
    unmask_kernels::heap::release_free_memory();
    let visual_tokenizer = if args.visual && std::io::stderr().is_terminal() {
        Some(model.tokenizer()?)
    } else {
        None
    };
    let (mask, special, spec) = (
        model.special.mask,
        model.special.clone(),
        model.tokenizer_spec.clone(),
    );
    args.flags.warn_oversubscription();
    let mut generator = Generator::new(model, args.flags.threads)?;
    // A step progress bar with tokens/s and the time left, on a terminal only.
    let mut progress = StepProgress::on_terminal(
        params.max_new_tokens,
        args.quiet || visual_tokenizer.is_some(),
    );
    let mut on_step = |event: &StepEvent| {
        if let Some(tokenizer) = &visual_tokenizer {
            draw_canvas(tokenizer, mask, event);
        }
        if let Some(progress) = &mut progress {
            progress.update(event);
        }
        Control::Continue
    };
    let result = generator.generate(&prompt_ids, &params, &mut on_step);
    if let Some(progress) = &progress {
        progress.finish();
    }
    let result = result.map_err(|e| settings_error(e, &settings))?;
    // Release the weights' mapping before building the tokenizer again to decode.
    drop(generator);
    let tokenizer = match &visual_tokenizer {
        Some(t) => t.clone(),
        None => Arc::new(spec.build()?),
    };
    let text = answer_text(&tokenizer, &special, &result.tokens)?;
    let order: Vec<usize> = result.commits.iter().flatten().copied().collect();
    let tokens_per_second = result.tokens.len() as f64 / result.seconds.max(1e-9);
    if args.json {
        let mut json = serde_json::json!({
            "model": model_path.display().to_string(),
            "prompt_tokens": prompt_ids.len(),
            "tokens": result.tokens,
            "text": text,
            "steps": result.steps,
            "forward_passes": result.forward_passes,
            "seconds": result.seconds,
            "tokens_per_second": tokens_per_second,
            "commits": result.commits,
            "device": placement.describe(),
            "bytes_to_host": result.bytes_to_host,
            "cache": params.cache.name(),
            "threshold": params.threshold,
            "block_length": match params.cache {
                unmask_runtime::CacheMode::None => params.block_length,
                _ => Some(params.cache_block()),
            },
            "rows_per_pass": result.rows_per_pass,
            "tokens_per_forward": result.tokens.len() as f64 / result.forward_passes.max(1) as f64,
            "block_starts": result.block_starts,
            "forced": result.forced,
            "cache_bytes": result.cache_bytes,
            "settings": settings.report(),
            "ignored_settings": file.ignored.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        });
        if args.order {
            json["ar_ness"] = ar_ness_json(&order);
        }
        println!("{json}");
    } else {
        println!("{text}");
        eprintln!(
            "{} tokens, {} steps ({} forward passes, {:.2} tokens per forward) in {:.2} s: {:.1} tokens/s",
            result.tokens.len(),
            result.steps,
            result.forward_passes,
            result.tokens.len() as f64 / result.forward_passes.max(1) as f64,
            result.seconds,
            tokens_per_second
        );
        if args.order {
            eprintln!("decoding order: {}", ar_ness_json(&order));
        }
    }
    Ok(())
}

/// The step progress bar of a generation: committed tokens out of the canvas, the step,
/// tokens/s and the time left. Drawn on a terminal only, never when stderr is piped.
pub struct StepProgress {
    bar: indicatif::ProgressBar,
    committed: usize,
}

impl StepProgress {
    /// A bar for `tokens` new tokens, unless `quiet` or stderr is not a terminal.
    pub fn on_terminal(tokens: usize, quiet: bool) -> Option<Self> {
        if quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(tokens as u64);
        let style = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} tokens, {msg}, {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        Some(StepProgress { bar, committed: 0 })
    }

    /// Shows the step just completed.
    pub fn update(&mut self, event: &StepEvent) {
        self.committed += event.committed.len();
        self.bar.set_position(self.committed as u64);
        let rate = self.committed as f64 / self.bar.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "step {}/{}, {rate:.1} tokens/s",
            event.step + 1,
            event.total_steps
        ));
    }

    /// Removes the bar (the summary line follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn ar_ness_json(order: &[usize]) -> serde_json::Value {
    serde_json::json!({
        "local_1": local_ar_ness(order, 1),
        "local_2": local_ar_ness(order, 2),
        "global_1": global_ar_ness(order, 1),
        "global_2": global_ar_ness(order, 2),
    })
}

/// The prompt's ids: `text` in the Instruct chat template (with `--system`'s prompt) unless
/// `--no-chat` or the model has no chat markers.
fn prompt_tokens(model: &Model, text: &str, args: &GenerateArgs) -> Result<Vec<u32>> {
    let text = match &args.system {
        _ if args.no_chat => text.to_string(),
        Some(_) if !model.supports_chat() => bail!(
            "--system needs the chat template, and the model's tokenizer has no chat markers \
             (<|im_start|>, <|im_end|>)"
        ),
        Some(system) => conversation_prompt(
            &[
                Message::new(Role::System, system),
                Message::new(Role::User, text),
            ],
            true,
        )?,
        None if model.supports_chat() => instruct_prompt(text),
        None => text.to_string(),
    };
    Ok(model.encode(&text)?)
}

/// Redraws the generated part of the canvas: committed text, masks as `░`.
fn draw_canvas(tokenizer: &tokenizers::Tokenizer, mask: u32, event: &StepEvent) {
    let mut shown = String::new();
    let mut run: Vec<u32> = Vec::new();
    let flush = |run: &mut Vec<u32>, shown: &mut String| {
        if !run.is_empty() {
            shown.push_str(&tokenizer.decode(run, false).unwrap_or_default());
            run.clear();
        }
    };
    for &t in &event.canvas[event.prompt_len..] {
        if t == mask {
            flush(&mut run, &mut shown);
            shown.push('░');
        } else {
            run.push(t);
        }
    }
    flush(&mut run, &mut shown);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\x1b[2J\x1b[H step {}/{}\n{shown}\n",
        event.step + 1,
        event.total_steps
    );
    let _ = err.flush();
}
