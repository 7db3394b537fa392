//! The names everything else uses for a target: `TargetId`, its slot in the table and the
//! slot's generation, for as long as the target exists; and `TargetSet`, a set of them small
//! enough to live on every request's stack. Pools, traces, tried-sets, timers and probes keep
//! ids, never positions, so a target added or removed at run time (a reload, a discovered
//! address) can never make one of them point at another target. This module depends on
//! nothing, so that every other one may name a target.

/// Most targets a proxy holds; a request's tried-set is a fixed bitset of this many bits.
pub const MAX_TARGETS: usize = 256;

/// A target, for as long as it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetId {
    slot: u16,
    generation: u16,
}

impl TargetId {
    /// The first target ever held in `slot`.
    pub fn first(slot: usize) -> TargetId {
        TargetId { slot: slot as u16, generation: 0 }
    }

    /// The target held in `slot` under `generation` (the table counts generations).
    pub fn new(slot: usize, generation: u16) -> TargetId {
        TargetId { slot: slot as u16, generation }
    }

    /// Its place in the table: an index for per-target arrays, and `t<slot + 1>` in logs.
    pub fn slot(self) -> usize {
        usize::from(self.slot)
    }
}

/// A set of targets, small enough to live on the stack of every request.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct TargetSet([u64; MAX_TARGETS / 64]);

impl TargetSet {
    pub fn insert(&mut self, id: TargetId) {
        self.0[id.slot() / 64] |= 1 << (id.slot() % 64);
    }

    pub fn contains(&self, id: TargetId) -> bool {
        self.0[id.slot() / 64] & (1 << (id.slot() % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_set_covers_the_whole_range() {
        let mut s = TargetSet::default();
        s.insert(TargetId::first(0));
        s.insert(TargetId::first(MAX_TARGETS - 1));
        assert!(s.contains(TargetId::first(0)) && s.contains(TargetId::first(MAX_TARGETS - 1)));
        assert!(!s.contains(TargetId::first(64)));
    }
}
