//! Coupled mask sampling (docs/training.md §4).
//!
//! For a mask seed, one `t ~ U(0.2, 0.8)` is drawn for the whole batch, then, for every sequence
//! of the batch in order, one `u ~ U(0, 1)` per completion position. With `true` meaning "masked":
//! - `v_full` masks the whole completion (the prompt is intact);
//! - `v_a` masks completion position `k` where `u_k < t`;
//! - `v_b` masks completion position `k` where `u_k >= t` (the exact complement of `v_a` over the
//!   completion).
//!
//! The coupled estimate is `logp(k) = 0.5 * (lp_full(k) + w * lp_X(k))` with `X = a, w = 1/t` when
//! `k` is masked in `v_a` and `X = b, w = 1/(1-t)` otherwise ([`CoupledMasks::combine`]).
//! The generator is the crate's own [`Rng`], seeded from the mask seed alone, so old-policy,
//! reference and current estimates with the same seed see the same masks (§4); seed `j` is used for
//! inner iteration `j` (not the released code's indexing).

use crate::{Error, Result};
use unmask_runtime::rng::Rng;

/// Lower and upper bound of the coupled masking ratio `t`.
pub const T_RANGE: (f64, f64) = (0.2, 0.8);

/// The three masks of one sequence `prompt ++ completion`, over the full length
/// `prompt_len + completion_len` (`true` = replaced by `<|mask|>`).
#[derive(Clone, Debug, PartialEq)]
pub struct CoupledMasks {
    pub prompt_len: usize,
    pub completion_len: usize,
    /// The batch's masking ratio.
    pub t: f64,
    pub v_full: Vec<bool>,
    pub v_a: Vec<bool>,
    pub v_b: Vec<bool>,
}

impl CoupledMasks {
    /// Weight of the `v_a` pass, `1/t`.
    pub fn weight_a(&self) -> f64 {
        1.0 / self.t
    }

    /// Weight of the `v_b` pass, `1/(1-t)`.
    pub fn weight_b(&self) -> f64 {
        1.0 / (1.0 - self.t)
    }

    /// `(in_a, weight)` for completion position `k` (0-based within the completion): whether the
    /// token is masked in `v_a` (else in `v_b`), and that pass's weight.
    pub fn pass_of(&self, k: usize) -> (bool, f64) {
        if self.v_a[self.prompt_len + k] {
            (true, self.weight_a())
        } else {
            (false, self.weight_b())
        }
    }

    /// The coupled per-token log-probability of the completion from the three passes' per-token
    /// log-probabilities (each of length `completion_len`).
    pub fn combine(&self, lp_full: &[f64], lp_a: &[f64], lp_b: &[f64]) -> Result<Vec<f64>> {
        let n = self.completion_len;
        if lp_full.len() != n || lp_a.len() != n || lp_b.len() != n {
            return Err(Error::InvalidArgument(format!(
                "combine: expected {n} log-probabilities per pass, got {}/{}/{}",
                lp_full.len(),
                lp_a.len(),
                lp_b.len()
            )));
        }
        Ok((0..n)
            .map(|k| {
                let (in_a, w) = self.pass_of(k);
                let lp = if in_a { lp_a[k] } else { lp_b[k] };
                0.5 * (lp_full[k] + w * lp)
            })
            .collect())
    }
}

/// Draws `t` once, then the masks of each `(prompt_len, completion_len)` sequence in order.
#[derive(Clone, Debug)]
pub struct CoupledMaskSampler {
    rng: Rng,
    t: f64,
}

impl CoupledMaskSampler {
    /// A sampler for one batch and one mask seed; draws `t ~ U(0.2, 0.8)` first.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let t = rng.uniform_in(T_RANGE.0, T_RANGE.1);
        CoupledMaskSampler { rng, t }
    }

    /// The batch's masking ratio.
    pub fn t(&self) -> f64 {
        self.t
    }

    /// The masks of the next sequence of the batch.
    pub fn next_sequence(&mut self, prompt_len: usize, completion_len: usize) -> CoupledMasks {
        let len = prompt_len + completion_len;
        let mut v_full = vec![false; len];
        let mut v_a = vec![false; len];
        let mut v_b = vec![false; len];
        for i in prompt_len..len {
            let u = self.rng.uniform();
            v_full[i] = true;
            if u < self.t {
                v_a[i] = true;
            } else {
                v_b[i] = true;
            }
        }
        CoupledMasks {
            prompt_len,
            completion_len,
            t: self.t,
            v_full,
            v_a,
            v_b,
        }
    }
}

