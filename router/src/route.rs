//! Choosing where a request goes.
//!
//! * Existing envelopes: `(R, EE, SSS) -> cell` by the topology, then a logic
//!   server of that cell by **rendezvous hashing** (highest random weight) on the
//!   envelope ID: every router replica picks the same server for one envelope
//!   (the sticky lane), and when a server leaves, only its envelopes move.
//! * New envelopes: a suffix drawn from the mint pool of the sender's region,
//!   restricted to cells usable now (healthy, not suspect). The draw is keyed by
//!   (sender, idempotency key), so a client's retry of one Send lands on the
//!   same cell while the pool is unchanged, and its idempotency holds there.
//!
//! The hash is FNV-1a with a SplitMix64 finalizer, fixed forever, so replicas of
//! different builds agree (std's hasher makes no such promise).

use redcell_topology::{Cell, RegionDigit, Suffix, Topology};

/// A stable 64-bit hash of byte strings.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        for byte in *part {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash = (hash ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3); // part separator
    }
    // SplitMix64 finalizer: spreads FNV's weak low bits.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The servers of `cell` in rendezvous order for `key`: preferred first.
pub fn rendezvous<'a>(cell: &'a Cell, key: &str) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = cell
        .servers
        .iter()
        .map(|server| {
            (
                stable_hash(&[server.as_bytes(), key.as_bytes()]),
                server.as_str(),
            )
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().map(|(_, server)| server).collect()
}

/// Orders servers: the usable ones (by `usable`) in rendezvous order first, then
/// the rest, still in rendezvous order (a last resort beats no answer).
pub fn servers_for<'a>(cell: &'a Cell, key: &str, usable: impl Fn(&str) -> bool) -> Vec<&'a str> {
    let (mut up, down): (Vec<&str>, Vec<&str>) =
        rendezvous(cell, key).into_iter().partition(|s| usable(s));
    up.extend(down);
    up
}

/// A suffix for a new envelope of `sender` region: from the mint pool (after
/// `region_override`), only cells for which `usable(cell name)` holds (the
/// topology builds that pool: [`Topology::mint_pool_where`]). Returns the
/// suffix and the index of its cell in `topology.cells()`.
pub fn mint_suffix(
    topology: &Topology,
    sender: RegionDigit,
    draw: u64,
    usable: impl Fn(&str) -> bool,
) -> Option<(Suffix, usize)> {
    topology
        .mint_pool_where(sender, |cell| usable(&cell.name))?
        .draw(draw)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cell(servers: &[&str]) -> Cell {
        Cell {
            name: "n1".into(),
            region: RegionDigit::new(1).unwrap(),
            status: redcell_topology::CellStatus::Active,
            servers: servers.iter().map(|s| s.to_string()).collect(),
            db: "postgres://u@h/d".into(),
        }
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_departed_servers_keys() {
        let three = cell(&["a:1", "b:1", "c:1"]);
        let two = cell(&["a:1", "b:1"]);
        let mut moved = 0;
        for key in 0..3000 {
            let key = key.to_string();
            let before = rendezvous(&three, &key)[0];
            let after = rendezvous(&two, &key)[0];
            assert_eq!(before, rendezvous(&three, &key)[0], "deterministic");
            if before != "c:1" {
                assert_eq!(before, after, "a key not on the departed server stays put");
            } else {
                moved += 1;
            }
        }
        // Each server gets about a third of the keys.
        assert!((800..1200).contains(&moved), "{moved}");
    }

    #[test]
    fn unusable_servers_go_last() {
        let three = cell(&["a:1", "b:1", "c:1"]);
        for key in ["x", "y", "z"] {
            let order = servers_for(&three, key, |server| server != "a:1");
            assert_eq!(order.last(), Some(&"a:1"));
            assert_eq!(order.len(), 3);
        }
    }
}
