//! The settings of a generation ([`GenerateParams`]: Dream's sampling and schedule, docs/model.md §4,
//! and the fast-decoding modes, docs/fast-decoding.md §2), their built-in defaults
//! (`GenerateParams::default()`, the one definition every front end layers over: see
//! [`crate::settings`]), and the rules that reject settings the loops cannot honour, with messages
//! that name the parameter.

use crate::sampler::{Confidence, Filter};
use crate::{Error, Result};

/// How positions are chosen for commitment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Each masked position is revealed with probability `1 - s/t` (random order).
    Origin,
    /// Confidence = probability of the predicted token.
    MaskgitPlus,
    /// Confidence = top-1 minus top-2 probability.
    TopkMargin,
    /// Confidence = negative entropy of the predictive distribution.
    Entropy,
}

impl std::str::FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "origin" => Ok(Algorithm::Origin),
            "maskgit_plus" => Ok(Algorithm::MaskgitPlus),
            "topk_margin" => Ok(Algorithm::TopkMargin),
            "entropy" => Ok(Algorithm::Entropy),
            other => Err(Error::Params(format!(
                "unknown algorithm `{other}` (origin, maskgit_plus, topk_margin, entropy)"
            ))),
        }
    }
}

impl Algorithm {
    /// The name `--alg` and the model file's `alg` take.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Origin => "origin",
            Algorithm::MaskgitPlus => "maskgit_plus",
            Algorithm::TopkMargin => "topk_margin",
            Algorithm::Entropy => "entropy",
        }
    }

    pub(crate) fn confidence(self) -> Confidence {
        match self {
            Algorithm::TopkMargin => Confidence::Margin,
            Algorithm::Entropy => Confidence::NegEntropy,
            Algorithm::Origin | Algorithm::MaskgitPlus => Confidence::Probability,
        }
    }
}

/// Which key/value cache the fast-decoding modes use (docs/fast-decoding.md §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// No cache: every step runs the whole canvas (exact decoding, or with a threshold the
    /// no-cache parallel decoding of docs/fast-decoding.md §5).
    #[default]
    None,
    /// Per block, the rows from the block start to the end of the canvas run against the cached
    /// keys and values of the positions before the block.
    Prefix,
    /// Per block, only the block's rows run, against the cached keys and values of every other
    /// position.
    Dual,
}

impl std::str::FromStr for CacheMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(CacheMode::None),
            "prefix" => Ok(CacheMode::Prefix),
            "dual" => Ok(CacheMode::Dual),
            other => Err(Error::Params(format!(
                "unknown cache `{other}` (none, prefix, dual)"
            ))),
        }
    }
}

impl CacheMode {
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Prefix => "prefix",
            CacheMode::Dual => "dual",
        }
    }
}

/// Block length of the cached modes when none is given (Fast-dLLM's default).
pub const DEFAULT_CACHE_BLOCK: usize = 32;

/// The top-k filter Dream's published code applies when the caller passes none (docs/model.md §4,
/// "effective defaults": transformers 4.x's legacy generation default).
pub const DEFAULT_TOP_K: usize = 50;

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub steps: usize,
    pub alg: Algorithm,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    /// Temperature of the softmax over confidences when choosing positions; 0 = top-k.
    pub alg_temp: f32,
    pub eps: f32,
    /// Block-wise (semi-autoregressive) schedule: blocks of this many new tokens. With a cache,
    /// `None` means [`DEFAULT_CACHE_BLOCK`].
    pub block_length: Option<usize>,
    pub seed: u64,
    /// Key/value cache of the fast modes (approximate); `None` is exact decoding.
    pub cache: CacheMode,
    /// Confidence-threshold parallel decoding (approximate): commit, besides the most confident
    /// position, every one whose predicted token's probability is at least this, in (0, 1].
    pub threshold: Option<f32>,
}

impl Default for GenerateParams {
    /// DiffuCoder-Instruct's recommended settings (docs/model.md §4).
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 256,
            steps: 256,
            alg: Algorithm::Entropy,
            temperature: 0.4,
            top_p: Some(0.95),
            top_k: Some(DEFAULT_TOP_K),
            alg_temp: 0.0,
            eps: 1e-3,
            block_length: None,
            seed: 0,
            cache: CacheMode::None,
            threshold: None,
        }
    }
}

