//! Settings of `unmask-train sft` and `unmask-train grpo`: defaults, a TOML file (`--config FILE`, keys = the long flag
//! names with `_` for `-`) and command-line flags, which override the file.

use crate::checkpoint::SaveDtype;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// SFT loss normalisation (see `grad::sft_rows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Divide by the micro-batch's response tokens.
    Tokens,
    /// Per row, then the mean over rows (LLaDA).
    Rows,
}

/// Every hyper-parameter of an SFT run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Hugging Face folder of the initial model (and its tokenizer).
    pub model: Option<PathBuf>,
    /// Training data: `.jsonl` files of {"prompt", "response"}, or plain text files; a folder
    /// stands for every file under it, in name order.
    pub data: Vec<PathBuf>,
    /// Output folder (checkpoints, `metrics.jsonl`).
    pub out: Option<PathBuf>,
    /// Optimizer updates.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per update (gradient accumulation).
    pub grad_accum: usize,
    /// Longest sequence (prompt + response) in tokens.
    pub max_len: usize,
    /// Append the model's EOS token to every JSONL response.
    pub append_eos: bool,
    /// Wrap prompt/response pairs in the model's chat template (the Instruct prompt that
    /// `unmask generate` applies by default), ending each response with `<|im_end|>`; pairs stay
    /// plain text when false or when the tokenizer has no chat markers. Text files are never
    /// templated.
    pub chat: bool,
    /// Pack the text files into one stream cut into full `max_len` windows, documents separated
    /// by EOS (pretraining); else each text file is windowed on its own.
    pub pack: bool,
    /// Fill every pair's response with `<|dlm_pad|>` to exactly this many tokens, leaving out
    /// longer ones (SFT for generation with a canvas of this many new tokens).
    pub response_len: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    /// Cosine floor as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Warm-up updates (default: steps / 100, rounded down).
    pub warmup_steps: Option<u64>,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Mask ratio t ~ U(t_eps, 1).
    pub t_eps: f64,
    pub norm: Norm,
    pub seed: u64,
    /// Save a checkpoint every N updates (0: only at the end; default: [`default_save_every`]).
    pub save_every: Option<u64>,
    /// Checkpoints kept in `out`: the newest N (0: all).
    pub keep: usize,
    /// dtype of the checkpoints' `model.safetensors` (default: the source model's).
    pub save_dtype: Option<SaveDtype>,
    /// GGML threads (default: the physical cores).
    pub threads: Option<usize>,
    /// Where to train: `cpu` (default), `cuda`, `cuda:N`, `auto` or `ggml-cpu`
    /// ([`crate::device`]).
    pub device: Option<String>,
}

/// The checkpoint interval when none is set: ten checkpoints over the run (at least one update
/// apart), so that an interrupted run loses at most a tenth of its work.
pub fn default_save_every(steps: u64) -> u64 {
    steps.div_ceil(10).max(1)
}

/// Checkpoints kept by default (`--keep`): the newest three.
pub const DEFAULT_KEEP: usize = 3;

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            model: None,
            data: Vec::new(),
            out: None,
            steps: 100,
            micro_batch: 4,
            grad_accum: 1,
            max_len: 512,
            append_eos: true,
            chat: true,
            pack: false,
            response_len: None,
            lr: 1e-5,
            min_lr_ratio: 0.1,
            warmup_steps: None,
            beta1: 0.9,
            beta2: 0.99,
            adam_eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 0.2,
            t_eps: 1e-3,
            norm: Norm::Tokens,
            seed: 0,
            save_every: None,
            keep: DEFAULT_KEEP,
            save_dtype: None,
            threads: None,
            device: None,
        }
    }
}

