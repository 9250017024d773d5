//! The denoising loop of docs/model.md §4: a fixed canvas of prompt + masks; at each step the masked
//! positions are scored from the shifted logits and the most confident ones (or, for `origin`,
//! random ones) are committed, never to be re-masked. Block-wise scheduling denoises the canvas
//! in blocks, left to right. The approximate fast-decoding modes (key/value caches, parallel
//! decoding) are opt-in ([`CacheMode`], `threshold`) and live in `crate::fast`.

use crate::forward::Forward;
use crate::kv_cache::CachedPass;
use crate::model::Model;
use crate::rng::Rng;
use crate::schedule::{reveal_probability, timesteps, transfer_count};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Instant;
use unmask_kernels::backend::CpuBackend;
use unmask_kernels::device::Placement;
use unmask_kernels::graph::TensorSource;
use unmask_kernels::score::{Confidence, Filter, Scored};
use unmask_kernels::weights::Weights;

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
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if self.steps > self.max_new_tokens {
            return bad(format!(
                "steps ({}) cannot exceed the number of new tokens ({}): a step would commit nothing",
                self.steps, self.max_new_tokens
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p {p} must be in (0, 1]"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !(self.alg_temp.is_finite() && self.alg_temp >= 0.0) {
            return bad(format!("alg_temp {} must be >= 0", self.alg_temp));
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad(format!("eps {} must be in (0, 1)", self.eps));
        }
        if let Some(t) = self.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return bad(format!("threshold {t} must be in (0, 1]"));
            }
        }
        if self.is_fast() {
            return self.validate_fast();
        }
        if let Some(b) = self.block_length {
            if b == 0 || !self.max_new_tokens.is_multiple_of(b) {
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

/// What the step callback sees.
pub struct StepEvent<'a> {
    /// Step index over the whole run (blocks included), from 0.
    pub step: usize,
    pub total_steps: usize,
    /// (position, token) committed in this step, by increasing position.
    pub committed: &'a [(usize, u32)],
    /// The whole canvas after this step (prompt included).
    pub canvas: &'a [u32],
    pub prompt_len: usize,
}

/// The callback's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Cancel,
}

/// The outcome of a generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The generated ids (the canvas after the prompt), before any post-processing.
    pub tokens: Vec<u32>,
    pub canvas: Vec<u32>,
    pub prompt_len: usize,
    /// Steps completed (equal to the requested steps unless cancelled).
    pub steps: usize,
    /// Forward passes run; steps that provably commit nothing skip theirs.
    pub forward_passes: usize,
    /// Positions committed at each step.
    pub commits: Vec<Vec<usize>>,
    pub cancelled: bool,
    pub seconds: f64,
    /// Bytes copied from device memory to the host by the steps (0 on the built-in CPU
    /// backend, which reads results in place).
    pub bytes_to_host: u64,
    /// Where the time went.
    pub timings: Timings,
    /// Rows each forward pass ran through the layers, in order (the canvas length for full and
    /// refresh passes; fewer for cached passes).
    pub rows_per_pass: Vec<usize>,
    /// Cached modes: the first canvas position of each block, in order.
    pub block_starts: Vec<usize>,
    /// Fast modes: (pass, position, token) where the progress rule replaced a predicted mask
    /// token (see `crate::fast`).
    pub forced: Vec<(usize, usize, u32)>,
    /// Bytes of backend memory the kept keys and values hold (0 without a cache).
    pub cache_bytes: usize,
}

/// Seconds spent in each part of the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// The layers (every forward pass: full, refresh and cached).
    pub body: f64,
    /// Output projection and scoring of the rows that predict masked positions.
    pub head_and_scoring: f64,
    /// Of `body`: the refresh passes of the cached modes, and how many ran.
    pub refresh: f64,
    pub refresh_passes: usize,
    /// Of `body`: the cached passes, and how many ran.
    pub cached: f64,
    pub cached_passes: usize,
}

/// Generation state for one model: the CPU backend, worker threads and the graphs for the last
/// canvas length, reused across steps and across calls. `W` is where the model's tensors come
/// from (a GGUF file's mapped weights by default; the trainer runs its f32 parameters through the
/// same loop).
pub struct Generator<W = Arc<Weights>> {
    pub(crate) model: Arc<Model<W>>,
    pub(crate) backend: CpuBackend,
    pub(crate) pool: rayon::ThreadPool,
    pub(crate) forward: Option<Forward>,
    /// Cached passes over the current refresh graph, one per run length (they read its keys
    /// and values in place, so they are dropped whenever it is rebuilt).
    pub(crate) cached: Vec<CachedPass>,
}

