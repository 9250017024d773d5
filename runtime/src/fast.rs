//! The approximate fast-decoding modes (docs/fast-decoding.md §3-§5), after
//! Fast-dLLM's published Dream code, opt-in through [`GenerateParams::cache`] and
//! [`GenerateParams::threshold`]. Exact decoding (`crate::generate`) stays the default.
//!
//! - **Cached block loop** (`cache` prefix or dual, §3): the new tokens are decoded in blocks,
//!   left to right. Each block starts with a refresh (a full pass that keeps every layer's keys
//!   and values) which commits the block's first position whatever its confidence; then cached
//!   passes ([`CachedPass`]) run the block (dual) or the block and everything after it (prefix)
//!   against the cache. Their logits are shifted within the run (run row `j` predicts run
//!   position `j + 1`; the run's first position keeps its own row). Only the block's masked
//!   positions are candidates.
//!   - with a `threshold`: candidates are ranked by the probability of their predicted token
//!     (whatever `alg` says, as Fast-dLLM does); the first is always committed, and every other
//!     whose probability is at least the threshold; the block ends when no mask is left.
//!   - without: `steps / n_blocks` steps per block (at least 2: validated), the refresh being the
//!     first; cached step `i` (from 1) commits `int(n_masked * (1 - s/t))` of the block's masked
//!     positions by `alg`'s confidence (the published code always uses entropy here; we follow
//!     `alg`), all remaining at the last step. The published loop checks for the end of its step
//!     budget only after a pass, so a block whose positions were committed as the mask token runs
//!     one more (useless) pass; we do the same, for identical results.
//! - **No-cache parallel decoding** (`threshold` without a cache, §5): every step runs the whole
//!   canvas; `max_new_tokens / steps` positions are due per step plus those carried over; the most
//!   confident is always committed, the others only at or above the threshold, the rest carried
//!   over; a rejection on the last step adds one more step (repeatedly, until done).
//!
//! **Progress rule** (ours; the published code can loop forever here, §4): a prediction equal to
//! the mask token leaves its position masked. When every position a threshold iteration commits
//! received the mask token, the first-ranked one instead takes its highest-logit token other than
//! the mask token, so every iteration commits a real token and the loop ends. Such replacements
//! are reported in [`Generation::forced`].

use crate::generate::{
    CacheMode, Control, GenerateParams, Generation, Generator, PassKind, StepEvent,
};
use crate::head::{Pass, HEAD_ROWS};
use crate::kv_cache::{cache_bytes, CachedPass};
use crate::positions::{choose_positions, ranked};
use crate::rng::Rng;
use crate::sampler::{Confidence, Scored};
use crate::schedule::{timesteps, transfer_count};
use crate::Result;
use std::time::Instant;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::TensorSource;

/// Runs the fast mode `params` selects over `canvas` (prompt + masks), recording into `out`.
pub(crate) fn generate<W: TensorSource>(
    generator: &mut Generator<W>,
    canvas: &mut [u32],
    params: &GenerateParams,
    on_step: &mut dyn FnMut(&StepEvent) -> Control,
    out: &mut Generation,
) -> Result<()> {
    match params.cache {
        CacheMode::None => parallel(generator, canvas, params, on_step, out),
        CacheMode::Prefix | CacheMode::Dual => blocks(generator, canvas, params, on_step, out),
    }
}

/// Records one forward pass's commits (positions ascending) and tells the callback; returns
/// whether to go on.
fn record(
    out: &mut Generation,
    canvas: &[u32],
    mut committed: Vec<(usize, u32)>,
    total_steps: usize,
    on_step: &mut dyn FnMut(&StepEvent) -> Control,
) -> bool {
    committed.sort_unstable();
    let step = out.steps;
    out.steps += 1;
    out.commits
        .push(committed.iter().map(|&(p, _)| p).collect());
    let event = StepEvent {
        step,
        total_steps,
        committed: &committed,
        canvas,
        prompt_len: out.prompt_len,
    };
    if on_step(&event) == Control::Cancel {
        out.cancelled = true;
        return false;
    }
    true
}

