//! Group advantages (docs/training.md §2).
//!
//! The `G` rewards of one prompt form a group:
//! - [`Baseline::Mean`] (default, the paper's headline variant): `A_i = r_i - mean(r)`;
//! - [`Baseline::LeaveOneOut`] (what the released trainer hard-codes):
//!   `A_i = r_i - mean_{j != i}(r_j)`, which equals `G/(G-1) * (r_i - mean(r))`;
//! - optional std scaling (off by default): `A_i /= (std(r) + 1e-4)`, where `std(r)` is the std
//!   of the group's *rewards* as TRL computes it, `rewards.view(-1, G).std(dim=1)`: torch's default
//!   `std` is the unbiased (Bessel-corrected, divisor `G - 1`) estimate. It is undefined (NaN in
//!   torch) for `G = 1`, which is refused here.

use crate::{Error, Result};

/// The baseline subtracted from each reward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Baseline {
    /// `A_i = r_i - mean(r)`.
    #[default]
    Mean,
    /// `A_i = r_i - mean_{j != i}(r_j)`.
    LeaveOneOut,
}

/// How advantages are computed from a group's rewards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvantageConfig {
    pub baseline: Baseline,
    /// Divide by `std(r) + 1e-4` (unbiased std), off by default.
    pub scale_by_std: bool,
}

/// The epsilon added to the std before dividing.
pub const STD_EPS: f64 = 1e-4;

/// Unbiased (divisor `n - 1`) standard deviation, as `torch.std` by default. Needs `n >= 2`.
pub fn unbiased_std(r: &[f64]) -> Result<f64> {
    if r.len() < 2 {
        return Err(Error::InvalidArgument(
            "the unbiased std needs at least 2 rewards".into(),
        ));
    }
    let n = r.len() as f64;
    let mean = r.iter().sum::<f64>() / n;
    let ss = r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
    Ok((ss / (n - 1.0)).sqrt())
}

/// Advantages of one group of rewards.
pub fn group_advantages(rewards: &[f64], cfg: AdvantageConfig) -> Result<Vec<f64>> {
    let g = rewards.len();
    if g == 0 {
        return Err(Error::InvalidArgument("empty reward group".into()));
    }
    if let Some(bad) = rewards.iter().find(|x| !x.is_finite()) {
        return Err(Error::InvalidArgument(format!("non-finite reward {bad}")));
    }
    let sum: f64 = rewards.iter().sum();
    let mut adv: Vec<f64> = match cfg.baseline {
        Baseline::Mean => {
            let mean = sum / g as f64;
            rewards.iter().map(|r| r - mean).collect()
        }
        Baseline::LeaveOneOut => {
            if g < 2 {
                return Err(Error::InvalidArgument(
                    "the leave-one-out baseline needs at least 2 completions per prompt".into(),
                ));
            }
            rewards
                .iter()
                .map(|r| r - (sum - r) / (g - 1) as f64)
                .collect()
        }
    };
    if cfg.scale_by_std {
        let std = unbiased_std(rewards)?;
        for a in &mut adv {
            *a /= std + STD_EPS;
        }
    }
    Ok(adv)
}

/// Advantages of a flat batch laid out as consecutive groups of `group_size` (TRL's layout:
/// prompt `p`'s completions are `p*G .. (p+1)*G`).
pub fn batch_advantages(
    rewards: &[f64],
    group_size: usize,
    cfg: AdvantageConfig,
) -> Result<Vec<f64>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(Error::InvalidArgument(format!(
            "{} rewards do not form groups of {group_size}",
            rewards.len()
        )));
    }
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        out.extend(group_advantages(group, cfg)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn mean_baseline() {
        let a = group_advantages(&[2.5, 0.5, 0.0, 1.0], AdvantageConfig::default()).unwrap();
        close(&a, &[1.5, -0.5, -1.0, 0.0]);
        assert!(a.iter().sum::<f64>().abs() < 1e-12);
        // A lone completion has advantage 0 under the mean baseline.
        close(
            &group_advantages(&[3.0], AdvantageConfig::default()).unwrap(),
            &[0.0],
        );
    }

    #[test]
    fn leave_one_out_baseline() {
        let cfg = AdvantageConfig {
            baseline: Baseline::LeaveOneOut,
            scale_by_std: false,
        };
        let r = [2.5, 0.5, 0.0, 1.0];
        let a = group_advantages(&r, cfg).unwrap();
        // By hand: 2.5 - (1.5/3), 0.5 - (3.5/3), 0 - (4/3), 1 - (3/3).
        close(&a, &[2.0, 0.5 - 3.5 / 3.0, -4.0 / 3.0, 0.0]);
        // Identity: G/(G-1) times the mean-baseline advantage.
        let m = group_advantages(&r, AdvantageConfig::default()).unwrap();
        close(&a, &m.iter().map(|x| x * 4.0 / 3.0).collect::<Vec<_>>());
        assert!(group_advantages(&[1.0], cfg).is_err());
    }

    #[test]
    fn std_scaling_is_unbiased_like_torch() {
        // torch.tensor([2.5, 0.5, 0.0, 1.0]).std() == 1.0801234497346435 (unbiased).
        let r = [2.5, 0.5, 0.0, 1.0];
        let s = unbiased_std(&r).unwrap();
        assert!((s - 1.0801234497346435).abs() < 1e-12, "{s}");
        let cfg = AdvantageConfig {
            baseline: Baseline::Mean,
            scale_by_std: true,
        };
        let a = group_advantages(&r, cfg).unwrap();
        close(
            &a,
            &[1.5, -0.5, -1.0, 0.0].map(|x: f64| x / (1.0801234497346435 + 1e-4)),
        );
        // All-equal group: zero advantages, no division blow-up thanks to the epsilon.
        close(&group_advantages(&[2.0; 5], cfg).unwrap(), &[0.0; 5]);
        assert!(group_advantages(&[2.0], cfg).is_err());
    }

    #[test]
    fn batches_split_into_groups() {
        let a = batch_advantages(&[1.0, 0.0, 2.5, 2.5], 2, AdvantageConfig::default()).unwrap();
        close(&a, &[0.5, -0.5, 0.0, 0.0]);
        assert!(batch_advantages(&[1.0, 0.0, 2.5], 2, AdvantageConfig::default()).is_err());
        assert!(group_advantages(&[f64::NAN, 1.0], AdvantageConfig::default()).is_err());
    }
}
