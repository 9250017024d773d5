//! Quantization and dequantization with ggml's own reference routines, so every block we write
//! is bit-identical to what llama.cpp's quantizer writes for the same f32 input.

use crate::{Error, GgmlType, Result};
use llama_cpp_sys_2 as sys;
use rayon::prelude::*;

/// Types `quantize_rows` can produce. Types that need an importance matrix (the IQ family) or
/// are activation-only (Q8_1, Q8_K) are deliberately absent.
pub const QUANTIZABLE: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Rows handed to one ggml call; small enough to balance rayon's threads, large enough to amortise.
const ROWS_PER_TASK: usize = 16;

fn check_quantizable(ty: GgmlType, n_elements: usize, n_per_row: usize) -> Result<usize> {
    let fail = |reason: String| Error::Quantize {
        ty: ty.name(),
        reason,
    };
    if !QUANTIZABLE.contains(&ty) {
        return Err(fail("not a supported target type".into()));
    }
    if n_per_row == 0 || !n_elements.is_multiple_of(n_per_row) {
        return Err(fail(format!(
            "{n_elements} elements do not form rows of {n_per_row}"
        )));
    }
    if !(n_per_row as u64).is_multiple_of(ty.block_size()) {
        return Err(fail(format!(
            "row length {n_per_row} is not a multiple of the block size {}",
            ty.block_size()
        )));
    }
    Ok(ty.bytes_for(n_per_row as u64)? as usize)
}

/// Bytes that `n_rows` rows of `n_per_row` elements take in `ty`.
pub fn quantized_size(ty: GgmlType, n_rows: usize, n_per_row: usize) -> Result<usize> {
    let row_bytes = check_quantizable(ty, n_per_row, n_per_row)?;
    row_bytes
        .checked_mul(n_rows)
        .ok_or_else(|| Error::Quantize {
            ty: ty.name(),
            reason: "size overflows".into(),
        })
}

/// Quantizes whole rows of `src` into `dst` (which must be exactly `quantized_size` bytes), in
/// parallel. Non-finite input is refused: ggml's k-quant searches assume finite values.
pub fn quantize_rows_into(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
) -> Result<()> {
    let row_bytes = check_quantizable(ty, src.len(), n_per_row)?;
    let n_rows = src.len() / n_per_row;
    if dst.len() != row_bytes * n_rows {
        return Err(Error::Quantize {
            ty: ty.name(),
            reason: format!(
                "output buffer has {} bytes, need {}",
                dst.len(),
                row_bytes * n_rows
            ),
        });
    }
    if let Some(index) = src.iter().position(|v| !v.is_finite()) {
        return Err(Error::Quantize {
            ty: ty.name(),
            reason: format!("input element {index} is not finite ({})", src[index]),
        });
    }
    // SAFETY: initialises ggml's lookup tables for `ty`; documented as thread-safe and idempotent.
    unsafe { sys::ggml_quantize_init(ty.id()) };
    dst.par_chunks_mut(row_bytes * ROWS_PER_TASK)
        .zip(src.par_chunks(n_per_row * ROWS_PER_TASK))
        .for_each(|(out, rows)| {
            let n = rows.len() / n_per_row;
            // SAFETY: `rows` holds exactly n * n_per_row f32 values and `out` exactly
            // n * row_bytes bytes (both chunkings use the same row count), n_per_row is a whole
            // number of blocks and the type is in QUANTIZABLE, which needs no importance matrix,
            // so every assertion inside ggml_quantize_chunk holds. start = 0 as each call gets
            // its own sub-slices.
            let written = unsafe {
                sys::ggml_quantize_chunk(
                    ty.id(),
                    rows.as_ptr(),
                    out.as_mut_ptr().cast(),
                    0,
                    n as i64,
                    n_per_row as i64,
                    std::ptr::null(),
                )
            };
            debug_assert_eq!(written, out.len());
        });
    Ok(())
}

/// Allocating form of [`quantize_rows_into`].
pub fn quantize_rows(ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    let size = quantized_size(ty, src.len() / n_per_row.max(1), n_per_row)?;
    let mut dst = vec![0u8; size];
    quantize_rows_into(ty, src, n_per_row, &mut dst)?;
    Ok(dst)
}

/// Converts `data` (whole blocks of `ty`) to f32 with ggml's dequantizer, appending to `out`.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let block_bytes = ty.type_size() as usize;
    if !data.len().is_multiple_of(block_bytes) {
        return Err(Error::Quantize {
            ty: ty.name(),
            reason: format!(
                "{} bytes is not a whole number of {block_bytes}-byte blocks",
                data.len()
            ),
        });
    }
    let n = data.len() / block_bytes * ty.block_size() as usize;
    if ty == GgmlType::F32 {
        out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        return Ok(());
    }
    // SAFETY: see GgmlType::traits; the table entry is static.
    let to_float = unsafe { (*sys::ggml_get_type_traits(ty.id())).to_float };
    let Some(to_float) = to_float else {
        return Err(Error::Quantize {
            ty: ty.name(),
            reason: "ggml has no dequantizer for this type".into(),
        });
    };
    let start = out.len();
    out.resize(start + n, 0.0);
    // SAFETY: `data` holds n / block_size whole blocks of `ty` and the destination has room for
    // exactly n floats; ggml's to_float reads and writes nothing beyond those.
    unsafe { to_float(data.as_ptr().cast(), out[start..].as_mut_ptr(), n as i64) };
    Ok(())
}

/// Allocating form of [`dequantize_into`].
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn every_supported_type_round_trips_within_its_precision() {
        let src = ramp(256 * 8);
        for ty in QUANTIZABLE {
            let q = quantize_rows(ty, &src, 512).unwrap();
            assert_eq!(q.len(), quantized_size(ty, 4, 512).unwrap());
            let back = dequantize(ty, &q).unwrap();
            let rmse = (src
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                / src.len() as f32)
                .sqrt();
            let bound = match ty {
                t if t == GgmlType::F32 => 0.0,
                t if t == GgmlType::Q2_K => 0.2,
                t if t == GgmlType::Q3_K => 0.1,
                _ => 0.06,
            };
            assert!(rmse <= bound, "{ty}: rmse {rmse}");
        }
    }

    #[test]
    fn bad_requests_are_errors_not_aborts() {
        let src = ramp(300);
        assert!(quantize_rows(GgmlType::Q4_K, &src, 300).is_err());
        assert!(quantize_rows(GgmlType::Q8_0, &src, 7).is_err());
        assert!(quantize_rows(GgmlType::Q8_0, &src, 0).is_err());
        let mut nan = ramp(32);
        nan[3] = f32::NAN;
        assert!(quantize_rows(GgmlType::Q8_0, &nan, 32).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 33]).is_err());
    }
}
