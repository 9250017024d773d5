//! Rollouts (docs/training.md §1): completions generated with the CURRENT f32 policy by the
//! runtime's own denoising loop ([`unmask_runtime::Generator::generate`], the same schedule,
//! scoring and fused attention as inference), run directly on the trainer's parameters: no round
//! trip through a quantized file.
//!
//! Randomness: every completion gets its own generation seed, drawn from the caller's rollout
//! generator ([`Rng`]), which is separate from the generator of the mask seeds, so changing the
//! number of rollouts never shifts the masks and the reverse.

use crate::policy::Policy;
use crate::{Error, Result};
use std::sync::Arc;
use unmask_dream::chat::instruct_prompt;
use unmask_kernels::device::Placement;
use unmask_runtime::rng::Rng;
use unmask_runtime::settings::{Layer, Settings, Source};
use unmask_runtime::{Algorithm, CacheMode, Control, GenerateParams, Generator, Model, ModelSpec};

/// Prompt tokens kept (the last ones) in a training prompt (§1: prompt length 200).
pub const PROMPT_TOKENS: usize = 200;

/// Sampling settings of the rollouts; the defaults are the published run's (§1): the runtime's
/// built-in generation settings with [`published_run`] over them.
#[derive(Clone, Debug)]
pub struct RolloutParams {
    /// Completion length (the canvas after the prompt).
    pub max_new_tokens: usize,
    /// Denoising steps (the paper uses one token per step: steps = completion length).
    pub steps: usize,
    /// Token temperature: 1.2 in the paper (the released yaml says 1.0).
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub alg: Algorithm,
    pub alg_temp: f32,
    pub eps: f32,
    /// Fast decoding of the rollouts (approximate; exact by default): key/value cache, block
    /// length with a cache, confidence threshold.
    pub cache: CacheMode,
    pub block_length: Option<usize>,
    pub threshold: Option<f32>,
    /// Worker threads of the forward passes and scoring.
    pub threads: usize,
    /// Where the policy's parameters live and the rollouts compute (the trainer's device).
    pub placement: Placement,
}

/// Where the published coupled-GRPO run's rollouts differ from the runtime's built-in
/// generation settings (`unmask_runtime::settings`; §1): temperature 1.2 and no top-k filter.
/// Everything else (256 tokens at one step per token, top-p 0.95, entropy, alg_temp 0, eps 1e-3,
/// exact decoding) is the built-in value. The model's own `generation_config.json` is not
/// applied: the rollouts sample from the distribution the recipe fixes.
pub fn published_run() -> Layer {
    Layer {
        temperature: Some(1.2),
        top_k: Some(None),
        ..Layer::default()
    }
}

/// The source name of [`published_run`].
pub const PUBLISHED_RUN: Source = Source::Overlay("coupled-GRPO run");

/// The published run's rollout settings: the built-in ones with [`published_run`] over them.
pub fn published_params() -> GenerateParams {
    Settings::builtin()
        .with(PUBLISHED_RUN, &published_run())
        .params()
}

impl Default for RolloutParams {
    fn default() -> Self {
        let p = published_params();
        RolloutParams {
            max_new_tokens: p.max_new_tokens,
            steps: p.steps,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            alg: p.alg,
            alg_temp: p.alg_temp,
            eps: p.eps,
            cache: p.cache,
            block_length: p.block_length,
            threshold: p.threshold,
            threads: unmask_kernels::backend::default_threads(),
            placement: Placement::Cpu,
        }
    }
}

impl RolloutParams {
    /// The runtime's parameters for one completion generated with `seed`.
    pub fn generate_params(&self, seed: u64) -> GenerateParams {
        GenerateParams {
            max_new_tokens: self.max_new_tokens,
            steps: self.steps,
            alg: self.alg,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            alg_temp: self.alg_temp,
            eps: self.eps,
            block_length: self.block_length,
            seed,
            cache: self.cache,
            threshold: self.threshold,
        }
    }
}

