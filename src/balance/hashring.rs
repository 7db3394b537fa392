//! The HashRing: which target serves a request. As in the prototype, the target is
//! `live[seq % live.len()]` where `seq` is the request's sequence number, so load spreads evenly
//! over whatever is live and adapts as targets leave and come back.

use super::{TargetId, TargetSet};
use crate::targets::Rank;

pub struct HashRing {
    /// Live targets with their place in the config's `ports`, in that order.
    live: Vec<(Rank, TargetId)>,
}

impl HashRing {
    /// The ring over `live`, each target with its place in the config.
    pub fn new(live: impl IntoIterator<Item = (Rank, TargetId)>) -> HashRing {
        let mut live: Vec<(Rank, TargetId)> = live.into_iter().collect();
        live.sort_by_key(|&(rank, _)| rank);
        HashRing { live }
    }

    /// The target for request `seq`, skipping those in `tried`; `None` when no live target is
    /// left untried.
    pub fn pick(&self, seq: u64, tried: &TargetSet) -> Option<TargetId> {
        let n = self.live.len();
        if n == 0 {
            return None;
        }
        let first = (seq % n as u64) as usize;
        (0..n).map(|k| self.live[(first + k) % n].1).find(|&t| !tried.contains(t))
    }

    /// Takes `id` out of the rotation.
    pub fn remove(&mut self, id: TargetId) {
        self.live.retain(|&(_, t)| t != id);
    }

    /// Puts `id`, `rank`th in the config, back into the rotation in config order.
    pub fn insert(&mut self, id: TargetId, rank: Rank) {
        if !self.live.iter().any(|&(_, t)| t == id) {
            let at = self.live.partition_point(|&(r, _)| r < rank);
            self.live.insert(at, (rank, id));
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<TargetId> {
        (0..n).map(TargetId::first).collect()
    }

    fn ranked(ids: &[TargetId]) -> Vec<(Rank, TargetId)> {
        ids.iter().map(|&id| ((id.slot(), None), id)).collect()
    }

    #[test]
    fn fifty_requests_over_five_targets_give_ten_each() {
        let ring = HashRing::new(ranked(&ids(5)));
        let mut counts = [0; 5];
        for seq in 0..50 {
            counts[ring.pick(seq, &TargetSet::default()).expect("live").slot()] += 1;
        }
        assert_eq!(counts, [10; 5]);
    }

    #[test]
    fn a_removed_target_gets_nothing_and_returns_in_order() {
        let t = ids(5);
        let mut ring = HashRing::new(ranked(&t));
        ring.remove(t[2]);
        let mut counts = [0; 5];
        for seq in 0..40 {
            counts[ring.pick(seq, &TargetSet::default()).expect("live").slot()] += 1;
        }
        assert_eq!(counts, [10, 10, 0, 10, 10]);
        ring.insert(t[2], (2, None));
        ring.insert(t[2], (2, None));
        assert_eq!(ring.pick(2, &TargetSet::default()), Some(t[2]));
        assert_eq!(ring.len(), 5);
    }

    #[test]
    fn pick_skips_tried_targets_and_gives_up_when_all_are_tried() {
        let t = ids(3);
        let ring = HashRing::new(ranked(&t));
        let mut tried = TargetSet::default();
        tried.insert(t[1]);
        assert_eq!(ring.pick(1, &tried), Some(t[2]));
        tried.insert(t[2]);
        assert_eq!(ring.pick(1, &tried), Some(t[0]));
        tried.insert(t[0]);
        assert_eq!(ring.pick(1, &tried), None);
    }
}