/// The flags that `sft` and `grpo` share: what to train, where, and how checkpoints are kept.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// TOML file with any of the settings (keys = flag names with `_`); flags win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue from the latest complete checkpoint in --out, with the settings it records
    /// (--model, --data/--tasks and the rest need not be repeated; flags given win).
    #[arg(long)]
    pub resume: bool,
    /// Hugging Face folder of the initial model (bf16/f16/f32 safetensors, config.json,
    /// tokenizer.json) [required, unless --resume].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Output folder: checkpoints (`checkpoint-N`, `latest`) and `metrics.jsonl` (required).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of every random draw (data order, masks, rollouts) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Save a checkpoint every N updates; 0: only at the end [default: a tenth of --steps,
    /// rounded up].
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Keep only the newest N checkpoints in --out; 0: keep all [default: 3].
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// dtype of each checkpoint's model.safetensors: bf16 or f32 [default: the source
    /// model's].
    #[arg(long, value_parser = parse_dtype)]
    pub save_dtype: Option<SaveDtype>,
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Where to train: cpu, cuda, cuda:N (a CUDA GPU through the loadable CUDA backend), auto
    /// (a CUDA GPU when one is usable, else the CPU) or ggml-cpu (the GPU code path on ggml's
    /// CPU device, for tests) [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
}

/// `--threads`, shared by every subcommand that computes (`sft`, `grpo`, `grad`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ThreadsArg {
    /// GGML threads [default: the physical cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Wall-clock limit per test case of the reward sandbox when none is given, in seconds.
pub const DEFAULT_REWARD_TIMEOUT: f64 = 5.0;

/// The reward sandbox's flags, shared by `grpo` and `reward`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SandboxArgs {
    /// Concurrent reward sandboxes [default: the physical cores].
    #[arg(long, visible_alias = "jobs", value_name = "N")]
    pub reward_jobs: Option<usize>,
    #[arg(
        long,
        visible_alias = "timeout",
        value_name = "SECONDS",
        help = format!(
            "Wall-clock timeout per test case, in seconds [default: {DEFAULT_REWARD_TIMEOUT}]"
        )
    )]
    pub reward_timeout: Option<f64>,
    /// Python interpreter of the sandbox [default: probed].
    #[arg(long, value_name = "FILE")]
    pub python: Option<PathBuf>,
}

/// The AdamW and learning-rate schedule flags that `sft` and `grpo` share.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OptimArgs {
    /// Peak learning rate, in (0, 0.01] [default: 1e-5 for sft, 1e-6 for grpo].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Floor of the cosine schedule, as a fraction of --lr, in [0, 1] [default: 0.1].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Linear warm-up, in updates [default: --steps / 100, rounded down].
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// AdamW beta1, in [0, 1) [default: 0.9].
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdamW beta2, in [0, 1) [default: 0.99].
    #[arg(long)]
    pub beta2: Option<f64>,
    /// AdamW epsilon, positive [default: 1e-8].
    #[arg(long)]
    pub adam_eps: Option<f64>,
    /// AdamW decoupled weight decay, in [0, 1] [default: 0.1].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip, positive [default: 0.2].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
}

/// The flags of `unmask-train sft`: every setting is optional and overrides the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SftArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Training data (repeatable): .jsonl lines or a .json array of {"prompt", "response"}, or
    /// plain text files; a folder stands for every file under it, in name order [required,
    /// unless --resume].
    #[arg(long, value_name = "PATH")]
    pub data: Vec<PathBuf>,
    /// Optimizer updates [default: 100].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per micro-batch [default: 4].
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Micro-batches per update (gradient accumulation) [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Longest sequence (prompt + response), in tokens; longer pairs are truncated and counted
    /// [default: 512].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Append the model's EOS token to every response: true or false [default: true].
    #[arg(long)]
    pub append_eos: Option<bool>,
    /// Wrap prompt/response pairs in the model's chat template, as `unmask generate` prompts
    /// by default: true or false [default: true].
    #[arg(long)]
    pub chat: Option<bool>,
    /// Pretraining data: pack the text files into one stream (each file then EOS) cut into
    /// windows of exactly --max-len tokens, instead of windowing each file alone: true or
    /// false [default: false].
    #[arg(long)]
    pub pack: Option<bool>,
    /// Fill every pair's response (its end markers included) with <|dlm_pad|> to exactly N
    /// tokens, and train on the pads too, so that the model sizes its answer in a canvas of N
    /// new tokens as Dream-Instruct does (generate with --max-new-tokens N); pairs whose
    /// response is longer are left out and counted [default: off].
    #[arg(long, value_name = "N")]
    pub response_len: Option<usize>,
    /// Mask ratio t ~ U(t_eps, 1), t_eps in (0, 1) [default: 0.001].
    #[arg(long)]
    pub t_eps: Option<f64>,
    /// Loss normalisation: by the micro-batch's response tokens, or per row then averaged
    /// [default: tokens].
    #[arg(long, value_enum)]
    pub norm: Option<Norm>,
    /// Sleep this long after every update, in milliseconds (for tests that interrupt a run).
    #[arg(long, hide = true, default_value_t = 0)]
    pub throttle_ms: u64,
}

