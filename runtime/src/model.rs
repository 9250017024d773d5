//! A Dream model loaded from GGUF: hyper-parameters from the metadata (never a hard-coded
//! shape), the tokenizer, the special tokens generation needs, and the weights mapped zero-copy.

use crate::{Error, Result};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use tokenizers::Tokenizer;
use unmask_kernels::gguf::{GgufFile, GgufValue};
use unmask_kernels::weights::Weights;
use unmask_quantize::config::DreamConfig;
use unmask_quantize::dream::{self, keys};
use unmask_quantize::gguf_tokenizer::{TokenizerSource, TokenizerSpec};

/// Token ids with a role in generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub mask: u32,
    pub eos: Option<u32>,
    pub im_start: Option<u32>,
    pub im_end: Option<u32>,
    pub dlm_pad: Option<u32>,
}

impl SpecialTokens {
    /// Tokens at which an answer ends (MODEL.md §5).
    pub fn stops(&self) -> Vec<u32> {
        [self.dlm_pad, self.im_end, self.eos]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Sampling defaults stored from `generation_config.json` (`unmask.generation.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub steps: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub alg: Option<String>,
    pub alg_temp: Option<f32>,
    pub eps: Option<f32>,
}

pub struct Model {
    pub config: DreamConfig,
    pub weights: Arc<Weights>,
    /// What the tokenizer is built from; see [`Model::tokenizer`].
    pub tokenizer_spec: Arc<TokenizerSpec>,
    tokenizer_cache: Mutex<Weak<Tokenizer>>,
    pub tokenizer_source: TokenizerSource,
    pub special: SpecialTokens,
    pub defaults: GenerationDefaults,
    /// Vocabulary rows of the output projection (may exceed the tokenizer's size: padding).
    pub n_vocab: usize,
}

impl Model {
    pub fn load(path: &Path) -> Result<Self> {
        let mut file = GgufFile::open(path)?;
        let config = dream::config_from_gguf(&file)?;
        let tokenizer_spec = Arc::new(TokenizerSpec::from_gguf(&file)?);
        let tokenizer = Arc::new(tokenizer_spec.build()?);
        let id = |t: &str| tokenizer.token_to_id(t);
        let mask = config
            .mask_token_id
            .or_else(|| id("<|mask|>"))
            .ok_or_else(|| {
                Error::Model("the model has no mask token (tokenizer.ggml.mask_token_id)".into())
            })?;
        let special = SpecialTokens {
            mask,
            eos: config.eos_token_id.or_else(|| id("<|endoftext|>")),
            im_start: id("<|im_start|>"),
            im_end: id("<|im_end|>"),
            dlm_pad: id("<|dlm_pad|>"),
        };
        let defaults = read_defaults(&file);
        let n_vocab = config.vocab_size as usize;
        check_tensors(&file, &config)?;
        // Everything needed from the metadata has been read: don't keep the vocabulary arrays
        // and the stored tokenizer.json alive next to the weights.
        file.drop_metadata();
        let weights = Arc::new(Weights::map_cpu(Arc::new(file))?);
        let model = Model {
            config,
            weights,
            tokenizer_source: tokenizer_spec.source(),
            tokenizer_spec,
            tokenizer_cache: Mutex::new(Arc::downgrade(&tokenizer)),
            special,
            defaults,
            n_vocab,
        };
        // Nobody holds the tokenizer now: it is freed, and rebuilt when next needed.
        drop(tokenizer);
        unmask_kernels::heap::release_free_memory();
        Ok(model)
    }

    /// The tokenizer, built on first use and shared while anyone holds it. A full vocabulary
    /// takes about 80 MiB: callers drop it while the model computes, so it does not add to the
    /// peak memory of generation.
    pub fn tokenizer(&self) -> Result<Arc<Tokenizer>> {
        let mut cache = self
            .tokenizer_cache
            .lock()
            .map_err(|_| Error::Tokenizer("tokenizer cache poisoned".into()))?;
        if let Some(t) = cache.upgrade() {
            return Ok(t);
        }
        let t = Arc::new(self.tokenizer_spec.build()?);
        *cache = Arc::downgrade(&t);
        Ok(t)
    }

    pub fn n_layers(&self) -> usize {
        self.config.num_hidden_layers as usize
    }

    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings as usize
    }

    /// Name of the output projection (the embedding when tied).
    pub fn output_weight_name(&self) -> &'static str {
        if self.weights.contains("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        }
    }
}

/// Every tensor the graph uses must exist with the shape the metadata implies, so that graph
/// construction never meets a surprise.
fn check_tensors(file: &GgufFile, c: &DreamConfig) -> Result<()> {
    for spec in dream::tensor_specs(c) {
        let info = file.tensor(&spec.gguf_name).ok_or_else(|| {
            Error::Model(format!(
                "tensor `{}` is missing from the file",
                spec.gguf_name
            ))
        })?;
        if info.shape != spec.gguf_shape() {
            return Err(Error::Model(format!(
                "tensor `{}` has shape {:?}, the metadata implies {:?}",
                spec.gguf_name,
                info.shape,
                spec.gguf_shape()
            )));
        }
    }
    Ok(())
}

fn read_defaults(file: &GgufFile) -> GenerationDefaults {
    let get = |k: &str| file.get(&format!("{}{k}", keys::GENERATION_PREFIX));
    let float = |k: &str| get(k).and_then(GgufValue::as_f64).map(|v| v as f32);
    let int = |k: &str| get(k).and_then(GgufValue::as_u64).map(|v| v as usize);
    GenerationDefaults {
        temperature: float("temperature"),
        top_p: float("top_p"),
        top_k: int("top_k"),
        steps: int("steps"),
        max_new_tokens: int("max_new_tokens"),
        alg: get("alg").and_then(GgufValue::as_str).map(str::to_string),
        alg_temp: float("alg_temp"),
        eps: float("eps"),
    }
}
