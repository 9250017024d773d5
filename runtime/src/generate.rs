//! The denoising loop of docs/model.md §4: a fixed canvas of prompt + masks; at each step the masked
//! positions are scored from the shifted logits and the most confident ones (or, for `origin`,
//! random ones) are committed, never to be re-masked. Block-wise scheduling denoises the canvas
//! in blocks, left to right. The approximate fast-decoding modes (key/value caches, parallel
//! decoding) are opt-in ([`CacheMode`], `threshold`) and live in `crate::fast`.

use crate::canvas::CanvasContext;
use crate::kv_cache::CachedPass;
use crate::model::Model;
pub use crate::params::{Algorithm, CacheMode, GenerateParams, DEFAULT_CACHE_BLOCK, DEFAULT_TOP_K};
use crate::positions::choose_positions;
use crate::rng::Rng;
use crate::sampler::Scored;
use crate::schedule::{reveal_probability, timesteps, transfer_count};
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use unmask_kernels::backend::Backend;
use unmask_kernels::device::Placement;
use unmask_kernels::graph::TensorSource;
use unmask_kernels::weights::Weights;

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

/// The kinds of forward pass, for [`Generation::count_pass`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PassKind {
    /// The whole canvas, nothing kept (exact decoding, no-cache parallel decoding).
    Full,
    /// The whole canvas, keys and values kept (cached modes).
    Refresh,
    /// Some rows against the kept keys and values.
    Cached,
}

impl Generation {
    /// Counts one forward pass of `kind` over `rows` rows whose layers took `seconds`.
    pub(crate) fn count_pass(&mut self, kind: PassKind, rows: usize, seconds: f64) {
        self.forward_passes += 1;
        self.rows_per_pass.push(rows);
        self.timings.body += seconds;
        match kind {
            PassKind::Full => {}
            PassKind::Refresh => {
                self.timings.refresh += seconds;
                self.timings.refresh_passes += 1;
            }
            PassKind::Cached => {
                self.timings.cached += seconds;
                self.timings.cached_passes += 1;
            }
        }
    }
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
    pub(crate) backend: Backend,
    pub(crate) pool: rayon::ThreadPool,
    pub(crate) forward: Option<CanvasContext>,
    /// Cached passes over the current refresh graph, one per run length (they read its keys
    /// and values in place, so they are dropped whenever it is rebuilt).
    pub(crate) cached: Vec<CachedPass>,
    /// Set by a [`Canceller`] to stop the running generation.
    cancel: Arc<AtomicBool>,
}

/// Stops the generation running on a [`Generator`] from any thread: the CPU backend stops the
/// graph being computed at its next node, a device backend at the end of the graph, and the
/// loop returns the canvas of the steps completed, with `cancelled` set.
#[derive(Clone, Debug)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Stops the running generation. Every generation starts uncancelled, so a cancel while
    /// none runs has no effect: a "stop" that comes just after a generation ended never stops
    /// the next one (and one that comes just before a generation begins its first step may be
    /// missed: cancel again while it runs).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl<W: TensorSource> Generator<W> {
    pub fn new(model: Arc<Model<W>>, threads: usize) -> Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Model(format!("cannot start {threads} worker threads: {e}")))?;
        let mut backend = match &model.placement {
            Placement::Cpu => Backend::new(threads)?,
            Placement::Device(device) => Backend::on_device(device, threads)?,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        // Without the backend's abort callback, the flag is still read after every step.
        backend.set_abort_flag(cancel.clone());
        Ok(Generator {
            model,
            backend,
            pool,
            forward: None,
            cached: Vec::new(),
            cancel,
        })
    }

    /// A handle that cancels this generator's running generation from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Name of the device the graphs run on (`CPU`, `CUDA0`, ...).
    pub fn device_name(&self) -> &str {
        self.backend.name()
    }

    pub fn model(&self) -> &Arc<Model<W>> {
        &self.model
    }

    /// The graphs for a canvas of `len` tokens (built on first use, then reused).
    pub fn forward_for(&mut self, len: usize) -> Result<&mut CanvasContext> {
        self.forward_with(len, false)
    }

    /// The graphs for a canvas of `len` tokens; with `keep_kv` a refresh pass that keeps every
    /// layer's keys and values for cached passes (a plain forward that has them is reused too).
    pub(crate) fn forward_with(&mut self, len: usize, keep_kv: bool) -> Result<&mut CanvasContext> {
        let fits = |f: &CanvasContext| f.len == len && (!keep_kv || !f.kv().1.is_empty());
        if !self.forward.as_ref().is_some_and(fits) {
            // Free the old graphs (and the cached passes reading them) before building new ones.
            self.cached.clear();
            self.forward = None;
            self.forward = Some(CanvasContext::new(
                &self.model,
                len,
                keep_kv,
                &self.backend,
            )?);
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
        self.cancel.store(false, Ordering::Relaxed);
        let cancel = self.cancel.clone();
        let on_step = &mut |event: &StepEvent| {
            let answer = on_step(event);
            if cancel.load(Ordering::Relaxed) {
                Control::Cancel
            } else {
                answer
            }
        };
        let run = if params.is_fast() {
            crate::fast::generate(self, &mut canvas, params, on_step, &mut out)
        } else {
            self.generate_exact(&mut canvas, params, on_step, &mut out)
        };
        match run {
            // A step stopped inside a graph: the canvas holds the steps completed before it.
            Err(Error::Kernels(unmask_kernels::Error::Aborted)) => out.cancelled = true,
            other => other?,
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
                    let head_start = Instant::now();
                    out.count_pass(PassKind::Full, len, (head_start - body_start).as_secs_f64());
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
