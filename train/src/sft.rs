//! `unmask-train sft`: masked-diffusion supervised fine-tuning (docs/training.md §6).
//!
//! Data: `.jsonl` files of `{"prompt", "response"}` pairs, `.json` arrays of them, or plain text
//! files, tokenized with the model folder's `tokenizer.json` (no special tokens added). The
//! format of each file, its counts and its truncated pairs are printed ([`DataReport`]). By
//! default (`chat`) a pair is wrapped in the chat template that `unmask generate` prompts with
//! (`unmask_dream::chat::instruct_prompt`), its response ending with `<|im_end|>`, so that the
//! trained model sees questions in the format it is asked them.
//! - A pair becomes `prompt ++ response (++ EOS when append_eos)`. Sequences longer than
//!   `max_len` are truncated, not packed: the prompt keeps its last `max_len - 1` tokens at most,
//!   then the response is cut to fit. A pair with an empty prompt uses the response's first token
//!   as the prompt.
//! - A text file is split into consecutive windows of `max_len` tokens; in each, the first token
//!   is the "prompt" and the rest the response.
//! - With `pack` (pretraining), the text files are instead one stream: each file's tokens, then
//!   EOS (with `append_eos`), file after file, cut into windows of exactly `max_len` tokens (a
//!   shorter tail is dropped unless it is the only window), token 0 of each the "prompt". Every
//!   sequence then has one length, and the loss is Dream's masked-diffusion loss on plain text.
//!
//! The graph needs a prompt of at least one token: logits are shifted (position `k - 1` predicts
//! token `k`), so position 0 is never predicted and cannot be a training target.
//!
//! Each update takes `grad_accum` micro-batches of `micro_batch` sequences from the data in a
//! seeded per-epoch order. For each sequence, `t ~ U(t_eps, 1)` and each response token is masked
//! with probability `t` (the prompt never is); the loss is `sum_masked CE / t` divided by the
//! micro-batch's response tokens (`norm = tokens`) or per row then averaged (`rows`). Gradients
//! (exact, ggml autodiff, `grad::sft_rows`) are averaged over micro-batches, clipped by global
//! norm, and AdamW (ggml) steps with the cosine schedule.
//!
//! Randomness: the draws of update `k`, micro-batch `j` come from a generator seeded by
//! `(seed, k, j)`, the data order of epoch `e` from one seeded by `(seed, e)`. The random state
//! of a run is therefore `(seed, step)` and the data cursor is the count of examples consumed,
//! which is what a checkpoint stores: a resumed run repeats an uninterrupted one bit for bit
//! (same thread count; ggml's CPU kernels split work deterministically).

use crate::batch::GraphCache;
use crate::checkpoint::{self, SaveDtype, TrainerState};
use crate::grad::{sft_rows, SftOptions, SftRow};
use crate::lr_schedule::CosineSchedule;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::optim::{accumulate, clip_grad_norm, AdamW, AdamWConfig};
use crate::policy::Policy;
use crate::run_config::{Norm, SftConfig};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::safetensors::Dtype;
use unmask_kernels::backend::Backend;
use unmask_runtime::rng::{splitmix64, Rng};

/// One training sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// At least 1 and below `tokens.len()`.
    pub prompt_len: usize,
}

#[derive(Deserialize)]
struct PairLine {
    prompt: String,
    response: String,
}

/// A pair as one sequence of at most `max_len` tokens (see the module documentation).
pub fn pair_example(prompt: &[u32], response: &[u32], max_len: usize) -> Option<Example> {
    let (prompt, response) = if prompt.is_empty() {
        response
            .split_first()
            .map(|(f, r)| (vec![*f], r.to_vec()))?
    } else {
        (prompt.to_vec(), response.to_vec())
    };
    if response.is_empty() || max_len < 2 {
        return None;
    }
    let keep_prompt = prompt.len().min(max_len - 1);
    let mut tokens = prompt[prompt.len() - keep_prompt..].to_vec();
    let room = max_len - keep_prompt;
    tokens.extend_from_slice(&response[..response.len().min(room)]);
    Some(Example {
        tokens,
        prompt_len: keep_prompt,
    })
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {e}", path.display()))
}

