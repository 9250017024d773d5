//! The `unmask-quantize` command line: convert, synthesize and inspect GGUF files.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use unmask_quantize::convert::{convert, convert_synth, ConvertOptions, ConvertReport};
use unmask_quantize::mix::{Target, TARGET_NAMES};
use unmask_quantize::synth::{Preset, SynthModel};

#[derive(Parser)]
#[command(
    name = "unmask-quantize",
    version,
    about = "Convert DiffuCoder/Dream checkpoints to GGUF, make synthetic models, inspect GGUF files",
    long_about = "Convert a Hugging Face DiffuCoder/Dream checkpoint folder (config.json, \
safetensors shards, tokenizer) into one GGUF file that unmask and llama.cpp's `dream` \
architecture can load. A GGUF input is requantized. Tensors are streamed one at a time, so memory \
stays near the size of the largest tensor.\n\nExamples:\n  unmask-quantize ./DiffuCoder-7B-Instruct \
diffucoder-q4_k_m.gguf --type q4_k_m\n  unmask-quantize synth --preset tiny --hf ./tiny-hf\n  \
unmask-quantize info diffucoder-q4_k_m.gguf",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Hugging Face checkpoint folder, or a GGUF file to requantize.
    #[arg(required = true)]
    input: Option<PathBuf>,
    /// Output GGUF file (written to a temporary name, renamed when complete).
    #[arg(required = true)]
    output: Option<PathBuf>,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(clap::Args)]
struct WriteArgs {
    /// Weight type: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, or the llama.cpp-style mixes
    /// q4_k_m and q5_k_m. Norms and biases always stay f32.
    #[arg(long = "type", short = 't', default_value = "q4_k_m", value_parser = parse_target)]
    target: Target,
    /// Overwrite an existing output file [default: refuse].
    #[arg(long)]
    force: bool,
    /// Accept an input GGUF whose weights are already quantized (e.g. q8_0 to q5_k): the
    /// rounding errors of both formats add up, so quality is below a conversion of the original
    /// weights [default: refuse].
    #[arg(long)]
    allow_requantize: bool,
    /// No progress bar [default: a progress bar on a terminal, none when stderr is not one].
    #[arg(long, short)]
    quiet: bool,
    /// Pause this long after each tensor, in milliseconds (for tests that interrupt a run).
    #[arg(long, hide = true, default_value_t = 0)]
    throttle_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Write a model of the Dream architecture with seeded random weights.
    Synth {
        /// Model shape: tiny (about 1.4 M parameters, 512-token vocabulary), tiny-wide (the tiny
        /// layers with the real 151936-token vocabulary and tokenizer), 0.5b (Qwen2.5-0.5B shape)
        /// or 7b (DiffuCoder-7B shape) [required].
        #[arg(long)]
        preset: Preset,
        /// Write a Hugging Face folder (bf16 safetensors shards, config, tokenizer) here
        /// [this or --gguf is required].
        #[arg(long, conflicts_with = "gguf", required_unless_present = "gguf")]
        hf: Option<PathBuf>,
        /// Write a GGUF file directly (with --type) [this or --hf is required].
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Seed of the random weights (the same seed gives the same model).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Largest safetensors shard, in MiB, for --hf.
        #[arg(long, default_value_t = 2048)]
        shard_mib: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Describe a GGUF file: metadata, tensors, types, bits per weight, size.
    Info {
        /// The GGUF file to describe.
        file: PathBuf,
        /// Only the metadata and totals, not every tensor [default: every tensor too].
        #[arg(long)]
        brief: bool,
    },
}

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse().map_err(|_| {
        format!(
            "unknown type `{s}`; expected one of {}",
            TARGET_NAMES.join(", ")
        )
    })
}

fn options(w: &WriteArgs) -> ConvertOptions {
    ConvertOptions {
        target: w.target,
        overwrite: w.force,
        progress: !w.quiet,
        allow_requantize: w.allow_requantize,
        throttle: std::time::Duration::from_millis(w.throttle_ms),
    }
}

fn print_report(output: &std::path::Path, r: &ConvertReport) {
    let types: Vec<String> = r.by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {}: {} tensors ({}), {} parameters, {:.1} MiB, {:.2} bits/weight, {:.1} s",
        output.display(),
        r.n_tensors,
        types.join(", "),
        r.n_parameters,
        r.bytes_written as f64 / (1u64 << 20) as f64,
        r.bytes_written as f64 * 8.0 / r.n_parameters.max(1) as f64,
        r.seconds
    );
    if !r.ignored.is_empty() {
        eprintln!(
            "ignored source tensors the Dream architecture does not use: {}",
            r.ignored.join(", ")
        );
    }
}

/// Errors are printed here, as `error: ` and the chain of causes, with exit status 1: returned
/// from `main`, anyhow would print a stack trace whenever RUST_BACKTRACE is set, which is noise
/// for a wrong path or flag.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Ctrl-C, SIGTERM or SIGHUP during a conversion remove its temporary output.
    if let Err(e) = unmask_kernels::temp_files::remove_on_signal() {
        eprintln!("warning: cannot watch for Ctrl-C ({e}); an interrupted conversion may leave its temporary file");
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
    match cli.command {
        Some(Command::Info { file, brief }) => {
            let text = unmask_quantize::info::describe(&file, !brief)
                .with_context(|| format!("reading {}", file.display()))?;
            print!("{text}");
        }
        Some(Command::Synth {
            preset,
            hf,
            gguf,
            seed,
            shard_mib,
            write,
        }) => {
            let model = SynthModel::new(preset, seed)?;
            if let Some(dir) = hf {
                if dir.join("config.json").exists() && !write.force {
                    anyhow::bail!(
                        "{} already holds a checkpoint (pass --force to overwrite)",
                        dir.display()
                    );
                }
                model
                    .write_hf(&dir, shard_mib << 20)
                    .with_context(|| format!("writing {}", dir.display()))?;
                eprintln!(
                    "wrote synthetic {preset:?} checkpoint (seed {seed}) to {}",
                    dir.display()
                );
            } else if let Some(out) = gguf {
                let report = convert_synth(&model, &out, &options(&write))
                    .with_context(|| format!("writing {}", out.display()))?;
                print_report(&out, &report);
            }
        }
        None => {
            // clap guarantees both positionals without a subcommand.
            let (Some(input), Some(output)) = (cli.input, cli.output) else {
                anyhow::bail!("usage: unmask-quantize <INPUT> <OUTPUT> --type <TYPE>");
            };
            let report = convert(&input, &output, &options(&cli.write)).with_context(|| {
                format!("converting {} to {}", input.display(), output.display())
            })?;
            print_report(&output, &report);
        }
    }
    Ok(())
}
