//! Dream's sampler: the per-position work of a denoising step. [`score_row`] scores one logits
//! row: temperature, top-p and top-k filtering, softmax, the argmax or a sample, and the
//! confidence (probability, margin or negative entropy), all computed by reading the row a few
//! times and never writing a softmaxed copy of the vocabulary. [`score_summary`] makes the same
//! decision from the [`RowSummary`] a device computed for the row, or declines. Semantics follow
//! Dream's `sample_tokens` exactly (docs/model.md §4): filters in that order, removed tokens get
//! probability 0, `entropy = sum p*ln(p + 1e-10)`. The vectorised arithmetic is
//! `unmask_kernels::simd::vmath`; the summary type is the device graph's
//! (`unmask_kernels::graph::scoring`).

use unmask_kernels::graph::scoring::RowSummary;
use unmask_kernels::simd::vmath::{exp, ln, neg_entropy, sum_exp, top2};

/// How a position's certainty is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// Probability of the chosen token (`maskgit_plus`).
    Probability,
    /// Top-1 minus top-2 probability (`topk_margin`).
    Margin,
    /// Negative entropy of the filtered distribution (`entropy`).
    NegEntropy,
}

/// The filters applied before the softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Filter {
    /// Logits are divided by this when > 0; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus filter; `None` or >= 1 disables it.
    pub top_p: Option<f32>,
    /// Keep the `k` largest logits (ties at the k-th value kept); `None` disables it.
    pub top_k: Option<usize>,
}

impl Filter {
    pub const GREEDY: Filter = Filter {
        temperature: 0.0,
        top_p: None,
        top_k: None,
    };

    fn nucleus(&self) -> Option<f32> {
        self.top_p.filter(|&p| p < 1.0)
    }

    /// Whether neither top-p nor top-k removes any token.
    pub fn is_unfiltered(&self) -> bool {
        self.nucleus().is_none() && self.top_k.is_none()
    }

    /// Whether tokens are sampled (temperature > 0) rather than taken by argmax.
    pub fn samples(&self) -> bool {
        self.temperature > 0.0
    }

    /// What logits are divided by: the temperature, or 1 when greedy (dividing by 1 is exact,
    /// so one expression serves both).
    pub fn divisor(&self) -> f32 {
        if self.samples() {
            self.temperature
        } else {
            1.0
        }
    }
}

/// A scored position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub token: u32,
    pub confidence: f32,
}

/// Reusable buffers for the filtered path (one per worker thread).
#[derive(Default)]
pub struct Scratch {
    candidates: Vec<(f32, u32)>,
}

const ENTROPY_EPS: f32 = 1e-10;

/// Scores one logits row. `uniform` is a draw in [0, 1) used to sample when the temperature is
/// positive; with temperature 0 the argmax (first index on ties) is taken.
pub fn score_row(
    logits: &[f32],
    filter: &Filter,
    kind: Confidence,
    uniform: f64,
    scratch: &mut Scratch,
) -> Scored {
    let divisor = filter.divisor();
    let scale = move |x: f32| x / divisor;
    if logits.is_empty() {
        return Scored {
            token: 0,
            confidence: f32::NEG_INFINITY,
        };
    }
    if filter.is_unfiltered() {
        return score_unfiltered(logits, divisor, filter.samples(), kind, uniform);
    }
    let kept = filtered_candidates(logits, divisor, scale, filter, &mut scratch.candidates);
    score_candidates(kept, filter.samples(), kind, uniform)
}

fn score_unfiltered(
    logits: &[f32],
    divisor: f32,
    sample: bool,
    kind: Confidence,
    uniform: f64,
) -> Scored {
    let scale = |x: f32| x / divisor;
    // Pass 1: maximum (first index wins ties, as torch.max on CPU) and the runner-up value.
    let (best, best_i, second) = top2(logits, divisor);
    // Pass 2: the softmax denominator.
    let sum = sum_exp(logits, divisor, best);
    let inv = (1.0 / sum) as f32;
    let token = if sample {
        let target = uniform * sum;
        let mut acc = 0f64;
        let mut chosen = best_i;
        for (i, &l) in logits.iter().enumerate() {
            let e = f64::from(exp(scale(l) - best));
            if e > 0.0 {
                chosen = i;
            }
            acc += e;
            if acc > target {
                break;
            }
        }
        chosen
    } else {
        best_i
    };
    let p = |x: f32| exp(x - best) * inv;
    let confidence = match kind {
        Confidence::Probability => p(scale(logits[token])),
        Confidence::Margin => p(best) - if second.is_finite() { p(second) } else { 0.0 },
        Confidence::NegEntropy => neg_entropy(logits, divisor, best, inv, ENTROPY_EPS) as f32,
    };
    Scored {
        token: token as u32,
        confidence,
    }
}