/// The help line of a rollout flag: `about` and the published run's value
/// ([`crate::rollout::published_params`]).
fn rollout_help(about: &str, value: impl Fn(&unmask_runtime::GenerateParams) -> String) -> String {
    format!(
        "{about} [default: {}, the published run's]",
        value(&crate::rollout::published_params())
    )
}

/// `--save-dtype`: bf16 or f32 (any case).
pub fn parse_dtype(s: &str) -> std::result::Result<SaveDtype, String> {
    match s.to_ascii_lowercase().as_str() {
        "bf16" => Ok(SaveDtype::Bf16),
        "f32" => Ok(SaveDtype::F32),
        other => Err(format!("unknown dtype `{other}` (bf16, f32)")),
    }
}

impl SftConfig {
    /// Reads a TOML settings file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// Defaults (or, with `--resume`, the settings the latest checkpoint records), then the file
    /// of `--config`, then the flags.
    pub fn resolve(args: &SftArgs) -> Result<Self> {
        let mut c: Self = layered(&args.run)?;
        macro_rules! take {
            ($src:expr; $($f:ident),*) => { $( if let Some(v) = $src.$f.clone() { c.$f = v; } )* };
        }
        macro_rules! take_opt {
            ($src:expr; $($f:ident),*) => { $( if $src.$f.is_some() { c.$f = $src.$f.clone(); } )* };
        }
        take!(args; steps, micro_batch, grad_accum, max_len, append_eos, chat, pack, t_eps, norm);
        take!(args.optim; lr, min_lr_ratio, beta1, beta2, adam_eps, weight_decay, max_grad_norm);
        take!(args.run; seed, keep);
        take_opt!(args.optim; warmup_steps);
        take_opt!(args; response_len);
        take_opt!(args.run; model, out, save_every, save_dtype, device);
        take_opt!(args.run.threads; threads);
        if !args.data.is_empty() {
            c.data = args.data.clone();
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        check_device(self.device.as_deref())?;
        if self.model.is_none() {
            return bad("no model (--model or `model` in the config file)".into());
        }
        if self.out.is_none() {
            return bad("no output folder (--out or `out`)".into());
        }
        if self.data.is_empty() {
            return bad("no training data (--data or `data`)".into());
        }
        check_paths(&self.model, &self.out)?;
        if self.data.iter().any(|d| d.as_os_str().is_empty()) {
            return bad("--data is an empty path".into());
        }
        check_optimizer(&OptimSettings {
            lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
            beta1: self.beta1,
            beta2: self.beta2,
            adam_eps: self.adam_eps,
            weight_decay: self.weight_decay,
        })?;
        if self.steps == 0 || self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("steps, micro_batch and grad_accum must be positive".into());
        }
        if self.max_len < 2 {
            return bad("max_len must be at least 2".into());
        }
        if let Some(n) = self.response_len {
            if n == 0 || n >= self.max_len {
                return bad(format!(
                    "response_len {n} must be positive and below max_len {} (the prompt needs a \
                     token)",
                    self.max_len
                ));
            }
        }
        if !(self.t_eps > 0.0 && self.t_eps < 1.0) {
            return bad(format!("t_eps {} is not in (0, 1)", self.t_eps));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return bad("max_grad_norm must be positive".into());
        }
        if self.warmup_steps.is_some_and(|w| w > self.steps) {
            return bad("warmup_steps exceeds steps".into());
        }
        Ok(())
    }

