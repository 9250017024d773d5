//! `unmask-train sft`: masked-diffusion supervised fine-tuning and pretraining (docs/training.md
//! §6). The data and how it becomes sequences: [`crate::sft_data`], re-exported here.
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
use crate::device::training_backend;
use crate::grad::{sft_rows, SftOptions, SftRow};
use crate::lr_schedule::CosineSchedule;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::optim::{accumulate, clip_grad_norm, AdamW, AdamWConfig};
use crate::policy::Policy;
use crate::run_config::{Norm, SftConfig};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::safetensors::Dtype;
use unmask_kernels::backend::Backend;
use unmask_runtime::rng::{splitmix64, Rng};

pub use crate::sft_data::{
    expand_folders, load_data, load_examples, pair_example, DataFormat, DataOptions, DataReport,
    Example, FileReport,
};

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
    let threads = crate::run_config::threads_or_default(cfg.threads);
    let (_, mut backend) = training_backend(cfg.device.as_deref(), threads)?;
    let latest = checkpoint::prepare_out(&out, resume)?;
    let mut policy = Policy::load_hf_on(&model_dir, Some(&backend))?;
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
            response_len: cfg.response_len,
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
