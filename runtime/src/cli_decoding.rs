//! The setting flags shared by `unmask generate` and `unmask bench`: sampling
//! ([`SamplingArgs`]) and fast decoding ([`DecodingArgs`], docs/fast-decoding.md), each unset
//! unless given so that the model file's values and the built-in defaults show through
//! (`unmask_runtime::settings`), and how both commands report what the model file sets.

use unmask_runtime::settings::{FileSettings, Layer, Setting, Settings};
use unmask_runtime::{Algorithm, CacheMode, Model};

/// The precedence of the settings, for the commands' `--help`.
pub const PRECEDENCE: &str = "Settings: a flag given wins; otherwise the model file's value \
(unmask.generation.*, stored by unmask-quantize from the checkpoint's generation_config.json) \
applies where the setting has one and it is valid; otherwise the built-in default \
(DiffuCoder-Instruct's recommended settings, with the top-k 50 Dream's published code applies). \
Built-in < model file < flags. Steps not given follow the length: the file's steps per new \
token (rounded, at least 1, at most one per token), else one step per new token. A stored value \
out of range is ignored with a warning naming its key. --json reports every setting's value and source under \
\"settings\", and the ignored values under \"ignored_settings\".";

/// The sampling flags both commands take with the same defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    #[arg(long, help = Setting::Alg.help(None))]
    pub alg: Option<Algorithm>,
    #[arg(long, help = Setting::AlgTemp.help(None))]
    pub alg_temp: Option<f32>,
    #[arg(long, help = Setting::Eps.help(None))]
    pub eps: Option<f32>,
    #[arg(long, help = Setting::Seed.help(None))]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// These flags and the fast-decoding ones as a layer of settings.
    pub fn layer(&self, decoding: &DecodingArgs) -> Layer {
        Layer {
            alg: self.alg,
            alg_temp: self.alg_temp,
            eps: self.eps,
            seed: self.seed,
            cache: decoding.cache,
            block_length: decoding.block_length.map(Some),
            threshold: decoding.threshold.map(Some),
            ..Layer::default()
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct DecodingArgs {
    /// Key/value cache, an approximate fast mode: `none` (exact decoding, the default), `prefix`
    /// (per block, run the block and everything after it against the cached keys/values of the
    /// positions before it) or `dual` (run only the block, against the cached keys/values of every
    /// other position; fastest). The new tokens are then decoded in blocks of --block-length
    /// [default: none].
    #[arg(long, value_name = "MODE")]
    pub cache: Option<CacheMode>,
    /// Denoise in blocks of this many new tokens, left to right; must divide --max-new-tokens.
    /// Default: the model file's value where it divides the length (not in the no-cache
    /// threshold mode, which has no blocks), else 32 with a cache (Fast-dLLM's default) and no
    /// blocks for exact decoding.
    #[arg(long, value_name = "TOKENS")]
    pub block_length: Option<usize>,
    /// Confidence-threshold parallel decoding, approximate: at each pass commit the most
    /// confident position and every other whose predicted token's probability is at least T, in
    /// (0, 1] (Fast-dLLM uses 0.9). With --cache none this is the no-cache parallel mode
    /// (--steps must divide --max-new-tokens: that many are due per step); with a cache, the
    /// block loop runs until each block is complete. Without it, a cache runs
    /// --steps / (number of blocks) steps per block (at least 2) [default: off].
    #[arg(long, value_name = "T")]
    pub threshold: Option<f32>,
}

/// The settings the model file stores, each ignored value announced on stderr as a warning
/// naming its key (`--json` reports list them too, as "ignored_settings").
pub fn model_file_settings(model: &Model) -> FileSettings {
    let file = FileSettings::of(model);
    for ignored in &file.ignored {
        eprintln!("warning: {ignored}");
    }
    file
}

/// `error`, with the model file's values in effect appended when some differ from the built-in
/// defaults: a refused combination (steps against the length, the context, a block length) may
/// involve a value the user did not type.
pub fn settings_error(error: unmask_runtime::Error, settings: &Settings) -> anyhow::Error {
    let from_file = settings.from_model_file();
    if from_file.is_empty()
        || !matches!(
            error,
            unmask_runtime::Error::Params(_) | unmask_runtime::Error::ContextOverflow { .. }
        )
    {
        return error.into();
    }
    anyhow::anyhow!(
        "{error} (from the model file: {}; a flag overrides each)",
        from_file.join(", ")
    )
}
