//! `unmask-train grpo`: coupled-GRPO training (docs/training.md §1).
//!
//! One round:
//! 1. take `B = prompts_per_round` tasks (a seeded per-epoch order over the task file, as SFT's
//!    data order); each prompt is the Instruct chat prompt of [`Task::prompt_text`], keeping its
//!    last `prompt_tokens` tokens ([`rollout::prompt_ids`](crate::rollout::prompt_ids));
//! 2. generate `G = num_generations` completions per prompt with the CURRENT f32 policy
//!    ([`rollout::rollouts`](crate::rollout::rollouts): the runtime's denoising loop, `completion_tokens` long,
//!    `diffusion_steps` steps, entropy order, temperature / top-p as configured) from the round's
//!    own rollout generator; `completion_mask` covers the tokens up to and including the first
//!    `<|im_end|>`;
//! 3. score them: the code reward (§3, [`reward::score_batch_in`](crate::reward::score_batch_in) on the decoded completion, in
//!    the sandbox) or the toy reward `toy-even-ids` (fraction of even token ids within the mask);
//! 4. group advantages ([`advantage::batch_advantages`](crate::advantage::batch_advantages): mean or leave-one-out baseline, optional
//!    std scaling);
//! 5. draw `mu` mask seeds (seed `j` for inner iteration `j`); with no gradient, `old_logp[j]`
//!    with the current parameters for `j >= 1` when `mu > 1` (for `j = 0` the parameters have
//!    not moved yet, so `old = logp.detach()`, ratio 1, exactly as passing the identical value) and
//!    `ref_logp[j]` with the reference policy when `beta > 0`, on the same masks
//!    ([`masks::coupled_masks`](crate::masks::coupled_masks): one `t` per round batch and seed);
//! 6. `mu` optimizer updates on the same rollouts: the round's completions are split into
//!    micro-batches of `micro_batch` completions of one prompt (they share the prompt, hence the
//!    length); each micro-batch's coupled-GRPO loss (normalised by its own completion tokens,
//!    as TRL does per device batch) and exact gradients come from [`grad::coupled_grpo`](crate::grad::coupled_grpo)
//!    (arrays built in memory); gradients are averaged over the micro-batches, clipped by global
//!    norm, and AdamW steps with the cosine schedule;
//! 7. every `ref_sync_steps` updates: `ref <- alpha * theta + (1 - alpha) * ref`.
//!
//! The reference policy is a second f32 copy of the initial weights (only when `beta > 0`).
//!
//! Randomness: the prompt order comes from `(seed, epoch)`, the rollout generator of round `r`
//! from `(seed, r)`, mask seed `j` of round `r` from `(seed, r, j)`. Checkpoints are written at
//! round boundaries only (the end of the first round at or after every `save_every` updates, and
//! the end) and hold the step, the prompt cursor and, with `beta > 0`, the reference weights, so
//! `--resume` repeats an uninterrupted run.
//!
//! Metrics: one JSON line per update in `OUT/metrics.jsonl` ([`GrpoMetrics`]).

use crate::advantage::{batch_advantages, AdvantageConfig, Baseline};
use crate::checkpoint::{self, SaveDtype, TrainerState};
use crate::device::training_backend;
use crate::grad::{coupled_grpo, coupled_logp};
use crate::lr_schedule::CosineSchedule;
use crate::masks::coupled_masks;
use crate::metrics::MetricsLog;
use crate::optim::{accumulate, clip_grad_norm, AdamW, AdamWConfig};
use crate::policy::Policy;
use crate::reward::score_batch_in;
use crate::rollout::{prompt_ids, rollouts, Rollout, RolloutParams};
use crate::run_config::{BaselineArg, GrpoConfig, RewardKind};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sft::{derived_rng, example_at};
use crate::tasks::{load_tasks, Task};
use crate::tensor_file::Array;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::safetensors::Dtype;
use unmask_runtime::ModelSpec;

const TAG_ROLLOUT: u64 = 11;
const TAG_MASK_SEED: u64 = 12;

/// One line of `metrics.jsonl` of a GRPO run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpoMetrics {
    /// 1-based update number.
    pub step: u64,
    /// 0-based round of the update.
    pub round: u64,
    /// Mean and (population) std of the round's rewards.
    pub reward_mean: f64,
    pub reward_std: f64,
    /// The update's loss (mean over its micro-batches).
    pub loss: f64,
    /// Mean k3 KL to the reference over completion tokens (0 when beta = 0).
    pub kl: f64,
    /// Fraction of completion tokens whose clipped surrogate branch is active.
    pub clip_fraction: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Sequence tokens of the update's forward/backward passes per second (three passes per
    /// sequence counted once).
    pub tokens_per_s: f64,
    /// Wall time of the update (gradients and optimizer step).
    pub seconds: f64,
    /// Wall time of the round's rollouts, rewards and old/reference estimates.
    pub rollout_seconds: f64,
    /// Mean completion length within the completion mask.
    pub completion_len: f64,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub resumed_from: u64,
    pub final_step: u64,
    pub final_checkpoint: PathBuf,
    pub last_reward_mean: Option<f64>,
}

