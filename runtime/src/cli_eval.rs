//! `unmask eval`: how well a model writes Python, on held-out function prompts (the pairs
//! `unmask-train pairs` cuts from held-out files: a function's signature and docstring as the
//! prompt, the rest of its body as the reference).
//!
//! For each pair the model completes the prompt (in the Instruct format when its tokenizer has
//! the chat markers, as `unmask generate` prompts), or a completion is taken from
//! `--completions`. Reported: the fraction of completions that Python's parser (`ast.parse`, run
//! by the given interpreter, never executing anything) accepts when spliced after the prompt;
//! the fraction whose first non-empty line equals the reference body's (whitespace at the ends
//! ignored); the fraction of empty answers (nothing but blanks); tokens per second of generation; and, with `--text`, the masked-diffusion loss on
//! held-out text (docs/training.md §6: windows of `--window` tokens, token 0 the prompt, each
//! other token masked with probability `t ~ U(0.001, 1)` from a fixed seed, `CE / t` over the
//! masked tokens, averaged over the window's tokens and then over windows), so the numbers of
//! two models or two quantization types are comparable.

use crate::cli_decoding::settings_error;
use crate::cli_generate::{load_model, GenerationFlags, Resolved};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use unmask_dream::chat::{answer_text, instruct_prompt};
use unmask_runtime::rng::Rng;
use unmask_runtime::{Control, Generator};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: crate::cli_model::ModelArg,
    /// Held-out function pairs: JSON lines {"prompt", "response"} (`unmask-train pairs` on the
    /// held-out part of a corpus).
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,
    /// Evaluate the first N pairs.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Score these completions instead of generating: JSON lines {"completion"}, one per pair,
    /// in the pairs' order.
    #[arg(long, value_name = "FILE")]
    pub completions: Option<PathBuf>,
    /// Write the completions scored to FILE, JSON lines {"completion"} in the pairs' order (the
    /// format --completions reads), so that two runs can be compared answer by answer.
    #[arg(long, value_name = "FILE")]
    pub save_completions: Option<PathBuf>,
    /// Held-out text files for the masked-diffusion loss (repeatable).
    #[arg(long, value_name = "FILE")]
    pub text: Vec<PathBuf>,
    /// Tokens per window of the held-out loss.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub window: usize,
    /// Windows of the held-out loss, at most.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub windows: usize,
    /// The interpreter whose parser checks the completions.
    #[arg(long, value_name = "PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: GenerationFlags,
}

#[derive(Deserialize)]
struct Pair {
    prompt: String,
    response: String,
}

/// One line of a completions file (--completions reads them, --save-completions writes them).
#[derive(Deserialize, serde::Serialize)]
struct Completion {
    completion: String,
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &PathBuf, what: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a {what} line", path.display(), i + 1))
        })
        .collect()
}

