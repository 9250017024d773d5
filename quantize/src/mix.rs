//! Which ggml type each tensor gets. Uniform targets give every 2-D weight the same type; the
//! `_m` mixes follow llama.cpp's Q4_K_M / Q5_K_M rules for a Qwen2-shaped model. Norms and
//! biases always stay f32, and a 256-block type on rows that are not a multiple of 256 falls
//! back to the 32-block type llama.cpp uses.

use crate::{Error, Result};
use std::str::FromStr;
use unmask_dream::layout::Role;
use unmask_kernels::GgmlType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Uniform(GgmlType),
    Q4KM,
    Q5KM,
}

pub const TARGET_NAMES: [&str; 10] = [
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m",
];

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Target::Uniform(GgmlType::F32),
            "f16" => Target::Uniform(GgmlType::F16),
            "bf16" => Target::Uniform(GgmlType::BF16),
            "q8_0" => Target::Uniform(GgmlType::Q8_0),
            "q4_0" => Target::Uniform(GgmlType::Q4_0),
            "q4_k" => Target::Uniform(GgmlType::Q4_K),
            "q5_k" => Target::Uniform(GgmlType::Q5_K),
            "q6_k" => Target::Uniform(GgmlType::Q6_K),
            "q4_k_m" => Target::Q4KM,
            "q5_k_m" => Target::Q5KM,
            _ => return Err(Error::UnknownType(s.to_string())),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Uniform(t) => f.write_str(&t.name().to_ascii_lowercase()),
            Target::Q4KM => f.write_str("q4_k_m"),
            Target::Q5KM => f.write_str("q5_k_m"),
        }
    }
}

impl Target {
    /// llama.cpp's `llama_ftype` for `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            Target::Uniform(t) => match t {
                t if t == GgmlType::F32 => 0,
                t if t == GgmlType::F16 => 1,
                t if t == GgmlType::Q4_0 => 2,
                t if t == GgmlType::Q8_0 => 7,
                t if t == GgmlType::Q4_K => 14,
                t if t == GgmlType::Q5_K => 16,
                t if t == GgmlType::Q6_K => 18,
                _ => 32, // bf16
            },
            Target::Q4KM => 15,
            Target::Q5KM => 17,
        }
    }

    fn base(self) -> GgmlType {
        match self {
            Target::Uniform(t) => t,
            Target::Q4KM => GgmlType::Q4_K,
            Target::Q5KM => GgmlType::Q5_K,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.base().is_quantized()
    }
}

/// llama.cpp's rule for which layers of a mix get more bits: the first and last eighth, and
/// every third layer in between.
fn use_more_bits(layer: u64, n_layers: u64) -> bool {
    let (i, n) = (layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type for one tensor. `row_len` is ggml's `ne[0]`; `tied` says the embedding doubles as the
/// output projection (so it is treated as the output, as llama.cpp does).
pub fn choose_type(
    target: Target,
    role: Role,
    layer: Option<u64>,
    n_layers: u64,
    row_len: u64,
    tied: bool,
) -> GgmlType {
    if matches!(role, Role::Norm | Role::Bias) {
        return GgmlType::F32;
    }
    let base = target.base();
    if !base.is_quantized() {
        return base;
    }
    let mixed = matches!(target, Target::Q4KM | Target::Q5KM);
    let is_output = role == Role::Output || (tied && role == Role::TokenEmbd);
    let chosen = if is_output && mixed {
        if !row_len.is_multiple_of(base.block_size()) {
            GgmlType::Q8_0
        } else {
            GgmlType::Q6_K
        }
    } else if mixed
        && matches!(role, Role::AttnV | Role::FfnDown)
        && use_more_bits(layer.unwrap_or(0), n_layers)
    {
        GgmlType::Q6_K
    } else {
        base
    };
    fallback(chosen, row_len)
}

/// llama.cpp's `tensor_type_fallback`: 256-block types on incompatible rows become 32-block
/// types; if even those do not fit, f16.
fn fallback(ty: GgmlType, row_len: u64) -> GgmlType {
    if row_len.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let smaller = match ty {
        t if t == GgmlType::Q4_K => GgmlType::Q5_0,
        t if t == GgmlType::Q5_K => GgmlType::Q5_1,
        t if t == GgmlType::Q6_K => GgmlType::Q8_0,
        t if t == GgmlType::Q2_K || t == GgmlType::Q3_K => GgmlType::Q4_0,
        t => t,
    };
    if row_len.is_multiple_of(smaller.block_size()) {
        smaller
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_match_llama_cpp_for_28_layers() {
        let chosen: Vec<u64> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        // n/8 = 3: layers 0..3, 24.. (7n/8 = 24), and (i-3) % 3 == 2 -> 5, 8, ..., 23
        assert_eq!(
            chosen,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
        );
    }

    #[test]
    fn q4_k_m_mix() {
        let t = Target::Q4KM;
        assert_eq!(
            choose_type(t, Role::Output, None, 28, 3584, false),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type(t, Role::TokenEmbd, None, 28, 3584, false),
            GgmlType::Q4_K
        );
        assert_eq!(
            choose_type(t, Role::TokenEmbd, None, 24, 1024, true),
            GgmlType::Q6_K
        );
        // llama.cpp: an output row that does not fit 256-blocks becomes q8_0 (Qwen2.5-0.5B).
        assert_eq!(
            choose_type(t, Role::TokenEmbd, None, 24, 896, true),
            GgmlType::Q8_0
        );
        assert_eq!(
            choose_type(t, Role::AttnV, Some(0), 28, 3584, false),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type(t, Role::AttnV, Some(3), 28, 3584, false),
            GgmlType::Q4_K
        );
        assert_eq!(
            choose_type(t, Role::FfnDown, Some(5), 28, 18944, false),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type(t, Role::AttnQ, Some(5), 28, 3584, false),
            GgmlType::Q4_K
        );
        assert_eq!(
            choose_type(t, Role::Norm, Some(5), 28, 3584, false),
            GgmlType::F32
        );
        // 4864 = 19 * 256: fits; 896 = 3.5 * 256: falls back
        assert_eq!(
            choose_type(t, Role::FfnDown, Some(3), 24, 4864, false),
            GgmlType::Q4_K
        );
        assert_eq!(
            choose_type(t, Role::AttnQ, Some(3), 24, 896, false),
            GgmlType::Q5_0
        );
        assert_eq!(
            choose_type(t, Role::AttnV, Some(0), 24, 896, false),
            GgmlType::Q8_0
        );
    }

    #[test]
    fn uniform_targets_and_fallbacks() {
        let q = Target::from_str("q6_k").unwrap();
        assert_eq!(
            choose_type(q, Role::AttnQ, Some(0), 2, 64, false),
            GgmlType::Q8_0
        );
        assert_eq!(
            choose_type(q, Role::AttnQ, Some(0), 2, 48, false),
            GgmlType::F16
        );
        assert_eq!(
            choose_type(
                Target::from_str("f16").unwrap(),
                Role::Bias,
                Some(0),
                2,
                64,
                false
            ),
            GgmlType::F32
        );
        assert!(Target::from_str("q3_xs").is_err());
        for name in TARGET_NAMES {
            assert_eq!(Target::from_str(name).unwrap().to_string(), name);
        }
    }
}
