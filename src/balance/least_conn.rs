//! `least_conn`: the candidate with the fewest attempts in flight for its weight; among equals,
//! the one picked longest ago, so that idle targets take turns.

use super::{Target, TargetId};

pub fn pick<'a>(candidates: impl Iterator<Item = &'a mut Target>, weigh: impl Fn(&Target) -> u64) -> Option<TargetId> {
    let mut best: Option<(&Target, u64)> = None;
    for t in candidates {
        let w = weigh(t).max(1);
        let better = match best {
            None => true,
            Some((b, bw)) => match lighter(t, w, b, bw) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => t.last_pick < b.last_pick,
                std::cmp::Ordering::Greater => false,
            },
        };
        if better {
            best = Some((t, w));
        }
    }
    best.map(|(t, _)| t.id)
}

/// Compares load per weight, `a.in_flight / wa` against `b.in_flight / wb`, without division.
pub(super) fn lighter(a: &Target, wa: u64, b: &Target, wb: u64) -> std::cmp::Ordering {
    (u64::from(a.in_flight) * wb).cmp(&(u64::from(b.in_flight) * wa))
}

#[cfg(test)]
mod tests {
    use crate::balance::tests::weighted;
    use crate::balance::{Request, TargetSet};

    #[test]
    fn the_target_with_fewest_in_flight_wins_and_idle_ones_take_turns() {
        let mut t = weighted(&[1, 1, 1], "least_conn");
        let ids: Vec<_> = t.ids().collect();
        let tried = TargetSet::default();
        let pick = |t: &mut crate::balance::Targets, seq| {
            t.pick(&Request { seq, key: 0, tried: &tried, now: 0 }, false).expect("a target")
        };
        t.attempt_started(ids[0]);
        t.attempt_started(ids[0]);
        t.attempt_started(ids[1]);
        assert_eq!(pick(&mut t, 1), ids[2]);
        t.attempt_started(ids[2]);
        assert_eq!(pick(&mut t, 2), ids[1], "a tie between t2 and t3 goes to the one picked longer ago");
        t.attempt_ended(ids[0]);
        t.attempt_ended(ids[0]);
        assert_eq!(pick(&mut t, 3), ids[0]);
    }
}