    pub fn warmup(&self) -> u64 {
        self.warmup_steps.unwrap_or(self.steps / 100)
    }

    /// The checkpoint interval in updates (0: only at the end).
    pub fn save_interval(&self) -> u64 {
        self.save_every
            .unwrap_or_else(|| default_save_every(self.steps))
    }
}

/// The optimizer settings that [`check_optimizer`] checks.
pub struct OptimSettings {
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
}

/// Largest accepted peak learning rate: fine-tuning a pretrained model uses about 1e-6 to 1e-4,
/// and far above 1e-2 AdamW's steps (about `lr` per weight) destroy the weights in a few updates.
pub const MAX_LR: f64 = 1e-2;

/// Range checks of the AdamW settings shared by `sft` and `grpo`, with the reason in the message.
pub fn check_optimizer(o: &OptimSettings) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if !(o.lr > 0.0 && o.lr <= MAX_LR) {
        return bad(format!(
            "lr {} is outside (0, {MAX_LR}]: fine-tuning rates are about 1e-6 to 1e-4, and AdamW \
             moves every weight by about lr per update, so larger values wreck the model",
            o.lr
        ));
    }
    if !(0.0..=1.0).contains(&o.min_lr_ratio) {
        return bad(format!(
            "min_lr_ratio {} is not in [0, 1] (a fraction of lr)",
            o.min_lr_ratio
        ));
    }
    for (name, v) in [("beta1", o.beta1), ("beta2", o.beta2)] {
        if !(0.0..1.0).contains(&v) {
            return bad(format!("{name} {v} is not in [0, 1)"));
        }
    }
    if !(o.adam_eps > 0.0 && o.adam_eps.is_finite()) {
        return bad(format!("adam_eps {} must be positive", o.adam_eps));
    }
    if !(0.0..=1.0).contains(&o.weight_decay) {
        return bad(format!("weight_decay {} is not in [0, 1]", o.weight_decay));
    }
    Ok(())
}

/// `--model` and `--out` must not be empty paths (an empty `--out` would write into the current
/// folder).
fn check_paths(model: &Option<PathBuf>, out: &Option<PathBuf>) -> Result<()> {
    if model.as_ref().is_some_and(|m| m.as_os_str().is_empty()) {
        return Err(Error::InvalidArgument("--model is an empty path".into()));
    }
    if out.as_ref().is_some_and(|o| o.as_os_str().is_empty()) {
        return Err(Error::InvalidArgument(
            "--out is an empty path: name the folder for checkpoints and metrics".into(),
        ));
    }
    Ok(())
}

/// The settings a run starts from: `T::default()`, replaced with `--resume` by the settings the
/// latest checkpoint in `--out` records, then overlaid key by key with the `--config` file.
fn layered<T: Serialize + serde::de::DeserializeOwned + Default>(run: &RunArgs) -> Result<T> {
    let invalid = |m: String| Error::InvalidArgument(m);
    let mut base = serde_json::to_value(T::default()).map_err(|e| invalid(e.to_string()))?;
    if run.resume {
        let out = run.out.as_ref().ok_or_else(|| {
            invalid("--resume needs --out, the folder of the run to continue".into())
        })?;
        if let Some((_, dir)) = crate::checkpoint::find_latest(out)? {
            let recorded = crate::checkpoint::recorded_config(&dir)?;
            merge(&mut base, recorded);
        }
    }
    if let Some(path) = &run.config {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let file = serde_json::to_value(table).map_err(|e| invalid(e.to_string()))?;
        merge(&mut base, file);
    }
    serde_json::from_value(base).map_err(|e| {
        let from = run
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the recorded settings".into());
        invalid(format!("{from}: {e}"))
    })
}

