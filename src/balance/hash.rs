//! `hash`: consistent hashing on a request key (`hash_key`), by rendezvous hashing (highest
//! random weight, Thaler and Ravishankar 1996). Every candidate scores `hash(key, target)` and
//! the highest wins, so a target that leaves moves only its own keys, each to the target that
//! scored next for it ("the next in the hash order"), and they come back when it returns.
//! Weights scale the score as in weighted rendezvous hashing (`-w / ln u`), and slow start
//! scales the weight.

use super::{Candidates, TargetId};

pub fn pick(candidates: Candidates<'_>, key: u64) -> Option<TargetId> {
    let mut best: Option<(f64, TargetId)> = None;
    for t in candidates.iter() {
        let score = score(key, t.key, candidates.weight(t));
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, t.id));
        }
    }
    best.map(|(_, id)| id)
}

/// Weighted rendezvous score: with `u` uniform in (0, 1) from the pair's hash, `-w / ln u`.
fn score(key: u64, target: u64, weight: u64) -> f64 {
    let mixed = mix(key ^ target.rotate_left(17));
    // 52 bits and a half: strictly inside (0, 1), so the logarithm is finite and negative.
    let u = ((mixed >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
    -(weight as f64) / u.ln()
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub use crate::targets::fnv1a;

#[cfg(test)]
mod tests {
    use super::fnv1a;
    use crate::balance::tests::weighted;
    use crate::balance::tests::Pool;
    use crate::balance::{Request, TargetId, TargetSet};

    fn owners(t: &mut Pool, keys: u64) -> Vec<TargetId> {
        let tried = TargetSet::default();
        (0..keys)
            .map(|k| {
                let key = fnv1a(&k.to_le_bytes());
                t.pick(&Request { seq: k, key, tried: &tried, now: 0 }, false).expect("a target")
            })
            .collect()
    }

    #[test]
    fn one_of_ten_leaving_moves_only_its_keys_and_they_come_back() {
        let mut t = weighted(&[1; 10], "hash");
        let ids: Vec<_> = t.ids();
        let before = owners(&mut t, 100_000);
        let share = before.iter().filter(|&&o| o == ids[3]).count();
        assert!((9_000..11_000).contains(&share), "t4 holds {share} of 100 000 keys");
        t.mark_down(ids[3]);
        let during = owners(&mut t, 100_000);
        let moved = before.iter().zip(&during).filter(|(a, b)| a != b).count();
        assert_eq!(moved, share, "only the keys of the target that left move");
        assert!(moved as f64 / 100_000.0 <= 0.1 + 0.01, "{moved} keys moved");
        t.mark_up(ids[3], 0);
        assert_eq!(owners(&mut t, 100_000), before, "they all come back");
    }

    #[test]
    fn a_weight_of_three_takes_three_shares() {
        let mut t = weighted(&[3, 1, 1, 1], "hash");
        let owned = owners(&mut t, 60_000);
        let first = owned.iter().filter(|o| o.slot() == 0).count();
        assert!((28_000..32_000).contains(&first), "weight 3 of 6 holds {first} of 60 000 keys");
    }
}