/// The candidates of one pass: canvas positions, the hidden rows of the pass that predict them,
/// and their scores.
struct Picked {
    positions: Vec<usize>,
    rows: Vec<usize>,
    scored: Vec<Scored>,
}

/// Writes the `chosen` candidates' predictions to the canvas and returns the (position, token)
/// pairs committed. `first` is the first-ranked candidate of a threshold pass, which the progress
/// rule (module documentation) gives its best real token when every chosen prediction is the
/// mask token; the replacement is recorded in `out.forced`.
#[allow(clippy::too_many_arguments)]
fn commit(
    pass: &mut Pass,
    backend: &mut Backend,
    canvas: &mut [u32],
    picked: &Picked,
    chosen: Vec<usize>,
    first: Option<usize>,
    mask: u32,
    out: &mut Generation,
) -> Result<Vec<(usize, u32)>> {
    let mut committed: Vec<(usize, u32)> = chosen
        .iter()
        .map(|&j| (picked.positions[j], picked.scored[j].token))
        .collect();
    if let Some(first) = first {
        if committed.iter().all(|&(_, t)| t == mask) {
            let token = pass.best_token_except(picked.rows[first], mask, backend)?;
            let position = picked.positions[first];
            out.forced.push((out.forward_passes - 1, position, token));
            for c in committed.iter_mut().filter(|c| c.0 == position) {
                c.1 = token;
            }
        }
    }
    for &(p, t) in &committed {
        canvas[p] = t;
    }
    Ok(committed)
}

/// Uniform draws for `n` scored rows (used only when sampling).
fn draws(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.uniform()).collect()
}

