//! Vectorised `exp` and `ln` for the scoring passes over a vocabulary row (150 K entries per
//! masked position and step). The C library's scalar `expf`/`logf` cost a call per entry; these
//! are the Cephes single-precision polynomials (about 1 ulp, like the SLEEF routines PyTorch
//! uses), written branch-free so the loops below compile to 8-wide AVX2 code when the CPU has it.
//! The scalar and vector paths run the same operations in the same order (no fused multiply-add
//! contraction), so every entry gets the same value whichever path computed it.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `exp` underflows to 0 (denormal results are flushed; they cannot change a sum of
/// probabilities that includes the maximum's 1.0).
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// Cephes `expf` on [-ln2/2, ln2/2], highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Cephes `logf` on [sqrt(1/2) - 1, sqrt(2) - 1], highest degree first.
const LN_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    0.333_333_3,
];
/// Entries summed in f32 lanes before the partial sums are folded into an f64 total.
const FOLD: usize = 1024;

/// `e^x` (0 below -87, saturating at `e^88`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let underflow = x < EXP_MIN;
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * z + r + 1.0;
    // 2^n built in the exponent field; n is in [-126, 127] after the clamp.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y * two_n
    }
}

/// Natural logarithm of a positive, normal `x`.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    // Mantissa scaled into [0.5, 1).
    let m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    e -= i32::from(small);
    let m = if small { m + m - 1.0 } else { m - 1.0 };
    let e = e as f32;
    let z = m * m;
    let mut p = LN_POLY[0];
    for &c in &LN_POLY[1..] {
        p = p * m + c;
    }
    let y = p * m * z + LN2_LO * e - 0.5 * z;
    (m + y) + LN2_HI * e
}

/// `sum_i exp(x_i / divisor - shift)` accumulated in f64.
pub fn sum_exp(xs: &[f32], divisor: f32, shift: f32) -> f64 {
    dispatch(xs, divisor, shift, 0.0, Kind::SumExp)
}

/// `sum_i q_i * ln(q_i + eps)` with `q_i = exp(x_i / divisor - shift) * inv`: the negative
/// entropy of a softmax given its maximum (`shift`) and inverse denominator (`inv`).
pub fn neg_entropy(xs: &[f32], divisor: f32, shift: f32, inv: f32, eps: f32) -> f64 {
    dispatch(xs, divisor, shift, inv, Kind::NegEntropy { eps })
}

/// The maximum of `x_i / divisor`, the first index holding it, and the runner-up value (the
/// largest of the other entries, so a tied maximum is also the runner-up).
pub fn top2(xs: &[f32], divisor: f32) -> (f32, usize, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2::top2(xs, divisor) };
        }
    }
    top2_scalar(xs, divisor)
}

fn top2_scalar(xs: &[f32], divisor: f32) -> (f32, usize, f32) {
    let (mut best, mut best_i, mut second) = (f32::NEG_INFINITY, 0usize, f32::NEG_INFINITY);
    for (i, &l) in xs.iter().enumerate() {
        let x = l / divisor;
        if x > best {
            second = best;
            best = x;
            best_i = i;
        } else if x > second {
            second = x;
        }
    }
    (best, best_i, second)
}

#[derive(Clone, Copy)]
enum Kind {
    SumExp,
    NegEntropy { eps: f32 },
}

fn dispatch(xs: &[f32], divisor: f32, shift: f32, inv: f32, kind: Kind) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2::reduce(xs, divisor, shift, inv, kind) };
        }
    }
    reduce(xs, divisor, shift, inv, kind)
}