/// The masks of a whole batch of `(prompt_len, completion_len)` sequences for one mask seed.
pub fn coupled_masks(seed: u64, shapes: &[(usize, usize)]) -> Vec<CoupledMasks> {
    let mut s = CoupledMaskSampler::new(seed);
    shapes.iter().map(|&(p, c)| s.next_sequence(p, c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-rolled property test over many seeds and shapes.
    #[test]
    fn coupled_mask_properties() {
        let mut shape_rng = Rng::new(0xC0FFEE);
        for seed in 0..400u64 {
            let n = 1 + (shape_rng.next_u64() % 4) as usize;
            let shapes: Vec<(usize, usize)> = (0..n)
                .map(|_| {
                    (
                        (shape_rng.next_u64() % 40) as usize,
                        (shape_rng.next_u64() % 300) as usize,
                    )
                })
                .collect();
            let batch = coupled_masks(seed, &shapes);
            let again = coupled_masks(seed, &shapes);
            assert_eq!(batch, again, "same seed must give the same masks");
            let t = batch[0].t;
            assert!((0.2..0.8).contains(&t), "t = {t}");
            for (m, &(p, c)) in batch.iter().zip(&shapes) {
                assert_eq!(m.t, t, "one t per batch");
                assert_eq!(m.v_full.len(), p + c);
                assert_eq!(m.v_a.len(), p + c);
                assert_eq!(m.v_b.len(), p + c);
                for i in 0..p {
                    assert!(
                        !m.v_full[i] && !m.v_a[i] && !m.v_b[i],
                        "prompt masked at {i}"
                    );
                }
                for i in p..p + c {
                    assert!(m.v_full[i], "v_full must mask all of the completion");
                    assert!(
                        m.v_a[i] ^ m.v_b[i],
                        "v_a and v_b must be complements at {i}"
                    );
                }
                assert!((m.weight_a() - 1.0 / t).abs() < 1e-15);
                assert!((m.weight_b() - 1.0 / (1.0 - t)).abs() < 1e-15);
            }
        }
    }

    #[test]
    fn different_seeds_differ_and_fraction_tracks_t() {
        let a = coupled_masks(1, &[(5, 4000)]);
        let b = coupled_masks(2, &[(5, 4000)]);
        assert_ne!(a, b);
        for m in a.iter().chain(&b) {
            let frac = m.v_a.iter().filter(|&&x| x).count() as f64 / 4000.0;
            // Binomial(4000, t): 5 sigma is below 0.04.
            assert!((frac - m.t).abs() < 0.04, "fraction {frac} vs t {}", m.t);
        }
    }

    #[test]
    fn t_is_uniform_over_its_range() {
        let ts: Vec<f64> = (0..20_000u64)
            .map(|s| CoupledMaskSampler::new(s).t())
            .collect();
        let mean = ts.iter().sum::<f64>() / ts.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let lo = ts.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ts.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!((0.2..0.201).contains(&lo) && (0.799..0.8).contains(&hi));
    }

    #[test]
    fn combine_uses_the_right_pass_and_weight() {
        let m = &coupled_masks(3, &[(2, 50)])[0];
        let full: Vec<f64> = (0..50).map(|k| -(k as f64) * 0.01).collect();
        let a: Vec<f64> = (0..50).map(|k| -1.0 - k as f64).collect();
        let b: Vec<f64> = (0..50).map(|k| -100.0 - k as f64).collect();
        let lp = m.combine(&full, &a, &b).unwrap();
        for k in 0..50 {
            let expect = if m.v_a[2 + k] {
                0.5 * (full[k] + (1.0 / m.t) * a[k])
            } else {
                0.5 * (full[k] + (1.0 / (1.0 - m.t)) * b[k])
            };
            assert_eq!(lp[k], expect);
        }
        assert!(m.combine(&full, &a, &b[..49]).is_err());
    }
}
