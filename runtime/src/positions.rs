//! The choice of positions in a denoising step (docs/model.md §4): which of the scored masked
//! positions ([`Scored`], from the sampler) are committed. Exact decoding commits the `k` most
//! confident, or with `alg_temp > 0` draws `k` without replacement from
//! softmax(confidence / alg_temp); the fast modes rank by confidence ([`ranked`]) before
//! applying their threshold.

use crate::rng::Rng;
use crate::sampler::Scored;

/// Indices into `scored` by decreasing confidence, ties by the lower index (candidates are in
/// increasing position order, so: by the lower position).
pub fn ranked(scored: &[Scored]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| {
        scored[b]
            .confidence
            .total_cmp(&scored[a].confidence)
            .then(a.cmp(&b))
    });
    order
}

/// Indices (into `scored`) of the `k` positions to commit: the most confident, ties broken by the
/// lower position (candidates are in increasing position order), or with `alg_temp > 0` a draw of
/// `k` without replacement from softmax(confidence / alg_temp).
pub fn choose_positions(scored: &[Scored], k: usize, alg_temp: f32, rng: &mut Rng) -> Vec<usize> {
    let k = k.min(scored.len());
    if alg_temp == 0.0 {
        let mut order = ranked(scored);
        order.truncate(k);
        return order;
    }
    let scaled: Vec<f64> = scored
        .iter()
        .map(|s| f64::from(s.confidence / alg_temp))
        .collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut weights: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = weights.iter().sum();
        let target = rng.uniform() * total;
        let mut acc = 0.0;
        let mut pick = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        for (j, &w) in weights.iter().enumerate() {
            acc += w;
            if w > 0.0 && acc > target {
                pick = j;
                break;
            }
        }
        chosen.push(pick);
        weights[pick] = 0.0;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(conf: &[f32]) -> Vec<Scored> {
        conf.iter()
            .map(|&c| Scored {
                token: 0,
                confidence: c,
            })
            .collect()
    }

    #[test]
    fn top_k_breaks_ties_by_lower_position() {
        let s = scored(&[0.5, 0.9, 0.9, 0.1, 0.9]);
        let mut rng = Rng::new(0);
        assert_eq!(choose_positions(&s, 2, 0.0, &mut rng), vec![1, 2]);
        assert_eq!(choose_positions(&s, 4, 0.0, &mut rng), vec![1, 2, 4, 0]);
    }

    #[test]
    fn alg_temp_draws_distinct_positions() {
        let s = scored(&[0.5, 0.9, 0.9, 0.1, 0.9]);
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut c = choose_positions(&s, 3, 0.5, &mut rng);
            c.sort();
            c.dedup();
            assert_eq!(c.len(), 3);
        }
    }
}
