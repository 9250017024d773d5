//! The x86-64 vector code of the int8 GEMM (`qgemm.rs`, whose documentation describes the
//! panel layout and the fold): weight blocks decoded to int8, panels of 8 interleaved rows,
//! activation columns quantized as ggml's AVX2 `quantize_row_q8_0` does, and the two inner loops
//! (`maddubs`: AVX2; `vnni`: AVX-512 VNNI on 256-bit vectors) over all columns of a panel.

use super::{
    block_scale, q4_k_scale_offset, WeightType, ABS_OFFSET, OFFSET_OFFSET, PANEL_BLOCK,
    Q4_K_BLOCK_BYTES, QK8_0, ROWS, SCALE_OFFSET,
};

/// Block `b` (of 32 values) of the weight row at `row` (of type `ty`): its scale and offset
/// as f32 (as `decode_block` computes them) and its 32 integer values as int8 in order.
///
/// # Safety
/// `row` must be readable for blocks up to `b` of `ty` (any alignment).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_block(ty: WeightType, row: *const u8, b: usize) -> (f32, f32, __m256i) {
    // SAFETY: every read below lies inside the block (caller's guarantee): q8_0 reads bytes
    // 0..34 of 34, q5_0 0..22 of 22, q4_0 0..18 of 18, q4_K its super-block's bytes 0..16
    // and one 32-byte run of 16..144; all unaligned.
    unsafe {
        if ty == WeightType::Q4K {
            let sb = row.add(b / 8 * Q4_K_BLOCK_BYTES);
            let (s, o) = q4_k_scale_offset(std::slice::from_raw_parts(sb, 16), b % 8);
            let q = _mm256_loadu_si256(sb.add(16 + (b % 8) / 2 * 32).cast());
            let q = if b.is_multiple_of(2) {
                q
            } else {
                _mm256_srli_epi16::<4>(q)
            };
            let v = _mm256_and_si256(q, _mm256_set1_epi8(0x0f));
            return (s, o, v);
        }
        let src = row.add(b * ty.block_bytes());
        let d = half::f16::from_bits(src.cast::<u16>().read_unaligned()).to_f32();
        let v = match ty {
            WeightType::Q8_0 => _mm256_loadu_si256(src.add(2).cast()),
            WeightType::Q5_0 => {
                let qh = src.add(2).cast::<i32>().read_unaligned();
                let nibbles = nibbles(_mm_loadu_si128(src.add(6).cast()));
                // Byte i all ones where bit i of qh is set (ggml's bytes_from_bits_32).
                let bytes = _mm256_shuffle_epi8(
                    _mm256_set1_epi32(qh),
                    _mm256_set_epi64x(
                        0x0303_0303_0303_0303,
                        0x0202_0202_0202_0202,
                        0x0101_0101_0101_0101,
                        0,
                    ),
                );
                let bits = _mm256_cmpeq_epi8(
                    _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
                    _mm256_set1_epi64x(-1),
                );
                // (q | h << 4) - 16 as int8 is q where h is set and q | 0xf0 where not.
                _mm256_or_si256(
                    nibbles,
                    _mm256_andnot_si256(bits, _mm256_set1_epi8(0xf0u8 as i8)),
                )
            }
            WeightType::Q4_0 => _mm256_sub_epi8(
                nibbles(_mm_loadu_si128(src.add(2).cast())),
                _mm256_set1_epi8(8),
            ),
            WeightType::Q4K => unreachable!("handled above"),
        };
        (d, 0.0, v)
    }
}

/// 16 bytes of nibbles to 32 bytes: the low nibbles of bytes 0..16, then their high nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles(q: __m128i) -> __m256i {
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
    _mm256_set_m128i(hi, lo)
}

