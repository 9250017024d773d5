//! Synthetic Dream models with seeded random weights, at the shapes tests and benchmarks need
//! (no real weights can be downloaded here). Every row of every tensor comes from its own
//! counter-based random stream, so any chunk can be generated independently and in parallel, and
//! the HF folder and the direct-GGUF routes produce the same (bf16-rounded) numbers.

use crate::{Error, Result};
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;
use unmask_dream::layout::{self, Role, TensorSpec};
use unmask_dream::safetensors::{encode_header, Dtype};
use unmask_dream::DreamConfig;
use unmask_dream::Error as DreamError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Tiny,
    /// The tiny layers with Qwen2.5-0.5B's vocabulary and tokenizer (151936 rows, tied): the
    /// real vocabulary's scoring at a test's speed.
    TinyWide,
    HalfB,
    SevenB,
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tiny" => Ok(Preset::Tiny),
            "tiny-wide" => Ok(Preset::TinyWide),
            "0.5b" | "05b" | "half" => Ok(Preset::HalfB),
            "7b" => Ok(Preset::SevenB),
            other => Err(DreamError::Config {
                path: "--preset".into(),
                message: format!("unknown preset `{other}` (tiny, tiny-wide, 0.5b, 7b)"),
            }
            .into()),
        }
    }
}

/// The real DiffuCoder tokenizer (Qwen2.5 + Dream specials), for the full-size presets.
const DIFFUCODER_TOKENIZER_GZ: &[u8] =
    include_bytes!("../../tests/fixtures/diffucoder-tokenizer.json.gz");

/// ChatML with Dream's default system prompt (docs/model.md §5).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A synthetic checkpoint: its config, tokenizer and weight generator.
pub struct SynthModel {
    pub config: DreamConfig,
    pub tokenizer_json: String,
    pub seed: u64,
}

impl SynthModel {
    pub fn new(preset: Preset, seed: u64) -> Result<Self> {
        let tokenizer_json = match preset {
            Preset::Tiny => crate::synth_tokenizer::synth_tokenizer_json(),
            _ => {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(DIFFUCODER_TOKENIZER_GZ),
                    &mut text,
                )
                .map_err(|e| DreamError::Tokenizer(format!("embedded tokenizer: {e}")))?;
                text
            }
        };
        let id_of = |token: &str| -> Result<u32> {
            let tok = tokenizers::Tokenizer::from_str(&tokenizer_json)
                .map_err(|e| DreamError::Tokenizer(e.to_string()))?;
            Ok(tok.token_to_id(token).ok_or_else(|| {
                DreamError::Tokenizer(format!("synthetic tokenizer lacks {token}"))
            })?)
        };
        let (eos, mask) = (id_of("<|endoftext|>")?, id_of("<|mask|>")?);
        let config = match preset {
            Preset::Tiny => DreamConfig {
                hidden_size: 256,
                intermediate_size: 512,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                vocab_size: 512,
                max_position_embeddings: 4096,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: false,
                bos_token_id: Some(eos),
                eos_token_id: Some(eos),
                pad_token_id: Some(eos),
                mask_token_id: Some(mask),
            },
            Preset::TinyWide => DreamConfig {
                hidden_size: 256,
                intermediate_size: 512,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                vocab_size: 151_936,
                max_position_embeddings: 4096,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: true,
                bos_token_id: Some(eos),
                eos_token_id: Some(eos),
                pad_token_id: Some(eos),
                mask_token_id: Some(mask),
            },
            // Qwen2.5-0.5B's shape (tied embeddings, vocabulary padded to 151936).
            Preset::HalfB => DreamConfig {
                hidden_size: 896,
                intermediate_size: 4864,
                num_hidden_layers: 24,
                num_attention_heads: 14,
                num_key_value_heads: 2,
                vocab_size: 151_936,
                max_position_embeddings: 32_768,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: true,
                bos_token_id: Some(eos),
                eos_token_id: Some(eos),
                pad_token_id: Some(eos),
                mask_token_id: Some(mask),
            },
            // DiffuCoder-7B-Instruct, docs/model.md §2.
            Preset::SevenB => DreamConfig {
                hidden_size: 3584,
                intermediate_size: 18_944,
                num_hidden_layers: 28,
                num_attention_heads: 28,
                num_key_value_heads: 4,
                vocab_size: 152_064,
                max_position_embeddings: 131_072,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: false,
                bos_token_id: Some(eos),
                eos_token_id: Some(eos),
                pad_token_id: Some(eos),
                mask_token_id: Some(mask),
            },
        };
        Ok(SynthModel {
            config,
            tokenizer_json,
            seed,
        })
    }

    /// Fills `out` with rows `first_row..first_row + n_rows` of tensor number `index`, rounded to
    /// bf16 (the dtype of real checkpoints).
    pub fn rows(
        &self,
        index: usize,
        spec: &TensorSpec,
        first_row: u64,
        n_rows: u64,
        out: &mut Vec<f32>,
    ) {
        let row_len = *spec.hf_shape.last().unwrap_or(&1) as usize;
        let start = out.len();
        out.resize(start + n_rows as usize * row_len, 0.0);
        let (mean, std) = distribution(spec, &self.config);
        out[start..]
            .par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, row)| {
                let mut rng = SplitMix64::new(self.seed, index as u64, first_row + r as u64);
                for v in row.iter_mut() {
                    *v = half::bf16::from_f32(mean + std * rng.normal()).to_f32();
                }
            });
    }

    /// Writes a Hugging Face checkpoint folder: config, generation config, tokenizer files and
    /// bf16 weights in safetensors shards of at most `shard_bytes` (always at least two shards for
    /// the tiny model, so the index path is exercised).
    pub fn write_hf(&self, dir: &Path, shard_bytes: u64) -> Result<()> {
        write_hf_metadata(dir, &self.config, &self.tokenizer_json)?;
        let write_text = |name: &str, text: &str| -> Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
        };
        let c = &self.config;
        let specs = layout::tensor_specs(c);
        let shards = split_into_shards(&specs, shard_bytes);
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0u64;
        for (k, shard) in shards.iter().enumerate() {
            let file_name = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
            for &i in shard {
                weight_map.insert(specs[i].hf_name.clone(), file_name.clone().into());
                total += bf16_bytes(&specs[i]);
            }
            self.write_shard(&dir.join(&file_name), &specs, shard)?;
        }
        write_text(
            "model.safetensors.index.json",
            &pretty(
                &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
            ),
        )
    }

    fn write_shard(&self, path: &Path, specs: &[TensorSpec], members: &[usize]) -> Result<()> {
        let header = encode_header(members.iter().map(|&i| {
            (
                specs[i].hf_name.as_str(),
                Dtype::BF16,
                specs[i].hf_shape.as_slice(),
                bf16_bytes(&specs[i]),
            )
        }));
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(path, e);
        out.write_all(&header).map_err(io)?;
        let mut rows = Vec::new();
        for &i in members {
            let spec = &specs[i];
            let row_len = *spec.hf_shape.last().unwrap_or(&1);
            let n_rows: u64 = spec.hf_shape.iter().rev().skip(1).product();
            let chunk = (4u64 << 20) / row_len + 1;
            let mut row = 0;
            while row < n_rows {
                let take = chunk.min(n_rows - row);
                rows.clear();
                self.rows(i, spec, row, take, &mut rows);
                let bytes: Vec<u8> = rows
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                    .collect();
                out.write_all(&bytes).map_err(io)?;
                row += take;
            }
        }
        out.flush().map_err(io)
    }
}