/// The cached block loop (see the module documentation).
fn blocks<W: TensorSource>(
    generator: &mut Generator<W>,
    canvas: &mut [u32],
    params: &GenerateParams,
    on_step: &mut dyn FnMut(&StepEvent) -> Control,
    out: &mut Generation,
) -> Result<()> {
    let mask = generator.model.special.mask;
    let prompt_len = out.prompt_len;
    let len = canvas.len();
    let block = params.cache_block();
    let n_blocks = params.max_new_tokens / block;
    let steps_per_block = params.steps / n_blocks;
    let ts = timesteps(steps_per_block, params.eps);
    let filter = params.filter();
    // The threshold compares the predicted token's probability, whatever `alg` says.
    let kind = match params.threshold {
        Some(_) => Confidence::Probability,
        None => params.alg.confidence(),
    };
    // Upper bound of the passes with a threshold: every pass commits at least one token.
    let total_steps = match params.threshold {
        Some(_) => params.max_new_tokens,
        None => params.steps,
    };
    let mut rng = Rng::new(params.seed);
    generator.forward_with(len, true)?;
    let run_rows = |lo: usize| match params.cache {
        CacheMode::Dual => block,
        _ => len - lo,
    };
    // Build every run length's pass up front (prefix: one per block), so that no graph is
    // built between steps; they are reused by later generations of the same length.
    for b in 0..n_blocks {
        let rows = run_rows(prompt_len + b * block);
        if !generator.cached.iter().any(|c| c.rows == rows) {
            let Generator {
                model,
                backend,
                forward,
                cached,
                ..
            } = &mut *generator;
            let refresh = forward.as_ref().expect("built above");
            let head_rows = block.min(HEAD_ROWS);
            cached.push(CachedPass::new(model, refresh, rows, head_rows, backend)?);
        }
    }
    let Generator {
        backend,
        pool,
        forward,
        cached,
        ..
    } = generator;
    let forward = forward.as_mut().expect("built above");
    forward.pass().take_bytes_to_host();
    for c in cached.iter_mut() {
        c.pass().take_bytes_to_host();
    }
    let (graph, kv) = forward.kv();
    out.cache_bytes = cache_bytes(kv, graph)?;

    for b in 0..n_blocks {
        let lo = prompt_len + b * block;
        let hi = lo + block;
        out.block_starts.push(lo);
        // Refresh: the whole canvas, keeping keys and values; the block's first position is
        // committed from it whatever its confidence.
        let t0 = Instant::now();
        forward.run_body(canvas, backend)?;
        let t1 = Instant::now();
        let u = draws(&mut rng, 1);
        let refresh = forward.pass();
        let scored = refresh.score_rows(&[lo - 1], &filter, kind, &u, backend, pool)?;
        canvas[lo] = scored[0].token;
        out.bytes_to_host += refresh.take_bytes_to_host();
        out.count_pass(PassKind::Refresh, len, (t1 - t0).as_secs_f64());
        out.timings.head_and_scoring += t1.elapsed().as_secs_f64();
        if !record(out, canvas, vec![(lo, canvas[lo])], total_steps, on_step) {
            return Ok(());
        }

        let rows = run_rows(lo);
        let pass = cached
            .iter_mut()
            .find(|c| c.rows == rows)
            .expect("built above");
        let mut i = 1;
        loop {
            let t0 = Instant::now();
            pass.run(canvas, lo, backend)?;
            let t1 = Instant::now();
            out.count_pass(PassKind::Cached, rows, (t1 - t0).as_secs_f64());
            if params.threshold.is_none() && i == steps_per_block {
                // The step budget is checked after the pass, as the published loop does.
                if !record(out, canvas, Vec::new(), total_steps, on_step) {
                    return Ok(());
                }
                break;
            }
            let candidates: Vec<usize> = (lo..hi).filter(|&p| canvas[p] == mask).collect();
            // Shift within the run: run row j predicts position lo + j + 1; lo keeps row 0.
            let rows: Vec<usize> = candidates
                .iter()
                .map(|&p| (p - lo).saturating_sub(1))
                .collect();
            let u = draws(&mut rng, candidates.len());
            let scored = pass
                .pass()
                .score_rows(&rows, &filter, kind, &u, backend, pool)?;
            // With a threshold, the first-ranked candidate (always committed).
            let mut first = None;
            let chosen: Vec<usize> = match params.threshold {
                Some(threshold) => {
                    let order = ranked(&scored);
                    first = order.first().copied();
                    order
                        .iter()
                        .enumerate()
                        .filter(|&(rank, &j)| rank == 0 || scored[j].confidence >= threshold)
                        .map(|(_, &j)| j)
                        .collect()
                }
                None => {
                    let k = transfer_count(candidates.len(), i, steps_per_block, &ts);
                    i += 1;
                    choose_positions(&scored, k, params.alg_temp, &mut rng)
                }
            };
            let picked = Picked {
                positions: candidates,
                rows,
                scored,
            };
            let pass = pass.pass();
            let committed = commit(pass, backend, canvas, &picked, chosen, first, mask, out)?;
            out.bytes_to_host += pass.take_bytes_to_host();
            out.timings.head_and_scoring += t1.elapsed().as_secs_f64();
            if !record(out, canvas, committed, total_steps, on_step) {
                return Ok(());
            }
            if (lo..hi).all(|p| canvas[p] != mask) {
                break;
            }
        }
    }
    Ok(())
}

