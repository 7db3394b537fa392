//! The target table: every target the proxy knows, where it is, whether it is in the rotation,
//! and what is in flight on it. It is the one store of a target's state. The policies that pick
//! among the live ones keep their own state apart (`balance/`); every change of a target's
//! state reaches both, and the per-target stores, through one owner (`proxy/lifecycle.rs`).
//!
//! `discovery.rs` looks the table's discovered names up again, off the loop.

pub mod discovery;

use crate::config::{Config, TargetSpec};
use crate::ids::{TargetId, MAX_TARGETS};
use std::net::SocketAddr;

/// Where a target sits in the rotation's order: its entry in `ports`, then, for one of the
/// addresses a discovered name stands for, the address.
pub type Rank = (usize, Option<SocketAddr>);

/// A `discover` entry of `ports`: the name and port whose addresses are targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub host: String,
    pub port: u16,
}

impl Group {
    fn of(spec: &TargetSpec) -> Group {
        Group { host: spec.bare_host().to_ascii_lowercase(), port: spec.port }
    }
}

pub struct Target {
    pub id: TargetId,
    pub spec: TargetSpec,
    /// Where it is, once its name resolved (at once for an IP literal).
    pub addr: Option<SocketAddr>,
    /// The discovered name this target is one address of.
    pub group: Option<Group>,
    pub rank: Rank,
    pub live: bool,
    /// Attempts on it in flight: connecting, sending, or waiting for or relaying its answer.
    pub in_flight: u32,
    /// When it joined the rotation at run time (revived, added), for slow start; `None` for
    /// a target live since the start.
    pub up_since: Option<u64>,
    /// A hash of its URL, for consistent hashing: the same target keeps its keys whatever
    /// slot it is in.
    pub key: u64,
}

impl Target {
    fn new(id: TargetId, spec: TargetSpec, addr: Option<SocketAddr>, group: Option<Group>, rank: Rank) -> Target {
        let key = fnv1a(spec.url.as_bytes());
        let live = addr.is_some() && group.is_none();
        Target { id, spec, addr, group, rank, live, in_flight: 0, up_since: None, key }
    }
}

/// FNV-1a, for request keys and target URLs.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// What a reload or a lookup changed in the table.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub added: Vec<TargetId>,
    pub removed: Vec<TargetId>,
    /// The URLs of the removed targets, for log lines (their slots are empty by now).
    pub gone: Vec<String>,
    /// Addresses left out: the table holds `MAX_TARGETS` at most.
    pub refused: usize,
}

/// The targets, and which of them are in the rotation.
pub struct Targets {
    /// By slot; a slot emptied by a reload waits for the next target added.
    slots: Vec<Option<Target>>,
    /// The generation the next target in each slot gets.
    next_generation: Vec<u16>,
    refused: usize,
}

impl Targets {
    /// The config's targets. `addrs[i]` is what entry i of `ports` resolved to at start: a
    /// listed target without an address starts out of the rotation, and each address of a
    /// `discover` entry is a target of its own, live from the start.
    ///
    /// Listed targets take their slots first, so that addresses of a name can never crowd one
    /// out of the table; addresses beyond `MAX_TARGETS` are left out (`Targets::refused`).
    pub fn new(config: &Config, addrs: Vec<Vec<SocketAddr>>) -> Targets {
        let mut targets = Targets { slots: Vec::new(), next_generation: Vec::new(), refused: 0 };
        for (i, (spec, found)) in config.targets.iter().zip(&addrs).enumerate().filter(|(_, (s, _))| !s.discover) {
            targets.add(spec.clone(), found.first().copied(), None, (i, None));
        }
        for (i, (spec, found)) in config.targets.iter().zip(&addrs).enumerate().filter(|(_, (s, _))| s.discover) {
            let group = Group::of(spec);
            for &addr in found {
                if targets.holds(addr) {
                    continue;
                }
                match targets.add(member_spec(spec, addr), Some(addr), Some(group.clone()), (i, Some(addr))) {
                    Some(id) => targets.set_live(id, true),
                    None => targets.refused += 1,
                }
            }
        }
        targets
    }

    /// Addresses of discovered names left out at start: the table was full.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// Some target already has this address: another name's, or a listed one.
    fn holds(&self, addr: SocketAddr) -> bool {
        self.iter().any(|t| t.addr == Some(addr))
    }

