//! `unmask-train init`: a fresh Dream model folder of a chosen shape, initialised as
//! transformers initialises Qwen2 (`Qwen2PreTrainedModel._init_weights`: every linear weight and
//! the embedding drawn from `N(0, 0.02^2)`, biases 0, RMSNorm weights 1), in Hugging Face layout
//! (`config.json`, `generation_config.json`, the tokenizer files, one `model.safetensors`), so
//! that `unmask-quantize`, the runtime and the trainer take it as they take any checkpoint.
//!
//! The vocabulary comes from the tokenizer: its size rounded up to a multiple of 64 (the
//! embedding's rows; ids past the tokenizer's are never produced), `<|endoftext|>` as the
//! beginning, end and padding token and `<|mask|>` as the mask. The folder is written under a
//! temporary name next to `out` and renamed into place, so it exists only complete.
//! Draws are seeded: the same shape, tokenizer and seed give the same bytes.

use crate::checkpoint::{write_safetensors, SaveDtype};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use unmask_dream::layout::{tensor_specs, Role};
use unmask_dream::safetensors::Dtype;
use unmask_dream::DreamConfig;
use unmask_runtime::rng::Rng;

/// Standard deviation of the initial weights (Qwen2's `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// The shape of a fresh model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Embedding rows; `None`: the tokenizer's size rounded up to a multiple of 64.
    pub vocab: Option<usize>,
    pub max_position: usize,
    pub rope_theta: f64,
    /// Share the embedding with the output projection.
    pub tie_embeddings: bool,
}

/// What [`init_model`] wrote.
#[derive(Clone, Debug)]
pub struct InitReport {
    pub config: DreamConfig,
    pub parameters: u64,
    pub out: PathBuf,
}

/// Writes a fresh model of `shape` with the tokenizer `tokenizer_json` to `out` (which must not
/// exist, or be an empty folder), weights drawn from `seed`, stored as `dtype`.
pub fn init_model(
    out: &Path,
    shape: &ModelShape,
    tokenizer_json: &str,
    seed: u64,
    dtype: SaveDtype,
) -> Result<InitReport> {
    let bad = |m: String| Error::InvalidArgument(m);
    let tok = tokenizers::Tokenizer::from_str(tokenizer_json)
        .map_err(|e| bad(format!("tokenizer: {e}")))?;
    let n_tokens = tok.get_vocab_size(true);
    let id = |t: &str| tok.token_to_id(t);
    let mask = id("<|mask|>").ok_or_else(|| bad("the tokenizer has no <|mask|> token".into()))?;
    let eos = id("<|endoftext|>");
    let vocab = shape.vocab.unwrap_or(n_tokens.div_ceil(64) * 64);
    if vocab < n_tokens {
        return Err(bad(format!(
            "--vocab {vocab} is smaller than the tokenizer's {n_tokens} tokens"
        )));
    }
    let ok = shape.hidden > 0
        && shape.layers > 0
        && shape.intermediate > 0
        && shape.heads > 0
        && shape.kv_heads > 0
        && shape.hidden.is_multiple_of(shape.heads)
        && shape.heads.is_multiple_of(shape.kv_heads)
        && (shape.hidden / shape.heads).is_multiple_of(2)
        && shape.max_position > 0
        && shape.rope_theta > 0.0
        && shape.rope_theta.is_finite();
    if !ok {
        return Err(bad(format!(
            "shape {shape:?}: hidden must be a multiple of heads with an even head size, heads \
             a multiple of kv heads, every size positive"
        )));
    }
    let config = DreamConfig {
        hidden_size: shape.hidden as u64,
        intermediate_size: shape.intermediate as u64,
        num_hidden_layers: shape.layers as u64,
        num_attention_heads: shape.heads as u64,
        num_key_value_heads: shape.kv_heads as u64,
        vocab_size: vocab as u64,
        max_position_embeddings: shape.max_position as u64,
        rope_theta: shape.rope_theta,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: shape.tie_embeddings,
        bos_token_id: eos,
        eos_token_id: eos,
        pad_token_id: eos,
        mask_token_id: Some(mask),
    };
    config
        .validate()
        .map_err(|m| bad(format!("shape {shape:?}: {m}")))?;
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(bad(format!(
                "{} already exists; choose a new folder",
                out.display()
            )));
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| Error::Io { path, source: e }
    };
    // Registered: removed on an error or a signal, renamed onto `out` once complete.
    let tmp = unmask_kernels::temp_files::folder_next_to(out).map_err(io(out))?;
    unmask_quantize::synth::write_hf_metadata(tmp.path(), &config, tokenizer_json)
        .map_err(|e| bad(e.to_string()))?;
    let specs = tensor_specs(&config);
    let mut rng = Rng::new(seed);
    let values: Vec<Vec<f32>> = specs
        .iter()
        .map(|spec| {
            let n: u64 = spec.hf_shape.iter().product();
            match spec.role {
                Role::Norm => vec![1.0; n as usize],
                Role::Bias => vec![0.0; n as usize],
                _ => (0..n)
                    .map(|_| (normal(&mut rng) * INIT_STD) as f32)
                    .collect(),
            }
        })
        .collect();
    let dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let tensors: Vec<(String, Dtype, Vec<u64>, &[f32])> = specs
        .iter()
        .zip(&values)
        .map(|(s, v)| (s.hf_name.clone(), dtype, s.hf_shape.clone(), v.as_slice()))
        .collect();
    write_safetensors(&tmp.path().join("model.safetensors"), &tensors)?;
    let parameters = values.iter().map(|v| v.len() as u64).sum();
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    tmp.rename_to(out).map_err(io(out))?;
    Ok(InitReport {
        config,
        parameters,
        out: out.to_path_buf(),
    })
}

/// A standard normal draw (Box-Muller on two uniforms in (0, 1]).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.uniform();
    let u2 = rng.uniform();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_the_initialiser_s_moments() {
        let mut rng = Rng::new(3);
        let x: Vec<f64> = (0..200_000).map(|_| normal(&mut rng)).collect();
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
    }
}