/// The toy reward `toy-even-ids`: the fraction of completion tokens (within `mask`) whose id is
/// even (0 for an empty mask).
pub fn toy_even_ids_reward(ids: &[u32], mask: &[f64]) -> f64 {
    let (mut even, mut total) = (0.0, 0.0);
    for (&id, &m) in ids.iter().zip(mask) {
        if m > 0.0 {
            total += m;
            if id % 2 == 0 {
                even += m;
            }
        }
    }
    if total > 0.0 {
        even / total
    } else {
        0.0
    }
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

/// The scorer of completions.
enum Scorer {
    Toy,
    Code {
        // Boxed: the sandbox is large and the other variant is empty.
        sandbox: Box<Sandbox>,
        pool: rayon::ThreadPool,
        tokenizer: Box<tokenizers::Tokenizer>,
    },
}

impl Scorer {
    fn new(cfg: &GrpoConfig, model_dir: &Path) -> Result<Self> {
        match cfg.reward {
            RewardKind::ToyEvenIds => Ok(Scorer::Toy),
            RewardKind::Code => {
                let mut sc = SandboxConfig {
                    python: cfg.python.clone(),
                    ..Default::default()
                };
                sc.limits.wall = std::time::Duration::from_secs_f64(cfg.reward_timeout);
                sc.limits.cpu_seconds = cfg.reward_timeout.ceil() as u64;
                let sandbox = Sandbox::new(sc)?;
                let jobs = cfg
                    .reward_jobs
                    .unwrap_or_else(unmask_kernels::backend::default_threads);
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(jobs.max(1))
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("thread pool: {e}")))?;
                let path = model_dir.join("tokenizer.json");
                let tokenizer = tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
                Ok(Scorer::Code {
                    sandbox: Box::new(sandbox),
                    pool,
                    tokenizer: Box::new(tokenizer),
                })
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Scorer::Toy => "reward: toy-even-ids".into(),
            Scorer::Code { sandbox, .. } => format!("reward: code, sandbox {}", sandbox.describe()),
        }
    }

    /// One reward per rollout; `tasks[r.prompt_index]` is the task of rollout `r`.
    fn score(&self, rollouts: &[Rollout], tasks: &[&Task]) -> Result<Vec<f64>> {
        match self {
            Scorer::Toy => Ok(rollouts
                .iter()
                .map(|r| toy_even_ids_reward(&r.completion_ids, &r.completion_mask))
                .collect()),
            Scorer::Code {
                sandbox,
                pool,
                tokenizer,
            } => {
                let texts = rollouts
                    .iter()
                    .map(|r| {
                        let kept: Vec<u32> = r
                            .completion_ids
                            .iter()
                            .zip(&r.completion_mask)
                            .filter(|(_, &m)| m > 0.0)
                            .map(|(&t, _)| t)
                            .collect();
                        tokenizer
                            .decode(&kept, false)
                            .map_err(|e| Error::InvalidArgument(format!("decode: {e}")))
                    })
                    .collect::<Result<Vec<String>>>()?;
                let items: Vec<(&Task, &str)> = rollouts
                    .iter()
                    .zip(&texts)
                    .map(|(r, t)| (tasks[r.prompt_index], t.as_str()))
                    .collect();
                score_batch_in(pool, sandbox, &items)
                    .into_iter()
                    .map(|s| s.map(|s| s.reward))
                    .collect()
            }
        }
    }
}

/// A micro-batch: rows of the round (indices into the rollouts) that share one prompt.
struct MicroBatch {
    rows: Vec<usize>,
    prompt_len: usize,
    seqs: Vec<Vec<u32>>,
}

/// `mask_a` `[n, K]` and `t` per row of a micro-batch from the round's masks of one seed.
fn micro_masks(masks: &[crate::masks::CoupledMasks], mb: &MicroBatch) -> (Vec<bool>, Vec<f64>) {
    let mut mask_a = Vec::new();
    let mut t = Vec::new();
    for &r in &mb.rows {
        let m = &masks[r];
        mask_a.extend_from_slice(&m.v_a[m.prompt_len..]);
        t.push(m.t);
    }
    (mask_a, t)
}

