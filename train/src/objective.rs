//! Host-side (f64) loss arithmetic: log-probabilities from logits rows, the coupled-GRPO
//! objective (docs/training.md §1, §4, §5) with its per-token weights, and the gradient of a
//! weighted log-probability with respect to a logits row.

/// `log_softmax(row)[token]`, in f64.
pub fn log_prob(row: &[f32], token: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[token] as f64 - max - sum.ln()
}

/// Adds `w * d log_softmax(row)[token] / d row = w * (onehot(token) - softmax(row))` to `out`.
pub fn add_log_prob_grad(row: &[f32], token: usize, w: f64, out: &mut [f32]) {
    if w == 0.0 {
        return;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    for (o, &x) in out.iter_mut().zip(row) {
        let p = (x as f64 - max).exp() / sum;
        *o += (-w * p) as f32;
    }
    out[token] += w as f32;
}

/// The fraction of `-A * ratio` that autograd routes to `logp` through
/// `-min(ratio*A, clamp(ratio, 1-eps, 1+eps)*A)`: 1 where the unclipped term is strictly smaller,
/// 0 where the clipped one is, and on a tie (ratio inside the interval, or A == 0) 1 strictly
/// inside the interval and 1/2 exactly on a bound (torch's `min`/`clamp` rules; see
/// `tests/python/GRPO_REFERENCE.md`).
pub fn surrogate_grad_factor(ratio: f64, adv: f64, clip_eps: f64) -> f64 {
    let (lo, hi) = (1.0 - clip_eps, 1.0 + clip_eps);
    let a = ratio * adv;
    let b = ratio.clamp(lo, hi) * adv;
    if a < b {
        1.0
    } else if a > b {
        0.0
    } else if ratio > lo && ratio < hi {
        1.0
    } else {
        0.5
    }
}

/// Per-token inputs of the coupled-GRPO objective for one batch (all `[N, K]`, row-major).
pub struct GrpoTerms<'a> {
    pub n: usize,
    pub k: usize,
    pub logp: &'a [f64],
    pub old_logp: Option<&'a [f64]>,
    pub ref_logp: Option<&'a [f64]>,
    pub advantages: &'a [f64],
    pub completion_mask: &'a [f64],
    pub beta: f64,
    pub clip_eps: f64,
}

/// Loss value and per-token results of the coupled-GRPO objective.
pub struct GrpoResult {
    pub loss: f64,
    pub ratio: Vec<f64>,
    pub per_token: Vec<f64>,
    /// dLoss/dlogp per token.
    pub dlogp: Vec<f64>,
}

/// docs/training.md §1: `ratio = exp(logp - old)` (old = logp when absent),
/// `per_token = -min(ratio*A, clip(ratio)*A) + beta*(exp(ref-logp) - (ref-logp) - 1)`,
/// `loss = sum(per_token * mask) / max(1, sum(mask))`, and dLoss/dlogp (§5).
pub fn grpo(terms: &GrpoTerms) -> GrpoResult {
    let total = terms.n * terms.k;
    let count = terms.completion_mask.iter().sum::<f64>().max(1.0);
    let (lo, hi) = (1.0 - terms.clip_eps, 1.0 + terms.clip_eps);
    let mut out = GrpoResult {
        loss: 0.0,
        ratio: vec![0.0; total],
        per_token: vec![0.0; total],
        dlogp: vec![0.0; total],
    };
    for j in 0..total {
        let adv = terms.advantages[j / terms.k];
        let logp = terms.logp[j];
        let old = terms.old_logp.map_or(logp, |o| o[j]);
        let ratio = (logp - old).exp();
        let mut per_token = -(ratio * adv).min(ratio.clamp(lo, hi) * adv);
        let mut d = -adv * ratio * surrogate_grad_factor(ratio, adv, terms.clip_eps);
        if terms.beta != 0.0 {
            if let Some(reference) = terms.ref_logp {
                let diff = reference[j] - logp;
                per_token += terms.beta * (diff.exp() - diff - 1.0);
                d += terms.beta * (1.0 - diff.exp());
            }
        }
        let m = terms.completion_mask[j];
        out.ratio[j] = ratio;
        out.per_token[j] = per_token;
        out.dlogp[j] = d * m / count;
        out.loss += per_token * m;
    }
    out.loss /= count;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_grad_matches_finite_differences() {
        let row: Vec<f32> = (0..7).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let mut g = vec![0.0f32; 7];
        add_log_prob_grad(&row, 4, 0.8, &mut g);
        for v in 0..7 {
            let h = 1e-2f32;
            let (mut up, mut dn) = (row.clone(), row.clone());
            up[v] += h;
            dn[v] -= h;
            let fd = 0.8 * (log_prob(&up, 4) - log_prob(&dn, 4)) / (2.0 * h as f64);
            assert!((fd - g[v] as f64).abs() < 1e-4, "{v}: {fd} vs {}", g[v]);
        }
    }

    #[test]
    fn grpo_grad_matches_finite_differences() {
        let logp = [-1.0, -2.5, -0.3, -4.0, -0.9, -1.7];
        let old = [-1.3, -2.0, -0.1, -4.6, -0.2, -1.75];
        let reference = [-1.1, -2.2, -0.8, -3.0, -1.0, -1.5];
        let adv = [0.7, -1.2];
        let mask = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let eval = |lp: &[f64]| {
            grpo(&GrpoTerms {
                n: 2,
                k: 3,
                logp: lp,
                old_logp: Some(&old),
                ref_logp: Some(&reference),
                advantages: &adv,
                completion_mask: &mask,
                beta: 0.1,
                clip_eps: 0.5,
            })
        };
        let base = eval(&logp);
        for j in 0..6 {
            let h = 1e-6;
            let (mut up, mut dn) = (logp, logp);
            up[j] += h;
            dn[j] -= h;
            let fd = (eval(&up).loss - eval(&dn).loss) / (2.0 * h);
            assert!(
                (fd - base.dlogp[j]).abs() < 1e-7,
                "{j}: {fd} vs {}",
                base.dlogp[j]
            );
        }
    }

    #[test]
    fn tie_rule() {
        assert_eq!(surrogate_grad_factor(1.0, 2.0, 0.5), 1.0);
        assert_eq!(surrogate_grad_factor(1.5, 2.0, 0.5), 0.5);
        assert_eq!(surrogate_grad_factor(2.0, 2.0, 0.5), 0.0);
        assert_eq!(surrogate_grad_factor(2.0, -2.0, 0.5), 1.0);
        assert_eq!(surrogate_grad_factor(0.2, 2.0, 0.5), 1.0);
        assert_eq!(surrogate_grad_factor(0.2, -2.0, 0.5), 0.0);
    }
}
