//! The denoising schedule of docs/model.md §4, reproduced in f32 exactly as PyTorch computes it:
//! `torch.linspace(1, eps, steps + 1)` and `int(num_masked * (1 - s / t))`.

/// `torch.linspace(start, end, n)` for float32 on the CPU: step = (end - start) / (n - 1) in f32;
/// the first half counts up from `start`, the second half down from `end`, each value one fused
/// multiply-add (PyTorch's vectorised kernel compiles to FMA; plain multiply-then-add differs in
/// the last bit for some step counts).
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f32;
            let halfway = n / 2;
            (0..n)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((n - i - 1) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// The time points of a run of `steps` steps.
pub fn timesteps(steps: usize, eps: f32) -> Vec<f32> {
    linspace_f32(1.0, eps, steps + 1)
}

/// How many of `n_masked` positions step `i` of `steps` commits (`ts` from [`timesteps`]).
pub fn transfer_count(n_masked: usize, i: usize, steps: usize, ts: &[f32]) -> usize {
    if i + 1 >= steps {
        return n_masked;
    }
    let (t, s) = (ts[i], ts[i + 1]);
    let fraction = 1.0f32 - s / t;
    (n_masked as f32 * fraction) as usize
}

/// The probability with which the `origin` algorithm reveals each masked position at step `i`.
pub fn reveal_probability(i: usize, steps: usize, ts: &[f32]) -> f32 {
    if i + 1 >= steps {
        1.0
    } else {
        1.0 - ts[i + 1] / ts[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_256_step_quirk_of_model_md() {
        // docs/model.md §4: with N = S = 256, step 0 commits 0 tokens, steps 1..254 one each, the last 2.
        let ts = timesteps(256, 1e-3);
        let mut masked = 256;
        let mut commits = Vec::new();
        for i in 0..256 {
            let k = transfer_count(masked, i, 256, &ts);
            commits.push(k);
            masked -= k;
        }
        assert_eq!(commits[0], 0);
        assert!(commits[1..255].iter().all(|&k| k == 1), "{commits:?}");
        assert_eq!(commits[255], 2);
        assert_eq!(ts[0], 1.0);
        assert_eq!(ts[256], 1e-3);
    }
}
