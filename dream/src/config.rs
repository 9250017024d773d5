//! The Dream/DiffuCoder hyper-parameters, read from a Hugging Face `config.json` or from GGUF
//! metadata, and checked for consistency before anything is sized by them.

use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Upper bounds that no real model comes near; they stop hostile configs from driving huge
/// allocations or arithmetic overflow.
const MAX_DIM: u64 = 1 << 20;
const MAX_VOCAB: u64 = 1 << 24;
const MAX_LAYERS: u64 = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct DreamConfig {
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub mask_token_id: Option<u32>,
}

impl DreamConfig {
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_attention_heads
    }

    pub fn kv_dim(&self) -> u64 {
        self.head_dim() * self.num_key_value_heads
    }

    /// Parses `config.json`, refusing checkpoints that are not Dream-architecture models.
    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let architectures: Vec<&str> = json
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let is_dream = architectures.iter().any(|a| a.starts_with("Dream"))
            || model_type.eq_ignore_ascii_case("dream");
        if !is_dream {
            return Err(Error::NotDream {
                path: path.to_path_buf(),
                reason: format!(
                    "architectures {architectures:?}, model_type {model_type:?} (expected DreamModel / \"Dream\")"
                ),
            });
        }
        let field = |key: &str| -> Result<&Value> {
            json.get(key).ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                message: format!("`{key}` is missing"),
            })
        };
        let int = |key: &str| -> Result<u64> {
            field(key)?.as_u64().ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                message: format!("`{key}` must be a non-negative integer"),
            })
        };
        let float = |key: &str| -> Result<f64> {
            field(key)?.as_f64().ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                message: format!("`{key}` must be a number"),
            })
        };
        let token = |key: &str| -> Option<u32> {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let num_attention_heads = int("num_attention_heads")?;
        if let Some(scaling) = json.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!("rope_scaling {scaling} is not supported (Dream models use none)"),
            });
        }
        let config = DreamConfig {
            hidden_size: int("hidden_size")?,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: json
                .get("num_key_value_heads")
                .map(|_| int("num_key_value_heads"))
                .transpose()?
                .unwrap_or(num_attention_heads),
            vocab_size: int("vocab_size")?,
            max_position_embeddings: int("max_position_embeddings")?,
            rope_theta: json
                .get("rope_theta")
                .map(|_| float("rope_theta"))
                .transpose()?
                .unwrap_or(10000.0),
            rms_norm_eps: float("rms_norm_eps")?,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
            pad_token_id: token("pad_token_id"),
            mask_token_id: token("mask_token_id"),
        };
        config.validate().map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Structural checks: sizes positive and bounded, heads divide evenly, RoPE needs an even
    /// head dimension, special ids inside the vocabulary.
    pub fn validate(&self) -> Result<(), String> {
        let bounded = [
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_DIM),
            ("num_key_value_heads", self.num_key_value_heads, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                u32::MAX as u64,
            ),
        ];
        for (name, value, max) in bounded {
            if value == 0 || value > max {
                return Err(format!("`{name}` = {value} is outside 1..={max}"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "rope_theta {} must be a positive number",
                self.rope_theta
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps {} must be a positive number",
                self.rms_norm_eps
            ));
        }
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
            ("mask_token_id", self.mask_token_id),
        ] {
            if let Some(id) = id {
                if u64::from(id) >= self.vocab_size {
                    return Err(format!(
                        "{name} {id} is outside the vocabulary of {}",
                        self.vocab_size
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `config.json` of a Dream checkpoint with these values (used by `synth`).
    pub fn to_hf_json(&self) -> Value {
        json!({
            "architectures": ["DreamModel"],
            "model_type": "Dream",
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "mask_token_id": self.mask_token_id,
            "attention_dropout": 0.0,
            "torch_dtype": "bfloat16",
            "use_cache": false,
            "use_sliding_window": false,
        })
    }
}