/// Decodes `rows` (<= 8) rows of `nb` blocks of type `ty` to int8 and interleaves them into
/// `panel`: per block, 8 vectors of 32 bytes (vector t holds values 4t..4t+4 of rows 0..8,
/// an 8 x 8 transpose of 32-bit groups), the same 8 vectors with every byte replaced by its
/// magnitude (as u8), then the 8 scales and the 8 offsets as f32. Missing rows are zero.
///
/// # Safety
/// `w` must hold `rows` rows of `nb` blocks of `ty`, `w_row` bytes apart; `panel` must be
/// 32-byte aligned with room for `nb * PANEL_BLOCK` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack_panel(
    ty: WeightType,
    w: *const u8,
    w_row: usize,
    rows: usize,
    nb: usize,
    panel: *mut u8,
) {
    for b in 0..nb {
        let mut r = [_mm256_setzero_si256(); ROWS];
        let mut d = [0f32; ROWS];
        let mut o = [0f32; ROWS];
        for (i, v) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: block b of row i < rows exists (caller's guarantee).
            (d[i], o[i], *v) = unsafe { load_block(ty, w.add(i * w_row), b) };
        }
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        let out = [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ];
        // SAFETY: block b of the panel (PANEL_BLOCK bytes from a 32-byte aligned offset)
        // is inside the buffer (caller's guarantee).
        unsafe {
            let dst = panel.add(b * PANEL_BLOCK);
            for (t, v) in out.into_iter().enumerate() {
                _mm256_store_si256(dst.add(t * 32).cast(), v);
                // abs(-128) wraps to -128, i.e. 128 as an unsigned byte.
                _mm256_store_si256(dst.add(ABS_OFFSET + t * 32).cast(), _mm256_abs_epi8(v));
            }
            _mm256_store_ps(dst.add(SCALE_OFFSET).cast(), _mm256_loadu_ps(d.as_ptr()));
            _mm256_store_ps(dst.add(OFFSET_OFFSET).cast(), _mm256_loadu_ps(o.as_ptr()));
        }
    }
}
use std::arch::x86_64::*;

/// Same operations as ggml's AVX2 `quantize_row_q8_0`, one column of `k` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_column(x: *const f32, k: usize, out: *mut u8) {
    let nb = k / QK8_0;
    let sign = _mm256_set1_ps(-0.0);
    for b in 0..nb {
        // SAFETY: block b of the column (32 floats) is readable (caller's guarantee).
        let (v0, v1, v2, v3) = unsafe {
            let p = x.add(b * QK8_0);
            (
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            )
        };
        let mut amax = _mm256_andnot_ps(sign, v0);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v1));
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v2));
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v3));
        let mut m4 = _mm_max_ps(
            _mm256_extractf128_ps::<1>(amax),
            _mm256_castps256_ps128(amax),
        );
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm256_set1_ps(id);
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;
        let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v0, mul)));
        let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v1, mul)));
        let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v2, mul)));
        let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v3, mul)));
        let a = _mm256_packs_epi32(i0, i1);
        let c = _mm256_packs_epi32(i2, i3);
        let q = _mm256_packs_epi16(a, c);
        let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let d = block_scale(amax);
        // The exact sum of the 32 int8 (as the scalar code sums them): u8 ones times i8 in
        // pairs, then pairs of i16 to i32, then across the vector.
        let pairs = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
            _mm256_set1_epi16(1),
        );
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(pairs),
            _mm256_extracti128_si256::<1>(pairs),
        );
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4));
        let sum = _mm_cvtsi128_si32(s4);
        // SAFETY: block b's 32 bytes, its scale and its sum lie inside the output column.
        unsafe {
            _mm256_storeu_si256(out.add(b * QK8_0).cast(), q);
            out.add(k + b * 4).cast::<f32>().write_unaligned(d);
            out.add(k + nb * 4 + b * 4)
                .cast::<f32>()
                .write_unaligned(d * sum as f32);
        }
    }
}

