//! A seeded pseudo-random sequence (xorshift64*) for test and bench schedules that must repeat
//! run after run (the chaos test's kill times, the soak's churn). Not for anything secret.

/// xorshift64*: the same sequence for the same seed.
pub struct Rng(u64);

impl Rng {
    /// A sequence from `seed` (any value; 0 is mapped to a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}