/// The tokens that survive top-p then top-k, sorted by descending logit (lower id first on
/// ties), as (scaled logit, id). Only a small candidate set is ever sorted: the threshold below
/// the maximum is widened until the candidates hold more than `top_p` of the probability mass.
fn filtered_candidates<'a>(
    logits: &[f32],
    divisor: f32,
    scale: impl Fn(f32) -> f32 + Copy,
    filter: &Filter,
    out: &'a mut Vec<(f32, u32)>,
) -> &'a [(f32, u32)] {
    let max = logits
        .iter()
        .map(|&l| scale(l))
        .fold(f32::NEG_INFINITY, f32::max);
    let sum = sum_exp(logits, divisor, max);
    let top_p = filter.nucleus();
    let needed_k = filter.top_k.unwrap_or(0);
    let mut width = 4.0f32;
    loop {
        let floor = max - width;
        out.clear();
        out.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (scale(l), i as u32))
                .filter(|&(x, _)| x >= floor || !floor.is_finite()),
        );
        let mass: f64 = out
            .iter()
            .map(|&(x, _)| f64::from(exp(x - max)))
            .sum::<f64>()
            / sum;
        let enough_mass = top_p.is_none_or(|p| (mass as f32) > p);
        let enough_count = top_p.is_some() || out.len() >= needed_k;
        if (enough_mass && enough_count) || out.len() == logits.len() || !floor.is_finite() {
            break;
        }
        width *= 2.0;
        if width > 256.0 {
            width = f32::INFINITY;
        }
    }
    out.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut keep = out.len();
    if let Some(p) = top_p {
        // Dream removes sorted token j when the cumulative probability up to j-1 exceeds top_p.
        let mut cumulative = 0f64;
        for (j, &(x, _)) in out.iter().enumerate() {
            if j > 0 && (cumulative as f32) > p {
                keep = j;
                break;
            }
            cumulative += f64::from(exp(x - max)) / sum;
        }
    }
    if let Some(k) = filter.top_k {
        if k > 0 && k < keep {
            let kth = out[k - 1].0;
            keep = out[..keep].iter().take_while(|&&(x, _)| x >= kth).count();
        }
    }
    &out[..keep]
}

fn score_candidates(kept: &[(f32, u32)], sample: bool, kind: Confidence, uniform: f64) -> Scored {
    let max = kept[0].0;
    let sum: f64 = kept.iter().map(|&(x, _)| f64::from(exp(x - max))).sum();
    let inv = (1.0 / sum) as f32;
    let p = |x: f32| exp(x - max) * inv;
    let chosen = if sample {
        let target = uniform * sum;
        let mut acc = 0f64;
        let mut chosen = 0;
        for (j, &(x, _)) in kept.iter().enumerate() {
            chosen = j;
            acc += f64::from(exp(x - max));
            if acc > target {
                break;
            }
        }
        chosen
    } else {
        0
    };
    let confidence = match kind {
        Confidence::Probability => p(kept[chosen].0),
        Confidence::Margin => p(kept[0].0) - kept.get(1).map_or(0.0, |&(x, _)| p(x)),
        Confidence::NegEntropy => kept
            .iter()
            .map(|&(x, _)| {
                let q = p(x);
                f64::from(q * ln(q + ENTROPY_EPS))
            })
            .sum::<f64>() as f32,
    };
    Scored {
        token: kept[chosen].1,
        confidence,
    }
}

