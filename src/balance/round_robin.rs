//! `round_robin`: smooth weighted round robin, as nginx does it. Each pick adds every
//! candidate's weight to its running weight, takes the candidate with the largest, and takes
//! the total back from it: weights 5, 1, 1 give a a b a c a a, never a a a a a b c.

use super::{Candidates, Target, TargetId};

pub fn pick(mut candidates: Candidates<'_>) -> Option<TargetId> {
    smooth(&mut candidates, |_| true)
}

/// Smooth weighted round robin among the candidates `among` accepts (`least_conn` uses it to
/// break ties the way nginx does).
pub(super) fn smooth(candidates: &mut Candidates<'_>, among: impl Fn(&Target) -> bool) -> Option<TargetId> {
    let (slow_start_ms, now) = (candidates.slow_start_ms, candidates.now);
    let (targets, tried, current) = (candidates.targets, candidates.tried, &mut *candidates.current);
    let mut total = 0i64;
    let mut best: Option<(i64, TargetId)> = None;
    for t in targets.iter().filter(|t| t.live && !tried.contains(t.id) && among(t)) {
        let w = i64::try_from(super::weight(t, now, slow_start_ms)).unwrap_or(i64::MAX / 1024);
        let running = &mut current[t.id.slot()];
        *running = running.saturating_add(w);
        total = total.saturating_add(w);
        if best.is_none_or(|(b, _)| *running > b) {
            best = Some((*running, t.id));
        }
    }
    let (_, id) = best?;
    current[id.slot()] = current[id.slot()].saturating_sub(total);
    Some(id)
}

#[cfg(test)]
mod tests {
    use crate::balance::tests::weighted;
    use crate::balance::{Request, TargetSet};

    #[test]
    fn weights_five_one_one_interleave_as_nginx_does() {
        let mut t = weighted(&[5, 1, 1], "round_robin");
        let tried = TargetSet::default();
        let picks: String = (0..7)
            .map(|seq| {
                let id = t.pick(&Request { seq, key: 0, tried: &tried, now: 0 }, false).expect("a target");
                (b'a' + id.slot() as u8) as char
            })
            .collect();
        assert_eq!(picks, "aabacaa");
    }
}
