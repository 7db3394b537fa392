//! Which target serves a request: the target table and the policy over its live targets.
//!
//! A target is known by a `TargetId`, its slot in the table and the slot's generation, for as
//! long as it exists. Pools, traces, tried-sets and probes keep ids, never positions, so a target
//! added or removed at run time can never make one of them point at another target. Today the
//! table is the config's `ports` in order and the one policy is the prototype's HashRing.

pub mod hashring;

use crate::config::{Config, TargetSpec, MAX_TARGETS};
use hashring::HashRing;
use std::net::SocketAddr;

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

pub struct Target {
    pub id: TargetId,
    pub spec: TargetSpec,
    /// Where it is, once its name resolved (at once for an IP literal).
    pub addr: Option<SocketAddr>,
    /// Its place in the config's `ports`: the ring keeps live targets in this order.
    rank: usize,
    live: bool,
}

/// What a reload changed in the table.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub added: Vec<TargetId>,
    pub removed: Vec<TargetId>,
}

/// The targets, and which of them are in the rotation.
pub struct Targets {
    /// By slot; a slot emptied by a reload waits for the next target added.
    slots: Vec<Option<Target>>,
    /// The generation the next target in each slot gets.
    next_generation: Vec<u16>,
    ring: HashRing,
}

impl Targets {
    /// The config's targets; `addrs[i]` is target i's address if known at start, and a target
    /// without one starts out of the rotation.
    pub fn new(config: &Config, addrs: Vec<Option<SocketAddr>>) -> Targets {
        let slots: Vec<Option<Target>> = config
            .targets
            .iter()
            .zip(addrs)
            .enumerate()
            .map(|(i, (spec, addr))| {
                Some(Target { id: TargetId::first(i), spec: spec.clone(), live: addr.is_some(), addr, rank: i })
            })
            .collect();
        let next_generation = vec![1; slots.len()];
        let mut targets = Targets { slots, next_generation, ring: HashRing::new([]) };
        targets.rebuild_ring();
        targets
    }

    fn rebuild_ring(&mut self) {
        self.ring = HashRing::new(self.iter().filter(|t| t.live).map(|t| (t.rank, t.id)));
    }

    fn iter(&self) -> impl Iterator<Item = &Target> {
        self.slots.iter().flatten()
    }

    fn slot_mut(&mut self, id: TargetId) -> Option<&mut Target> {
        self.slots.get_mut(id.slot())?.as_mut().filter(|t| t.id == id)
    }