/// The same operations as [`exp`], [`ln`] and [`reduce`], eight lanes at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }

    #[target_feature(enable = "avx2")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, splat(EXP_MIN));
        let x = _mm256_min_ps(_mm256_max_ps(x, splat(EXP_MIN)), splat(EXP_MAX));
        let n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, splat(LOG2E)), splat(0.5)));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, splat(LN2_HI))),
            _mm256_mul_ps(n, splat(LN2_LO)),
        );
        let z = _mm256_mul_ps(r, r);
        let mut p = splat(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), splat(c));
        }
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, z), r), splat(1.0));
        let biased = _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127));
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(y, two_n))
    }

    #[target_feature(enable = "avx2")]
    unsafe fn ln8(x: __m256) -> __m256 {
        let bits = _mm256_castps_si256(x);
        let e = _mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)),
            _mm256_set1_epi32(126),
        );
        let m = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(bits, _mm256_set1_epi32(0x807f_ffff_u32 as i32)),
            _mm256_set1_epi32(0x3f00_0000),
        ));
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(m, splat(SQRT_HALF));
        // A true comparison lane is -1 as an integer.
        let e = _mm256_cvtepi32_ps(_mm256_add_epi32(e, _mm256_castps_si256(small)));
        let m = _mm256_blendv_ps(
            _mm256_sub_ps(m, splat(1.0)),
            _mm256_sub_ps(_mm256_add_ps(m, m), splat(1.0)),
            small,
        );
        let z = _mm256_mul_ps(m, m);
        let mut p = splat(LN_POLY[0]);
        for &c in &LN_POLY[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, m), splat(c));
        }
        let y = _mm256_sub_ps(
            _mm256_add_ps(
                _mm256_mul_ps(_mm256_mul_ps(p, m), z),
                _mm256_mul_ps(splat(LN2_LO), e),
            ),
            _mm256_mul_ps(splat(0.5), z),
        );
        _mm256_add_ps(_mm256_add_ps(m, y), _mm256_mul_ps(splat(LN2_HI), e))
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn top2(xs: &[f32], divisor: f32) -> (f32, usize, f32) {
        let d = splat(divisor);
        // Per lane the two largest values seen (a repeated value fills both).
        let (mut first, mut second) = (splat(f32::NEG_INFINITY), splat(f32::NEG_INFINITY));
        let mut chunks = xs.chunks_exact(8);
        for chunk in &mut chunks {
            // SAFETY: `chunk` holds exactly 8 floats; the load is unaligned.
            let x = _mm256_div_ps(_mm256_loadu_ps(chunk.as_ptr()), d);
            second = _mm256_max_ps(second, _mm256_min_ps(first, x));
            first = _mm256_max_ps(first, x);
        }
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` has room for both 8-float stores.
        _mm256_storeu_ps(lanes.as_mut_ptr(), first);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), second);
        let mut candidates: Vec<f32> = lanes.to_vec();
        candidates.extend(chunks.remainder().iter().map(|&l| l / divisor));
        candidates.sort_unstable_by(|a, b| b.total_cmp(a));
        let (best, runner_up) = (candidates[0], candidates[1]);
        let Some(best_i) = xs.iter().position(|&l| l / divisor == best) else {
            // Only when every entry is NaN; the scalar pass defines that case.
            return top2_scalar(xs, divisor);
        };
        (best, best_i, runner_up)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn reduce(xs: &[f32], divisor: f32, shift: f32, inv: f32, kind: Kind) -> f64 {
        let mut total = 0f64;
        for block in xs.chunks(FOLD) {
            let mut acc = _mm256_setzero_ps();
            let mut chunks = block.chunks_exact(8);
            for chunk in &mut chunks {
                // SAFETY: `chunk` holds exactly 8 floats; the load is unaligned.
                let x = _mm256_loadu_ps(chunk.as_ptr());
                let e = exp8(_mm256_sub_ps(
                    _mm256_div_ps(x, splat(divisor)),
                    splat(shift),
                ));
                let t = match kind {
                    Kind::SumExp => e,
                    Kind::NegEntropy { eps } => {
                        let q = _mm256_mul_ps(e, splat(inv));
                        _mm256_mul_ps(q, ln8(_mm256_add_ps(q, splat(eps))))
                    }
                };
                acc = _mm256_add_ps(acc, t);
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` has room for 8 floats; the store is unaligned.
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut tail = 0f32;
            for &x in chunks.remainder() {
                tail += term(x, divisor, shift, inv, kind);
            }
            total += lanes.iter().map(|&a| f64::from(a)).sum::<f64>() + f64::from(tail);
        }
        total
    }
}