impl<W: TensorSource> Generator<W> {
    pub fn new(model: Arc<Model<W>>, threads: usize) -> Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Model(format!("cannot start {threads} worker threads: {e}")))?;
        let backend = match &model.placement {
            Placement::Cpu => CpuBackend::new(threads)?,
            Placement::Device(device) => CpuBackend::on_device(device, threads)?,
        };
        Ok(Generator {
            model,
            backend,
            pool,
            forward: None,
            cached: Vec::new(),
        })
    }

    /// Name of the device the graphs run on (`CPU`, `CUDA0`, ...).
    pub fn device_name(&self) -> &str {
        self.backend.name()
    }

    pub fn model(&self) -> &Arc<Model<W>> {
        &self.model
    }

    /// The graphs for a canvas of `len` tokens (built on first use, then reused).
    pub fn forward_for(&mut self, len: usize) -> Result<&mut Forward> {
        self.forward_with(len, false)
    }

    /// The graphs for a canvas of `len` tokens; with `keep_kv` a refresh pass that keeps every
    /// layer's keys and values for cached passes (a plain forward that has them is reused too).
    pub(crate) fn forward_with(&mut self, len: usize, keep_kv: bool) -> Result<&mut Forward> {
        let fits = |f: &Forward| f.len == len && (!keep_kv || !f.kv().1.is_empty());
        if !self.forward.as_ref().is_some_and(fits) {
            // Free the old graphs (and the cached passes reading them) before building new ones.
            self.cached.clear();
            self.forward = None;
            self.forward = Some(Forward::new(&self.model, len, keep_kv, &self.backend)?);
        }
        Ok(self.forward.as_mut().expect("just built"))
    }

    /// Logits of every position of `tokens` (unshifted, row-major): the raw forward pass.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let len = tokens.len();
        if len == 0 || len > self.model.context_length() {
            return Err(Error::ContextOverflow {
                prompt: len,
                new: 0,
                context: self.model.context_length(),
            });
        }
        self.forward_for(len)?;
        let Generator {
            forward, backend, ..
        } = self;
        forward
            .as_mut()
            .expect("built above")
            .all_logits(tokens, backend)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.model.n_vocab) {
            Some(&t) => Err(Error::BadToken(t)),
            None => Ok(()),
        }
    }

    /// Runs the denoising loop for `prompt`, calling `on_step` after every step.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_step: &mut dyn FnMut(&StepEvent) -> Control,
    ) -> Result<Generation> {
        params.validate()?;
        self.check_tokens(prompt)?;
        if prompt.is_empty() {
            return Err(Error::Params(
                "the prompt must hold at least one token".into(),
            ));
        }
        let context = self.model.context_length();
        if prompt.len() + params.max_new_tokens > context {
            return Err(Error::ContextOverflow {
                prompt: prompt.len(),
                new: params.max_new_tokens,
                context,
            });
        }
        let start = Instant::now();
        let mask = self.model.special.mask;
        let mut canvas: Vec<u32> = prompt.to_vec();
        canvas.resize(prompt.len() + params.max_new_tokens, mask);
        let mut out = Generation {
            tokens: Vec::new(),
            canvas: Vec::new(),
            prompt_len: prompt.len(),
            steps: 0,
            forward_passes: 0,
            commits: Vec::new(),
            cancelled: false,
            seconds: 0.0,
            bytes_to_host: 0,
            timings: Timings::default(),
            rows_per_pass: Vec::new(),
            block_starts: Vec::new(),
            forced: Vec::new(),
            cache_bytes: 0,
        };
        if params.is_fast() {
            crate::fast::generate(self, &mut canvas, params, on_step, &mut out)?;
        } else {
            self.generate_exact(&mut canvas, params, on_step, &mut out)?;
        }
        out.tokens = canvas[prompt.len()..].to_vec();
        out.canvas = canvas;
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Dream's loop (docs/model.md §4) over `canvas` (prompt + masks), recording into `out`.
    fn generate_exact(
        &mut self,
        canvas: &mut [u32],
        params: &GenerateParams,
        on_step: &mut dyn FnMut(&StepEvent) -> Control,
        out: &mut Generation,
    ) -> Result<()> {
        let mask = self.model.special.mask;
        let prompt_len = out.prompt_len;
        let len = canvas.len();
        self.forward_for(len)?;
        let Generator {
            forward,
            backend,
            pool,
            ..
        } = self;
        let forward = forward.as_mut().expect("built above");
        // Count only this generation's copies (not those of earlier `logits` calls).
        forward.pass().take_bytes_to_host();

        let block = params.block_length.unwrap_or(params.max_new_tokens);
        let n_blocks = params.max_new_tokens / block;
        let steps_per_block = params.steps / n_blocks;
        let ts = timesteps(steps_per_block, params.eps);
        let filter = params.filter();
        let kind = params.alg.confidence();
        let mut rng = Rng::new(params.seed);
        'blocks: for b in 0..n_blocks {
            let lo = prompt_len + b * block;
            let hi = lo + block;
            for i in 0..steps_per_block {
                let masked: Vec<usize> = (lo..hi).filter(|&p| canvas[p] == mask).collect();
                // Positions whose predictions this step can use: all masked ones, or for `origin`
                // those that win their reveal draw.
                let (candidates, k) = if params.alg == Algorithm::Origin {
                    let p = reveal_probability(i, steps_per_block, &ts);
                    let chosen: Vec<usize> = masked
                        .iter()
                        .copied()
                        .filter(|_| rng.uniform() < f64::from(p))
                        .collect();
                    let n = chosen.len();
                    (chosen, n)
                } else {
                    let k = transfer_count(masked.len(), i, steps_per_block, &ts);
                    (masked, k)
                };
                let mut committed: Vec<(usize, u32)> = Vec::new();
                if k > 0 && !candidates.is_empty() {
                    let body_start = Instant::now();
                    forward.run_body(canvas, backend)?;
                    out.forward_passes += 1;
                    out.rows_per_pass.push(len);
                    let head_start = Instant::now();
                    out.timings.body += (head_start - body_start).as_secs_f64();
                    let uniforms: Vec<f64> = candidates.iter().map(|_| rng.uniform()).collect();
                    // The logits shift: position p is predicted by the hidden state at p - 1.
                    let rows: Vec<usize> = candidates.iter().map(|&p| p - 1).collect();
                    let pass = forward.pass();
                    let scored: Vec<Scored> =
                        pass.score_rows(&rows, &filter, kind, &uniforms, backend, pool)?;
                    out.bytes_to_host += pass.take_bytes_to_host();
                    out.timings.head_and_scoring += head_start.elapsed().as_secs_f64();
                    let chosen = if params.alg == Algorithm::Origin {
                        (0..candidates.len()).collect()
                    } else {
                        choose_positions(&scored, k, params.alg_temp, &mut rng)
                    };
                    for j in chosen {
                        canvas[candidates[j]] = scored[j].token;
                        committed.push((candidates[j], scored[j].token));
                    }
                    committed.sort_unstable();
                }
                out.steps += 1;
                out.commits
                    .push(committed.iter().map(|&(p, _)| p).collect());
                let event = StepEvent {
                    step: b * steps_per_block + i,
                    total_steps: params.steps,
                    committed: &committed,
                    canvas,
                    prompt_len,
                };
                if on_step(&event) == Control::Cancel {
                    out.cancelled = true;
                    break 'blocks;
                }
            }
        }
        Ok(())
    }
}

