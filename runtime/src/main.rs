//! The `unmask` command line: offline generation with a DiffuCoder/Dream GGUF, and a benchmark.

mod cli_bench;
mod cli_chat;
mod cli_check;
mod cli_decoding;
mod cli_devices;
mod cli_errors;
mod cli_eval;
mod cli_generate;
mod cli_model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "unmask",
    version,
    about = "Run masked-diffusion code models (DiffuCoder, Dream) from GGUF files",
    long_about = "Run masked-diffusion code models (DiffuCoder, Dream) on this machine. The model \
starts from a canvas of <|mask|> tokens after your prompt and, over a number of denoising steps, \
commits the tokens it is most sure of, anywhere in the canvas.\n\nMake a GGUF with \
`unmask-quantize` (see README), then:\n  unmask generate -m model.gguf -p \"Write a function that \
reverses a string\"\n\nWithout -m, the commands that run a model use $UNMASK_MODEL, else the small \
Python model shipped in the repository (models/unmask-python-7m)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for a prompt.
    Generate(cli_generate::GenerateArgs),
    /// A conversation of several turns on the terminal (or from piped lines, one message per
    /// line): each answer is generated over the whole conversation so far.
    Chat(cli_chat::ChatArgs),
    /// Measure seconds per step, tokens per second and peak memory, and libllama's forward pass
    /// over the same canvas.
    Bench(cli_bench::BenchArgs),
    /// How well a model writes Python: on held-out function prompts (`unmask-train pairs`), the
    /// share of completions Python parses when spliced after the prompt and of exact first body
    /// lines, tokens/s, and with --text the masked-diffusion loss on held-out text.
    Eval(Box<cli_eval::EvalArgs>),
    /// List the devices unmask can run on (after loading GPU backend libraries) and the CPU
    /// code in use: the instruction sets the ggml build uses, those the processor offers, and
    /// what computes q8_0 products.
    Devices(cli_devices::DevicesArgs),
    /// Compare a device (CUDA) with the CPU on one model file: logits of every position and
    /// greedy generations. Prints one JSON report; exit code 1 when they disagree.
    CheckDevice(cli_check::CheckArgs),
}

fn main() -> std::process::ExitCode {
    cli_errors::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    unmask_kernels::cpu_code::check_processor()?;
    match cli.command {
        Command::Generate(args) => cli_generate::run(args),
        Command::Chat(args) => cli_chat::run(args),
        Command::Bench(args) => cli_bench::run(args),
        Command::Eval(args) => cli_eval::run(*args),
        Command::Devices(args) => cli_devices::run(args),
        Command::CheckDevice(args) => cli_check::run(args),
    }
}