#[inline(always)]
fn term(x: f32, divisor: f32, shift: f32, inv: f32, kind: Kind) -> f32 {
    let e = exp(x / divisor - shift);
    match kind {
        Kind::SumExp => e,
        Kind::NegEntropy { eps } => {
            let q = e * inv;
            q * ln(q + eps)
        }
    }
}

fn reduce(xs: &[f32], divisor: f32, shift: f32, inv: f32, kind: Kind) -> f64 {
    const LANES: usize = 8;
    let mut total = 0f64;
    for block in xs.chunks(FOLD) {
        let mut acc = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a += term(x, divisor, shift, inv, kind);
            }
        }
        let mut tail = 0f32;
        for &x in chunks.remainder() {
            tail += term(x, divisor, shift, inv, kind);
        }
        total += acc.iter().map(|&a| f64::from(a)).sum::<f64>() + f64::from(tail);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        ((f64::from(a) - b) / b).abs() / f64::from(f32::EPSILON)
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_range_scoring_uses() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            worst = worst.max(ulps(exp(x), f64::from(x).exp()));
            x += 0.000_37;
        }
        assert!(worst < 2.0, "worst {worst} ulp");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn ln_is_within_two_ulp_from_1e_minus_10_to_2() {
        let mut worst = 0f64;
        let mut x = 1e-10f32;
        while x < 2.0 {
            let want = f64::from(x).ln();
            if want.abs() > 1e-3 {
                worst = worst.max(ulps(ln(x), want));
            } else {
                assert!((f64::from(ln(x)) - want).abs() < 1e-7, "ln({x})");
            }
            x *= 1.000_013;
        }
        assert!(worst < 2.0, "worst {worst} ulp");
    }

    #[test]
    fn top2_matches_the_scalar_scan_including_ties() {
        for n in [1usize, 2, 7, 8, 9, 100, 1001] {
            for seed in 0..20u32 {
                let xs: Vec<f32> = (0..n)
                    .map(|i| {
                        (((i as u32).wrapping_mul(2_654_435_761) ^ (seed * 40_503)) % 17) as f32
                            - 8.0
                    })
                    .collect();
                for divisor in [1.0f32, 0.4] {
                    assert_eq!(top2(&xs, divisor), top2_scalar(&xs, divisor), "{n} {seed}");
                }
            }
        }
    }

    #[test]
    fn reductions_match_f64_sums_and_both_paths_agree() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.02 - 10.0)
            .collect();
        let max = xs.iter().cloned().fold(f32::MIN, f32::max);
        for divisor in [1.0f32, 0.7] {
            let shift = max / divisor;
            let want: f64 = xs
                .iter()
                .map(|&x| (f64::from(x / divisor) - f64::from(shift)).exp())
                .sum();
            let got = sum_exp(&xs, divisor, shift);
            assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
            assert_eq!(got, reduce(&xs, divisor, shift, 0.0, Kind::SumExp));
            let inv = (1.0 / got) as f32;
            let want_h: f64 = xs
                .iter()
                .map(|&x| {
                    let q = (f64::from(x / divisor) - f64::from(shift)).exp() * f64::from(inv);
                    q * (q + 1e-10).ln()
                })
                .sum();
            let got_h = neg_entropy(&xs, divisor, shift, inv, 1e-10);
            assert!(
                (got_h - want_h).abs() < 1e-5 * want_h.abs().max(1.0),
                "{got_h} vs {want_h}"
            );
            assert_eq!(
                got_h,
                reduce(&xs, divisor, shift, inv, Kind::NegEntropy { eps: 1e-10 })
            );
        }
    }
}
