//! `p2c`: the power of two random choices, as Envoy's LEAST_REQUEST and Traefik's p2c. Two
//! distinct candidates are drawn at random and the one with fewer attempts in flight for its
//! weight wins; between equals (both idle) a coin weighted by their weights decides. Nearly
//! the balance of `least_conn`, without every pick herding onto the single least loaded
//! target.

use super::least_conn::lighter;
use super::{Candidates, TargetId};
use crate::random::Rng;
use std::cmp::Ordering;

pub fn pick(candidates: Candidates<'_>, rng: &mut Rng) -> Option<TargetId> {
    let n = candidates.iter().count() as u64;
    let (i, j) = match n {
        0 => return None,
        1 => return candidates.iter().next().map(|t| t.id),
        _ => {
            let i = rng.below(n);
            // A second index, never the first.
            let j = (i + 1 + rng.below(n - 1)) % n;
            (i, j)
        }
    };
    let a = candidates.iter().nth(i as usize)?;
    let b = candidates.iter().nth(j as usize)?;
    let (wa, wb) = (candidates.weight(a).max(1), candidates.weight(b).max(1));
    let winner = match lighter(a, wa, b, wb) {
        Ordering::Less => a,
        Ordering::Greater => b,
        Ordering::Equal if rng.below(wa + wb) < wa => a,
        Ordering::Equal => b,
    };
    Some(winner.id)
}

#[cfg(test)]
mod tests {
    use crate::balance::tests::weighted;
    use crate::balance::{Request, TargetSet};

    #[test]
    fn a_loaded_target_gets_fewer_picks_and_every_target_is_drawn() {
        let mut t = weighted(&[1, 1, 1, 1], "p2c");
        let ids: Vec<_> = t.ids();
        for _ in 0..10 {
            t.attempt_started(ids[0]);
        }
        let tried = TargetSet::default();
        let mut counts = [0u32; 4];
        for seq in 0..4000 {
            let id = t.pick(&Request { seq, key: 0, tried: &tried, now: 0 }, false).expect("a target");
            counts[id.slot()] += 1;
        }
        // t1 never wins a draw: p2c never pairs a target with itself.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1..].iter().all(|&n| n > 1000), "{counts:?}");
    }

    #[test]
    fn idle_targets_share_by_weight() {
        let mut t = weighted(&[3, 1], "p2c");
        let tried = TargetSet::default();
        let mut counts = [0u32; 2];
        for seq in 0..8000 {
            counts[t.pick(&Request { seq, key: 0, tried: &tried, now: 0 }, false).expect("a target").slot()] += 1;
        }
        assert!((5600..6400).contains(&counts[0]), "3:1 gives about 6000 of 8000: {counts:?}");
    }
}
