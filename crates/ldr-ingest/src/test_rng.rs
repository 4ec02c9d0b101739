//! A tiny seeded random generator for randomized tests: prints its seed and takes `SEED=` to
//! reproduce a failure (splitmix64; no dependency, stable across versions).

pub(crate) struct TestRng {
    seed: u64,
    state: u64,
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
        TestRng { seed, state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
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
