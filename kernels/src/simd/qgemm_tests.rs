//! Tests of the int8 GEMM (`qgemm.rs`): activation quantization against ggml's, the weight
//! decoders against ggml's dequantization, and every kernel path against an integer reference
//! written out from ggml's formats. `graph::qgemm_op`'s tests use `noise`, `weights` and
//! `reference` too.

use super::*;
use crate::{quant, GgmlType};
use llama_cpp_sys_2 as sys;

/// Deterministic uniform values in `[-scale/2, scale/2)` (xorshift), for the tests here and
/// in `graph::qgemm_op`.
pub(crate) fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// Block `b` (of 32 values) of a row of `ty`: scale, offset and integer values, written out
/// from ggml's `dequantize_row_q8_0`, `_q5_0`, `_q4_0` and `_q4_K` (independently of
/// `decode_block`).
fn reference_block(ty: WeightType, row: &[u8], b: usize) -> (f32, f32, [i32; 32]) {
    let f16 = |lo: u8, hi: u8| half::f16::from_le_bytes([lo, hi]).to_f32();
    if ty == WeightType::Q4K {
        let x = &row[(b / 8) * 144..(b / 8 + 1) * 144];
        let (d, dmin, scales, qs) = (f16(x[0], x[1]), f16(x[2], x[3]), &x[4..16], &x[16..]);
        let j = b % 8;
        // get_scale_min_k4: 6-bit pairs, the upper two bits of scales 4..8 packed into the
        // top bits of bytes 0..8.
        let (sc, m) = match j {
            0..=3 => (scales[j] & 0x3f, scales[j + 4] & 0x3f),
            _ => (
                (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
                (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
            ),
        };
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let v = std::array::from_fn(|l| {
            if j.is_multiple_of(2) {
                (q[l] & 0x0f) as i32
            } else {
                (q[l] >> 4) as i32
            }
        });
        return (d * sc as f32, dmin * m as f32, v);
    }
    let bb = ty.block_bytes();
    let blk = &row[b * bb..(b + 1) * bb];
    let v = std::array::from_fn(|e| {
        let (j, shift) = (e % 16, if e < 16 { 0 } else { 4 });
        match ty {
            WeightType::Q8_0 => blk[2 + e] as i8 as i32,
            WeightType::Q4_0 => ((blk[2 + j] >> shift) & 0x0f) as i32 - 8,
            WeightType::Q5_0 => {
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                let q = ((blk[6 + j] >> shift) & 0x0f) as i32;
                (q | (((qh >> e) & 1) as i32) << 4) - 16
            }
            WeightType::Q4K => unreachable!(),
        }
    });
    (f16(blk[0], blk[1]), 0.0, v)
}

/// The definition, written out: exact integer dot products, then per block
/// `acc = fma(dot, dw * dx, acc)` and, for types with offsets,
/// `acc = fma(-o, dx * sum(x), acc)`, in block order.
pub(crate) fn reference(
    ty: WeightType,
    w: &[u8],
    k: usize,
    n: usize,
    xq: &[u8],
    m: usize,
) -> Vec<f32> {
    let (row, stride, nb) = (ty.row_bytes(k), xq_stride(k), k / 32);
    let f32_at = |col: &[u8], at: usize| f32::from_le_bytes(col[at..at + 4].try_into().unwrap());
    let mut out = vec![0f32; n * m];
    for c in 0..m {
        let col = &xq[c * stride..(c + 1) * stride];
        for r in 0..n {
            let mut acc = 0f32;
            for b in 0..nb {
                let (dw, ow, v) = reference_block(ty, &w[r * row..(r + 1) * row], b);
                let dx = f32_at(col, k + 4 * b);
                let mut dot = 0i32;
                let mut sum = 0i32;
                for i in 0..32 {
                    let x = col[b * 32 + i] as i8 as i32;
                    dot += v[i] * x;
                    sum += x;
                }
                acc = (dot as f32).mul_add(dw * dx, acc);
                if ty.has_offsets() {
                    assert_eq!(f32_at(col, k + 4 * nb + 4 * b), dx * sum as f32);
                    acc = (-ow).mul_add(dx * sum as f32, acc);
                }
            }
            out[c * n + r] = acc;
        }
    }
    out
}

/// `n` rows of `k` random values quantized by ggml to `ty`, then some blocks' values (not
/// their scales) overwritten with extremes: random bytes (every bit pattern, -128 for q8_0),
/// all bits set (q4_0 7, q5_0 15, q8_0 -1) and all clear (q4_0 -8, q5_0 -16, q8_0 0).
pub(crate) fn weights(ty: WeightType, k: usize, n: usize, seed: u64) -> Vec<u8> {
    let mut w = quant::quantize_rows(ty.ggml(), &noise(k * n, seed, 0.2), k).unwrap();
    let bb = ty.block_bytes();
    // The f16 scales stay (q4_K: d and dmin); q4_K's 6-bit scales and mins are overwritten
    // with the values.
    let skip = if ty == WeightType::Q4K { 4 } else { 2 };
    let bytes = noise(w.len(), seed + 1000, 512.0);
    let blocks = w.len() / bb;
    for b in (0..blocks).step_by(3) {
        let blk = &mut w[b * bb + skip..(b + 1) * bb];
        match b % 9 {
            0 => blk.fill(0xff),
            3 => blk.fill(0),
            _ => {
                for (i, v) in blk.iter_mut().enumerate() {
                    *v = (bytes[b * bb + i] as i32 & 0xff) as u8;
                }
            }
        }
    }
    if ty == WeightType::Q8_0 {
        // ggml's quantizer never writes -128, other files might: still exact.
        w[2] = (-128i8) as u8;
    }
    w
}

fn quantize(path: Path, x: &[f32], k: usize) -> Vec<u8> {
    let m = x.len() / k;
    let mut out = vec![0u8; m * xq_stride(k)];
    // SAFETY: x holds m columns of k floats, out m columns of xq_stride(k) bytes.
    unsafe {
        quantize_columns_raw(
            path,
            x.as_ptr().cast(),
            4 * k,
            k,
            0,
            m,
            out.as_mut_ptr(),
            xq_stride(k),
        )
    };
    out
}

#[allow(clippy::too_many_arguments)]
fn product(
    path: Path,
    ty: WeightType,
    w: &[u8],
    k: usize,
    n: usize,
    xq: &[u8],
    m: usize,
    nth: usize,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * m];
    for ith in 0..nth {
        // SAFETY: sizes as gemm_raw documents; the "threads" run one after the other.
        unsafe {
            gemm_raw(
                path,
                ty,
                w.as_ptr(),
                ty.row_bytes(k),
                k,
                n,
                xq.as_ptr(),
                xq_stride(k),
                m,
                out.as_mut_ptr(),
                n,
                ith,
                nth,
            )
        };
    }
    out
}

#[test]
fn activations_are_quantized_exactly_as_ggml_does() {
    let k = 4 * 32;
    // Block 0 has ties (x * 127 / amax exactly half-way: ggml's AVX2 path rounds them to
    // even), block 1 is zero, blocks 2 and 3 are noise.
    let mut x = vec![0f32; k];
    x[0] = 127.0;
    for (i, v) in x[1..32].iter_mut().enumerate() {
        *v = (i as f32 - 15.0) + 0.5;
    }
    x[64..].copy_from_slice(&noise(64, 7, 3.0));
    let m = 3;
    let mut cols = x.clone();
    cols.extend(noise(k * (m - 1), 8, 0.01));
    // SAFETY: ggml's CPU type table is static; from_float of q8_0 writes k / 32 blocks of
    // 34 bytes, which `want` has room for.
    let want: Vec<u8> = unsafe {
        sys::ggml_cpu_init();
        let from_float = (*sys::ggml_get_type_traits_cpu(GgmlType::Q8_0.id()))
            .from_float
            .unwrap();
        let mut want = vec![0u8; m * q8_0_row_bytes(k)];
        for c in 0..m {
            from_float(
                cols[c * k..].as_ptr(),
                want[c * q8_0_row_bytes(k)..].as_mut_ptr().cast(),
                k as i64,
            );
        }
        want
    };
    for path in [Path::Best, Path::Scalar] {
        let got = quantize(path, &cols, k);
        for c in 0..m {
            let col = &got[c * xq_stride(k)..];
            for b in 0..k / 32 {
                let blk = &want[c * q8_0_row_bytes(k) + b * 34..][..34];
                assert_eq!(&col[b * 32..b * 32 + 32], &blk[2..], "{path:?} {c} {b}");
                let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                assert_eq!(col[k + 4 * b..k + 4 * b + 4], d.to_le_bytes(), "{path:?}");
                let sum: i32 = blk[2..].iter().map(|&q| q as i8 as i32).sum();
                let at = k + k / 8 + 4 * b;
                assert_eq!(col[at..at + 4], (d * sum as f32).to_le_bytes(), "{path:?}");
            }
        }
    }
}

#[test]
fn decoders_agree_with_ggml_dequantization() {
    for ty in WeightType::ALL {
        let k = 4864;
        let (n, row) = (3, ty.row_bytes(k));
        let w = weights(ty, k, n, 5);
        let want = quant::dequantize(ty.ggml(), &w).unwrap();
        let mut all = Vec::new();
        for r in 0..n {
            let row_bytes = &w[r * row..(r + 1) * row];
            for b in 0..k / 32 {
                let (d, o, v) = reference_block(ty, row_bytes, b);
                let (dk, ok, vk) = decode_block(ty, row_bytes, b);
                assert_eq!(dk.to_bits(), d.to_bits(), "{ty:?} block {b}");
                assert_eq!(ok.to_bits(), o.to_bits(), "{ty:?} block {b}");
                for i in 0..32 {
                    assert_eq!(vk[i] as i32, v[i], "{ty:?} block {b} value {i}");
                    let ggml = want[r * k + b * 32 + i];
                    // ggml's C may contract d * v - o into one fma.
                    let (plain, fused) = (v[i] as f32 * d - o, (v[i] as f32).mul_add(d, -o));
                    assert!(
                        ggml.to_bits() == plain.to_bits() || ggml.to_bits() == fused.to_bits(),
                        "{ty:?} block {b} value {i}: {ggml} vs {plain}"
                    );
                }
                all.extend(v);
            }
        }
        // The extremes are present: both ends of each type's range.
        let (lo, hi) = match ty {
            WeightType::Q8_0 => (-128, 127),
            WeightType::Q5_0 => (-16, 15),
            WeightType::Q4_0 => (-8, 7),
            WeightType::Q4K => (0, 15),
        };
        assert_eq!(all.iter().min(), Some(&lo), "{ty:?}");
        assert_eq!(all.iter().max(), Some(&hi), "{ty:?}");
    }
}

#[test]
fn kernels_equal_the_integer_reference() {
    for ty in WeightType::ALL {
        for (i, &(k, n, m)) in [
            (32, 1, 1),
            (64, 13, 7),
            (96, 21, 9),
            (256, 9, 7),
            (768, 21, 9),
            (896, 40, 17),
            (4864, 12, 5),
            (4864, 19, 6),
        ]
        .iter()
        .enumerate()
        .filter(|(_, &(k, _, _))| k % ty.block_values() == 0)
        {
            let w = weights(ty, k, n, i as u64);
            let mut x = noise(k * m, 100 + i as u64, 4.0);
            if m > 2 {
                // Extreme activations: a zero column, a column of huge values with one
                // zero block, and one value per block far above the rest.
                x[..k].fill(0.0);
                for (j, v) in x[k..2 * k].iter_mut().enumerate() {
                    *v = if j < 32 {
                        0.0
                    } else {
                        3.0e4 * (j % 7) as f32 - 9.0e4
                    };
                }
                for v in x[2 * k..].iter_mut().step_by(32) {
                    *v = 1.0e3;
                }
            }
            let xq = quantize(Path::Best, &x, k);
            assert_eq!(xq, quantize(Path::Scalar, &x, k));
            let want = reference(ty, &w, k, n, &xq, m);
            for path in [Path::Best, Path::Avx2, Path::Scalar] {
                for nth in [1, 2, 3] {
                    let got = product(path, ty, &w, k, n, &xq, m, nth);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty:?} {path:?}, {nth} threads, k {k} n {n} m {m}"
                    );
                }
            }
            let mut out = vec![0f32; n * m];
            gemm_typed(ty, &w, k, n, &xq, m, &mut out);
            assert_eq!(out, want, "{ty:?}");
            if ty == WeightType::Q8_0 {
                gemm(&w, k, n, &xq, m, &mut out);
                assert_eq!(out, want);
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            out.fill(f32::NAN);
            gemm_typed_parallel(&pool, ty, &w, k, n, &xq, m, &mut out);
            assert_eq!(out, want, "{ty:?} parallel");
        }
    }
}

#[test]
fn weight_types_map_to_ggml() {
    for ty in WeightType::ALL {
        assert_eq!(WeightType::from_ggml(ty.ggml()), Some(ty));
        assert_eq!(ty.block_bytes() as u64, ty.ggml().type_size());
        assert_eq!(ty.ggml().block_size(), ty.block_values() as u64);
    }
    assert_eq!(WeightType::from_ggml(GgmlType::Q4_1), None);
    assert_eq!(WeightType::from_ggml(GgmlType::Q6_K), None);
}