    /// Puts a target in the first free slot under the slot's next generation.
    fn add(
        &mut self,
        spec: TargetSpec,
        addr: Option<SocketAddr>,
        group: Option<Group>,
        rank: Rank,
    ) -> Option<TargetId> {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.slots.len() < MAX_TARGETS => {
                self.slots.push(None);
                self.next_generation.push(0);
                self.slots.len() - 1
            }
            None => return None,
        };
        let id = TargetId::new(slot, self.next_generation[slot]);
        self.next_generation[slot] = self.next_generation[slot].wrapping_add(1);
        self.slots[slot] = Some(Target::new(id, spec, addr, group, rank));
        Some(id)
    }

    fn set_live(&mut self, id: TargetId, live: bool) {
        if let Some(t) = self.slot_mut(id) {
            t.live = live;
        }
    }

    /// Every target, by slot.
    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.slots.iter().flatten()
    }

    fn slot_mut(&mut self, id: TargetId) -> Option<&mut Target> {
        self.slots.get_mut(id.slot())?.as_mut().filter(|t| t.id == id)
    }

    /// Makes the table match a reloaded config's `ports`. A listed target the new list still
    /// names (same host and port) keeps its id, its state and its connections, and so do the
    /// addresses of a `discover` name it still names; the rest leave. A new listed target takes
    /// a free slot under a new id, live at once when its address is an IP literal, otherwise
    /// out of the rotation until a probe has looked up its name and passed. A new `discover`
    /// name gets its addresses from its first lookup.
    pub fn reconcile(&mut self, specs: &[TargetSpec], now: u64) -> Reconciled {
        let listed =
            |a: &TargetSpec, b: &TargetSpec| !b.discover && a.port == b.port && a.host.eq_ignore_ascii_case(&b.host);
        let mut changes = Reconciled::default();
        for slot in &mut self.slots {
            let Some(t) = slot.as_mut() else { continue };
            let entry = match &t.group {
                Some(group) => specs.iter().position(|s| s.discover && Group::of(s) == *group),
                None => specs.iter().position(|s| listed(&t.spec, s)),
            };
            match entry {
                Some(i) => {
                    t.rank = (i, t.rank.1);
                    t.spec = match (&t.group, t.addr) {
                        (Some(_), Some(addr)) => member_spec(&specs[i], addr),
                        _ => specs[i].clone(),
                    };
                }
                None => {
                    changes.removed.push(t.id);
                    changes.gone.push(std::mem::take(&mut t.spec.url));
                    *slot = None;
                }
            }
        }
        for (i, spec) in specs.iter().enumerate().filter(|(_, s)| !s.discover) {
            if self.iter().any(|t| t.group.is_none() && listed(&t.spec, spec)) {
                continue;
            }
            match self.add(spec.clone(), spec.literal_addr(), None, (i, None)) {
                Some(id) => {
                    changes.added.push(id);
                    if let Some(t) = self.slot_mut(id).filter(|t| t.live) {
                        t.up_since = Some(now);
                    }
                }
                None => changes.refused += 1,
            }
        }
        changes
    }

    /// A lookup of a discovered name answered `addrs`: addresses that vanished leave (their
    /// requests in flight finish), new ones join the table out of the rotation, to come in
    /// when a probe passes. `index` is the name's entry in `ports`.
    pub fn discovered(&mut self, index: usize, entry: &TargetSpec, addrs: &[SocketAddr]) -> Reconciled {
        let (group, i) = (Group::of(entry), index);
        let mut changes = Reconciled::default();
        for slot in &mut self.slots {
            if let Some(t) = slot.as_mut().filter(|t| t.group.as_ref() == Some(&group)) {
                if !t.addr.is_some_and(|a| addrs.contains(&a)) {
                    changes.removed.push(t.id);
                    changes.gone.push(std::mem::take(&mut t.spec.url));
                    *slot = None;
                }
            }
        }
        for &addr in addrs {
            // Already a target: of this name, or of another name or a listed entry.
            if self.holds(addr) {
                continue;
            }
            match self.add(member_spec(entry, addr), Some(addr), Some(group.clone()), (i, Some(addr))) {
                Some(id) => changes.added.push(id),
                None => changes.refused += 1,
            }
        }
        changes
    }

    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.slots.get(id.slot())?.as_ref().filter(|t| t.id == id)
    }

    /// Every target in the table, by slot.
    pub fn ids(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.iter().map(|t| t.id)
    }

    /// The URL as configured (for a discovered address, with the address as its host), for log
    /// lines; `-` for a target that is gone.
    pub fn url(&self, id: TargetId) -> &str {
        self.get(id).map_or("-", |t| t.spec.url.as_str())
    }

    pub fn addr(&self, id: TargetId) -> Option<SocketAddr> {
        self.get(id).and_then(|t| t.addr)
    }

    /// Whether the address changed.
    pub fn set_addr(&mut self, id: TargetId, addr: SocketAddr) -> bool {
        match self.slot_mut(id).filter(|t| t.group.is_none()) {
            Some(t) if t.addr != Some(addr) => {
                t.addr = Some(addr);
                true
            }
            _ => false,
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
                true
            }
            None => false,
        }
    }

    /// Puts `id` back into the rotation at `now` (slow start counts from then); whether it
    /// was out.
    pub fn mark_up(&mut self, id: TargetId, now: u64) -> bool {
        match self.slot_mut(id).filter(|t| !t.live) {
            Some(t) => {
                t.live = true;
                t.up_since = Some(now);
                true
            }
            None => false,
        }
    }

    /// An attempt on `id` began: it counts for `least_conn` and `p2c` until `attempt_ended`.
    pub fn attempt_started(&mut self, id: TargetId) {
        if let Some(t) = self.slot_mut(id) {
            t.in_flight += 1;
        }
    }

    pub fn attempt_ended(&mut self, id: TargetId) {
        if let Some(t) = self.slot_mut(id) {
            t.in_flight = t.in_flight.saturating_sub(1);
        }
    }

    /// Attempts on `id` in flight now.
    pub fn in_flight(&self, id: TargetId) -> u32 {
        self.get(id).map_or(0, |t| t.in_flight)
    }

    pub fn live_count(&self) -> usize {
        self.iter().filter(|t| t.live).count()
    }

    /// Targets in the table.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// The target one address of a discovered name stands for: the entry's URL with the address as