/// How a data file was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// One `{"prompt", "response"}` object per line.
    JsonLines,
    /// A JSON array of `{"prompt", "response"}` objects.
    JsonArray,
    /// Plain text, split into windows of `max_len` tokens.
    Text,
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::JsonLines => "JSON lines of prompt/response pairs",
            DataFormat::JsonArray => "a JSON array of prompt/response pairs",
            DataFormat::Text => "plain text",
        }
    }
}

/// What one data file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    pub format: DataFormat,
    /// Training sequences made from the file (pairs, or text windows).
    pub examples: usize,
    /// Pairs longer than `max_len` tokens, truncated (see [`pair_example`]).
    pub truncated: usize,
    /// The longest pair before truncation, in tokens (0 for text).
    pub longest: usize,
}

/// What the training data was, for the run's log ([`DataReport::lines`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataReport {
    pub files: Vec<FileReport>,
    /// Whether pairs were wrapped in the chat template.
    pub chat: bool,
    /// The chat template was asked for, but the tokenizer has no chat markers.
    pub chat_unavailable: bool,
    pub max_len: usize,
    /// With `pack`: the windows the text files were packed into.
    pub packed_windows: Option<usize>,
}

impl DataReport {
    /// The lines the trainer prints: per file its format and counts, the template used, and a
    /// warning when pairs were truncated.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.files {
            if f.format == DataFormat::Text && self.packed_windows.is_some() {
                continue; // counted together below
            }
            let what = match f.format {
                DataFormat::Text => {
                    format!("{} windows of up to {} tokens", f.examples, self.max_len)
                }
                _ => format!("{} pairs", f.examples),
            };
            out.push(format!(
                "data: {}: {}, {what}",
                f.path.display(),
                f.format.name()
            ));
            if f.truncated > 0 {
                out.push(format!(
                    "warning: {} of {} pairs in {} are longer than --max-len {} tokens (the \
                     longest has {}) and were truncated: the prompt keeps its end, the response \
                     its start",
                    f.truncated,
                    f.examples,
                    f.path.display(),
                    self.max_len,
                    f.longest
                ));
            }
        }
        if let Some(n) = self.packed_windows {
            let texts = self
                .files
                .iter()
                .filter(|f| f.format == DataFormat::Text)
                .count();
            out.push(format!(
                "data: {texts} text files packed into {n} windows of {} tokens",
                self.max_len
            ));
        }
        let has_pairs = self.files.iter().any(|f| f.format != DataFormat::Text);
        if has_pairs {
            out.push(if self.chat {
                "data: pairs use the chat template (the Instruct prompt `unmask generate` applies \
                 by default), responses end with <|im_end|>; --chat false trains them as plain text"
                    .into()
            } else if self.chat_unavailable {
                "data: the tokenizer has no chat markers (<|im_start|>, <|im_end|>): pairs are \
                 trained as plain text"
                    .into()
            } else {
                "data: pairs are trained as plain text (--chat false)".into()
            });
        }
        out
    }
}

/// How [`load_data`] reads the training data.
#[derive(Clone, Debug)]
pub struct DataOptions<'a> {
    pub tokenizer_json: &'a Path,
    pub max_len: usize,
    /// Appended to every response.
    pub eos: Option<u32>,
    /// Wrap pairs in the chat template when the tokenizer has the markers.
    pub chat: bool,
    /// Pack the text files into one stream of full windows (see the module documentation).
    pub pack: bool,
}

/// Reads and tokenizes the training data as plain pairs (no chat template).
pub fn load_examples(
    files: &[PathBuf],
    tokenizer_json: &Path,
    max_len: usize,
    eos: Option<u32>,
) -> Result<Vec<Example>> {
    let options = DataOptions {
        tokenizer_json,
        max_len,
        eos,
        chat: false,
        pack: false,
    };
    Ok(load_data(files, &options)?.0)
}

