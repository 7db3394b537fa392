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
    live: bool,
}

/// The targets, and which of them are in the rotation.
pub struct Targets {
    slots: Vec<Target>,
    ring: HashRing,
}

impl Targets {
    /// The config's targets; `addrs[i]` is target i's address if known at start, and a target
    /// without one starts out of the rotation.
    pub fn new(config: &Config, addrs: Vec<Option<SocketAddr>>) -> Targets {
        let slots: Vec<Target> = config
            .targets
            .iter()
            .zip(addrs)
            .enumerate()
            .map(|(i, (spec, addr))| Target { id: TargetId::first(i), spec: spec.clone(), live: addr.is_some(), addr })
            .collect();
        let ring = HashRing::new(slots.iter().filter(|t| t.live).map(|t| t.id));
        Targets { slots, ring }
    }

    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.slots.get(id.slot()).filter(|t| t.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.slots.iter().map(|t| t.id)
    }

    /// The URL as configured, for log lines; `-` for a target that is gone.
    pub fn url(&self, id: TargetId) -> &str {
        self.get(id).map_or("-", |t| t.spec.url.as_str())
    }

    pub fn addr(&self, id: TargetId) -> Option<SocketAddr> {
        self.get(id).and_then(|t| t.addr)
    }

    pub fn set_addr(&mut self, id: TargetId, addr: SocketAddr) {
        if let Some(t) = self.slots.get_mut(id.slot()).filter(|t| t.id == id) {
            t.addr = Some(addr);
        }
    }

    pub fn is_live(&self, id: TargetId) -> bool {
        self.get(id).is_some_and(|t| t.live)
    }

    /// Takes `id` out of the rotation; whether it was in.
    pub fn mark_down(&mut self, id: TargetId) -> bool {
        match self.slots.get_mut(id.slot()).filter(|t| t.id == id && t.live) {
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
        match self.slots.get_mut(id.slot()).filter(|t| t.id == id && !t.live) {
            Some(t) => {
                t.live = true;
                self.ring.insert(id);
                true
            }
            None => false,
        }
    }

    pub fn live_count(&self) -> usize {
        self.ring.len()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The target for request `seq` among live targets not tried yet; with `fail_open`, when
    /// none is live, among all targets not tried yet.
    pub fn pick(&self, seq: u64, tried: &TargetSet, fail_open: bool) -> Option<TargetId> {
        self.ring.pick(seq, tried).or_else(|| if fail_open { self.pick_any(seq, tried) } else { None })
    }

    /// Like the ring's pick over every target, live or not: the fail-open choice.
    fn pick_any(&self, seq: u64, tried: &TargetSet) -> Option<TargetId> {
        let n = self.slots.len();
        let first = (seq % n.max(1) as u64) as usize;
        (0..n).map(|k| self.slots[(first + k) % n].id).find(|&t| !tried.contains(t))
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
    fn target_set_covers_the_whole_range() {
        let mut s = TargetSet::default();
        s.insert(TargetId::first(0));
        s.insert(TargetId::first(MAX_TARGETS - 1));
        assert!(s.contains(TargetId::first(0)) && s.contains(TargetId::first(MAX_TARGETS - 1)));
        assert!(!s.contains(TargetId::first(64)));
    }
}