impl GenerateParams {
    /// Rejects settings the algorithm cannot honour, with a message naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Params(m));
        check::max_new_tokens(self.max_new_tokens)?;
        check::steps(self.steps)?;
        if self.steps > self.max_new_tokens {
            return bad(format!(
                "steps ({}) cannot exceed the number of new tokens ({}): a step would commit nothing",
                self.steps, self.max_new_tokens
            ));
        }
        check::temperature(self.temperature)?;
        if let Some(p) = self.top_p {
            check::top_p(p)?;
        }
        if let Some(k) = self.top_k {
            check::top_k(k)?;
        }
        check::alg_temp(self.alg_temp)?;
        check::eps(self.eps)?;
        if let Some(t) = self.threshold {
            check::threshold(t)?;
        }
        if self.is_fast() {
            return self.validate_fast();
        }
        if let Some(b) = self.block_length {
            check::block_length(b)?;
            if !self.max_new_tokens.is_multiple_of(b) {
                return bad(format!(
                    "block_length {b} must divide max_new_tokens {}",
                    self.max_new_tokens
                ));
            }
            let blocks = self.max_new_tokens / b;
            if !self.steps.is_multiple_of(blocks) {
                return bad(format!(
                    "steps {} must be a multiple of the number of blocks ({blocks})",
                    self.steps
                ));
            }
            if self.steps / blocks > b {
                return bad(format!(
                    "{} steps per block exceed the block length {b}",
                    self.steps / blocks
                ));
            }
        }
        Ok(())
    }

    /// Whether these settings select an approximate fast-decoding mode.
    pub fn is_fast(&self) -> bool {
        self.cache != CacheMode::None || self.threshold.is_some()
    }

    /// The block length the cached modes use.
    pub fn cache_block(&self) -> usize {
        self.block_length.unwrap_or(DEFAULT_CACHE_BLOCK)
    }

    /// The rules of the fast modes (docs/fast-decoding.md §2-§5).
    fn validate_fast(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Params(m));
        let n = self.max_new_tokens;
        if self.cache == CacheMode::None {
            // No-cache parallel decoding: no blocks, `n / steps` tokens due per step.
            if self.block_length.is_some() {
                return bad(
                    "block_length applies to the cached modes and to exact decoding, not to \
                     --threshold without a cache"
                        .into(),
                );
            }
            if !n.is_multiple_of(self.steps) {
                return bad(format!(
                    "with --threshold and no cache, steps ({}) must divide max_new_tokens ({n})",
                    self.steps
                ));
            }
            return Ok(());
        }
        if self.alg == Algorithm::Origin {
            return bad(
                "the cached modes rank positions by confidence: alg origin has none".into(),
            );
        }
        let b = self.cache_block();
        if b == 0 || !n.is_multiple_of(b) {
            let source = if self.block_length.is_some() {
                "block_length"
            } else {
                "the default block_length (32) of the cached modes"
            };
            return bad(format!(
                "{source} {b} must divide max_new_tokens {n}; pass a block length that does"
            ));
        }
        let blocks = n / b;
        if !self.steps.is_multiple_of(blocks) {
            return bad(format!(
                "steps {} must be a multiple of the number of blocks ({blocks})",
                self.steps
            ));
        }
        if self.threshold.is_none() {
            let per_block = self.steps / blocks;
            if per_block < 2 {
                return bad(format!(
                    "{per_block} step per block in the fixed-step cached mode would leave each \
                     block masked after its first token; use at least {} steps, or --threshold",
                    2 * blocks
                ));
            }
            if per_block > b {
                return bad(format!(
                    "{per_block} steps per block exceed the block length {b}"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn filter(&self) -> Filter {
        Filter {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
        }
    }
}

/// The range of each setting on its own, shared by [`GenerateParams::validate`] and the checks of
/// the values a model file stores (`crate::settings`); each message names the setting.
pub mod check {
    use crate::{Error, Result};

    fn bad(message: String) -> Result<()> {
        Err(Error::Params(message))
    }

    pub fn max_new_tokens(n: usize) -> Result<()> {
        if n == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    pub fn block_length(n: usize) -> Result<()> {
        if n == 0 {
            return bad("block_length must be at least 1".into());
        }
        Ok(())
    }

    pub fn steps(n: usize) -> Result<()> {
        if n == 0 {
            return bad("steps must be at least 1".into());
        }
        Ok(())
    }

    pub fn temperature(t: f32) -> Result<()> {
        if !(t.is_finite() && t >= 0.0) {
            return bad(format!("temperature {t} must be >= 0"));
        }
        Ok(())
    }

    /// A nucleus filter in use (1 turns it off before this check).
    pub fn top_p(p: f32) -> Result<()> {
        if !(p > 0.0 && p <= 1.0) {
            return bad(format!("top_p {p} must be in (0, 1]"));
        }
        Ok(())
    }

    /// A top-k filter in use (0 turns it off before this check).
    pub fn top_k(k: usize) -> Result<()> {
        if k == 0 {
            return bad("top_k must be at least 1".into());
        }
        Ok(())
    }

    pub fn alg_temp(t: f32) -> Result<()> {
        if !(t.is_finite() && t >= 0.0) {
            return bad(format!("alg_temp {t} must be >= 0"));
        }
        Ok(())
    }

    pub fn eps(e: f32) -> Result<()> {
        if !(e > 0.0 && e < 1.0) {
            return bad(format!("eps {e} must be in (0, 1)"));
        }
        Ok(())
    }

    pub fn threshold(t: f32) -> Result<()> {
        if !(t > 0.0 && t <= 1.0) {
            return bad(format!("threshold {t} must be in (0, 1]"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_mode_rules() {
        let base = GenerateParams {
            max_new_tokens: 64,
            steps: 64,
            ..Default::default()
        };
        let ok = |p: GenerateParams| assert!(p.validate().is_ok(), "{p:?}");
        let err = |p: GenerateParams, needle: &str| {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        ok(GenerateParams {
            cache: CacheMode::Dual,
            ..base.clone()
        });
        ok(GenerateParams {
            cache: CacheMode::Prefix,
            threshold: Some(1.0),
            steps: 2,
            ..base.clone()
        });
        ok(GenerateParams {
            threshold: Some(0.9),
            steps: 16,
            ..base.clone()
        });
        // Fixed steps: at least 2 per block (32-token blocks: 2 blocks).
        err(
            GenerateParams {
                cache: CacheMode::Dual,
                steps: 2,
                ..base.clone()
            },
            "1 step per block",
        );
        ok(GenerateParams {
            cache: CacheMode::Dual,
            steps: 4,
            ..base.clone()
        });
        err(
            GenerateParams {
                threshold: Some(f32::NAN),
                ..base.clone()
            },
            "threshold",
        );
        err(
            GenerateParams {
                threshold: Some(-0.1),
                cache: CacheMode::Prefix,
                ..base.clone()
            },
            "threshold",
        );
        err(
            GenerateParams {
                cache: CacheMode::Prefix,
                block_length: Some(0),
                ..base.clone()
            },
            "block_length 0",
        );
        assert_eq!(
            GenerateParams {
                cache: CacheMode::Prefix,
                ..base.clone()
            }
            .cache_block(),
            DEFAULT_CACHE_BLOCK
        );
        assert!(!base.is_fast());
    }

    #[test]
    fn parameter_errors_name_the_parameter() {
        let ok = GenerateParams {
            max_new_tokens: 8,
            steps: 4,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let cases = [
            (
                GenerateParams {
                    steps: 0,
                    ..ok.clone()
                },
                "steps",
            ),
            (
                GenerateParams {
                    steps: 9,
                    ..ok.clone()
                },
                "cannot exceed",
            ),
            (
                GenerateParams {
                    block_length: Some(3),
                    ..ok.clone()
                },
                "block_length",
            ),
            (
                GenerateParams {
                    block_length: Some(2),
                    steps: 6,
                    ..ok.clone()
                },
                "multiple",
            ),
            (
                GenerateParams {
                    top_p: Some(0.0),
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                GenerateParams {
                    eps: 1.0,
                    ..ok.clone()
                },
                "eps",
            ),
        ];
        for (p, needle) in cases {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