/// Overlays the keys of object `top` onto object `base`.
fn merge(base: &mut serde_json::Value, top: serde_json::Value) {
    if let (Some(base), serde_json::Value::Object(top)) = (base.as_object_mut(), top) {
        for (k, v) in top {
            base.insert(k, v);
        }
    }
}

/// The reward of `unmask-train grpo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RewardKind {
    /// The code reward of docs/training.md §3 (`2.0 * pass_rate + 0.5 * format`, sandboxed tests).
    Code,
    /// A verifiable toy reward for tests of learning: the fraction of the completion's tokens
    /// (within the completion mask) whose token id is even. About 0.5 for a random model, 1 at
    /// most.
    ToyEvenIds,
}

/// The advantage baseline (docs/training.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineArg {
    /// `A_i = r_i - mean(r)` (the paper's headline variant).
    Mean,
    /// `A_i = r_i - mean_{j != i}(r_j)` (the released code).
    LeaveOneOut,
}

/// Every hyper-parameter of a coupled-GRPO run; defaults are the published run's
/// (docs/training.md §1 table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Hugging Face folder of the initial policy (and its tokenizer).
    pub model: Option<PathBuf>,
    /// Tasks: AceCode JSON lines ({"question", "test_cases"}).
    pub tasks: Option<PathBuf>,
    /// Output folder (checkpoints, `metrics.jsonl`).
    pub out: Option<PathBuf>,
    pub reward: RewardKind,
    /// Optimizer updates (each round makes `mu` of them).
    pub steps: u64,
    /// B: prompts per round.
    pub prompts_per_round: usize,
    /// G: completions per prompt.
    pub num_generations: usize,
    /// mu: optimizer updates per round on the same rollouts.
    pub mu: usize,
    /// KL weight (0 disables the reference policy).
    pub beta: f64,
    /// Ratio clipped to [1 - clip_eps, 1 + clip_eps].
    pub clip_eps: f64,
    pub baseline: BaselineArg,
    /// Divide advantages by the group's reward std (+1e-4).
    pub scale_rewards: bool,
    /// Completions per micro-batch (gradient accumulation over the round's micro-batches).
    pub micro_batch: usize,
    pub lr: f64,
    pub min_lr_ratio: f64,
    /// Warm-up updates (default: steps / 100, rounded down).
    pub warmup_steps: Option<u64>,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Every this many updates: ref <- alpha * theta + (1 - alpha) * ref (0: never).
    pub ref_sync_steps: u64,
    pub ref_sync_alpha: f64,
    /// Prompt tokens kept (the last ones).
    pub prompt_tokens: usize,
    /// Completion length.
    pub completion_tokens: usize,
    /// Denoising steps of the rollouts.
    pub diffusion_steps: usize,
    pub temperature: f32,
    /// Nucleus sampling (1.0 disables it).
    pub top_p: f32,
    /// Rollouts' key/value cache (approximate fast decoding): none (exact, default), prefix or
    /// dual (docs/fast-decoding.md).
    pub cache: String,
    /// Rollouts' block length with a cache (default 32).
    pub block_length: Option<usize>,
    /// Rollouts' confidence-threshold parallel decoding, in (0, 1] (default: off).
    pub threshold: Option<f32>,
    pub seed: u64,
    /// Save a checkpoint at the end of the first round at or after every N updates (0: only at
    /// the end; default: [`default_save_every`]).
    pub save_every: Option<u64>,
    /// Checkpoints kept in `out`: the newest N (0: all).
    pub keep: usize,
    pub save_dtype: Option<SaveDtype>,
    /// GGML threads (default: the physical cores).
    pub threads: Option<usize>,
    /// Where to train: `cpu` (default), `cuda`, `cuda:N`, `auto` or `ggml-cpu`
    /// ([`crate::device`]).
    pub device: Option<String>,
    /// Concurrent reward sandboxes (default: the physical cores).
    pub reward_jobs: Option<usize>,
    /// Wall-clock timeout per test case, seconds.
    pub reward_timeout: f64,
    /// Python interpreter of the sandbox (default: probed).
    pub python: Option<PathBuf>,
}

