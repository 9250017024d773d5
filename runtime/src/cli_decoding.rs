//! The fast-decoding flags shared by `unmask generate` and `unmask bench`
//! (docs/fast-decoding.md).

use unmask_runtime::CacheMode;

#[derive(clap::Args, Clone, Debug)]
pub struct DecodingArgs {
    /// Key/value cache, an approximate fast mode: `none` (exact decoding, the default), `prefix`
    /// (per block, run the block and everything after it against the cached keys/values of the
    /// positions before it) or `dual` (run only the block, against the cached keys/values of every
    /// other position; fastest). The new tokens are then decoded in blocks of --block-length.
    #[arg(long, default_value = "none", value_name = "MODE")]
    pub cache: CacheMode,
    /// Denoise in blocks of this many new tokens, left to right; must divide --max-new-tokens.
    /// Default: 32 with a cache (Fast-dLLM's default), no blocks for exact decoding.
    #[arg(long, value_name = "TOKENS")]
    pub block_length: Option<usize>,
    /// Confidence-threshold parallel decoding, approximate: at each pass commit the most
    /// confident position and every other whose predicted token's probability is at least T, in
    /// (0, 1] (Fast-dLLM uses 0.9). With --cache none this is the no-cache parallel mode
    /// (--steps must divide --max-new-tokens: that many are due per step); with a cache, the
    /// block loop runs until each block is complete. Without it, a cache runs
    /// --steps / (number of blocks) steps per block (at least 2).
    #[arg(long, value_name = "T")]
    pub threshold: Option<f32>,
}
