//! The `unmask` command line: offline generation with a DiffuCoder/Dream GGUF, and a benchmark.

mod cli_bench;
mod cli_generate;

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
reverses a string\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for a prompt.
    Generate(cli_generate::GenerateArgs),
    /// Measure seconds per step, tokens per second and peak memory, and libllama's forward pass
    /// over the same canvas.
    Bench(cli_bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => cli_generate::run(args),
        Command::Bench(args) => cli_bench::run(args),
    }
}
