//! Finiteness checks of model tensors and of logits rows: a model with NaN or infinite weights
//! (or quantization scales) must be refused with a clear error, not run into an empty answer.
//!
//! [`check_tensor`] has two depths. [`Depth::Scales`] (the default at load) is cheap: every
//! quantized block's scale (and minimum) fields, read in place, and the whole of every small
//! unquantized tensor (norms, biases: at most [`SMALL_TENSOR`] elements). A NaN or infinite scale
//! poisons the whole block, and a non-finite norm weight the whole model; large f16/bf16/f32
//! matrices and the quantized values themselves (integers) are left to [`Depth::Full`], which
//! dequantizes everything in chunks. [`check_logits`] is the run-time backstop for what the
//! cheap check leaves out.

use crate::graph::scoring::RowSummary;
use crate::{Error, GgmlType, Result};

/// How much of a tensor [`check_tensor`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Depth {
    /// Nothing.
    None,
    /// Quantization scales and small tensors (norms, biases).
    #[default]
    Scales,
    /// Every value.
    Full,
}

/// Unquantized tensors up to this many elements are checked whole at [`Depth::Scales`].
pub const SMALL_TENSOR: u64 = 1 << 20;

/// Where the floating-point fields of one block of a quantized type lie: `(block bytes, [(offset,
/// is_f32)])`. `None`: a type without such a table (checked only at [`Depth::Full`]).
fn scale_fields(ty: GgmlType) -> Option<(usize, &'static [(usize, bool)])> {
    let f = |n: usize, fields: &'static [(usize, bool)]| Some((n, fields));
    match ty {
        t if t == GgmlType::Q4_0 => f(18, &[(0, false)]),
        t if t == GgmlType::Q4_1 => f(20, &[(0, false), (2, false)]),
        t if t == GgmlType::Q5_0 => f(22, &[(0, false)]),
        t if t == GgmlType::Q5_1 => f(24, &[(0, false), (2, false)]),
        t if t == GgmlType::Q8_0 => f(34, &[(0, false)]),
        t if t == GgmlType::Q2_K => f(84, &[(80, false), (82, false)]),
        t if t == GgmlType::Q3_K => f(110, &[(108, false)]),
        t if t == GgmlType::Q4_K => f(144, &[(0, false), (2, false)]),
        t if t == GgmlType::Q5_K => f(176, &[(0, false), (2, false)]),
        t if t == GgmlType::Q6_K => f(210, &[(208, false)]),
        _ => None,
    }
}

fn non_finite(what: &str, index: u64, value: f32) -> Error {
    Error::NonFinite {
        what: what.to_string(),
        index,
        value,
    }
}

/// Checks the floating-point values of one tensor's data (`ty`, as stored) to `depth`.
pub fn check_tensor(name: &str, ty: GgmlType, data: &[u8], depth: Depth) -> Result<()> {
    if depth == Depth::None {
        return Ok(());
    }
    let plain = ty == GgmlType::F32 || ty == GgmlType::F16 || ty == GgmlType::BF16;
    if plain {
        let width = if ty == GgmlType::F32 { 4 } else { 2 };
        let n = (data.len() / width) as u64;
        if depth == Depth::Scales && n > SMALL_TENSOR {
            return Ok(());
        }
        let what = format!("tensor `{name}` ({}) element", ty.name());
        for (i, b) in data.chunks_exact(width).enumerate() {
            let v = match width {
                4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                _ if ty == GgmlType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            };
            if !v.is_finite() {
                return Err(non_finite(&what, i as u64, v));
            }
        }
        return Ok(());
    }
    if !ty.is_quantized() {
        // Integer tensors have nothing to check.
        return Ok(());
    }
    if let Some((block, fields)) = scale_fields(ty) {
        let what = format!("tensor `{name}` ({}) block scale, block", ty.name());
        for (i, b) in data.chunks_exact(block).enumerate() {
            for &(off, is_f32) in fields {
                let v = if is_f32 {
                    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
                } else {
                    half::f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
                };
                if !v.is_finite() {
                    return Err(non_finite(&what, i as u64, v));
                }
            }
        }
    }
    if depth == Depth::Full {
        let block = ty.type_size() as usize;
        let per_block = ty.block_size();
        let what = format!("tensor `{name}` ({}) value", ty.name());
        let mut out = Vec::new();
        // 4096 blocks at a time: bounded memory whatever the tensor's size.
        for (c, chunk) in data.chunks(block * 4096).enumerate() {
            out.clear();
            crate::quant::dequantize_into(ty, chunk, &mut out)?;
            if let Some(i) = out.iter().position(|v| !v.is_finite()) {
                let index = c as u64 * 4096 * per_block + i as u64;
                return Err(non_finite(&what, index, out[i]));
            }
        }
    }
    Ok(())
}