    /// Makes the table match a reloaded config's `ports`: a target the new list still names
    /// (same host and port) keeps its id, its state and its connections; one it no longer names
    /// leaves; a new one takes a free slot under a new id, live at once when its address is an
    /// IP literal, otherwise out of the rotation until a probe has looked up its name and
    /// passed.
    pub fn reconcile(&mut self, specs: &[TargetSpec]) -> Reconciled {
        let same = |a: &TargetSpec, b: &TargetSpec| a.port == b.port && a.host.eq_ignore_ascii_case(&b.host);
        let mut changes = Reconciled::default();
        for slot in &mut self.slots {
            if let Some(t) = slot.as_ref().filter(|t| !specs.iter().any(|s| same(s, &t.spec))) {
                changes.removed.push(t.id);
                *slot = None;
            }
        }
        for (rank, spec) in specs.iter().enumerate() {
            if let Some(t) = self.slots.iter_mut().flatten().find(|t| same(&t.spec, spec)) {
                t.spec = spec.clone();
                t.rank = rank;
                continue;
            }
            let slot = match self.slots.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    self.slots.push(None);
                    self.next_generation.push(0);
                    self.slots.len() - 1
                }
            };
            let id = TargetId { slot: slot as u16, generation: self.next_generation[slot] };
            self.next_generation[slot] = self.next_generation[slot].wrapping_add(1);
            let addr = spec.literal_addr();
            self.slots[slot] = Some(Target { id, spec: spec.clone(), addr, rank, live: addr.is_some() });
            changes.added.push(id);
        }
        self.rebuild_ring();
        changes
    }

    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.slots.get(id.slot())?.as_ref().filter(|t| t.id == id)
    }

    /// Every target in the table, by slot.
    pub fn ids(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.iter().map(|t| t.id)
    }

    /// The URL as configured, for log lines; `-` for a target that is gone.
    pub fn url(&self, id: TargetId) -> &str {
        self.get(id).map_or("-", |t| t.spec.url.as_str())
    }

    pub fn addr(&self, id: TargetId) -> Option<SocketAddr> {
        self.get(id).and_then(|t| t.addr)
    }

    pub fn set_addr(&mut self, id: TargetId, addr: SocketAddr) {
        if let Some(t) = self.slot_mut(id) {
            t.addr = Some(addr);
        }
    }

    pub fn is_live(&self, id: TargetId) -> bool {
        self.get(id).is_some_and(|t| t.live)
    }

    /// Takes `id` out of the rotation; whether it was in.
    pub fn mark_down(&mut self, id: TargetId) -> bool {
        match self.slot_mut(id).filter(|t| t.live) {
            Some(t) => {
                t.live = false;
                self.ring.remove(id);
                true
            }
            None => false,
        }
    }

    /// Puts `id` back into the rotation; whether it was out.
    pub fn mark_up(&mut self, id: TargetId) -> bool {
        match self.slot_mut(id).filter(|t| !t.live) {
            Some(t) => {
                t.live = true;
                let rank = t.rank;
                self.ring.insert(id, rank);
                true
            }
            None => false,
        }
    }

    pub fn live_count(&self) -> usize {
        self.ring.len()
    }

    /// Targets in the table.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The target for request `seq` among live targets not tried yet; with `fail_open`, when
    /// none is live, among all targets not tried yet.
    pub fn pick(&self, seq: u64, tried: &TargetSet, fail_open: bool) -> Option<TargetId> {
        self.ring.pick(seq, tried).or_else(|| if fail_open { self.pick_any(seq, tried) } else { None })
    }

    /// Like the ring's pick over every target, live or not, in config order: the fail-open
    /// choice.
    fn pick_any(&self, seq: u64, tried: &TargetSet) -> Option<TargetId> {
        // Ranks are 0..n, the positions in `ports`.
        let n = self.len();
        let first = (seq % n.max(1) as u64) as usize;
        let by_rank = |rank: usize| self.iter().find(|t| t.rank == rank).map(|t| t.id);
        (0..n).filter_map(|k| by_rank((first + k) % n)).find(|&t| !tried.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Targets {
        let ports: Vec<String> = (1..=n).map(|i| format!("\"http://127.0.0.1:{i}/\"")).collect();
        let config = Config::parse(&format!("{{\"ports\": [{}]}}", ports.join(", "))).expect("config");
        let addrs = config.targets.iter().map(TargetSpec::literal_addr).collect();
        Targets::new(&config, addrs)
    }

    #[test]
    fn no_live_target_means_none_but_fail_open_still_tries_each_once() {
        let mut t = targets(2);
        let ids: Vec<TargetId> = t.ids().collect();
        assert!(t.mark_down(ids[0]) && t.mark_down(ids[1]) && !t.mark_down(ids[1]));
        assert_eq!(t.pick(7, &TargetSet::default(), false), None);
        let mut tried = TargetSet::default();
        assert_eq!(t.pick(7, &tried, true), Some(ids[1]));
        tried.insert(ids[1]);
        assert_eq!(t.pick(7, &tried, true), Some(ids[0]));
        tried.insert(ids[0]);
        assert_eq!(t.pick(7, &tried, true), None);
    }

    #[test]
    fn an_id_of_another_generation_finds_nothing() {
        let t = targets(1);
        let stale = TargetId { slot: 0, generation: 1 };
        assert!(t.get(stale).is_none() && !t.is_live(stale) && t.addr(stale).is_none());
        assert_eq!(t.url(stale), "-");
    }

    #[test]
    fn a_reload_keeps_named_targets_drops_the_rest_and_reuses_slots_under_new_ids() {
        let mut t = targets(3);
        let before: Vec<TargetId> = t.ids().collect();
        t.mark_down(before[1]);
        let specs: Vec<TargetSpec> = ["http://127.0.0.1:3/", "http://127.0.0.1:9/", "http://127.0.0.1:1/"]
            .iter()
            .map(|u| crate::config::parse_target_url(u).expect("url"))
            .collect();
        let changes = t.reconcile(&specs);
        assert_eq!(changes.removed, vec![before[1]]);
        assert_eq!(changes.added.len(), 1);
        let added = changes.added[0];
        assert_eq!(added.slot(), 1, "the free slot is reused");
        assert_ne!(added, before[1], "under a new generation");
        assert!(t.get(before[1]).is_none() && t.is_live(added));
        // The ring follows the new order of `ports`: :3, :9, :1.
        let picks: Vec<TargetId> = (0..3).filter_map(|seq| t.pick(seq, &TargetSet::default(), false)).collect();
        assert_eq!(picks, vec![before[2], added, before[0]]);
    }

    #[test]
    fn target_set_covers_the_whole_range() {
        let mut s = TargetSet::default();
        s.insert(TargetId::first(0));
        s.insert(TargetId::first(MAX_TARGETS - 1));
        assert!(s.contains(TargetId::first(0)) && s.contains(TargetId::first(MAX_TARGETS - 1)));
        assert!(!s.contains(TargetId::first(64)));
    }
}