/// Defines a module `$module` with `panel_times_columns` (all `m` columns times one panel)
/// and its tiles, compiled for `$features`, whose inner step adds the 8 dot products of 4
/// bytes of one column (`$xs`: the column's bytes with the weights' signs) and the weights'
/// magnitudes (`$wa`, u8) to `$dot` (8 x i32). Both steps compute the exact integer sums
/// (`maddubs` cannot saturate here: |w| <= 128 and |x| <= 127), so the kernels agree bit for
/// bit.
macro_rules! column_kernels {
    ($module:ident, $features:literal, |$dot:ident, $wa:ident, $xs:ident| $step:expr) => {
        pub(in super::super) mod $module {
            use super::super::{ABS_OFFSET, OFFSET_OFFSET, PANEL_BLOCK, QK8_0, ROWS, SCALE_OFFSET};
            use std::arch::x86_64::*;

            /// All `m` columns times one panel of `nb` blocks; `rows` (<= 8) outputs per
            /// column are written, output `(r, c)` at `out[c * out_col + r]`. With
            /// `OFFSETS` each block also subtracts its offsets times the column's scaled
            /// block sum.
            ///
            /// # Safety
            /// The CPU has `$features`; `panel` holds `nb` packed blocks (32-byte aligned);
            /// `xq` `m` columns `xq_col` bytes apart of `k = 32 nb` int8, `nb` f32 scales
            /// and `nb` f32 scaled sums; the outputs are writable.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(in super::super::super) unsafe fn panel_times_columns<const OFFSETS: bool>(
                panel: *const u8,
                nb: usize,
                xq: *const u8,
                xq_col: usize,
                m: usize,
                out: *mut f32,
                out_col: usize,
                rows: usize,
            ) {
                // Columns `c..c + C` through `tile::<C>`.
                macro_rules! tile_at {
                    ($cols:literal, $c:expr) => {
                        // SAFETY: columns c..c+C exist (c + C <= m) and the caller vouched
                        // for the rest.
                        unsafe {
                            tile::<$cols, OFFSETS>(
                                panel,
                                nb,
                                xq.add($c * xq_col),
                                xq_col,
                                out.add($c * out_col),
                                out_col,
                                rows,
                            )
                        }
                    };
                }
                let mut c = 0;
                while c + 4 <= m {
                    tile_at!(4, c);
                    c += 4;
                }
                match m - c {
                    3 => tile_at!(3, c),
                    2 => tile_at!(2, c),
                    1 => tile_at!(1, c),
                    _ => {}
                }
            }

            /// `C` columns times one panel: `C` vectors of 8 outputs.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const C: usize, const OFFSETS: bool>(
                panel: *const u8,
                nb: usize,
                xq: *const u8,
                xq_col: usize,
                out: *mut f32,
                out_col: usize,
                rows: usize,
            ) {
                let k = nb * QK8_0;
                let mut acc = [_mm256_setzero_ps(); C];
                for b in 0..nb {
                    // SAFETY: block b of the panel and of each of the C columns is readable
                    // (caller's guarantee); loads are unaligned or from the 32-byte aligned
                    // panel.
                    unsafe {
                        let pb = panel.add(b * PANEL_BLOCK);
                        let mut dots = [_mm256_setzero_si256(); C];
                        // A trip count the compiler cannot see keeps this loop rolled, and
                        // with it the schedule (and register use) written here.
                        for t in 0..std::hint::black_box(QK8_0 / 4) {
                            let wv = _mm256_load_si256(pb.add(t * 32).cast());
                            let $wa = _mm256_load_si256(pb.add(ABS_OFFSET + t * 32).cast());
                            for (i, $dot) in dots.iter_mut().enumerate() {
                                let x4 = xq
                                    .add(i * xq_col + b * QK8_0 + t * 4)
                                    .cast::<i32>()
                                    .read_unaligned();
                                let $xs = _mm256_sign_epi8(_mm256_set1_epi32(x4), wv);
                                *$dot = $step;
                            }
                        }
                        let dw = _mm256_load_ps(pb.add(SCALE_OFFSET).cast());
                        let ow = _mm256_load_ps(pb.add(OFFSET_OFFSET).cast());
                        for (i, (a, dot)) in acc.iter_mut().zip(dots).enumerate() {
                            let dx = xq
                                .add(i * xq_col + k + b * 4)
                                .cast::<f32>()
                                .read_unaligned();
                            let dx = _mm256_set1_ps(dx);
                            *a =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx), *a);
                            if OFFSETS {
                                let sx = xq
                                    .add(i * xq_col + k + nb * 4 + b * 4)
                                    .cast::<f32>()
                                    .read_unaligned();
                                *a = _mm256_fnmadd_ps(ow, _mm256_set1_ps(sx), *a);
                            }
                        }
                    }
                }
                for (i, a) in acc.into_iter().enumerate() {
                    // SAFETY: outputs 0..rows of column i are writable (caller's guarantee).
                    unsafe {
                        let o = out.add(i * out_col);
                        if rows == ROWS {
                            _mm256_storeu_ps(o, a);
                        } else {
                            let mut tmp = [0f32; ROWS];
                            _mm256_storeu_ps(tmp.as_mut_ptr(), a);
                            std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, rows);
                        }
                    }
                }
            }
        }
    };
}

// The AVX2 step: `maddubs` (u8 x i8 pairs to i16), `madd` with ones (pairs to i32), add.
column_kernels!(maddubs, "avx2,fma,f16c", |dot, wa, xs| _mm256_add_epi32(
    *dot,
    _mm256_madd_epi16(_mm256_maddubs_epi16(wa, xs), _mm256_set1_epi16(1))
));
// The VNNI step: one `vpdpbusd` (u8 x i8 quadruples summed into i32).
column_kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", |dot, wa, xs| {
    _mm256_dpbusd_epi32(*dot, wa, xs)
});