/// The format of a data file: `.jsonl` is JSON lines and `.json` a JSON array of pairs (anything
/// else in a `.json` file is refused); for other names the content decides: a JSON array of pair
/// objects, JSON lines whose first line is a pair object, else plain text.
fn detect_format(path: &Path, text: &str) -> Result<DataFormat> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let trimmed = text.trim_start();
    let array_of_pairs = || {
        trimmed.starts_with('[')
            && serde_json::from_str::<Vec<serde_json::Value>>(text).is_ok_and(|items| {
                items
                    .first()
                    .is_some_and(|v| v.get("prompt").is_some() && v.get("response").is_some())
            })
    };
    match ext {
        "jsonl" => Ok(DataFormat::JsonLines),
        "json" => {
            if array_of_pairs() {
                return Ok(DataFormat::JsonArray);
            }
            let found = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Array(a)) if a.is_empty() => "an empty array".to_string(),
                Ok(serde_json::Value::Array(_)) => {
                    "an array whose first item is not a {\"prompt\", \"response\"} object".into()
                }
                Ok(serde_json::Value::Object(_)) => "a JSON object".into(),
                Ok(_) => "a JSON scalar".into(),
                Err(e) => format!("invalid JSON ({e})"),
            };
            Err(Error::InvalidArgument(format!(
                "{}: a .json data file must be an array of {{\"prompt\", \"response\"}} objects \
                 (or use .jsonl, one object per line, or a text file); found {found}",
                path.display()
            )))
        }
        _ if array_of_pairs() => Ok(DataFormat::JsonArray),
        _ => {
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let pair_line = serde_json::from_str::<serde_json::Value>(first)
                .is_ok_and(|v| v.get("prompt").is_some() && v.get("response").is_some());
            Ok(if pair_line {
                DataFormat::JsonLines
            } else {
                DataFormat::Text
            })
        }
    }
}

/// `paths` with every folder replaced by the files under it (recursively, hidden entries
/// skipped, in name order).
pub fn expand_folders(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let io = |e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads and tokenizes the training data, and says what it was (see [`DataReport`]); folders
/// stand for the files under them ([`expand_folders`]).
pub fn load_data(files: &[PathBuf], o: &DataOptions<'_>) -> Result<(Vec<Example>, DataReport)> {
    let files = &expand_folders(files)?;
    let tok = tokenizers::Tokenizer::from_file(o.tokenizer_json)
        .map_err(|e| tokenizer_error(o.tokenizer_json, e))?;
    let has_markers =
        tok.token_to_id("<|im_start|>").is_some() && tok.token_to_id("<|im_end|>").is_some();
    let chat = o.chat && has_markers;
    let encode = |text: &str, path: &Path| -> Result<Vec<u32>> {
        Ok(tok
            .encode(text, false)
            .map_err(|e| tokenizer_error(path, e))?
            .get_ids()
            .to_vec())
    };
    let mut out = Vec::new();
    let mut report = DataReport {
        files: Vec::new(),
        chat,
        chat_unavailable: o.chat && !has_markers,
        max_len: o.max_len,
        packed_windows: None,
    };
    let mut stream: Vec<u32> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let format = detect_format(path, &text)?;
        let mut file = FileReport {
            path: path.clone(),
            format,
            examples: 0,
            truncated: 0,
            longest: 0,
        };
        let pairs: Vec<(usize, Result<PairLine, String>)> = match format {
            DataFormat::JsonLines => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| e.to_string())))
                .collect(),
            DataFormat::JsonArray => {
                let items: Vec<serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i + 1, serde_json::from_value(v).map_err(|e| e.to_string())))
                    .collect()
            }
            DataFormat::Text => Vec::new(),
        };
        // JSON lines are numbered by line, array items by position (`item N`).
        let at = |n: usize| match format {
            DataFormat::JsonArray => format!("item {n}"),
            _ => format!("line {n}"),
        };
        for (n, pair) in pairs {
            let pair = pair.map_err(|e| Error::Jsonl {
                path: path.clone(),
                line: n,
                msg: format!("{}: not a {{\"prompt\", \"response\"}} object: {e}", at(n)),
            })?;
            let (prompt_text, response_text) = if chat {
                (
                    unmask_dream::chat::instruct_prompt(&pair.prompt),
                    format!("{}<|im_end|>", pair.response),
                )
            } else {
                (pair.prompt, pair.response)
            };
            let prompt = encode(&prompt_text, path)?;
            let mut response = encode(&response_text, path)?;
            response.extend(o.eos);
            let total = prompt.len() + response.len();
            let ex = pair_example(&prompt, &response, o.max_len).ok_or_else(|| Error::Jsonl {
                path: path.clone(),
                line: n,
                msg: format!("{}: the pair has fewer than two tokens", at(n)),
            })?;
            file.longest = file.longest.max(total);
            if total > o.max_len {
                file.truncated += 1;
            }
            file.examples += 1;
            out.push(ex);
        }
        if format == DataFormat::Text && o.pack {
            stream.extend(encode(&text, path)?);
            stream.extend(o.eos);
        } else if format == DataFormat::Text {
            let ids = encode(&text, path)?;
            for window in ids.chunks(o.max_len) {
                if window.len() >= 2 {
                    file.examples += 1;
                    out.push(Example {
                        tokens: window.to_vec(),
                        prompt_len: 1,
                    });
                }
            }
        }
        report.files.push(file);
    }
    if o.pack && !stream.is_empty() {
        let windows: Vec<&[u32]> = stream.chunks(o.max_len).collect();
        let full = windows.iter().filter(|w| w.len() == o.max_len).count();
        let keep = if full == 0 { windows.len() } else { full };
        for w in windows.into_iter().take(keep).filter(|w| w.len() >= 2) {
            out.push(Example {
                tokens: w.to_vec(),
                prompt_len: 1,
            });
        }
        report.packed_windows = Some(keep);
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("the training data is empty".into()));
    }
    Ok((out, report))
}