/// One completion of one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Index of the prompt in the batch.
    pub prompt_index: usize,
    pub prompt_ids: Vec<u32>,
    /// The whole generated canvas after the prompt (`max_new_tokens` ids).
    pub completion_ids: Vec<u32>,
    /// 1.0 for the tokens up to and including the first `<|im_end|>`, 0.0 after it.
    pub completion_mask: Vec<f64>,
    /// The generation seed this completion was sampled with (drawn from the rollout generator).
    pub seed: u64,
}

/// The training prompt of a task's user text: the Instruct chat prompt, tokenized, keeping its
/// last `max_tokens` tokens.
pub fn prompt_ids(spec: &ModelSpec, user_text: &str, max_tokens: usize) -> Result<Vec<u32>> {
    let ids = spec.encode(&instruct_prompt(user_text))?;
    let start = ids.len().saturating_sub(max_tokens);
    Ok(ids[start..].to_vec())
}

/// 1.0 for the tokens up to and including the first `end` token, 0.0 after it (all 1.0 when the
/// completion has none).
pub fn completion_mask(completion: &[u32], end: u32) -> Vec<f64> {
    let cut = completion
        .iter()
        .position(|&t| t == end)
        .map_or(completion.len(), |i| i + 1);
    (0..completion.len())
        .map(|i| if i < cut { 1.0 } else { 0.0 })
        .collect()
}

/// Generates `g` completions for each prompt with the policy's current parameters, prompt by
/// prompt (`result[p * g + i]` is completion `i` of prompt `p`). Each completion's generation seed
/// is the next draw of `rng`, in that order. `spec` describes the policy's model (its
/// `config.json`, tokenizer and special tokens, e.g. [`ModelSpec::from_hf`] of the folder the
/// policy was loaded from).
pub fn rollouts(
    policy: &Policy,
    spec: &ModelSpec,
    prompts: &[Vec<u32>],
    g: usize,
    params: &RolloutParams,
    rng: &mut Rng,
) -> Result<Vec<Rollout>> {
    if spec.config != policy.config {
        return Err(Error::InvalidArgument(
            "the model description's config differs from the policy's".into(),
        ));
    }
    let end = spec.special.im_end.ok_or_else(|| {
        Error::InvalidArgument("the tokenizer has no <|im_end|> token to end completions".into())
    })?;
    params.generate_params(0).validate()?;
    if prompts.is_empty() || g == 0 {
        return Ok(Vec::new());
    }
    // The model holds the parameters only for the duration of the call: afterwards the trainer
    // owns them alone again and can update them.
    let mut model = Model::from_parts(spec.clone(), policy.params.clone())?;
    model.placement = params.placement.clone();
    let mut generator = Generator::new(Arc::new(model), params.threads)?;
    let mut out = Vec::with_capacity(prompts.len() * g);
    for (prompt_index, prompt) in prompts.iter().enumerate() {
        for _ in 0..g {
            let seed = rng.next_u64();
            let generation =
                generator.generate(prompt, &params.generate_params(seed), &mut |_| {
                    Control::Continue
                })?;
            out.push(Rollout {
                prompt_index,
                prompt_ids: prompt.clone(),
                completion_mask: completion_mask(&generation.tokens, end),
                completion_ids: generation.tokens,
                seed,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_tokens_through_the_first_end() {
        assert_eq!(
            completion_mask(&[5, 6, 9, 7, 9, 8], 9),
            vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(completion_mask(&[9, 9], 9), vec![1.0, 0.0]);
        assert_eq!(completion_mask(&[1, 2, 3], 9), vec![1.0; 3]);
        assert_eq!(completion_mask(&[1, 2, 9], 9), vec![1.0; 3]);
        assert!(completion_mask(&[], 9).is_empty());
    }

    #[test]
    fn defaults_are_the_published_run() {
        let p = RolloutParams::default();
        assert_eq!((p.max_new_tokens, p.steps), (256, 256));
        assert_eq!(p.temperature, 1.2);
        assert_eq!(p.top_p, Some(0.95));
        assert_eq!(p.alg, Algorithm::Entropy);
        assert_eq!(p.alg_temp, 0.0);
        assert_eq!((p.top_k, p.eps, p.cache), (None, 1e-3, CacheMode::None));
        assert!(p.generate_params(7).validate().is_ok());
        assert_eq!(p.generate_params(7).seed, 7);
    }
}