fn array(shape: Vec<usize>, data: Vec<f64>) -> Array {
    Array { shape, data }
}

/// `ref <- alpha * theta + (1 - alpha) * ref`.
fn sync_reference(reference: &mut Policy, policy: &Policy, alpha: f64) -> Result<()> {
    let store = Arc::get_mut(&mut reference.params).ok_or_else(|| {
        Error::InvalidArgument("the reference parameters are still used by a graph".into())
    })?;
    for spec in &policy.specs {
        let theta = policy.params.get(&spec.gguf_name)?;
        let old = store.get(&spec.gguf_name)?;
        let mixed: Vec<f32> = theta
            .iter()
            .zip(old.iter())
            .map(|(&a, &b)| (alpha * a as f64 + (1.0 - alpha) * b as f64) as f32)
            .collect();
        store.set(&spec.gguf_name, &mixed)?;
    }
    Ok(())
}

/// Runs coupled-GRPO as configured; with `resume`, continues from the latest complete checkpoint
/// in `out` (a fresh run refuses an `out` that already has checkpoints).
pub fn train(cfg: &GrpoConfig, resume: bool) -> Result<Summary> {
    cfg.validate()?;
    let model_dir = cfg.model.clone().unwrap_or_default();
    let out = cfg.out.clone().unwrap_or_default();
    let threads = crate::run_config::threads_or_default(cfg.threads);
    let (placement, mut backend) = training_backend(cfg.device.as_deref(), threads)?;
    let latest = checkpoint::prepare_out(&out, resume)?;
    let mut policy = Policy::load_hf_on(&model_dir, Some(&backend))?;
    let mut reference = if cfg.beta > 0.0 {
        Some(Policy::load_hf_on(&model_dir, Some(&backend))?)
    } else {
        None
    };
    let spec = ModelSpec::from_hf(&model_dir)?;
    let mask_token = policy
        .config
        .mask_token_id
        .ok_or_else(|| Error::InvalidArgument("the model has no mask token".into()))?;
    let save_dtype = match cfg.save_dtype {
        Some(d) => d,
        None => source_dtype(&model_dir)?,
    };
    let tasks = load_tasks(cfg.tasks.as_deref().unwrap_or(Path::new("")))?;
    if tasks.is_empty() {
        return Err(Error::InvalidArgument("the task file is empty".into()));
    }
    let prompts: Vec<Vec<u32>> = tasks
        .iter()
        .map(|t| prompt_ids(&spec, &t.prompt_text(), cfg.prompt_tokens))
        .collect::<Result<_>>()?;
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "task {i} has an empty prompt"
        )));
    }
    let scorer = Scorer::new(cfg, &model_dir)?;
    let adam_cfg = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(&policy.params, adam_cfg)?;
    let schedule = CosineSchedule::new(cfg.lr, cfg.min_lr_ratio, cfg.warmup(), cfg.steps)?;
    let adv_cfg = AdvantageConfig {
        baseline: match cfg.baseline {
            BaselineArg::Mean => Baseline::Mean,
            BaselineArg::LeaveOneOut => Baseline::LeaveOneOut,
        },
        scale_by_std: cfg.scale_rewards,
    };
    let rollout_params = RolloutParams {
        max_new_tokens: cfg.completion_tokens,
        steps: cfg.diffusion_steps,
        temperature: cfg.temperature,
        top_p: (cfg.top_p < 1.0).then_some(cfg.top_p),
        cache: cfg.cache.parse()?,
        block_length: cfg.block_length,
        threshold: cfg.threshold,
        threads,
        placement,
        ..RolloutParams::default()
    };
    let mut seed = cfg.seed;
    let mut step = 0u64;
    let mut cursor = 0u64;
    if let Some((_, dir)) = latest.filter(|_| resume) {
        let state = checkpoint::load(&dir, &mut policy, &mut opt)?;
        if let Some(reference) = reference.as_mut() {
            checkpoint::load_reference(&dir, reference)?;
        }
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
    log.println(&scorer.describe());
    if resumed_from > 0 {
        log.println(&format!("resumed from update {resumed_from}"));
    }
    let save = |policy: &Policy, reference: Option<&Policy>, opt: &AdamW, step, cursor| {
        let state = TrainerState {
            step,
            seed,
            examples_seen: cursor,
            config: config_json.clone(),
        };
        checkpoint::save_with_reference(
            &out, &model_dir, policy, opt, &state, save_dtype, reference,
        )
    };
    let mu = cfg.mu as u64;
    let g = cfg.num_generations;
    let mut order_cache = None;
    let mut last_reward_mean = None;
    let mut final_checkpoint = out.join(checkpoint::checkpoint_name(step));
    while step < cfg.steps {
        let round = step / mu;
        let round_start_step = step;
        let started = Instant::now();
        // 1. prompts.
        let picked: Vec<usize> = (0..cfg.prompts_per_round)
            .map(|_| {
                let i = example_at(seed, tasks.len(), cursor, &mut order_cache);
                cursor += 1;
                i
            })
            .collect();
        let round_prompts: Vec<Vec<u32>> = picked.iter().map(|&i| prompts[i].clone()).collect();
        let round_tasks: Vec<&Task> = picked.iter().map(|&i| &tasks[i]).collect();
        // 2. rollouts with the current policy.
        let mut rollout_rng = derived_rng(seed, TAG_ROLLOUT, round, 0);
        let outs = rollouts(
            &policy,
            &spec,
            &round_prompts,
            g,
            &rollout_params,
            &mut rollout_rng,
        )?;
        // 3. rewards, 4. advantages.
        let rewards = scorer.score(&outs, &round_tasks)?;
        let advantages = batch_advantages(&rewards, g, adv_cfg)?;
        let n_rows = rewards.len() as f64;
        let reward_mean = rewards.iter().sum::<f64>() / n_rows;
        let reward_std = (rewards
            .iter()
            .map(|r| (r - reward_mean).powi(2))
            .sum::<f64>()
            / n_rows)
            .sqrt();
        let completion_len = outs
            .iter()
            .map(|r| r.completion_mask.iter().sum::<f64>())
            .sum::<f64>()
            / n_rows;
        // Micro-batches within each prompt group.
        let mut micro: Vec<MicroBatch> = Vec::new();
        for (p, prompt) in round_prompts.iter().enumerate() {
            let group: Vec<usize> = (p * g..(p + 1) * g).collect();
            for rows in group.chunks(cfg.micro_batch) {
                micro.push(MicroBatch {
                    rows: rows.to_vec(),
                    prompt_len: prompt.len(),
                    seqs: rows
                        .iter()
                        .map(|&r| {
                            let mut s = outs[r].prompt_ids.clone();
                            s.extend_from_slice(&outs[r].completion_ids);
                            s
                        })
                        .collect(),
                });
            }
        }
        // 5. mask seeds, old and reference estimates (no gradient).
        let shapes: Vec<(usize, usize)> = outs
            .iter()
            .map(|r| (r.prompt_ids.len(), r.completion_ids.len()))
            .collect();
        let inner = (cfg.steps - step).min(mu) as usize;
        let masks: Vec<Vec<crate::masks::CoupledMasks>> = (0..inner)
            .map(|j| {
                let mask_seed = derived_rng(seed, TAG_MASK_SEED, round, j as u64).next_u64();
                coupled_masks(mask_seed, &shapes)
            })
            .collect();
        let mut old_logp: Vec<Vec<Option<Vec<f64>>>> = vec![vec![None; micro.len()]; inner];
        let mut ref_logp: Vec<Vec<Option<Vec<f64>>>> = vec![vec![None; micro.len()]; inner];
        for j in 0..inner {
            for (b, mb) in micro.iter().enumerate() {
                let (mask_a, t) = micro_masks(&masks[j], mb);
                if j > 0 {
                    old_logp[j][b] = Some(coupled_logp(
                        &policy,
                        &mb.seqs,
                        mb.prompt_len,
                        &mask_a,
                        &t,
                        mask_token,
                        &mut backend,
                    )?);
                }
                if let Some(reference) = reference.as_ref() {
                    ref_logp[j][b] = Some(coupled_logp(
                        reference,
                        &mb.seqs,
                        mb.prompt_len,
                        &mask_a,
                        &t,
                        mask_token,
                        &mut backend,
                    )?);
                }
            }
        }
        let rollout_seconds = started.elapsed().as_secs_f64();
        // 6. mu updates on the same rollouts.
        for j in 0..inner {
            let update_started = Instant::now();
            let mut grads = policy.zero_grads()?;
            let scale = 1.0 / micro.len() as f64;
            let (mut loss, mut tokens) = (0.0, 0u64);
            let (mut kl_sum, mut clipped, mut counted) = (0.0, 0.0, 0.0);
            let (lo, hi) = (1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps);
            for (b, mb) in micro.iter().enumerate() {
                let (mask_a, t) = micro_masks(&masks[j], mb);
                let n = mb.rows.len();
                let len = mb.seqs[0].len();
                let k = len - mb.prompt_len;
                let cmask: Vec<f64> = mb
                    .rows
                    .iter()
                    .flat_map(|&r| outs[r].completion_mask.iter().copied())
                    .collect();
                let adv: Vec<f64> = mb.rows.iter().map(|&r| advantages[r]).collect();
                let mut inputs = BTreeMap::new();
                inputs.insert(
                    "seqs".to_string(),
                    array(
                        vec![n, len],
                        mb.seqs.iter().flatten().map(|&v| v as f64).collect(),
                    ),
                );
                inputs.insert(
                    "prompt_len".into(),
                    array(vec![], vec![mb.prompt_len as f64]),
                );
                inputs.insert(
                    "mask_a".into(),
                    array(
                        vec![n, k],
                        mask_a.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect(),
                    ),
                );
                inputs.insert("completion_mask".into(), array(vec![n, k], cmask.clone()));
                inputs.insert("advantages".into(), array(vec![n], adv.clone()));
                inputs.insert("t".into(), array(vec![n], t));
                inputs.insert("beta".into(), array(vec![], vec![cfg.beta]));
                inputs.insert("clip_eps".into(), array(vec![], vec![cfg.clip_eps]));
                inputs.insert("mask_id".into(), array(vec![], vec![mask_token as f64]));
                if let Some(old) = &old_logp[j][b] {
                    inputs.insert("old_logp".into(), array(vec![n, k], old.clone()));
                }
                if let Some(r) = &ref_logp[j][b] {
                    inputs.insert("ref_logp".into(), array(vec![n, k], r.clone()));
                }
                let result = coupled_grpo(&policy, &inputs, &mut backend)?;
                loss += result.loss * scale;
                tokens += (n * len) as u64;
                let tensor = |name: &str| {
                    result
                        .tensors
                        .iter()
                        .find(|(t, _, _)| t == name)
                        .map(|(_, _, v)| v.as_slice())
                        .unwrap_or(&[])
                };
                let (logp, ratio) = (tensor("logp"), tensor("ratio"));
                for idx in 0..n * k {
                    let m = cmask[idx];
                    if m == 0.0 {
                        continue;
                    }
                    counted += m;
                    let a = adv[idx / k];
                    if (ratio[idx] < lo && a < 0.0) || (ratio[idx] > hi && a > 0.0) {
                        clipped += m;
                    }
                    if let Some(r) = &ref_logp[j][b] {
                        let d = r[idx] - logp[idx];
                        kl_sum += m * (d.exp() - d - 1.0);
                    }
                }
                accumulate(&mut grads, &result.grads, scale as f32)?;
            }
            let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
            let lr = schedule.lr_at(step);
            opt.step(&mut policy, &grads, lr, &mut backend)?;
            step += 1;
            // 7. reference sync.
            if let Some(reference) = reference.as_mut() {
                if cfg.ref_sync_steps > 0 && step.is_multiple_of(cfg.ref_sync_steps) {
                    sync_reference(reference, &policy, cfg.ref_sync_alpha)?;
                }
            }
            let seconds = update_started.elapsed().as_secs_f64();
            let counted = counted.max(1.0);
            let m = GrpoMetrics {
                step,
                round,
                reward_mean,
                reward_std,
                loss,
                kl: kl_sum / counted,
                clip_fraction: clipped / counted,
                grad_norm,
                lr,
                tokens_per_s: tokens as f64 / seconds.max(1e-9),
                seconds,
                rollout_seconds,
                completion_len,
            };
            let msg = format!(
                "reward {:.3} loss {:.4} kl {:.4} |g| {:.3}",
                reward_mean, loss, m.kl, grad_norm
            );
            log.log_line(step, &m, msg)?;
        }
        last_reward_mean = Some(reward_mean);
        let every = cfg.save_interval();
        let crossed = every > 0 && round_start_step / every != step / every;
        if step == cfg.steps || crossed {
            final_checkpoint = save(&policy, reference.as_ref(), &opt, step, cursor)?;
            log.println(&format!("saved {}", final_checkpoint.display()));
            for old in checkpoint::prune(&out, cfg.keep)? {
                log.println(&format!("removed {} (--keep {})", old.display(), cfg.keep));
            }
        }
    }
    log.finish();
    Ok(Summary {
        resumed_from,
        final_step: step,
        final_checkpoint,
        last_reward_mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_reward_counts_even_ids_inside_the_mask() {
        assert_eq!(toy_even_ids_reward(&[2, 3, 4, 5], &[1.0; 4]), 0.5);
        assert_eq!(
            toy_even_ids_reward(&[2, 4, 5, 7], &[1.0, 1.0, 0.0, 0.0]),
            1.0
        );
        assert_eq!(toy_even_ids_reward(&[1, 2], &[0.0, 0.0]), 0.0);
    }
}