/// The first line of `text` with something on it, trimmed.
fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// Whether Python's parser accepts each program (one interpreter run for all).
fn parses(python: &PathBuf, programs: &[String]) -> Result<Vec<bool>> {
    const SCRIPT: &str = "import ast, json, sys\n\
        def ok(src):\n    try:\n        ast.parse(src)\n        return True\n    \
        except (SyntaxError, ValueError, RecursionError, MemoryError):\n        return False\n\
        print(json.dumps([ok(s) for s in json.load(sys.stdin)]))\n";
    let mut child = Command::new(python)
        .args(["-I", "-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    let input = serde_json::to_vec(programs)?;
    let mut stdin = child.stdin.take().context("the parser's stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{} could not check the completions: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let verdicts: Vec<bool> = serde_json::from_slice(&out.stdout).context("the parser's answer")?;
    if verdicts.len() != programs.len() {
        bail!(
            "the parser answered for {} of {} programs",
            verdicts.len(),
            programs.len()
        );
    }
    Ok(verdicts)
}

pub fn run(args: EvalArgs) -> Result<()> {
    let mut pairs: Vec<Pair> = read_lines(&args.pairs, "{\"prompt\", \"response\"}")?;
    pairs.truncate(args.limit);
    if pairs.is_empty() {
        bail!("{} has no pairs", args.pairs.display());
    }
    let model_path = args.model.path()?;
    let (model, _) = load_model(&model_path, &args.flags.device)?;
    let model = Arc::new(model);
    let Resolved {
        settings, params, ..
    } = args.flags.resolve(&model)?;
    let (special, spec, chat) = (
        model.special.clone(),
        model.tokenizer_spec.clone(),
        model.supports_chat(),
    );
    let tokenizer = Arc::new(spec.build()?);
    let mut generator = Generator::new(Arc::clone(&model), args.flags.threads)?;
    let (mut generated, mut seconds) = (0usize, 0.0f64);
    let completions: Vec<String> = match &args.completions {
        Some(path) => {
            let given: Vec<Completion> = read_lines(path, "{\"completion\"}")?;
            if given.len() < pairs.len() {
                bail!(
                    "{} has {} completions for {} pairs",
                    path.display(),
                    given.len(),
                    pairs.len()
                );
            }
            given
                .into_iter()
                .take(pairs.len())
                .map(|c| c.completion)
                .collect()
        }
        None => {
            let mut out = Vec::with_capacity(pairs.len());
            // A bar over the pairs, on a terminal only.
            let bar = if !args.json && std::io::stderr().is_terminal() {
                indicatif::ProgressBar::new(pairs.len() as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_message("completions");
            for (k, pair) in pairs.iter().enumerate() {
                let text = if chat {
                    instruct_prompt(&pair.prompt)
                } else {
                    pair.prompt.clone()
                };
                let ids = model.encode(&text)?;
                let result = generator
                    .generate(&ids, &params, &mut |_| Control::Continue)
                    .map_err(|e| settings_error(e, &settings))
                    .with_context(|| format!("pair {}", k + 1))?;
                generated += result.tokens.len();
                seconds += result.seconds;
                out.push(answer_text(&tokenizer, &special, &result.tokens)?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            out
        }
    };
    if let Some(path) = &args.save_completions {
        let mut lines = String::new();
        for c in &completions {
            let line = Completion {
                completion: c.clone(),
            };
            lines.push_str(&serde_json::to_string(&line)?);
            lines.push('\n');
        }
        unmask_kernels::temp_files::write_file(path, lines.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let programs: Vec<String> = pairs
        .iter()
        .zip(&completions)
        .map(|(p, c)| format!("{}{c}", p.prompt))
        .collect();
    let verdicts = parses(&args.python, &programs)?;
    let n = pairs.len() as f64;
    let empty: Vec<bool> = completions.iter().map(|c| c.trim().is_empty()).collect();
    let parse_rate = verdicts
        .iter()
        .zip(&empty)
        .filter(|(&v, &e)| v && !e)
        .count() as f64
        / n;
    let empty_rate = empty.iter().filter(|&&e| e).count() as f64 / n;
    let first_line_exact = pairs
        .iter()
        .zip(&completions)
        .filter(|(p, c)| !first_line(c).is_empty() && first_line(c) == first_line(&p.response))
        .count() as f64
        / n;
    let heldout_loss = if args.text.is_empty() {
        None
    } else {
        Some(heldout_loss(&mut generator, &model, &args)?)
    };
    let tokens_per_s = (generated > 0).then(|| generated as f64 / seconds.max(1e-9));
    let report = serde_json::json!({
        "model": model_path,
        "pairs": pairs.len(),
        "parse_rate": parse_rate,
        "first_line_exact": first_line_exact,
        "empty_rate": empty_rate,
        "heldout_loss": heldout_loss,
        "tokens_per_s": tokens_per_s,
        "generated": args.completions.is_none(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("| measure | value |\n|---|---:|");
        println!("| pairs | {} |", pairs.len());
        println!(
            "| parses when spliced (ast), not empty | {:.1}% |",
            100.0 * parse_rate
        );
        println!("| empty answers | {:.1}% |", 100.0 * empty_rate);
        println!(
            "| first body line exact | {:.1}% |",
            100.0 * first_line_exact
        );
        if let Some(l) = heldout_loss {
            println!("| held-out masked-diffusion loss | {l:.4} |");
        }
        if let Some(t) = tokens_per_s {
            println!("| tokens/s | {t:.2} |");
        }
    }
    Ok(())
}

/// The masked-diffusion loss on the held-out text (module documentation).
fn heldout_loss(
    generator: &mut Generator,
    model: &unmask_runtime::Model,
    args: &EvalArgs,
) -> Result<f64> {
    let mask = model.special.mask;
    let window = args.window.min(model.context_length()).max(2);
    let mut stream = Vec::new();
    for path in &args.text {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        stream.extend(model.encode(&text)?);
    }
    let windows: Vec<&[u32]> = stream
        .chunks(window)
        .filter(|w| w.len() == window)
        .take(args.windows)
        .collect();
    if windows.is_empty() {
        bail!("the --text files hold fewer than --window {window} tokens");
    }
    let mut total = 0.0;
    for (k, w) in windows.iter().enumerate() {
        let mut rng = Rng::new(0x5eed_0000 + k as u64);
        let t = rng.uniform_in(1e-3, 1.0);
        let masked: Vec<bool> = (0..w.len()).map(|j| j >= 1 && rng.uniform() < t).collect();
        let input: Vec<u32> = w
            .iter()
            .zip(&masked)
            .map(|(&tok, &m)| if m { mask } else { tok })
            .collect();
        let logits = generator.logits(&input)?;
        let vocab = logits.len() / w.len();
        let mut loss = 0.0;
        for j in (1..w.len()).filter(|&j| masked[j]) {
            let row = &logits[(j - 1) * vocab..j * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            loss += (lse - row[w[j] as usize] as f64) / t;
        }
        total += loss / (w.len() - 1) as f64;
    }
    Ok(total / windows.len() as f64)
}
