//! Deterministic randomness for workloads: SplitMix64 (a well-known 64-bit
//! mixer, good enough to spread load, not for secrets) and a Zipf sampler
//! over ranks. Seeded per run so a run's mix can be replayed; no crate is
//! needed for ten lines, and the `rand` family's API churns between majors.

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf over ranks `0..n` (rank 0 the most popular): P(k) ∝ 1/(k+1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Zipf {
        let mut total = 0.0;
        let mut cumulative = Vec::with_capacity(n);
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(exponent);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        Zipf { cumulative }
    }

    /// The probability mass of ranks `from..`.
    pub fn mass_from(&self, from: usize) -> f64 {
        match from.checked_sub(1) {
            None => 1.0,
            Some(before) => 1.0 - self.cumulative.get(before).copied().unwrap_or(1.0),
        }
    }

    /// A rank drawn with `unit` in [0, 1).
    pub fn sample(&self, unit: f64) -> usize {
        self.cumulative
            .partition_point(|&c| c <= unit)
            .min(self.cumulative.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(10, 1.0);
        let mut rng = SplitMix::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[zipf.sample(rng.unit())] += 1;
        }
        assert!(counts[0] > counts[9] * 5, "{counts:?}");
        assert!((zipf.mass_from(0) - 1.0).abs() < 1e-9);
        assert!(zipf.mass_from(1) < 0.75);
    }
}
