//! The Dream architecture's GGUF layout, shared with llama.cpp's `dream` loader: the metadata
//! keys, and the one table of tensors (names on both sides of the conversion, shapes, roles),
//! with each layer's tensors as a typed [`Layer`] so that no other file spells a tensor name.

use crate::config::DreamConfig;
use crate::{Error, Result};
use unmask_kernels::gguf::{GgufFile, GgufValue};

pub const ARCH: &str = "dream";

pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
    pub const CONTEXT_LENGTH: &str = "dream.context_length";
    pub const EMBEDDING_LENGTH: &str = "dream.embedding_length";
    pub const BLOCK_COUNT: &str = "dream.block_count";
    pub const FEED_FORWARD_LENGTH: &str = "dream.feed_forward_length";
    pub const HEAD_COUNT: &str = "dream.attention.head_count";
    pub const HEAD_COUNT_KV: &str = "dream.attention.head_count_kv";
    pub const ROPE_FREQ_BASE: &str = "dream.rope.freq_base";
    pub const RMS_EPS: &str = "dream.attention.layer_norm_rms_epsilon";
    pub const CAUSAL: &str = "dream.attention.causal";
    pub const VOCAB_SIZE: &str = "dream.vocab_size";
    pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    /// The original `tokenizer.json`, verbatim, so the runtime rebuilds the exact tokenizer.
    pub const TOKENIZER_JSON: &str = "unmask.tokenizer_json";
    /// Prefix of sampling defaults taken from `generation_config.json`.
    pub const GENERATION_PREFIX: &str = "unmask.generation.";
    pub const QUANT_POLICY: &str = "unmask.quantize.policy";
}

/// The role of a tensor, which decides its quantization type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    Output,
    Norm,
    Bias,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
}

/// A tensor the Dream architecture needs, with its names in both formats.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub hf_name: String,
    pub gguf_name: String,
    /// PyTorch (row-major) order, as in safetensors: `[out, in]` for linear weights.
    pub hf_shape: Vec<u64>,
    pub role: Role,
    pub layer: Option<u64>,
}

impl TensorSpec {
    /// ggml order, the reverse of PyTorch's.
    pub fn gguf_shape(&self) -> Vec<u64> {
        self.hf_shape.iter().rev().copied().collect()
    }
}

/// The GGUF name of the token embedding (also the output projection when tied).
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// The GGUF name of the final RMSNorm's weight.
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// The GGUF name of the output projection (absent when tied to the embedding).
pub const OUTPUT: &str = "output.weight";

/// The tensors of one transformer layer, one field per tensor: `Layer<TensorSpec>` is the
/// table of names and shapes ([`layer_specs`]), `Layer<String>` the GGUF names, and a graph
/// builder's `Layer<TensorId>` the tensors attached to a graph. Field order is the order the
/// tensors are written in (llama.cpp's converter order).
#[derive(Clone, Debug)]
pub struct Layer<T> {
    /// RMSNorm weight before attention, `[hidden]`.
    pub attn_norm: T,
    /// Query projection `[hidden, hidden]` (HF `[out, in]`) and its bias `[hidden]`.
    pub attn_q: T,
    pub attn_q_bias: T,
    /// Key projection `[kv_dim, hidden]` and its bias `[kv_dim]`.
    pub attn_k: T,
    pub attn_k_bias: T,
    /// Value projection `[kv_dim, hidden]` and its bias `[kv_dim]`.
    pub attn_v: T,
    pub attn_v_bias: T,
    /// Attention output projection `[hidden, hidden]`.
    pub attn_output: T,
    /// RMSNorm weight before the MLP, `[hidden]`.
    pub ffn_norm: T,
    /// SwiGLU gate and up projections `[ffn, hidden]`, down projection `[hidden, ffn]`.
    pub ffn_gate: T,
    pub ffn_up: T,
    pub ffn_down: T,
}

impl<T> Layer<T> {
    /// The layer's tensors in file order.
    pub fn into_vec(self) -> Vec<T> {
        vec![
            self.attn_norm,
            self.attn_q,
            self.attn_q_bias,
            self.attn_k,
            self.attn_k_bias,
            self.attn_v,
            self.attn_v_bias,
            self.attn_output,
            self.ffn_norm,
            self.ffn_gate,
            self.ffn_up,
            self.ffn_down,
        ]
    }

