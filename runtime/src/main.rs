//! The `unmask` command line: offline generation with a DiffuCoder/Dream GGUF, and a benchmark.

mod cli_bench;
mod cli_chat;
mod cli_check;
mod cli_decoding;
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
    Devices(DevicesArgs),
    /// Compare a device (CUDA) with the CPU on one model file: logits of every position and
    /// greedy generations. Prints one JSON report; exit code 1 when they disagree.
    CheckDevice(cli_check::CheckArgs),
}

fn main() -> std::process::ExitCode {
    cli_errors::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => cli_generate::run(args),
        Command::Chat(args) => cli_chat::run(args),
        Command::Bench(args) => cli_bench::run(args),
        Command::Eval(args) => cli_eval::run(*args),
        Command::Devices(args) => list_devices(args),
        Command::CheckDevice(args) => cli_check::run(args),
    }
}

#[derive(clap::Args)]
struct DevicesArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

fn list_devices(args: DevicesArgs) -> anyhow::Result<()> {
    use unmask_kernels::device;
    let cuda = device::load_family("cuda");
    let cpu = unmask_kernels::cpu_code::cpu_code();
    let devices = device::devices();
    if args.json {
        let list: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                let (free, total) = d.memory();
                serde_json::json!({
                    "name": d.name(),
                    "kind": format!("{:?}", d.kind()),
                    "description": d.description(),
                    "registry": d.registry(),
                    "memory_free_bytes": free,
                    "memory_total_bytes": total,
                })
            })
            .collect();
        let report = serde_json::json!({
            "cuda_backend": cuda,
            "cpu_code": {
                "ggml_built": cpu.ggml_built,
                "machine": cpu.machine,
                "unused": cpu.unused,
                "q8_0_products": cpu.int8_gemm,
            },
            "devices": list,
        });
        println!("{report}");
        return Ok(());
    }
    println!("CUDA backend: {cuda}");
    for d in &devices {
        let (free, total) = d.memory();
        println!(
            "{:8} {:?} {} [{}], {:.1}/{:.1} GiB free",
            d.name(),
            d.kind(),
            d.description(),
            d.registry(),
            free as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        );
    }
    println!(
        "CPU code: ggml built for {}; q8_0 products: {}",
        cpu.ggml_built.join(" "),
        cpu.int8_gemm
    );
    println!("CPU offers: {}", cpu.machine.join(" "));
    if !cpu.unused.is_empty() {
        println!(
            "CPU offers but this build does not use: {}",
            cpu.unused.join(" ")
        );
    }
    Ok(())
}
