//! The crate's own seeded generator: xoshiro256** seeded through splitmix64.
//!
//! No global generator is used anywhere in the crate: every random draw comes from an explicit
//! [`Rng`] value, so a seed gives the same stream on every platform and thread.

pub use unmask_runtime::rng::splitmix64;

/// xoshiro256** seeded through SplitMix64: the runtime's generator (the same stream for the same
/// seed), with the draws the trainer needs.
#[derive(Clone, Debug)]
pub struct Rng(unmask_runtime::rng::Rng);

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        Rng(unmask_runtime::rng::Rng::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        self.0.uniform()
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_in_range_and_seeded() {
        let mut a = Rng::seed_from_u64(7);
        let mut b = Rng::seed_from_u64(7);
        let mut c = Rng::seed_from_u64(8);
        let mut differ = false;
        for _ in 0..10_000 {
            let x = a.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x.to_bits(), b.next_f64().to_bits());
            differ |= x != c.next_f64();
        }
        assert!(differ);
    }
}