/// its host, and the entry's weight and path.
fn member_spec(entry: &TargetSpec, addr: SocketAddr) -> TargetSpec {
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    TargetSpec {
        url: format!("http://{host}:{}{}/", addr.port(), entry.path_prefix),
        host,
        port: addr.port(),
        path_prefix: entry.path_prefix.clone(),
        weight: entry.weight,
        discover: false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The table of `n` targets on 127.0.0.1 ports 1..=n.
    pub(crate) fn table(n: usize) -> Targets {
        let ports: Vec<String> = (1..=n).map(|i| format!("\"http://127.0.0.1:{i}/\"")).collect();
        let config = Config::parse(&format!("{{\"ports\": [{}]}}", ports.join(", "))).expect("config");
        let addrs = config.targets.iter().map(|t| t.literal_addr().into_iter().collect()).collect();
        Targets::new(&config, addrs)
    }

    #[test]
    fn an_id_of_another_generation_finds_nothing() {
        let t = table(1);
        let stale = TargetId::new(0, 1);
        assert!(t.get(stale).is_none() && !t.is_live(stale) && t.addr(stale).is_none());
        assert_eq!(t.url(stale), "-");
    }

    #[test]
    fn a_reload_keeps_named_targets_drops_the_rest_and_reuses_slots_under_new_ids() {
        let mut t = table(3);
        let before: Vec<TargetId> = t.ids().collect();
        t.mark_down(before[1]);
        let specs: Vec<TargetSpec> = ["http://127.0.0.1:3/", "http://127.0.0.1:9/", "http://127.0.0.1:1/"]
            .iter()
            .map(|u| crate::config::parse_target_url(u).expect("url"))
            .collect();
        let changes = t.reconcile(&specs, 0);
        assert_eq!(changes.removed, vec![before[1]]);
        assert_eq!(changes.added.len(), 1);
        let added = changes.added[0];
        assert_eq!(added.slot(), 1, "the free slot is reused");
        assert_ne!(added, before[1], "under a new generation");
        assert!(t.get(before[1]).is_none() && t.is_live(added));
        let ranks: Vec<Rank> =
            [before[2], added, before[0]].iter().map(|&id| t.get(id).expect("target").rank).collect();
        assert_eq!(ranks, vec![(0, None), (1, None), (2, None)], "the order of the new `ports`");
    }

    #[test]
    fn a_discovered_name_adds_and_removes_its_addresses_and_new_ones_wait_for_a_probe() {
        let config =
            Config::parse(r#"{"ports": ["http://127.0.0.1:1/", {"url": "http://app:80/", "discover": true}]}"#)
                .expect("config");
        let a: Vec<SocketAddr> = ["127.0.0.5:80", "127.0.0.6:80"].iter().map(|a| a.parse().expect("addr")).collect();
        let mut t = Targets::new(&config, vec![vec!["127.0.0.1:1".parse().expect("addr")], a.clone()]);
        assert_eq!((t.len(), t.live_count()), (3, 3));
        assert!(t.ids().any(|id| t.url(id) == "http://127.0.0.5:80/"));
        let later: Vec<SocketAddr> =
            ["127.0.0.6:80", "127.0.0.7:80"].iter().map(|a| a.parse().expect("addr")).collect();
        let changes = t.discovered(1, &config.targets[1], &later);
        assert_eq!((changes.added.len(), changes.removed.len()), (1, 1));
        assert!(!t.is_live(changes.added[0]), "a new address waits for its probe");
        assert_eq!(t.live_count(), 2);
        assert!(t.mark_up(changes.added[0], 5));
        // A reload that drops the name drops its addresses.
        let changes = t.reconcile(&config.targets[..1], 10);
        assert_eq!((changes.removed.len(), t.len()), (2, 1));
    }
}
