//! Learning-rate schedule: linear warm-up, then cosine decay to a floor (docs/training.md §1:
//! `lr` 1e-6, cosine to 10% of it, tiny warm-up).
//!
//! The formula is Hugging Face's `cosine_with_min_lr` schedule (what the released trainer uses),
//! evaluated at `current_step` = the number of optimizer updates done before this one:
//! - warm-up (`current_step < warmup`): `lr * current_step / warmup` (so with a warm-up the very
//!   first update has learning rate 0, as in Hugging Face);
//! - then, with `progress = (current_step - warmup) / max(1, total - warmup)`:
//!   `lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress)))`, so the rate starts
//!   at `lr` and reaches `min_ratio * lr` at `current_step == total`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A cosine schedule with warm-up and floor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Floor as a fraction of `lr` (0.1 in the published run).
    pub min_ratio: f64,
    /// Warm-up updates.
    pub warmup: u64,
    /// Total updates of the run.
    pub total: u64,
}

impl CosineSchedule {
    pub fn new(lr: f64, min_ratio: f64, warmup: u64, total: u64) -> Result<Self> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::InvalidArgument(format!("learning rate {lr}")));
        }
        if !(0.0..=1.0).contains(&min_ratio) {
            return Err(Error::InvalidArgument(format!(
                "min lr ratio {min_ratio} is not in [0, 1]"
            )));
        }
        if total == 0 || warmup > total {
            return Err(Error::InvalidArgument(format!(
                "{warmup} warm-up steps for {total} total steps"
            )));
        }
        Ok(CosineSchedule {
            lr,
            min_ratio,
            warmup,
            total,
        })
    }

    /// The learning rate of the update that follows `current_step` earlier updates.
    pub fn lr_at(&self, current_step: u64) -> f64 {
        if current_step < self.warmup {
            return self.lr * current_step as f64 / self.warmup.max(1) as f64;
        }
        let progress =
            (current_step - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let factor = cosine * (1.0 - self.min_ratio) + self.min_ratio;
        self.lr * factor.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
    }

    #[test]
    fn warmup_cosine_and_floor() {
        let s = CosineSchedule::new(1e-6, 0.1, 4, 104).unwrap();
        // Warm-up: 0, 1/4, 2/4, 3/4 of the peak.
        for (k, f) in [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)] {
            assert!(close(s.lr_at(k), 1e-6 * f), "{k}: {}", s.lr_at(k));
        }
        assert!(close(s.lr_at(4), 1e-6));
        // Half way through the decay: (1 + 0.1) / 2 of the peak.
        assert!(close(s.lr_at(54), 0.55e-6), "{}", s.lr_at(54));
        // A quarter: cos(pi/4).
        let q = 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(s.lr_at(29), 1e-6 * (0.1 + 0.9 * q)));
        assert!(close(s.lr_at(104), 1e-7));
        // Monotone decay after the warm-up.
        for k in 4..104 {
            assert!(s.lr_at(k + 1) <= s.lr_at(k));
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = CosineSchedule::new(1e-3, 0.0, 0, 10).unwrap();
        assert!(close(s.lr_at(0), 1e-3));
        assert!(close(s.lr_at(5), 0.5e-3));
        assert!(s.lr_at(10).abs() < 1e-18);
        assert!(CosineSchedule::new(1e-3, 1.5, 0, 10).is_err());
        assert!(CosineSchedule::new(1e-3, 0.1, 11, 10).is_err());
        assert!(CosineSchedule::new(1e-3, 0.1, 0, 0).is_err());
    }
}