/// No-cache parallel decoding (see the module documentation).
fn parallel<W: TensorSource>(
    generator: &mut Generator<W>,
    canvas: &mut [u32],
    params: &GenerateParams,
    on_step: &mut dyn FnMut(&StepEvent) -> Control,
    out: &mut Generation,
) -> Result<()> {
    let threshold = params
        .threshold
        .expect("parallel decoding is chosen by a threshold");
    let mask = generator.model.special.mask;
    let prompt_len = out.prompt_len;
    let len = canvas.len();
    let filter = params.filter();
    let mut rng = Rng::new(params.seed);
    generator.forward_for(len)?;
    let Generator {
        backend,
        pool,
        forward,
        ..
    } = generator;
    let forward = forward.as_mut().expect("built above");
    forward.pass().take_bytes_to_host();
    let mut per_step = params.max_new_tokens / params.steps;
    let mut steps = params.steps;
    let mut left = 0usize;
    let mut i = 0usize;
    while i < steps {
        let candidates: Vec<usize> = (prompt_len..len).filter(|&p| canvas[p] == mask).collect();
        if candidates.is_empty() {
            break;
        }
        let t0 = Instant::now();
        forward.run_body(canvas, backend)?;
        let t1 = Instant::now();
        out.count_pass(PassKind::Full, len, (t1 - t0).as_secs_f64());
        let rows: Vec<usize> = candidates.iter().map(|&p| p - 1).collect();
        let u = draws(&mut rng, candidates.len());
        let scored = forward.pass().score_rows(
            &rows,
            &filter,
            Confidence::Probability,
            &u,
            backend,
            pool,
        )?;
        let order = ranked(&scored);
        let due = per_step + left;
        left = 0;
        let mut chosen = Vec::with_capacity(due);
        for rank in 0..due {
            // Ranks past the candidates stand for positions of confidence -inf in the
            // published code: always below the threshold.
            let above = order
                .get(rank)
                .is_some_and(|&j| rank == 0 || scored[j].confidence >= threshold);
            if above {
                chosen.push(order[rank]);
            } else {
                if i + 1 >= steps {
                    // A rejection on the last step: one more step, for the carried-over only.
                    per_step = 0;
                    steps += 1;
                }
                left += 1;
            }
        }
        let first = chosen.first().copied();
        let picked = Picked {
            positions: candidates,
            rows,
            scored,
        };
        let pass = forward.pass();
        let committed = commit(pass, backend, canvas, &picked, chosen, first, mask, out)?;
        out.bytes_to_host += pass.take_bytes_to_host();
        out.timings.head_and_scoring += t1.elapsed().as_secs_f64();
        if !record(out, canvas, committed, steps, on_step) {
            return Ok(());
        }
        i += 1;
    }
    Ok(())
}

impl<W: TensorSource> Generator<W> {
    /// Raw (unshifted) logits of a cached pass, row-major `[rows, n_vocab]`, for tests of the
    /// cache in isolation: a refresh over `refresh_canvas` keeps every layer's keys and values,
    /// then the run rows of `run_canvas` (prefix: `lo..len`; dual: `lo..hi`) go through the
    /// layers against them.
    pub fn cached_logits(
        &mut self,
        refresh_canvas: &[u32],
        run_canvas: &[u32],
        cache: CacheMode,
        lo: usize,
        hi: usize,
    ) -> Result<Vec<f32>> {
        let len = refresh_canvas.len();
        if run_canvas.len() != len || lo >= len || lo == 0 {
            return Err(crate::Error::Params(format!(
                "canvases of {len} and {} tokens with a run from {lo}",
                run_canvas.len()
            )));
        }
        for &t in refresh_canvas.iter().chain(run_canvas) {
            if t as usize >= self.model.n_vocab {
                return Err(crate::Error::BadToken(t));
            }
        }
        let rows = match cache {
            CacheMode::Prefix => len - lo,
            CacheMode::Dual if hi > lo && hi <= len => hi - lo,
            _ => {
                return Err(crate::Error::Params(format!(
                    "no cached pass for cache {} over {lo}..{hi}",
                    cache.name()
                )))
            }
        };
        self.forward_with(len, true)?;
        if !self.cached.iter().any(|c| c.rows == rows) {
            let refresh = self.forward.as_ref().expect("built above");
            let pass = CachedPass::new(&self.model, refresh, rows, HEAD_ROWS, &self.backend)?;
            self.cached.push(pass);
        }
        let Generator {
            backend,
            forward,
            cached,
            ..
        } = self;
        forward
            .as_mut()
            .expect("built above")
            .run_body(refresh_canvas, backend)?;
        let pass = cached
            .iter_mut()
            .find(|c| c.rows == rows)
            .expect("built above");
        pass.run(run_canvas, lo, backend)?;
        let mut out = Vec::new();
        let all: Vec<usize> = (0..rows).collect();
        pass.pass().logits_rows(&all, backend, |_, chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}