impl Default for GrpoConfig {
    /// The published run's (docs/training.md §1); the rollouts' sampling settings are
    /// [`crate::rollout::published_params`].
    fn default() -> Self {
        let rollout = crate::rollout::published_params();
        GrpoConfig {
            model: None,
            tasks: None,
            out: None,
            reward: RewardKind::Code,
            steps: 256,
            prompts_per_round: 4,
            num_generations: 10,
            mu: 2,
            beta: 0.01,
            clip_eps: 0.5,
            baseline: BaselineArg::Mean,
            scale_rewards: false,
            micro_batch: 2,
            lr: 1e-6,
            min_lr_ratio: 0.1,
            warmup_steps: None,
            beta1: 0.9,
            beta2: 0.99,
            adam_eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 0.2,
            ref_sync_steps: 64,
            ref_sync_alpha: 0.6,
            prompt_tokens: crate::rollout::PROMPT_TOKENS,
            completion_tokens: rollout.max_new_tokens,
            diffusion_steps: rollout.steps,
            temperature: rollout.temperature,
            top_p: rollout.top_p.unwrap_or(1.0),
            cache: rollout.cache.name().into(),
            block_length: rollout.block_length,
            threshold: rollout.threshold,
            seed: 0,
            save_every: None,
            keep: DEFAULT_KEEP,
            save_dtype: None,
            threads: None,
            device: None,
            reward_jobs: None,
            reward_timeout: DEFAULT_REWARD_TIMEOUT,
            python: None,
        }
    }
}

/// The flags of `unmask-train grpo`: every setting is optional and overrides the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GrpoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Tasks: AceCode JSON lines {"question", "test_cases"} [required, unless --resume].
    #[arg(long, value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    /// Reward: code (docs/training.md §3: sandboxed tests and format) or toy-even-ids (fraction
    /// of even token ids; for tests) [default: code].
    #[arg(long, value_enum)]
    pub reward: Option<RewardKind>,
    /// Optimizer updates [default: 256].
    #[arg(long)]
    pub steps: Option<u64>,
    /// B, prompts per round [default: 4].
    #[arg(long)]
    pub prompts_per_round: Option<usize>,
    /// G, completions per prompt [default: 10].
    #[arg(long)]
    pub num_generations: Option<usize>,
    /// mu, optimizer updates per round on the same rollouts [default: 2].
    #[arg(long)]
    pub mu: Option<usize>,
    /// KL weight; 0 disables the reference policy [default: 0.01].
    #[arg(long)]
    pub beta: Option<f64>,
    /// The ratio is clipped to [1 - clip_eps, 1 + clip_eps], clip_eps in (0, 1) [default: 0.5].
    #[arg(long)]
    pub clip_eps: Option<f64>,
    /// Advantage baseline: mean (the paper) or leave-one-out (the released code)
    /// [default: mean].
    #[arg(long, value_enum)]
    pub baseline: Option<BaselineArg>,
    /// Divide advantages by the group's reward std: true or false [default: false].
    #[arg(long)]
    pub scale_rewards: Option<bool>,
    /// Completions per micro-batch [default: 2].
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Sync the reference policy every N updates; 0: never [default: 64].
    #[arg(long, value_name = "N")]
    pub ref_sync_steps: Option<u64>,
    /// Reference sync: ref <- alpha * theta + (1 - alpha) * ref, alpha in [0, 1]
    /// [default: 0.6].
    #[arg(long)]
    pub ref_sync_alpha: Option<f64>,
    /// Prompt tokens kept (the last ones), in tokens [default: 200].
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    #[arg(long, value_name = "N", help = rollout_help(
        "Completion length, in tokens",
        |p| p.max_new_tokens.to_string()
    ))]
    pub completion_tokens: Option<usize>,
    #[arg(long, value_name = "N", help = rollout_help(
        "Denoising steps of the rollouts, at most --completion-tokens",
        |p| p.steps.to_string()
    ))]
    pub diffusion_steps: Option<usize>,
    #[arg(long, help = rollout_help(
        "Sampling temperature of the rollouts, >= 0",
        |p| p.temperature.to_string()
    ))]
    pub temperature: Option<f32>,
    #[arg(long, help = rollout_help(
        "Nucleus sampling of the rollouts, in (0, 1]; 1 disables it",
        |p| p.top_p.unwrap_or(1.0).to_string()
    ))]
    pub top_p: Option<f32>,
    /// Rollouts' key/value cache: none (exact decoding), prefix or dual (approximate, faster;
    /// docs/fast-decoding.md) [default: none].
    #[arg(long)]
    pub cache: Option<String>,
    #[arg(
        long,
        value_name = "TOKENS",
        help = format!(
            "Rollouts' block length with a cache, in tokens [default: {}]",
            unmask_runtime::params::DEFAULT_CACHE_BLOCK
        )
    )]
    pub block_length: Option<usize>,
    /// Rollouts' confidence-threshold parallel decoding, in (0, 1] [default: off].
    #[arg(long)]
    pub threshold: Option<f32>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

