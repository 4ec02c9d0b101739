//! The seeded random generator of randomized tests: prints its seed and takes `SEED=` to
//! reproduce a failure (ChaCha8, whose output `rand_chacha` keeps stable across versions).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) struct TestRng {
    seed: u64,
    rng: ChaCha8Rng,
}

impl TestRng {
    /// Seeded from `SEED` when set, otherwise from the clock; prints the seed either way.
    pub(crate) fn from_env(test: &str) -> TestRng {
        let seed = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            });
        eprintln!("{test}: SEED={seed}");
        TestRng {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n.max(1))
    }

    /// `true` with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// How to reproduce, for assertion messages.
    pub(crate) fn seed_note(&self) -> String {
        format!("(reproduce with SEED={})", self.seed)
    }
}