/// DiffuCoder-Instruct's recommended sampling settings (docs/model.md §4).
/// Writes the files of a Hugging Face Dream folder other than the weights into `dir` (created if
/// needed): `config.json`, `generation_config.json` (Dream's generation defaults),
/// `tokenizer.json` and `tokenizer_config.json` (with the chat template).
pub fn write_hf_metadata(dir: &Path, c: &DreamConfig, tokenizer_json: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write_text = |name: &str, text: &str| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    write_text("config.json", &pretty(&c.to_hf_json()))?;
    write_text("generation_config.json", &pretty(&generation_json(c)))?;
    write_text("tokenizer.json", tokenizer_json)?;
    write_text(
        "tokenizer_config.json",
        &pretty(&serde_json::json!({
            "add_bos_token": false, "model_max_length": c.max_position_embeddings,
            "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
            "chat_template": CHAT_TEMPLATE,
        })),
    )
}

pub fn generation_json(c: &DreamConfig) -> serde_json::Value {
    serde_json::json!({
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id, "mask_token_id": c.mask_token_id,
        "max_new_tokens": 256, "steps": 256, "temperature": 0.4, "top_p": 0.95,
        "alg": "entropy", "alg_temp": 0.0, "eps": 0.001,
    })
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn bf16_bytes(spec: &TensorSpec) -> u64 {
    spec.hf_shape.iter().product::<u64>() * 2
}

fn split_into_shards(specs: &[TensorSpec], shard_bytes: u64) -> Vec<Vec<usize>> {
    let total: u64 = specs.iter().map(bf16_bytes).sum();
    let limit = shard_bytes.min(total / 2 + 1).max(1);
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, spec) in specs.iter().enumerate() {
        let bytes = bf16_bytes(spec);
        if size > 0 && size + bytes > limit {
            shards.push(Vec::new());
            size = 0;
        }
        if let Some(s) = shards.last_mut() {
            s.push(i)
        }
        size += bytes;
    }
    shards
}

/// Mean and standard deviation per role: projections scaled by 1/sqrt(fan_in) so activations stay
/// of order one through the layers (as in a trained network), norms around 1.
fn distribution(spec: &TensorSpec, c: &DreamConfig) -> (f32, f32) {
    let fan_in = *spec.hf_shape.last().unwrap_or(&1) as f32;
    match spec.role {
        Role::Norm => (1.0, 0.1),
        Role::Bias => (0.0, 0.1),
        Role::TokenEmbd | Role::Output => (0.0, 1.0 / (c.hidden_size as f32).sqrt()),
        _ => (0.0, 1.0 / fan_in.sqrt()),
    }
}

/// SplitMix64 keyed by (seed, tensor, row): a counter-based stream, so rows are independent.
struct SplitMix64 {
    state: u64,
    spare: Option<f32>,
}

impl SplitMix64 {
    fn new(seed: u64, tensor: u64, row: u64) -> Self {
        let mut s = SplitMix64 {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            spare: None,
        };
        s.state = s.next_u64() ^ tensor.wrapping_mul(0xD1B5_4A32_D192_ED03);
        s.state = s.next_u64() ^ row.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        s
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 1.0) / (1u64 << 24) as f32
    }

    /// Standard normal by Box-Muller.
    fn normal(&mut self) -> f32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f32::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}
