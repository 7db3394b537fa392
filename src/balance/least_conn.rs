//! `least_conn`: the candidate with the fewest attempts in flight for its weight. Among equals
//! (all idle, at low load) smooth weighted round robin decides, as nginx's `least_conn` does,
//! so weights and slow start still shape the traffic.

use super::{round_robin, Candidates, Target, TargetId};
use std::cmp::Ordering;

pub fn pick(mut candidates: Candidates<'_>) -> Option<TargetId> {
    let mut lightest: Option<(u32, u64)> = None;
    for t in candidates.iter() {
        let w = candidates.weight(t).max(1);
        if lightest.is_none_or(|(f, lw)| load(t.in_flight, w, f, lw) == Ordering::Less) {
            lightest = Some((t.in_flight, w));
        }
    }
    let (in_flight, w) = lightest?;
    let (slow_start_ms, now) = (candidates.slow_start_ms, candidates.now);
    round_robin::smooth(&mut candidates, |t| {
        load(t.in_flight, super::weight(t, now, slow_start_ms).max(1), in_flight, w) == Ordering::Equal
    })
}

/// Compares load per weight, `a / wa` against `b / wb`, without division.
pub(super) fn load(a: u32, wa: u64, b: u32, wb: u64) -> Ordering {
    (u64::from(a) * wb).cmp(&(u64::from(b) * wa))
}

/// `a` is less loaded than `b` for their weights.
pub(super) fn lighter(a: &Target, wa: u64, b: &Target, wb: u64) -> Ordering {
    load(a.in_flight, wa, b.in_flight, wb)
}

#[cfg(test)]
mod tests {
    use crate::balance::tests::weighted;
    use crate::balance::tests::Pool;
    use crate::balance::{Request, TargetSet};

    fn pick(t: &mut Pool, seq: u64) -> crate::balance::TargetId {
        t.pick(&Request { seq, key: 0, tried: &TargetSet::default(), now: 0 }, false).expect("a target")
    }

    #[test]
    fn the_target_with_fewest_in_flight_wins() {
        let mut t = weighted(&[1, 1, 1], "least_conn");
        let ids: Vec<_> = t.ids();
        t.attempt_started(ids[0]);
        t.attempt_started(ids[0]);
        t.attempt_started(ids[1]);
        assert_eq!(pick(&mut t, 1), ids[2]);
        t.attempt_started(ids[2]);
        let tie = pick(&mut t, 2);
        assert!(tie == ids[1] || tie == ids[2], "t2 and t3 hold one each");
        t.attempt_ended(ids[0]);
        t.attempt_ended(ids[0]);
        assert_eq!(pick(&mut t, 3), ids[0]);
    }

    #[test]
    fn idle_targets_share_by_weight() {
        let mut t = weighted(&[3, 1], "least_conn");
        let mut counts = [0; 2];
        for seq in 0..4000 {
            counts[pick(&mut t, seq).slot()] += 1;
        }
        assert_eq!(counts, [3000, 1000]);
    }
}
