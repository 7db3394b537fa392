//! `p2c`: the power of two random choices, as Envoy's LEAST_REQUEST and Traefik's p2c. Two
//! distinct candidates are drawn at random and the one with fewer attempts in flight for its
//! weight wins: nearly the balance of `least_conn`, without every pick herding onto the single
//! least loaded target.

use super::least_conn::lighter;
use super::{Target, TargetId};

pub fn pick<'a>(
    candidates: impl Iterator<Item = &'a mut Target>,
    weigh: impl Fn(&Target) -> u64,
    rng: &mut u64,
) -> Option<TargetId> {
    // Candidates are at most MAX_TARGETS: a reservoir of two keeps this one pass and no
    // allocation. Each candidate replaces one of the two with the right probability.
    let mut seen = 0u64;
    let mut chosen: [Option<&Target>; 2] = [None, None];
    for t in candidates {
        seen += 1;
        if seen <= 2 {
            chosen[(seen - 1) as usize] = Some(t);
        } else {
            let r = next(rng) % seen;
            if r < 2 {
                chosen[r as usize] = Some(t);
            }
        }
    }
    match chosen {
        [Some(a), Some(b)] => {
            let (wa, wb) = (weigh(a).max(1), weigh(b).max(1));
            let winner = match lighter(a, wa, b, wb) {
                std::cmp::Ordering::Less => a,
                std::cmp::Ordering::Greater => b,
                std::cmp::Ordering::Equal if next(rng) & 1 == 0 => a,
                std::cmp::Ordering::Equal => b,
            };
            Some(winner.id)
        }
        [Some(only), None] => Some(only.id),
        _ => None,
    }
}

/// xorshift64*.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use crate::balance::tests::weighted;
    use crate::balance::{Request, TargetSet};

    #[test]
    fn a_loaded_target_gets_fewer_picks_and_every_target_is_drawn() {
        let mut t = weighted(&[1, 1, 1, 1], "p2c");
        let ids: Vec<_> = t.ids().collect();
        for _ in 0..10 {
            t.attempt_started(ids[0]);
        }
        let tried = TargetSet::default();
        let mut counts = [0u32; 4];
        for seq in 0..4000 {
            let id = t.pick(&Request { seq, key: 0, tried: &tried, now: 0 }, false).expect("a target");
            counts[id.slot()] += 1;
        }
        // t1 wins only when drawn with itself, which p2c never does: it is never picked.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1..].iter().all(|&n| n > 1000), "{counts:?}");
    }
}