    /// Applies `f` to every tensor, stopping at the first error.
    pub fn try_map<U, E>(self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<Layer<U>, E> {
        Ok(Layer {
            attn_norm: f(self.attn_norm)?,
            attn_q: f(self.attn_q)?,
            attn_q_bias: f(self.attn_q_bias)?,
            attn_k: f(self.attn_k)?,
            attn_k_bias: f(self.attn_k_bias)?,
            attn_v: f(self.attn_v)?,
            attn_v_bias: f(self.attn_v_bias)?,
            attn_output: f(self.attn_output)?,
            ffn_norm: f(self.ffn_norm)?,
            ffn_gate: f(self.ffn_gate)?,
            ffn_up: f(self.ffn_up)?,
            ffn_down: f(self.ffn_down)?,
        })
    }
}

impl<T> Layer<T> {
    /// Applies `f` to every tensor.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Layer<U> {
        match self.try_map(|t| Ok::<_, std::convert::Infallible>(f(t))) {
            Ok(layer) => layer,
            Err(never) => match never {},
        }
    }
}

impl Layer<String> {
    /// The GGUF names of layer `i`'s tensors.
    pub fn names(c: &DreamConfig, i: u64) -> Self {
        layer_specs(c, i).map(|s| s.gguf_name)
    }
}

/// The one table of a layer's tensors: Hugging Face name, GGUF name, shape and role.
pub fn layer_specs(c: &DreamConfig, i: u64) -> Layer<TensorSpec> {
    let (h, ff, kv) = (c.hidden_size, c.intermediate_size, c.kv_dim());
    let spec = |hf: &str, gguf: &str, shape: Vec<u64>, role| TensorSpec {
        hf_name: format!("model.layers.{i}.{hf}"),
        gguf_name: format!("blk.{i}.{gguf}"),
        hf_shape: shape,
        role,
        layer: Some(i),
    };
    Layer {
        attn_norm: spec(
            "input_layernorm.weight",
            "attn_norm.weight",
            vec![h],
            Role::Norm,
        ),
        attn_q: spec(
            "self_attn.q_proj.weight",
            "attn_q.weight",
            vec![h, h],
            Role::AttnQ,
        ),
        attn_q_bias: spec("self_attn.q_proj.bias", "attn_q.bias", vec![h], Role::Bias),
        attn_k: spec(
            "self_attn.k_proj.weight",
            "attn_k.weight",
            vec![kv, h],
            Role::AttnK,
        ),
        attn_k_bias: spec("self_attn.k_proj.bias", "attn_k.bias", vec![kv], Role::Bias),
        attn_v: spec(
            "self_attn.v_proj.weight",
            "attn_v.weight",
            vec![kv, h],
            Role::AttnV,
        ),
        attn_v_bias: spec("self_attn.v_proj.bias", "attn_v.bias", vec![kv], Role::Bias),
        attn_output: spec(
            "self_attn.o_proj.weight",
            "attn_output.weight",
            vec![h, h],
            Role::AttnOutput,
        ),
        ffn_norm: spec(
            "post_attention_layernorm.weight",
            "ffn_norm.weight",
            vec![h],
            Role::Norm,
        ),
        ffn_gate: spec(
            "mlp.gate_proj.weight",
            "ffn_gate.weight",
            vec![ff, h],
            Role::FfnGate,
        ),
        ffn_up: spec(
            "mlp.up_proj.weight",
            "ffn_up.weight",
            vec![ff, h],
            Role::FfnUp,
        ),
        ffn_down: spec(
            "mlp.down_proj.weight",
            "ffn_down.weight",
            vec![h, ff],
            Role::FfnDown,
        ),
    }
}

/// Every tensor of a Dream model in the order we write them (llama.cpp's converter order).
pub fn tensor_specs(c: &DreamConfig) -> Vec<TensorSpec> {
    let (h, v) = (c.hidden_size, c.vocab_size);
    let global = |hf: &str, gguf: &str, shape: Vec<u64>, role| TensorSpec {
        hf_name: hf.into(),
        gguf_name: gguf.into(),
        hf_shape: shape,
        role,
        layer: None,
    };
    let mut out = vec![global(
        "model.embed_tokens.weight",
        TOKEN_EMBD,
        vec![v, h],
        Role::TokenEmbd,
    )];
    for i in 0..c.num_hidden_layers {
        out.extend(layer_specs(c, i).into_vec());
    }
    out.push(global(
        "model.norm.weight",
        OUTPUT_NORM,
        vec![h],
        Role::Norm,
    ));
    if !c.tie_word_embeddings {
        out.push(global("lm_head.weight", OUTPUT, vec![v, h], Role::Output));
    }
    out
}