impl GrpoConfig {
    /// Defaults (or, with `--resume`, the settings the latest checkpoint records), then the file
    /// of `--config`, then the flags.
    pub fn resolve(args: &GrpoArgs) -> Result<Self> {
        let mut c: Self = layered(&args.run)?;
        macro_rules! take {
            ($src:expr; $($f:ident),*) => { $( if let Some(v) = $src.$f.clone() { c.$f = v; } )* };
        }
        macro_rules! take_opt {
            ($src:expr; $($f:ident),*) => { $( if $src.$f.is_some() { c.$f = $src.$f.clone(); } )* };
        }
        take!(
            args;
            reward,
            steps,
            prompts_per_round,
            num_generations,
            mu,
            beta,
            clip_eps,
            baseline,
            scale_rewards,
            micro_batch,
            ref_sync_steps,
            ref_sync_alpha,
            prompt_tokens,
            completion_tokens,
            diffusion_steps,
            temperature,
            top_p,
            cache
        );
        take!(args.sandbox; reward_timeout);
        take!(args.optim; lr, min_lr_ratio, beta1, beta2, adam_eps, weight_decay, max_grad_norm);
        take!(args.run; seed, keep);
        take_opt!(args.optim; warmup_steps);
        take_opt!(args.run; model, out, save_every, save_dtype, device);
        take_opt!(args.run.threads; threads);
        take_opt!(args; tasks, block_length, threshold);
        take_opt!(args.sandbox; reward_jobs, python);
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        check_device(self.device.as_deref())?;
        if self.model.is_none() {
            return bad("no model (--model or `model` in the config file)".into());
        }
        if self.out.is_none() {
            return bad("no output folder (--out or `out`)".into());
        }
        if self.tasks.is_none() {
            return bad("no tasks (--tasks or `tasks`)".into());
        }
        check_paths(&self.model, &self.out)?;
        check_optimizer(&OptimSettings {
            lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
            beta1: self.beta1,
            beta2: self.beta2,
            adam_eps: self.adam_eps,
            weight_decay: self.weight_decay,
        })?;
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} is not in (0, 1]", self.top_p));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if self.steps == 0
            || self.prompts_per_round == 0
            || self.num_generations == 0
            || self.mu == 0
            || self.micro_batch == 0
        {
            return bad(
                "steps, prompts_per_round, num_generations, mu and micro_batch must be positive"
                    .into(),
            );
        }
        if let Err(e) = self.cache.parse::<unmask_runtime::CacheMode>() {
            return bad(e.to_string());
        }
        if self.prompt_tokens == 0 || self.completion_tokens == 0 || self.diffusion_steps == 0 {
            return bad(
                "prompt_tokens, completion_tokens and diffusion_steps must be positive".into(),
            );
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad(format!("beta {} must be >= 0", self.beta));
        }
        if !(self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            return bad(format!("clip_eps {} is not in (0, 1)", self.clip_eps));
        }
        if !(self.ref_sync_alpha >= 0.0 && self.ref_sync_alpha <= 1.0) {
            return bad(format!(
                "ref_sync_alpha {} is not in [0, 1]",
                self.ref_sync_alpha
            ));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return bad("max_grad_norm must be positive".into());
        }
        if self.warmup_steps.is_some_and(|w| w > self.steps) {
            return bad("warmup_steps exceeds steps".into());
        }
        if !(self.reward_timeout > 0.0 && self.reward_timeout.is_finite()) {
            return bad("reward_timeout must be positive".into());
        }
        if self.num_generations < 2
            && (self.baseline == BaselineArg::LeaveOneOut || self.scale_rewards)
        {
            return bad("leave-one-out and std scaling need num_generations >= 2".into());
        }
        Ok(())
    }

    pub fn warmup(&self) -> u64 {
        self.warmup_steps.unwrap_or(self.steps / 100)
    }

    /// The checkpoint interval in updates (0: only at the end).
    pub fn save_interval(&self) -> u64 {
        self.save_every
            .unwrap_or_else(|| default_save_every(self.steps))
    }
}