/// Scores a row from its [`RowSummary`] with the same rules and the same arithmetic as
/// [`score_row`] on the full row, or returns `None` when the summary cannot decide exactly
/// (sampling without a filter walks the whole vocabulary; a nucleus or top-k set reaching past
/// the candidates): the caller then fetches the row and uses [`score_row`].
pub fn score_summary(
    summary: &RowSummary<'_>,
    filter: &Filter,
    kind: Confidence,
    uniform: f64,
    scratch: &mut Scratch,
) -> Option<Scored> {
    let divisor = filter.divisor();
    let sample = filter.samples();
    if filter.is_unfiltered() {
        if sample {
            return None;
        }
        let best = summary.best_logit;
        let inv = (1.0 / summary.sum) as f32;
        let p = |x: f32| exp(x - best) * inv;
        let confidence = match kind {
            Confidence::Probability => p(best),
            Confidence::Margin => {
                let second = summary
                    .candidates
                    .iter()
                    .filter(|&&(_, id)| id != summary.best_token)
                    .map(|&(x, _)| x)
                    .fold(f32::NEG_INFINITY, f32::max);
                if summary.candidates.len() < 2 && summary.n_vocab > 1 {
                    return None;
                }
                p(best) - if second.is_finite() { p(second) } else { 0.0 }
            }
            Confidence::NegEntropy => summary.neg_entropy,
        };
        return Some(Scored {
            token: summary.best_token,
            confidence,
        });
    }
    let out = &mut scratch.candidates;
    out.clear();
    out.extend(summary.candidates.iter().map(|&(l, id)| (l / divisor, id)));
    if out.is_empty() {
        return None;
    }
    out.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let complete = out.len() >= summary.n_vocab;
    let lowest = out[out.len() - 1].0;
    // Tokens outside the candidates have logits <= `lowest`; only the candidates above it are
    // known to be exactly the row's leading tokens in sorted order.
    let exact_prefix = if complete {
        out.len()
    } else {
        out.iter().take_while(|&&(x, _)| x > lowest).count()
    };
    let max = summary.best_logit / divisor;
    let sum = summary.sum;
    let mut keep = out.len();
    if let Some(p) = filter.nucleus() {
        let mut cumulative = 0f64;
        let mut cut = None;
        for (j, &(x, _)) in out.iter().enumerate() {
            if j > 0 && (cumulative as f32) > p {
                cut = Some(j);
                break;
            }
            cumulative += f64::from(exp(x - max)) / sum;
        }
        match cut {
            Some(j) if j <= exact_prefix => keep = j,
            _ if complete => {}
            _ => return None,
        }
    }
    if let Some(k) = filter.top_k {
        if k > 0 && k < keep {
            let kth = out[k - 1].0;
            if !complete && kth <= lowest {
                return None;
            }
            keep = out[..keep].iter().take_while(|&&(x, _)| x >= kth).count();
        } else if filter.nucleus().is_none() && !complete {
            // Every token is kept, but only the candidates are known.
            return None;
        }
    }
    Some(score_candidates(&out[..keep], sample, kind, uniform))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward reference: materialise everything, as PyTorch does.
    fn reference(logits: &[f32], f: &Filter) -> Vec<f64> {
        let mut x: Vec<f64> = logits
            .iter()
            .map(|&l| {
                f64::from(if f.temperature > 0.0 {
                    l / f.temperature
                } else {
                    l
                })
            })
            .collect();
        let softmax = |x: &[f64]| {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<_>>()
        };
        if let Some(p) = f.top_p.filter(|&p| p < 1.0) {
            let probs = softmax(&x);
            let mut order: Vec<usize> = (0..x.len()).collect();
            order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
            let mut cum = 0.0;
            let mut remove = vec![false; x.len()];
            for (j, &i) in order.iter().enumerate() {
                if j > 0 && cum > f64::from(p) {
                    remove[i] = true;
                }
                cum += probs[i];
            }
            for (v, r) in x.iter_mut().zip(remove) {
                if r {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
        if let Some(k) = f.top_k {
            let mut sorted = x.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k.min(sorted.len()) - 1];
            for v in x.iter_mut() {
                if *v < kth {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
        softmax(&x)
    }

    fn row(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 12.0
            })
            .collect()
    }

    #[test]
    fn greedy_confidences_match_the_materialised_softmax() {
        let mut scratch = Scratch::default();
        for seed in 0..20 {
            let logits = row(1000, seed);
            for filter in [
                Filter::GREEDY,
                Filter {
                    temperature: 0.0,
                    top_p: Some(0.9),
                    top_k: None,
                },
                Filter {
                    temperature: 0.0,
                    top_p: Some(0.5),
                    top_k: Some(7),
                },
                Filter {
                    temperature: 0.0,
                    top_p: None,
                    top_k: Some(3),
                },
            ] {
                let probs = reference(&logits, &filter);
                let argmax =
                    (0..probs.len()).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
                let mut sorted = probs.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let entropy: f64 = probs.iter().map(|&p| p * (p + 1e-10).ln()).sum();
                let want = [
                    (Confidence::Probability, probs[argmax]),
                    (Confidence::Margin, sorted[0] - sorted[1]),
                    (Confidence::NegEntropy, entropy),
                ];
                for (kind, expected) in want {
                    let s = score_row(&logits, &filter, kind, 0.0, &mut scratch);
                    assert_eq!(s.token as usize, argmax, "{filter:?}");
                    assert!(
                        (f64::from(s.confidence) - expected).abs() < 1e-5,
                        "{kind:?} {filter:?}: {} vs {expected}",
                        s.confidence
                    );
                }
            }
        }
    }

    #[test]
    fn sampling_follows_the_filtered_distribution() {
        let logits = row(50, 3);
        let filter = Filter {
            temperature: 0.7,
            top_p: Some(0.8),
            top_k: Some(20),
        };
        let probs = reference(&logits, &filter);
        let mut counts = vec![0usize; logits.len()];
        let mut scratch = Scratch::default();
        let n = 20000;
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            counts[score_row(&logits, &filter, Confidence::Probability, u, &mut scratch).token
                as usize] += 1;
        }
        for (c, p) in counts.iter().zip(&probs) {
            assert!((*c as f64 / n as f64 - p).abs() < 2e-3, "{c} vs {p}");
            if *p == 0.0 {
                assert_eq!(*c, 0);
            }
        }
    }

    /// A summary computed on the host from the full row, as a device would compute it.
    fn summarise(
        logits: &[f32],
        filter: &Filter,
        k: usize,
    ) -> (u32, f32, f64, f32, Vec<(f32, u32)>) {
        let divisor = if filter.temperature > 0.0 {
            filter.temperature
        } else {
            1.0
        };
        let (best, best_i, _) = top2(logits, 1.0);
        let sum = sum_exp(logits, divisor, best / divisor);
        let inv = (1.0 / sum_exp(logits, 1.0, best)) as f32;
        let ne = neg_entropy(logits, 1.0, best, inv, ENTROPY_EPS) as f32;
        let mut c: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u32))
            .collect();
        c.sort_by(|a, b| b.0.total_cmp(&a.0));
        c.truncate(k);
        c.reverse(); // any order
        (best_i as u32, best, sum, ne, c)
    }

    #[test]
    fn summaries_score_exactly_like_full_rows_or_decline() {
        let mut scratch = Scratch::default();
        let mut decided = 0;
        for seed in 0..30 {
            let mut logits = row(2000, seed);
            // Peaked rows, as real models give, so that nuclei fit in the candidates.
            for (i, l) in logits.iter_mut().enumerate().take(40) {
                *l += 12.0 - i as f32 * 0.2;
            }
            if seed % 3 == 0 {
                logits[7] = logits[3]; // an exact tie
            }
            for filter in [
                Filter::GREEDY,
                Filter {
                    temperature: 0.4,
                    top_p: Some(0.95),
                    top_k: None,
                },
                Filter {
                    temperature: 1.0,
                    top_p: Some(0.5),
                    top_k: Some(10),
                },
                Filter {
                    temperature: 0.7,
                    top_p: None,
                    top_k: Some(30),
                },
                Filter {
                    temperature: 0.7,
                    top_p: None,
                    top_k: Some(300),
                },
                Filter {
                    temperature: 0.7,
                    top_p: None,
                    top_k: None,
                },
                Filter {
                    temperature: 1.0,
                    top_p: Some(0.999999),
                    top_k: None,
                },
            ] {
                for kind in [
                    Confidence::Probability,
                    Confidence::Margin,
                    Confidence::NegEntropy,
                ] {
                    for k in [2, 64, 2000] {
                        let (best_token, best_logit, sum, neg_entropy, cands) =
                            summarise(&logits, &filter, k);
                        let summary = RowSummary {
                            best_token,
                            best_logit,
                            sum,
                            neg_entropy,
                            candidates: &cands,
                            n_vocab: logits.len(),
                        };
                        let u = (seed as f64 * 0.618).fract();
                        let full = score_row(&logits, &filter, kind, u, &mut scratch);
                        match score_summary(&summary, &filter, kind, u, &mut scratch) {
                            Some(s) => {
                                decided += 1;
                                assert_eq!(s.token, full.token, "{filter:?} {kind:?} k={k}");
                                let tol = if kind == Confidence::NegEntropy {
                                    1e-6
                                } else {
                                    0.0
                                };
                                assert!(
                                    (s.confidence - full.confidence).abs() <= tol,
                                    "{filter:?} {kind:?} k={k}: {} vs {}",
                                    s.confidence,
                                    full.confidence
                                );
                            }
                            None => {
                                // Declining is only allowed where the summary cannot know.
                                let sampled_unfiltered = filter.temperature > 0.0
                                    && filter.top_p.is_none()
                                    && filter.top_k.is_none();
                                assert!(k < logits.len() || sampled_unfiltered, "{filter:?} k={k}");
                                if k == 2 && filter == Filter::GREEDY {
                                    panic!("greedy rows are always decided");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(decided > 1000, "{decided}");
    }

    #[test]
    fn summaries_decide_the_default_sampling_of_peaked_rows() {
        let mut logits = row(5000, 9);
        logits[17] += 30.0;
        logits[99] += 29.0;
        let filter = Filter {
            temperature: 0.4,
            top_p: Some(0.95),
            top_k: None,
        };
        let (best_token, best_logit, sum, neg_entropy, cands) = summarise(&logits, &filter, 256);
        let summary = RowSummary {
            best_token,
            best_logit,
            sum,
            neg_entropy,
            candidates: &cands,
            n_vocab: 5000,
        };
        let mut scratch = Scratch::default();
        let got = score_summary(&summary, &filter, Confidence::NegEntropy, 0.3, &mut scratch);
        assert_eq!(
            got,
            Some(score_row(
                &logits,
                &filter,
                Confidence::NegEntropy,
                0.3,
                &mut scratch
            ))
        );
    }
}
