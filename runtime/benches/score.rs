//! Scoring throughput: the fused `score_row` (vectorised exp/ln, no softmaxed copy) against a
//! straightforward scalar pass that materialises the softmax as PyTorch does, on rows of
//! Qwen2.5's vocabulary size, single-threaded. Run: `cargo bench -p unmask-runtime --bench score`.

use std::hint::black_box;
use std::time::Instant;
use unmask_runtime::sampler::{score_row, Confidence, Filter, Scratch};

const VOCAB: usize = 151_936;
const ROWS: usize = 64;

fn rows() -> Vec<Vec<f32>> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..ROWS)
        .map(|_| {
            (0..VOCAB)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 16.0
                })
                .collect()
        })
        .collect()
}

/// Argmax and negative entropy with a materialised softmax and the C library's expf/logf.
fn materialised(row: &[f32], probs: &mut Vec<f32>) -> (usize, f32) {
    let (mut best, mut best_i) = (f32::NEG_INFINITY, 0);
    for (i, &x) in row.iter().enumerate() {
        if x > best {
            best = x;
            best_i = i;
        }
    }
    probs.clear();
    probs.extend(row.iter().map(|&x| (x - best).exp()));
    let sum: f32 = probs.iter().sum();
    let entropy: f32 = probs
        .iter()
        .map(|&e| {
            let p = e / sum;
            p * (p + 1e-10).ln()
        })
        .sum();
    (best_i, entropy)
}

fn time(label: &str, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        f();
    }
    let per_row = start.elapsed().as_secs_f64() / (reps * ROWS) as f64;
    println!("{label:<44} {:8.3} ms/row", per_row * 1e3);
    per_row
}

fn main() {
    let rows = rows();
    let mut scratch = Scratch::default();
    let mut probs = Vec::new();
    let base = time("materialised softmax, libm (baseline)", || {
        for r in &rows {
            black_box(materialised(black_box(r), &mut probs));
        }
    });
    for (label, filter) in [
        ("fused, greedy, entropy", Filter::GREEDY),
        (
            "fused, T=0.4 top-p 0.95, entropy",
            Filter {
                temperature: 0.4,
                top_p: Some(0.95),
                top_k: None,
            },
        ),
    ] {
        let t = time(label, || {
            for r in &rows {
                black_box(score_row(
                    black_box(r),
                    &filter,
                    Confidence::NegEntropy,
                    0.5,
                    &mut scratch,
                ));
            }
        });
        println!("{:<44} {:8.2}x", "  speed-up over the baseline", base / t);
    }
}