/// `threads`, or the workspace's one default thread count
/// ([`unmask_kernels::backend::default_threads`], the physical cores) when unset.
pub fn threads_or_default(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(unmask_kernels::backend::default_threads)
}

/// `--device` must name a device (it is resolved when the run starts, [`crate::device`]).
pub fn check_device(device: Option<&str>) -> Result<()> {
    crate::device::parse(device).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_defaults_are_the_published_run_and_flags_win() {
        let c = GrpoConfig::default();
        assert_eq!((c.num_generations, c.mu), (10, 2));
        assert_eq!(
            (c.beta, c.clip_eps, c.lr, c.min_lr_ratio),
            (0.01, 0.5, 1e-6, 0.1)
        );
        assert_eq!(
            (c.beta1, c.beta2, c.weight_decay, c.max_grad_norm),
            (0.9, 0.99, 0.1, 0.2)
        );
        assert_eq!((c.ref_sync_steps, c.ref_sync_alpha), (64, 0.6));
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens, c.diffusion_steps),
            (200, 256, 256)
        );
        assert_eq!((c.steps, c.temperature, c.top_p), (256, 1.2, 0.95));
        assert_eq!((c.baseline, c.scale_rewards), (BaselineArg::Mean, false));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "model = \"m\"\nout = \"o\"\ntasks = \"t.jsonl\"\nmu = 1\nbeta = 0.0\nreward = \"toy-even-ids\"\nbaseline = \"leave-one-out\"\n",
        )
        .unwrap();
        let args = GrpoArgs {
            run: RunArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            mu: Some(3),
            ..Default::default()
        };
        let c = GrpoConfig::resolve(&args).unwrap();
        assert_eq!((c.mu, c.beta), (3, 0.0));
        assert_eq!(c.reward, RewardKind::ToyEvenIds);
        assert_eq!(c.baseline, BaselineArg::LeaveOneOut);
        std::fs::write(&path, "model = \"m\"\nbogus = 1\n").unwrap();
        assert!(
            GrpoConfig::resolve(&args).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "model = \"m\"\nout = \"o\"\ndata = [\"d.jsonl\"]\nlr = 0.005\nsteps = 7\nnorm = \"rows\"\nsave_dtype = \"f32\"\n",
        )
        .unwrap();
        let args = SftArgs {
            run: RunArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            steps: Some(9),
            ..Default::default()
        };
        let c = SftConfig::resolve(&args).unwrap();
        assert_eq!(c.lr, 0.005);
        assert_eq!(c.steps, 9);
        assert_eq!(c.norm, Norm::Rows);
        assert_eq!(c.save_dtype, Some(SaveDtype::F32));
        assert_eq!(c.beta2, 0.99);
        std::fs::write(&path, "model = \"m\"\nlearning_rate = 1\n").unwrap();
        assert!(
            SftConfig::resolve(&args).is_err(),
            "unknown keys are refused"
        );
    }
}