/// Indices (into `scored`) of the `k` positions to commit: the most confident, ties broken by the
/// lower position (candidates are in increasing position order), or with `alg_temp > 0` a draw of
/// `k` without replacement from softmax(confidence / alg_temp).
pub(crate) fn choose_positions(
    scored: &[Scored],
    k: usize,
    alg_temp: f32,
    rng: &mut Rng,
) -> Vec<usize> {
    let k = k.min(scored.len());
    if alg_temp == 0.0 {
        let mut order: Vec<usize> = (0..scored.len()).collect();
        order.sort_by(|&a, &b| {
            scored[b]
                .confidence
                .total_cmp(&scored[a].confidence)
                .then(a.cmp(&b))
        });
        order.truncate(k);
        return order;
    }
    let scaled: Vec<f64> = scored
        .iter()
        .map(|s| f64::from(s.confidence / alg_temp))
        .collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut weights: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = weights.iter().sum();
        let target = rng.uniform() * total;
        let mut acc = 0.0;
        let mut pick = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        for (j, &w) in weights.iter().enumerate() {
            acc += w;
            if w > 0.0 && acc > target {
                pick = j;
                break;
            }
        }
        chosen.push(pick);
        weights[pick] = 0.0;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(conf: &[f32]) -> Vec<Scored> {
        conf.iter()
            .map(|&c| Scored {
                token: 0,
                confidence: c,
            })
            .collect()
    }

    #[test]
    fn top_k_breaks_ties_by_lower_position() {
        let s = scored(&[0.5, 0.9, 0.9, 0.1, 0.9]);
        let mut rng = Rng::new(0);
        assert_eq!(choose_positions(&s, 2, 0.0, &mut rng), vec![1, 2]);
        assert_eq!(choose_positions(&s, 4, 0.0, &mut rng), vec![1, 2, 4, 0]);
    }

    #[test]
    fn alg_temp_draws_distinct_positions() {
        let s = scored(&[0.5, 0.9, 0.9, 0.1, 0.9]);
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut c = choose_positions(&s, 3, 0.5, &mut rng);
            c.sort();
            c.dedup();
            assert_eq!(c.len(), 3);
        }
    }

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
