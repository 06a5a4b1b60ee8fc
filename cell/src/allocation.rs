//! Splitting an envelope into shares, in integer cents (DESIGN.md §5).
//!
//! LUCKY uses the double-average rule: with `m` cents and `n` shares left, a share
//! is uniform in `[1, min(2*m/n, m-(n-1))]` and the last share takes all of `m`.
//! Every share is at least 1 cent, the shares sum to the total exactly, and each
//! position's expected share is `total/count` (the first opener has no edge).
//!
//! Randomness: ChaCha20 keyed by the envelope's 32-byte seed (drawn from the OS
//! CSPRNG at Send and stored with the envelope), with the share's sequence number
//! as the ChaCha stream. So share `k` depends only on (seed, k, m, n): any server
//! that loads the envelope computes the same split, and an audit replays it from
//! the stored seed. ChaCha20 is a fixed, documented algorithm, unlike `StdRng`.

use chacha20::ChaCha20Rng;
use rand::{Rng, RngExt, SeedableRng};

/// The per-envelope seed of the split.
pub type Seed = [u8; 32];

/// How an envelope is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRule {
    /// Double-average random shares.
    Lucky,
    /// Every share `total / count` (the total divides by the count).
    Equal,
}

/// A fresh seed from the operating system's CSPRNG.
pub fn new_seed() -> Seed {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    seed
}

/// The amount of share number `sequence` (1-based) when `remaining_cents` are
/// left for `remaining_count` shares. The caller guarantees
/// `remaining_count >= 1` and `remaining_cents >= remaining_count`, as the
/// envelope's invariants do; outside that, the result is clamped to what is left
/// rather than panicking.
pub fn share(
    rule: SplitRule,
    seed: &Seed,
    sequence: u32,
    remaining_cents: i64,
    remaining_count: u32,
) -> i64 {
    let m = remaining_cents;
    let n = i64::from(remaining_count);
    if n <= 1 || m <= n {
        // The last share takes the rest; with m == n every share is 1 cent.
        return if n <= 1 { m } else { 1 };
    }
    match rule {
        SplitRule::Equal => m / n,
        SplitRule::Lucky => {
            let bound = (2 * m / n).min(m - (n - 1));
            let mut rng = ChaCha20Rng::from_seed(*seed);
            rng.set_stream(u64::from(sequence));
            rng.random_range(1..=bound)
        }
    }
}

/// The whole split, share by share, as the lanes compute it (for audits and
/// tests).
pub fn replay(rule: SplitRule, seed: &Seed, total_cents: i64, count: u32) -> Vec<i64> {
    let mut remaining = total_cents;
    let mut shares = Vec::with_capacity(count as usize);
    for sequence in 1..=count {
        let amount = share(rule, seed, sequence, remaining, count - sequence + 1);
        remaining -= amount;
        shares.push(amount);
    }
    shares
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Sum exact, every share >= 1 cent and within the double-average bound,
        /// the last takes the rest — over random totals and counts including the
        /// limits (count 1 and 500, total == count, total 2,000,000 cents).
        #[test]
        fn lucky_shares_sum_exactly_within_bounds(
            seed in any::<[u8; 32]>(),
            count in prop_oneof![Just(1u32), Just(500u32), 1u32..=500],
            extra in prop_oneof![Just(0i64), Just(2_000_000i64), 0i64..=2_000_000],
        ) {
            let total = (i64::from(count) + extra).min(2_000_000).max(i64::from(count));
            let shares = replay(SplitRule::Lucky, &seed, total, count);
            prop_assert_eq!(shares.len(), count as usize);
            prop_assert_eq!(shares.iter().sum::<i64>(), total);
            let mut remaining = total;
            for (index, amount) in shares.iter().enumerate() {
                let left = i64::from(count) - index as i64;
                prop_assert!(*amount >= 1);
                if left == 1 {
                    prop_assert_eq!(*amount, remaining, "the last share takes the rest");
                } else {
                    let bound = (2 * remaining / left).min(remaining - (left - 1));
                    prop_assert!(*amount <= bound, "share {} of {} over bound {}", amount, remaining, bound);
                }
                remaining -= amount;
            }
        }

        #[test]
        fn equal_shares_are_equal(seed in any::<[u8; 32]>(), count in 1u32..=500, per in 1i64..=4000) {
            let shares = replay(SplitRule::Equal, &seed, per * i64::from(count), count);
            prop_assert!(shares.iter().all(|amount| *amount == per));
        }

        #[test]
        fn the_split_replays_from_the_seed(seed in any::<[u8; 32]>(), count in 2u32..=50) {
            let total = 100 * i64::from(count);
            prop_assert_eq!(replay(SplitRule::Lucky, &seed, total, count), replay(SplitRule::Lucky, &seed, total, count));
        }
    }

    /// Fairness: each position's mean share is total/count. 20,000 envelopes of
    /// 100.00 in 10 shares: the standard error of a position's mean is below
    /// 0.6% of the 10.00 expectation, so a 3% tolerance is ~5 sigma.
    #[test]
    fn every_position_has_the_same_expected_share() {
        let (total, count, envelopes) = (10_000i64, 10u32, 20_000u32);
        let mut sums = vec![0i64; count as usize];
        let mut seeder = ChaCha20Rng::from_seed([7; 32]);
        for _ in 0..envelopes {
            let mut seed = [0u8; 32];
            seeder.fill_bytes(&mut seed);
            for (position, amount) in replay(SplitRule::Lucky, &seed, total, count)
                .into_iter()
                .enumerate()
            {
                sums[position] += amount;
            }
        }
        let expected = total / i64::from(count);
        for (position, sum) in sums.iter().enumerate() {
            let mean = sum / i64::from(envelopes);
            let deviation = (mean - expected).abs();
            assert!(
                deviation * 100 <= expected * 3,
                "position {} mean {mean} vs {expected}",
                position + 1
            );
        }
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(new_seed(), new_seed());
    }
}