const TAG_ORDER: u64 = 1;
const TAG_MASK: u64 = 2;
const TAG_EVAL: u64 = 3;

/// A generator for `(seed, tag, a, b)`: independent streams from one run seed.
pub fn derived_rng(seed: u64, tag: u64, a: u64, b: u64) -> Rng {
    let mut s = seed;
    let mut x = splitmix64(&mut s) ^ tag.wrapping_mul(0xA076_1D64_78BD_642F);
    let mut y = splitmix64(&mut x) ^ a;
    let mut z = splitmix64(&mut y) ^ b;
    Rng::new(splitmix64(&mut z))
}

/// The index of the `cursor`-th example drawn: epoch `cursor / n` in a seeded permutation
/// (`cache` keeps the current epoch's permutation between calls).
pub fn example_at(
    seed: u64,
    n: usize,
    cursor: u64,
    cache: &mut Option<(u64, Vec<usize>)>,
) -> usize {
    let epoch = cursor / n as u64;
    if cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
        let mut rng = derived_rng(seed, TAG_ORDER, epoch, 0);
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            perm.swap(i, j);
        }
        *cache = Some((epoch, perm));
    }
    cache
        .as_ref()
        .map_or(0, |(_, p)| p[(cursor % n as u64) as usize])
}

/// `t ~ U(t_eps, 1)` and the response mask of each example, from `rng`.
pub fn draw_masks(examples: &[&Example], t_eps: f64, rng: &mut Rng) -> Vec<(f64, Vec<bool>)> {
    examples
        .iter()
        .map(|ex| {
            let t = rng.uniform_in(t_eps, 1.0);
            let mask = (0..ex.tokens.len())
                .map(|j| j >= ex.prompt_len && rng.uniform() < t)
                .collect();
            (t, mask)
        })
        .collect()
}

fn mask_token(policy: &Policy) -> Result<u32> {
    policy
        .config
        .mask_token_id
        .ok_or_else(|| Error::InvalidArgument("the model has no mask token".into()))
}

/// Sequences per batch of [`eval_loss`].
const EVAL_BATCH: usize = 8;

