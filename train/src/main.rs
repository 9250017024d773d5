//! `unmask-train`: the coupled-GRPO training companion of unmask: `grpo`, `sft`, `reward`,
//! `grad` and `tokenizer`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use unmask_train::grad::{run_files, LossKind};
use unmask_train::reward::{score_batch_in, Score};
use unmask_train::run_config::{
    GrpoArgs, GrpoConfig, Norm, SandboxArgs, SftArgs, SftConfig, ThreadsArg, DEFAULT_REWARD_TIMEOUT,
};
use unmask_train::sandbox::{Sandbox, SandboxConfig};
use unmask_train::tasks::{load_tasks, Task};

#[derive(Parser)]
#[command(
    name = "unmask-train",
    version,
    about = "Coupled-GRPO training companion of unmask (DiffuCoder/Dream).",
    after_help = "`sft` trains with the masked-diffusion SFT objective; `reward` scores completions \
                  with the spec's code reward; `grad` computes a loss and its parameter gradients \
                  for fixed inputs; `grpo` trains with coupled-GRPO; `tokenizer` trains a \
                  byte-level BPE tokenizer on a corpus; `init` makes a fresh model to train."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Masked-diffusion SFT (docs/training.md §6): AdamW on ggml, cosine schedule, atomic
    /// checkpoints in --out (`checkpoint-N`, `latest`), `metrics.jsonl`; `--resume` continues.
    ///
    /// Settings come from defaults, then `--config FILE` (TOML, keys = flag names with `_`),
    /// then the flags.
    Sft(Box<SftArgs>),
    /// Coupled-GRPO (docs/training.md §1): rollouts with the current policy, rewards (`--reward
    /// code`: sandboxed tests; `--reward toy-even-ids`: fraction of even token ids, a toy
    /// verifiable reward for tests), group advantages, `mu` AdamW updates per round on coupled
    /// masks, KL to a reference policy synced every `--ref-sync-steps` updates. Writes
    /// `metrics.jsonl` and atomic checkpoints to --out; `--resume` continues.
    ///
    /// Settings come from defaults (the published run's), then `--config FILE` (TOML, keys =
    /// flag names with `_`), then the flags.
    Grpo(Box<GrpoArgs>),
    /// Score completions for tasks: one JSON line per completion with reward, format, pass_rate.
    ///
    /// TASKS is AceCode JSON lines ({"question", "test_cases"}). COMPLETIONS is JSON lines
    /// {"task": <0-based line index among the tasks, or the task's "id">, "completion": "<decoded
    /// text>"}. Generated code runs in a local sandbox (see the library's `sandbox` module).
    Reward {
        /// Tasks: AceCode JSON lines {"question", "test_cases"} [required].
        #[arg(long, value_name = "FILE")]
        tasks: PathBuf,
        /// Completions: JSON lines {"task", "completion"} [required].
        #[arg(long, value_name = "FILE")]
        completions: PathBuf,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Loss and the gradient of every parameter for fixed inputs (one mask seed), in the file
    /// format of tests/python/grpo_reference.py (see GRPO_REFERENCE.md): writes `loss`, the
    /// per-token tensors and `grad.<HF name>` as f32 safetensors.
    Grad {
        /// Hugging Face checkpoint folder of the policy (bf16/f16/f32 safetensors) [required].
        #[arg(long, value_name = "DIR")]
        hf: PathBuf,
        /// Input arrays (.safetensors), e.g. from `grpo_reference.py make-inputs` [required].
        #[arg(long, value_name = "FILE")]
        inputs: PathBuf,
        /// Output .safetensors file [required].
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The loss: coupled-grpo (docs/training.md §5) or sft (§6) [required].
        #[arg(long, value_enum)]
        loss: LossArg,
        /// SFT normalisation (--loss sft): by the batch's response tokens, or per row then
        /// averaged [default: tokens].
        #[arg(long, value_enum)]
        norm: Option<Norm>,
        #[command(flatten)]
        threads: ThreadsArg,
        /// Where to compute: cpu, cuda, cuda:N, auto or ggml-cpu (as for sft) [default: cpu].
        #[arg(long)]
        device: Option<String>,
    },
    /// Train a byte-level BPE tokenizer on a corpus and write its tokenizer.json: Qwen2.5's
    /// normalizer, pre-tokenizer and decoder, the learned vocabulary and merges, then Dream's
    /// special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, <|beginoftext|>, <|mask|>,
    /// <|dlm_pad|>) at the ids right after them. Prints a JSON report.
    Tokenizer {
        /// Files or folders of training text; folders are searched recursively for files with
        /// an --ext extension [required].
        #[arg(long, value_name = "PATH", required = true)]
        data: Vec<PathBuf>,
        /// File extensions taken from folders (repeat the flag for several).
        #[arg(long, value_name = "EXT", default_values_t = [String::from("py")])]
        ext: Vec<String>,
        /// Vocabulary size, special tokens included (512 to 262144); fewer when the corpus
        /// has fewer pairs worth merging.
        #[arg(long, value_name = "N", default_value_t = 6144)]
        vocab_size: usize,
        /// Pairs seen fewer times than this are not merged.
        #[arg(long, value_name = "N", default_value_t = 2)]
        min_frequency: u64,
        /// Where to write tokenizer.json (written to a temporary file, then renamed) [required].
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a code corpus in a new folder: the source files under --data (default: the Python
    /// standard library of --python), without test suites and caches, deduplicated, split by
    /// file into train/ and held-out/ by content hash, with manifest.json (paths, SHA-256,
    /// sizes, parts, token counts with --tokenizer). Prints a JSON report.
    Corpus {
        /// Folders to take files from [default: the standard library of --python].
        #[arg(long, value_name = "DIR")]
        data: Vec<PathBuf>,
        /// The interpreter whose standard library is the default corpus.
        #[arg(long, value_name = "PYTHON", default_value = "python3")]
        python: PathBuf,
        /// File extensions to take (repeat the flag for several).
        #[arg(long, value_name = "EXT", default_values_t = [String::from("py")])]
        ext: Vec<String>,
        /// Percentage of files held out for evaluation (0 to 50).
        #[arg(long, value_name = "P", default_value_t = 5)]
        held_out_percent: u32,
        /// tokenizer.json to count each file's tokens with (recorded in the manifest).
        #[arg(long, value_name = "FILE")]
        tokenizer: Option<PathBuf>,
        /// The folder to create (it must not exist) [required].
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Cut function-level SFT pairs from Python files: each function with a docstring becomes
    /// {"prompt": signature + docstring, "response": the rest of its body} (JSON lines, what
    /// `sft --data` reads). Python's parser does the cutting; the files are never run. Prints a
    /// JSON report.
    Pairs {
        /// Python files or folders (every .py file under them, in name order) [required].
        #[arg(long, value_name = "PATH", required = true)]
        data: Vec<PathBuf>,
        /// The interpreter whose parser cuts the functions.
        #[arg(long, value_name = "PYTHON", default_value = "python3")]
        python: PathBuf,
        /// Functions whose body past the docstring is longer are left out.
        #[arg(long, value_name = "N", default_value_t = 40)]
        max_body_lines: usize,
        /// The .jsonl file to write (written to a temporary file, then renamed) [required].
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a fresh model folder of a chosen shape (Hugging Face layout, weights initialised as
    /// transformers initialises Qwen2), for `sft` to train from scratch. Prints a JSON report.
    Init(Box<InitArgs>),
}

/// The flags of `unmask-train init`.
#[derive(clap::Args)]
struct InitArgs {
    /// tokenizer.json of the model (e.g. from `unmask-train tokenizer`); it must have <|mask|>
    /// [required].
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,
    /// The folder to create (it must not exist, or be empty) [required].
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Hidden size (a multiple of --heads, with an even head size).
    #[arg(long, value_name = "N", default_value_t = 256)]
    hidden: usize,
    /// MLP (SwiGLU) inner size.
    #[arg(long, value_name = "N", default_value_t = 768)]
    intermediate: usize,
    /// Transformer layers.
    #[arg(long, value_name = "N", default_value_t = 6)]
    layers: usize,
    /// Attention (query) heads.
    #[arg(long, value_name = "N", default_value_t = 4)]
    heads: usize,
    /// Key/value heads (grouped-query attention; --heads must be a multiple).
    #[arg(long, value_name = "N", default_value_t = 2)]
    kv_heads: usize,
    /// Embedding rows [default: the tokenizer's size rounded up to a multiple of 64].
    #[arg(long, value_name = "N")]
    vocab: Option<usize>,
    /// Longest context (RoPE's original length).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_position: usize,
    /// RoPE base.
    #[arg(long, value_name = "X", default_value_t = 1_000_000.0)]
    rope_theta: f64,
    /// Share the token embedding with the output projection.
    #[arg(long)]
    tie_embeddings: bool,
    /// Seed of the weight draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// dtype of model.safetensors: f32 or bf16.
    #[arg(long, value_parser = unmask_train::run_config::parse_dtype, default_value = "f32")]
    save_dtype: unmask_train::checkpoint::SaveDtype,
}

#[derive(Clone, Copy, ValueEnum)]
enum LossArg {
    /// The coupled-GRPO loss.
    CoupledGrpo,
    /// The masked-diffusion SFT loss.
    Sft,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TaskRef {
    Index(usize),
    Id(String),
}

#[derive(Deserialize)]
struct CompletionLine {
    task: TaskRef,
    completion: String,
}

fn load_completions(path: &Path, tasks: &[Task]) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c: CompletionLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a completion line", path.display(), i + 1))?;
        let idx = match &c.task {
            TaskRef::Index(k) if *k < tasks.len() => *k,
            TaskRef::Index(k) => bail!(
                "{}:{}: task index {k} out of range ({} tasks)",
                path.display(),
                i + 1,
                tasks.len()
            ),
            TaskRef::Id(id) => tasks
                .iter()
                .position(|t| t.id.as_deref() == Some(id))
                .with_context(|| format!("{}:{}: no task with id {id:?}", path.display(), i + 1))?,
        };
        out.push((idx, c.completion));
    }
    Ok(out)
}

/// Errors are printed here, as `error: ` and the chain of causes, with exit status 1: returned
/// from `main`, anyhow would print a stack trace whenever RUST_BACKTRACE is set, which is noise
/// for a wrong path or setting.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Every update frees and allocates the same graph memory again: keep it instead of having
    // the kernel map and zero fresh pages each time (unmask_kernels::heap).
    unmask_kernels::heap::keep_freed_memory();
    // Ctrl-C, SIGTERM or SIGHUP while a checkpoint is written remove its partial folder.
    if let Err(e) = unmask_kernels::temp_files::remove_on_signal() {
        eprintln!("warning: cannot watch for Ctrl-C ({e}); an interrupted checkpoint write may leave a .tmp-ckpt folder");
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    unmask_kernels::cpu_code::check_processor()?;
    match cli.cmd {
        Cmd::Sft(args) => {
            let cfg = SftConfig::resolve(&args)?;
            let throttle = std::time::Duration::from_millis(args.throttle_ms);
            let summary = unmask_train::sft::train(&cfg, args.run.resume, throttle)?;
            println!(
                "{}",
                serde_json::json!({
                    "resumed_from": summary.resumed_from,
                    "step": summary.final_step,
                    "checkpoint": summary.final_checkpoint,
                    "loss": summary.last_loss,
                })
            );
        }
        Cmd::Grpo(args) => {
            let cfg = GrpoConfig::resolve(&args)?;
            let summary = unmask_train::grpo::train(&cfg, args.run.resume)?;
            println!(
                "{}",
                serde_json::json!({
                    "resumed_from": summary.resumed_from,
                    "step": summary.final_step,
                    "checkpoint": summary.final_checkpoint,
                    "reward_mean": summary.last_reward_mean,
                })
            );
        }
        Cmd::Grad {
            hf,
            inputs,
            out,
            loss,
            norm,
            threads,
            device,
        } => {
            let kind = match loss {
                LossArg::CoupledGrpo => LossKind::CoupledGrpo,
                LossArg::Sft => LossKind::Sft {
                    per_row: norm.unwrap_or(SftConfig::default().norm) == Norm::Rows,
                },
            };
            let threads = unmask_train::run_config::threads_or_default(threads.threads);
            let result = run_files(&hf, &inputs, &out, kind, threads, device.as_deref())
                .with_context(|| format!("grad on {}", inputs.display()))?;
            println!("{}", serde_json::json!({ "loss": result.loss }));
        }
        Cmd::Tokenizer {
            data,
            ext,
            vocab_size,
            min_frequency,
            out,
        } => {
            use unmask_train::tokenizer_train::{collect_files, train_tokenizer, write_atomic};
            let files = collect_files(&data, &ext)?;
            if files.is_empty() {
                bail!("no files with extension {ext:?} under {data:?}");
            }
            eprintln!("tokenizer: training on {} files", files.len());
            let (json, report) = train_tokenizer(&files, vocab_size, min_frequency)?;
            for path in &report.skipped {
                eprintln!("warning: {} is not UTF-8 text; skipped", path.display());
            }
            write_atomic(&out, &json)?;
            println!(
                "{}",
                serde_json::json!({
                    "out": out,
                    "files": report.files,
                    "bytes": report.bytes,
                    "skipped": report.skipped.len(),
                    "vocab_size": report.vocab,
                    "merges": report.merges,
                    "first_special_id": report.first_special,
                })
            );
        }
        Cmd::Corpus {
            data,
            python,
            ext,
            held_out_percent,
            tokenizer,
            out,
        } => {
            use unmask_train::corpus::{build_corpus, python_stdlib, Part};
            let sources = if data.is_empty() {
                vec![python_stdlib(&python)?]
            } else {
                data
            };
            let tok = match &tokenizer {
                Some(path) => Some(
                    tokenizers::Tokenizer::from_file(path)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                ),
                None => None,
            };
            let count = |text: &str| -> unmask_train::Result<u64> {
                let tok = tok
                    .as_ref()
                    .ok_or_else(|| unmask_train::Error::InvalidArgument("no tokenizer".into()))?;
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| unmask_train::Error::InvalidArgument(format!("tokenizer: {e}")))?;
                Ok(enc.get_ids().len() as u64)
            };
            let counter: Option<unmask_train::corpus::TokenCounter<'_>> =
                tok.as_ref().map(|_| &count as _);
            let manifest = build_corpus(&sources, &ext, held_out_percent, counter, &out)?;
            let (train_files, train_bytes) = manifest.totals(Part::Train);
            let (held_files, held_bytes) = manifest.totals(Part::HeldOut);
            let tokens = |part| -> Option<u64> {
                tok.as_ref()?;
                Some(
                    manifest
                        .files
                        .iter()
                        .filter(|f| f.part == part)
                        .filter_map(|f| f.tokens)
                        .sum(),
                )
            };
            println!(
                "{}",
                serde_json::json!({
                    "out": out,
                    "sources": sources,
                    "train": {"files": train_files, "bytes": train_bytes, "tokens": tokens(Part::Train)},
                    "held_out": {"files": held_files, "bytes": held_bytes, "tokens": tokens(Part::HeldOut)},
                    "duplicates": manifest.duplicates,
                    "not_utf8": manifest.not_utf8,
                })
            );
        }
        Cmd::Pairs {
            data,
            python,
            max_body_lines,
            out,
        } => {
            let files: Vec<PathBuf> = unmask_train::sft::expand_folders(&data)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "py"))
                .collect();
            if files.is_empty() {
                bail!("no .py files under {data:?}");
            }
            let (pairs, unparsable) =
                unmask_train::function_pairs::extract_pairs(&files, &python, max_body_lines)?;
            let mut text = String::new();
            for p in &pairs {
                text.push_str(&serde_json::to_string(p)?);
                text.push('\n');
            }
            unmask_train::tokenizer_train::write_atomic(&out, &text)?;
            println!(
                "{}",
                serde_json::json!({
                    "out": out,
                    "files": files.len(),
                    "unparsable": unparsable,
                    "pairs": pairs.len(),
                })
            );
        }
        Cmd::Init(a) => {
            let tokenizer_json = std::fs::read_to_string(&a.tokenizer)
                .with_context(|| format!("{}", a.tokenizer.display()))?;
            let shape = unmask_train::init::ModelShape {
                hidden: a.hidden,
                intermediate: a.intermediate,
                layers: a.layers,
                heads: a.heads,
                kv_heads: a.kv_heads,
                vocab: a.vocab,
                max_position: a.max_position,
                rope_theta: a.rope_theta,
                tie_embeddings: a.tie_embeddings,
            };
            let report = unmask_train::init::init_model(
                &a.out,
                &shape,
                &tokenizer_json,
                a.seed,
                a.save_dtype,
            )?;
            println!(
                "{}",
                serde_json::json!({
                    "out": report.out,
                    "parameters": report.parameters,
                    "vocab_size": report.config.vocab_size,
                    "mask_token_id": report.config.mask_token_id,
                })
            );
        }
        Cmd::Reward {
            tasks,
            completions,
            sandbox,
        } => {
            let SandboxArgs {
                reward_jobs: jobs,
                reward_timeout,
                python,
            } = sandbox;
            let timeout = reward_timeout.unwrap_or(DEFAULT_REWARD_TIMEOUT);
            if !(timeout > 0.0 && timeout.is_finite()) {
                bail!("--reward-timeout must be positive");
            }
            let tasks = load_tasks(&tasks)?;
            let comps = load_completions(&completions, &tasks)?;
            let mut cfg = SandboxConfig {
                python,
                ..Default::default()
            };
            cfg.limits.wall = std::time::Duration::from_secs_f64(timeout);
            cfg.limits.cpu_seconds = timeout.ceil() as u64;
            let sandbox = Sandbox::new(cfg)?;
            eprintln!("sandbox: {}", sandbox.describe());
            let jobs = jobs.unwrap_or_else(unmask_kernels::backend::default_threads);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(jobs.max(1))
                .build()
                .context("thread pool")?;
            let items: Vec<(&Task, &str)> = comps
                .iter()
                .map(|(i, c)| (&tasks[*i], c.as_str()))
                .collect();
            let scores = score_batch_in(&pool, &sandbox, &items);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for (k, (s, (ti, _))) in scores.into_iter().zip(&comps).enumerate() {
                let s: Score = s.with_context(|| format!("completion {k}"))?;
                let line = serde_json::json!({
                    "completion": k,
                    "task": ti,
                    "reward": s.reward,
                    "format": s.format,
                    "pass_rate": s.pass_rate,
                    "passed": s.passed,
                    "run": s.run,
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}
