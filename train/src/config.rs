//! Settings of `unmask-train sft`: defaults, a TOML file (`--config FILE`, keys = the long flag
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
    /// Training data: `.jsonl` files of {"prompt", "response"}, or plain text files.
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
    /// Save a checkpoint every N updates (0: only at the end).
    pub save_every: u64,
    /// dtype of the checkpoints' `model.safetensors` (default: the source model's).
    pub save_dtype: Option<SaveDtype>,
    /// GGML threads (default: the number of CPUs).
    pub threads: Option<usize>,
}

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
            save_every: 0,
            save_dtype: None,
            threads: None,
        }
    }
}

/// The flags of `unmask-train sft`: every setting is optional and overrides the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SftArgs {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from the latest complete checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Hugging Face folder of the initial model (bf16/f16/f32 safetensors, tokenizer.json).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data (repeatable): .jsonl of {"prompt", "response"}, or plain text files.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub micro_batch: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long)]
    pub append_eos: Option<bool>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    #[arg(long)]
    pub beta1: Option<f64>,
    #[arg(long)]
    pub beta2: Option<f64>,
    #[arg(long)]
    pub adam_eps: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    pub t_eps: Option<f64>,
    #[arg(long, value_enum)]
    pub norm: Option<Norm>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub save_every: Option<u64>,
    #[arg(long, value_parser = parse_dtype)]
    pub save_dtype: Option<SaveDtype>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sleep this long after every update (for tests that interrupt a run).
    #[arg(long, hide = true, default_value_t = 0)]
    pub throttle_ms: u64,
}

fn parse_dtype(s: &str) -> std::result::Result<SaveDtype, String> {
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

    /// Defaults, then the file of `args.config`, then the flags.
    pub fn resolve(args: &SftArgs) -> Result<Self> {
        let mut c = match &args.config {
            Some(p) => Self::from_toml_file(p)?,
            None => Self::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = args.$f.clone() { c.$f = v; } )* };
        }
        macro_rules! take_opt {
            ($($f:ident),*) => { $( if args.$f.is_some() { c.$f = args.$f.clone(); } )* };
        }
        take!(
            steps,
            micro_batch,
            grad_accum,
            max_len,
            append_eos,
            lr,
            min_lr_ratio,
            beta1,
            beta2,
            adam_eps,
            weight_decay,
            max_grad_norm,
            t_eps,
            norm,
            seed,
            save_every
        );
        take_opt!(model, out, warmup_steps, save_dtype, threads);
        if !args.data.is_empty() {
            c.data = args.data.clone();
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.model.is_none() {
            return bad("no model (--model or `model` in the config file)".into());
        }
        if self.out.is_none() {
            return bad("no output folder (--out or `out`)".into());
        }
        if self.data.is_empty() {
            return bad("no training data (--data or `data`)".into());
        }
        if self.steps == 0 || self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("steps, micro_batch and grad_accum must be positive".into());
        }
        if self.max_len < 2 {
            return bad("max_len must be at least 2".into());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "model = \"m\"\nout = \"o\"\ndata = [\"d.jsonl\"]\nlr = 0.5\nsteps = 7\nnorm = \"rows\"\nsave_dtype = \"f32\"\n",
        )
        .unwrap();
        let args = SftArgs {
            config: Some(path.clone()),
            steps: Some(9),
            ..Default::default()
        };
        let c = SftConfig::resolve(&args).unwrap();
        assert_eq!(c.lr, 0.5);
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