/// The SFT loss of `examples` averaged over `draws` fixed mask draws (seeded by `seed`), without
/// gradients: a fixed evaluation set for comparing parameters.
pub fn eval_loss(
    policy: &Policy,
    examples: &[Example],
    seed: u64,
    draws: u64,
    t_eps: f64,
    backend: &mut Backend,
) -> Result<f64> {
    let mask = mask_token(policy)?;
    let refs: Vec<&Example> = examples.iter().collect();
    let longest = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(2);
    let mut cache = GraphCache::new(EVAL_BATCH, longest);
    let opts = SftOptions {
        per_row_norm: false,
        mask_token: mask,
        with_grads: false,
        all_lp: false,
    };
    let mut total = 0.0;
    for d in 0..draws {
        let mut rng = derived_rng(seed, TAG_EVAL, d, 0);
        let masks = draw_masks(&refs, t_eps, &mut rng);
        let rows: Vec<SftRow<'_>> = refs
            .iter()
            .zip(&masks)
            .map(|(ex, (t, m))| SftRow {
                tokens: &ex.tokens,
                prompt_len: ex.prompt_len,
                t: *t,
                mask: m,
            })
            .collect();
        total += sft_rows(policy, &rows, opts, &mut cache, backend)?.loss;
    }
    Ok(total / draws.max(1) as f64)
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Update number the run started from (0, or the resumed checkpoint's).
    pub resumed_from: u64,
    pub final_step: u64,
    pub final_checkpoint: PathBuf,
    pub last_loss: Option<f64>,
}

fn source_dtype(model: &Path) -> Result<SaveDtype> {
    let ckpt = HfCheckpoint::open(model)?;
    let first = ckpt.tensor_names().next().cloned();
    Ok(
        match first.and_then(|n| ckpt.find(&n).map(|(_, e)| e.dtype)) {
            Some(Dtype::F32) => SaveDtype::F32,
            _ => SaveDtype::Bf16,
        },
    )
}

/// Runs SFT as configured; with `resume`, continues from the latest complete checkpoint in
/// `out` (a fresh run refuses an `out` that already has checkpoints).
pub fn train(cfg: &SftConfig, resume: bool, throttle: Duration) -> Result<Summary> {
    cfg.validate()?;
    let model_dir = cfg.model.clone().unwrap_or_default();
    let out = cfg.out.clone().unwrap_or_default();
    let latest = checkpoint::prepare_out(&out, resume)?;
    let threads = crate::run_config::threads_or_default(cfg.threads);
    let mut backend = Backend::new(threads)?;
    let mut policy = Policy::load_hf(&model_dir)?;
    let mask = mask_token(&policy)?;
    let save_dtype = match cfg.save_dtype {
        Some(d) => d,
        None => source_dtype(&model_dir)?,
    };
    let eos = if cfg.append_eos {
        policy.config.eos_token_id
    } else {
        None
    };
    let tokenizer_json = model_dir.join("tokenizer.json");
    let (examples, data_report) = load_data(
        &cfg.data,
        &DataOptions {
            tokenizer_json: &tokenizer_json,
            max_len: cfg.max_len,
            eos,
            chat: cfg.chat,
            pack: cfg.pack,
        },
    )?;
    let adam_cfg = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(&policy.params, adam_cfg)?;
    let schedule = CosineSchedule::new(cfg.lr, cfg.min_lr_ratio, cfg.warmup(), cfg.steps)?;
    let mut seed = cfg.seed;
    let mut step = 0u64;
    let mut cursor = 0u64;
    if let Some((_, dir)) = latest.filter(|_| resume) {
        let state = checkpoint::load(&dir, &mut policy, &mut opt)?;
        if state.seed != cfg.seed {
            eprintln!(
                "resume: using the checkpoint's seed {} (not {})",
                state.seed, cfg.seed
            );
        }
        seed = state.seed;
        step = state.step;
        cursor = state.examples_seen;
    }
    let resumed_from = step;
    let config_json =
        serde_json::to_value(cfg).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut log = MetricsLog::open(&out, step, cfg.steps)?;
    for line in data_report.lines() {
        log.println(&line);
    }
    if resumed_from > 0 {
        log.println(&format!("resumed from update {resumed_from}"));
    }
    let save = |policy: &Policy, opt: &AdamW, step: u64, cursor: u64| {
        let state = TrainerState {
            step,
            seed,
            examples_seen: cursor,
            config: config_json.clone(),
        };
        checkpoint::save(&out, &model_dir, policy, opt, &state, save_dtype)
    };
    let mut order_cache = None;
    let mut last_loss = None;
    let mut final_checkpoint = out.join(checkpoint::checkpoint_name(step));
    while step < cfg.steps {
        let started = Instant::now();
        let mut grads = policy.zero_grads()?;
        let mut loss = 0.0;
        let (mut tokens, mut masked) = (0u64, 0u64);
        let scale = 1.0 / cfg.grad_accum as f64;
        // The graphs of this update (they hold the parameters, so they go before AdamW does).
        let mut cache = GraphCache::new(cfg.micro_batch, cfg.max_len);
        let opts = SftOptions {
            per_row_norm: cfg.norm == Norm::Rows,
            mask_token: mask,
            with_grads: true,
            all_lp: false,
        };
        for micro in 0..cfg.grad_accum {
            let batch: Vec<&Example> = (0..cfg.micro_batch)
                .map(|_| {
                    let i = example_at(seed, examples.len(), cursor, &mut order_cache);
                    cursor += 1;
                    &examples[i]
                })
                .collect();
            let mut rng = derived_rng(seed, TAG_MASK, step, micro as u64);
            let masks = draw_masks(&batch, cfg.t_eps, &mut rng);
            let rows: Vec<SftRow<'_>> = batch
                .iter()
                .zip(&masks)
                .map(|(ex, (t, m))| SftRow {
                    tokens: &ex.tokens,
                    prompt_len: ex.prompt_len,
                    t: *t,
                    mask: m,
                })
                .collect();
            let result = sft_rows(&policy, &rows, opts, &mut cache, &mut backend)?;
            loss += result.loss * scale;
            masked += result.masked as u64;
            tokens += batch.iter().map(|e| e.tokens.len() as u64).sum::<u64>();
            accumulate(&mut grads, &result.grads, scale as f32)?;
        }
        drop(cache);
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let lr = schedule.lr_at(step);
        opt.step(&mut policy, &grads, lr, &mut backend)?;
        step += 1;
        let seconds = started.elapsed().as_secs_f64();
        log.log(&StepMetrics {
            step,
            loss,
            lr,
            grad_norm,
            tokens,
            masked,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            seconds,
        })?;
        last_loss = Some(loss);
        let every = cfg.save_interval();
        if step == cfg.steps || (every > 0 && step.is_multiple_of(every)) {
            final_checkpoint = save(&policy, &opt, step, cursor)?;
            log.println(&format!("saved {}", final_checkpoint.display()));
            for old in checkpoint::prune(&out, cfg.keep)? {
                log.println(&format!("removed {} (--keep {})", old.display(), cfg.keep));
            }
        }
        if !throttle.is_zero() {
            std::thread::sleep(throttle);
        }
    }
    log.finish();
    Ok(Summary {
        resumed_from,
        final_step: step,
        final_checkpoint,
        last_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_truncated_keeping_the_prompt_end() {
        let ex = pair_example(&[1, 2, 3], &[4, 5, 6], 5).unwrap();
        assert_eq!(ex.tokens, vec![1, 2, 3, 4, 5]);
        assert_eq!(ex.prompt_len, 3);
        let ex = pair_example(&[1, 2, 3, 4, 5, 6], &[7, 8], 4).unwrap();
        assert_eq!(ex.tokens, vec![4, 5, 6, 7]);
        assert_eq!(ex.prompt_len, 3);
        let ex = pair_example(&[], &[7, 8, 9], 8).unwrap();
        assert_eq!((ex.tokens, ex.prompt_len), (vec![7, 8, 9], 1));
        assert!(pair_example(&[], &[7], 8).is_none());
        assert!(pair_example(&[1], &[], 8).is_none());
    }

    #[test]
    fn data_order_is_a_seeded_permutation_per_epoch() {
        let mut cache = None;
        let n = 7;
        let order: Vec<usize> = (0..14).map(|c| example_at(5, n, c, &mut cache)).collect();
        let mut first: Vec<usize> = order[..7].to_vec();
        first.sort();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
        let mut fresh = None;
        assert_eq!(
            example_at(5, n, 9, &mut fresh),
            order[9],
            "cursor fixes the position"
        );
    }

    #[test]
    fn masks_never_touch_the_prompt() {
        let ex = Example {
            tokens: (0..50).collect(),
            prompt_len: 10,
        };
        let mut rng = Rng::new(1);
        for (t, m) in draw_masks(&[&ex; 20], 0.001, &mut rng) {
            assert!((0.001..1.0).contains(&t));
            assert!(m[..10].iter().all(|&x| !x));
        }
    }
}