/// The hyper-parameters of a GGUF file of the `dream` architecture (ours or llama.cpp's).
pub fn config_from_gguf(file: &GgufFile) -> Result<DreamConfig> {
    let path = std::path::PathBuf::from("<gguf metadata>");
    let bad = |message: String| Error::Config {
        path: path.clone(),
        message,
    };
    let arch = file
        .get(keys::ARCHITECTURE)
        .and_then(GgufValue::as_str)
        .unwrap_or("");
    if arch != ARCH {
        return Err(Error::NotDream {
            path: path.clone(),
            reason: format!("general.architecture is {arch:?}, expected \"dream\""),
        });
    }
    let int = |key: &str| -> Result<u64> {
        file.get(key)
            .and_then(GgufValue::as_u64)
            .ok_or_else(|| bad(format!("`{key}` is missing or not an unsigned integer")))
    };
    let float = |key: &str| -> Result<f64> {
        file.get(key)
            .and_then(GgufValue::as_f64)
            .ok_or_else(|| bad(format!("`{key}` is missing or not a number")))
    };
    let token = |key: &str| {
        file.get(key)
            .and_then(GgufValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let vocab_size = match file.get(keys::VOCAB_SIZE).and_then(GgufValue::as_u64) {
        Some(v) => v,
        None => file
            .get(keys::TOKENS)
            .and_then(GgufValue::as_array)
            .map(|a| a.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "neither `{}` nor `{}` is present",
                    keys::VOCAB_SIZE,
                    keys::TOKENS
                ))
            })?,
    };
    let config = DreamConfig {
        hidden_size: int(keys::EMBEDDING_LENGTH)?,
        intermediate_size: int(keys::FEED_FORWARD_LENGTH)?,
        num_hidden_layers: int(keys::BLOCK_COUNT)?,
        num_attention_heads: int(keys::HEAD_COUNT)?,
        num_key_value_heads: file
            .get(keys::HEAD_COUNT_KV)
            .and_then(GgufValue::as_u64)
            .map_or_else(|| int(keys::HEAD_COUNT), Ok)?,
        vocab_size,
        max_position_embeddings: int(keys::CONTEXT_LENGTH)?,
        rope_theta: file
            .get(keys::ROPE_FREQ_BASE)
            .and_then(GgufValue::as_f64)
            .unwrap_or(10000.0),
        rms_norm_eps: float(keys::RMS_EPS)?,
        tie_word_embeddings: file.tensor(OUTPUT).is_none(),
        bos_token_id: token(keys::BOS_ID),
        eos_token_id: token(keys::EOS_ID),
        pad_token_id: token(keys::PAD_ID),
        mask_token_id: token(keys::MASK_ID),
    };
    config.validate().map_err(bad)?;
    Ok(config)
}

/// Writes the architecture keys of `c` (the tokenizer keys are written separately).
pub fn architecture_metadata(c: &DreamConfig) -> Vec<(&'static str, GgufValue)> {
    let u32v = |v: u64| GgufValue::U32(v.min(u32::MAX as u64) as u32);
    vec![
        (keys::ARCHITECTURE, GgufValue::String(ARCH.into())),
        (keys::CONTEXT_LENGTH, u32v(c.max_position_embeddings)),
        (keys::EMBEDDING_LENGTH, u32v(c.hidden_size)),
        (keys::BLOCK_COUNT, u32v(c.num_hidden_layers)),
        (keys::FEED_FORWARD_LENGTH, u32v(c.intermediate_size)),
        (keys::HEAD_COUNT, u32v(c.num_attention_heads)),
        (keys::HEAD_COUNT_KV, u32v(c.num_key_value_heads)),
        (keys::ROPE_FREQ_BASE, GgufValue::F32(c.rope_theta as f32)),
        (keys::RMS_EPS, GgufValue::F32(c.rms_norm_eps as f32)),
        (keys::CAUSAL, GgufValue::Bool(false)),
        (keys::VOCAB_SIZE, u32v(c.vocab_size)),
    ]
}