/// Checks one logits row: NaN or +inf anywhere, or no finite value at all (every entry -inf),
/// means the model's arithmetic broke down (non-finite weights or activations); decoding from
/// such a row would pick an arbitrary token.
pub fn check_logits(row: &[f32]) -> Result<()> {
    let mut any_finite = false;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() || v == f32::INFINITY {
            return Err(non_finite("logits row: element", i as u64, v));
        }
        any_finite |= v.is_finite();
    }
    if !any_finite && !row.is_empty() {
        return Err(non_finite("logits row: every element, e.g.", 0, row[0]));
    }
    Ok(())
}

/// [`check_logits`] for a row summarised on a device ([`RowSummary`]): its largest logit, softmax
/// denominator and candidates must be finite.
pub fn check_summary(summary: &RowSummary<'_>) -> Result<()> {
    let b = summary.best_logit;
    if !b.is_finite() {
        return Err(non_finite(
            "logits row summary: largest logit of token",
            u64::from(summary.best_token),
            b,
        ));
    }
    if !(summary.sum.is_finite() && summary.sum > 0.0) {
        return Err(non_finite(
            "logits row summary: softmax sum, token",
            u64::from(summary.best_token),
            summary.sum as f32,
        ));
    }
    if let Some(&(v, id)) = summary
        .candidates
        .iter()
        .find(|(v, _)| v.is_nan() || *v == f32::INFINITY)
    {
        return Err(non_finite(
            "logits row summary: candidate token",
            u64::from(id),
            v,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_rows() {
        assert!(check_logits(&[0.0, -1.0, f32::NEG_INFINITY]).is_ok());
        assert!(check_logits(&[0.0, f32::NAN]).is_err());
        assert!(check_logits(&[f32::INFINITY, 0.0]).is_err());
        assert!(check_logits(&[f32::NEG_INFINITY; 3]).is_err());
        let e = check_logits(&[1.0, 2.0, f32::NAN]).unwrap_err().to_string();
        assert!(
            e.contains("logits row") && e.contains("NaN") && e.contains('2'),
            "{e}"
        );
    }

    #[test]
    fn summaries() {
        let cands = [(1.0f32, 4u32), (0.5, 2)];
        let mut s = RowSummary {
            best_token: 4,
            best_logit: 1.0,
            sum: 1.5,
            neg_entropy: -0.5,
            candidates: &cands,
            n_vocab: 8,
        };
        assert!(check_summary(&s).is_ok());
        s.sum = f64::NAN;
        assert!(check_summary(&s).is_err());
        s.sum = 1.5;
        s.best_logit = f32::NAN;
        assert!(check_summary(&s).is_err());
    }

    #[test]
    fn scales_and_values() {
        let xs: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 7.0).collect();
        let q = crate::quant::quantize_rows(GgmlType::Q8_0, &xs, 256).unwrap();
        check_tensor("w", GgmlType::Q8_0, &q, Depth::Full).unwrap();
        let mut bad = q.clone();
        // Block 3's f16 scale := NaN.
        bad[3 * 34..3 * 34 + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        let e = check_tensor("w", GgmlType::Q8_0, &bad, Depth::Scales).unwrap_err();
        assert!(e.to_string().contains("block 3"), "{e}");
        assert!(check_tensor("w", GgmlType::Q8_0, &bad, Depth::None).is_ok());

        let mut f = Vec::new();
        for v in [1.0f32, 2.0, f32::INFINITY] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        assert!(check_tensor("n", GgmlType::F32, &f, Depth::Scales).is_err());
        let h: Vec<u8> = [half::f16::ONE, half::f16::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(check_tensor("h", GgmlType::F16, &h, Depth::Scales).is_err());
        // A large unquantized tensor is left to the full check.
        let big = vec![0xffu8; (SMALL_TENSOR as usize + 1) * 2];
        assert!(check_tensor("e", GgmlType::F16, &big, Depth::Scales).is_ok());
        assert!(check_tensor("e", GgmlType::F16, &big, Depth::Full).is_err());
    }
}
