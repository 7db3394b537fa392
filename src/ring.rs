//! The HashRing: which target serves a request. As in the prototype, the target is
//! `live[seq % live.len()]` where `seq` is the request's sequence number, so load spreads evenly
//! over whatever is live and adapts as targets leave and come back.

use crate::config::MAX_TARGETS;

/// A set of target indices, small enough to live on the stack of every request.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct TargetSet([u64; MAX_TARGETS / 64]);

impl TargetSet {
    pub fn insert(&mut self, target: usize) {
        self.0[target / 64] |= 1 << (target % 64);
    }

    pub fn contains(&self, target: usize) -> bool {
        self.0[target / 64] & (1 << (target % 64)) != 0
    }

    pub fn clear(&mut self) {
        *self = TargetSet::default();
    }
}

pub struct HashRing {
    /// Live targets in config order.
    live: Vec<usize>,
    is_live: Vec<bool>,
}

impl HashRing {
    /// A ring over `count` targets, all live.
    pub fn new(count: usize) -> HashRing {
        HashRing { live: (0..count).collect(), is_live: vec![true; count] }
    }

    /// The target for request `seq`, skipping those in `tried`; `None` when no live target is
    /// left untried.
    pub fn pick(&self, seq: u64, tried: &TargetSet) -> Option<usize> {
        let n = self.live.len();
        if n == 0 {
            return None;
        }
        let first = (seq % n as u64) as usize;
        (0..n).map(|k| self.live[(first + k) % n]).find(|&t| !tried.contains(t))
    }

    /// Like `pick`, over every target live or not: the fail-open choice when none is live.
    pub fn pick_any(&self, seq: u64, tried: &TargetSet) -> Option<usize> {
        let n = self.is_live.len();
        let first = (seq % n.max(1) as u64) as usize;
        (0..n).map(|k| (first + k) % n).find(|&t| !tried.contains(t))
    }

    /// Takes `target` out of the rotation; returns whether it was live.
    pub fn mark_down(&mut self, target: usize) -> bool {
        if !self.is_live[target] {
            return false;
        }
        self.is_live[target] = false;
        self.live.retain(|&t| t != target);
        true
    }

    /// Puts `target` back into the rotation; returns whether it was down.
    pub fn mark_up(&mut self, target: usize) -> bool {
        if self.is_live[target] {
            return false;
        }
        self.is_live[target] = true;
        let at = self.live.partition_point(|&t| t < target);
        self.live.insert(at, target);
        true
    }

    pub fn is_live(&self, target: usize) -> bool {
        self.is_live[target]
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn len(&self) -> usize {
        self.is_live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.is_live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_requests_over_five_targets_give_ten_each() {
        let ring = HashRing::new(5);
        let mut counts = [0; 5];
        for seq in 0..50 {
            counts[ring.pick(seq, &TargetSet::default()).expect("live")] += 1;
        }
        assert_eq!(counts, [10; 5]);
    }

    #[test]
    fn a_down_target_gets_nothing_and_returns_in_order() {
        let mut ring = HashRing::new(5);
        assert!(ring.mark_down(2));
        assert!(!ring.mark_down(2));
        let mut counts = [0; 5];
        for seq in 0..40 {
            counts[ring.pick(seq, &TargetSet::default()).expect("live")] += 1;
        }
        assert_eq!(counts, [10, 10, 0, 10, 10]);
        assert!(ring.mark_up(2));
        assert_eq!(ring.pick(2, &TargetSet::default()), Some(2));
        assert_eq!(ring.live_count(), 5);
    }

    #[test]
    fn pick_skips_tried_targets_and_gives_up_when_all_are_tried() {
        let ring = HashRing::new(3);
        let mut tried = TargetSet::default();
        tried.insert(1);
        assert_eq!(ring.pick(1, &tried), Some(2));
        tried.insert(2);
        assert_eq!(ring.pick(1, &tried), Some(0));
        tried.insert(0);
        assert_eq!(ring.pick(1, &tried), None);
    }

    #[test]
    fn no_live_target_means_none_but_pick_any_still_tries_each_once() {
        let mut ring = HashRing::new(2);
        ring.mark_down(0);
        ring.mark_down(1);
        assert_eq!(ring.pick(7, &TargetSet::default()), None);
        let mut tried = TargetSet::default();
        assert_eq!(ring.pick_any(7, &tried), Some(1));
        tried.insert(1);
        assert_eq!(ring.pick_any(7, &tried), Some(0));
        tried.insert(0);
        assert_eq!(ring.pick_any(7, &tried), None);
    }

    #[test]
    fn target_set_covers_the_whole_range() {
        let mut s = TargetSet::default();
        s.insert(0);
        s.insert(MAX_TARGETS - 1);
        assert!(s.contains(0) && s.contains(MAX_TARGETS - 1) && !s.contains(64));
    }
}
