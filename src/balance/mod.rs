//! Which target serves a request: the target table, and the policy that picks among its live
//! targets, one file per policy behind one call (`Targets::pick`). The retry and failover rules
//! are the session's and the same for every policy: a policy only ever sees live targets the
//! request has not tried yet.
//!
//! A target is known by a `TargetId`, its slot in the table and the slot's generation, for as
//! long as it exists. Pools, traces, tried-sets and probes keep ids, never positions, so a target
//! added or removed at run time (a reload, a discovered address) can never make one of them
//! point at another target.

pub mod hash;
pub mod hashring;
pub mod least_conn;
pub mod p2c;
pub mod round_robin;

use crate::config::{Config, Policy, TargetSpec, MAX_TARGETS};
use crate::random::Rng;
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

/// Where a target sits in the rotation's order: its entry in `ports`, then, for one of the
/// addresses a discovered name stands for, the address.
pub(crate) type Rank = (usize, Option<SocketAddr>);

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
    rank: Rank,
    live: bool,
    /// Attempts on it in flight: connecting, sending, or waiting for or relaying its answer.
    in_flight: u32,
    /// Smooth weighted round robin's running weight (`round_robin`, and `least_conn`'s ties).
    current: i64,
    /// When it joined the rotation at run time (revived, added), for slow start; `None` for
    /// a target live since the start.
    up_since: Option<u64>,
    /// A hash of its URL, for consistent hashing: the same target keeps its keys whatever
    /// slot it is in.
    key: u64,
}

impl Target {
    fn new(id: TargetId, spec: TargetSpec, addr: Option<SocketAddr>, group: Option<Group>, rank: Rank) -> Target {
        let key = hash::fnv1a(spec.url.as_bytes());
        let live = addr.is_some() && group.is_none();
        Target { id, spec, addr, group, rank, live, in_flight: 0, current: 0, up_since: None, key }
    }
}

/// What a policy may know of a request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub seq: u64,
    /// The `hash_key`'s hash, for the `hash` policy.
    pub key: u64,
    pub tried: &'a TargetSet,
    /// The loop's clock, for slow start.
    pub now: u64,
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
    ring: HashRing,
    policy: Policy,
    slow_start_ms: u64,
    /// For `p2c`'s random choices.
    rng: Rng,
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
        let mut targets = Targets {
            slots: Vec::new(),
            next_generation: Vec::new(),
            ring: HashRing::new([]),
            policy: config.balancing.policy,
            slow_start_ms: 0,
            rng: Rng::new(hash::fnv1a(&std::process::id().to_le_bytes())),
            refused: 0,
        };
        targets.configure(config);
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
        targets.rebuild_ring();
        targets
    }

    /// Gives this copy of the table random draws of its own (each worker has one copy), so
    /// that `p2c` does not draw the same targets in every worker at once.
    pub fn reseed(&mut self, salt: u64) {
        self.rng.reseed(salt);
    }

    /// Addresses of discovered names left out at start: the table was full.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// Some target already has this address: another name's, or a listed one.
    fn holds(&self, addr: SocketAddr) -> bool {
        self.iter().any(|t| t.addr == Some(addr))
    }

    /// Takes the policy and slow start of a (re)loaded config.
    pub fn configure(&mut self, config: &Config) {
        self.policy = config.balancing.policy;
        self.slow_start_ms = u64::try_from(config.balancing.slow_start.as_millis()).unwrap_or(u64::MAX);
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
        let id = TargetId { slot: slot as u16, generation: self.next_generation[slot] };
        self.next_generation[slot] = self.next_generation[slot].wrapping_add(1);
        self.slots[slot] = Some(Target::new(id, spec, addr, group, rank));
        Some(id)
    }

    fn set_live(&mut self, id: TargetId, live: bool) {
        if let Some(t) = self.slot_mut(id) {
            t.live = live;
        }
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
        self.rebuild_ring();
        changes
    }

    /// A lookup of a discovered name answered `addrs`: addresses that vanished leave (their
    /// requests in flight finish), new ones join the table out of the rotation, to come in
    /// when a probe passes.
    /// `index` is the name's entry in `ports`.
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
                self.ring.remove(id);
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
                t.current = 0;
                let rank = t.rank;
                self.ring.insert(id, rank);
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
        self.ring.len()
    }

    /// Targets in the table.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The target for a request among live targets it has not tried, by the configured policy;
    /// with `fail_open`, when none is live, among all targets not tried yet.
    pub fn pick(&mut self, req: &Request<'_>, fail_open: bool) -> Option<TargetId> {
        let candidates =
            Candidates { slots: &mut self.slots, tried: req.tried, now: req.now, slow_start_ms: self.slow_start_ms };
        let picked = match self.policy {
            Policy::HashRing => self.ring.pick(req.seq, req.tried),
            Policy::RoundRobin => round_robin::pick(candidates),
            Policy::LeastConn => least_conn::pick(candidates),
            Policy::P2c => p2c::pick(candidates, &mut self.rng),
            Policy::Hash => hash::pick(candidates, req.key),
        };
        picked.or_else(|| if fail_open { self.pick_any(req.seq, req.tried) } else { None })
    }

    /// Like the ring's pick over every target, live or not, in the rotation's order: the
    /// fail-open choice.
    fn pick_any(&self, seq: u64, tried: &TargetSet) -> Option<TargetId> {
        let mut order = [(usize::MAX, None, TargetId::first(0)); MAX_TARGETS];
        let mut n = 0;
        for t in self.iter() {
            order[n] = (t.rank.0, t.rank.1, t.id);
            n += 1;
        }
        let order = &mut order[..n];
        order.sort_unstable_by_key(|&(i, addr, _)| (i, addr));
        let first = (seq % n.max(1) as u64) as usize;
        (0..n).map(|k| order[(first + k) % n].2).find(|&t| !tried.contains(t))
    }
}

/// The targets a policy may pick for one request: live, and not tried by it yet. A policy may
/// walk them more than once; nothing is collected.
pub struct Candidates<'a> {
    slots: &'a mut [Option<Target>],
    tried: &'a TargetSet,
    now: u64,
    slow_start_ms: u64,
}

impl Candidates<'_> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Target> {
        self.slots.iter().flatten().filter(|t| t.live && !self.tried.contains(t.id))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Target> {
        let tried = self.tried;
        self.slots.iter_mut().flatten().filter(move |t| t.live && !tried.contains(t.id))
    }

    /// A candidate's weight for this pick, slow start applied.
    pub(crate) fn weight(&self, t: &Target) -> u64 {
        weight(t, self.now, self.slow_start_ms)
    }
}

/// A target's weight for a pick, in thousandths: its configured weight, ramped from a tenth up
/// to the full weight over `slow_start_ms` after it joined the rotation at run time.
fn weight(t: &Target, now: u64, slow_start_ms: u64) -> u64 {
    let full = u64::from(t.spec.weight) * 1000;
    match t.up_since {
        Some(since) if slow_start_ms > 0 && now.saturating_sub(since) < slow_start_ms => {
            let elapsed = now.saturating_sub(since);
            (full * elapsed / slow_start_ms).max(full / 10).max(1)
        }
        _ => full,
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

    /// A table of `n` targets on 127.0.0.1 ports 1..=n, by the prototype's rule.
    pub(crate) fn table(n: usize) -> Targets {
        weighted(&vec![1; n], "hashring")
    }

    /// A table of targets with these weights, under `policy`.
    pub(crate) fn weighted(weights: &[u32], policy: &str) -> Targets {
        let ports: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{\"url\": \"http://127.0.0.1:{}/\", \"weight\": {w}}}", i + 1))
            .collect();
        let json = format!("{{\"ports\": [{}], \"policy\": \"{policy}\"}}", ports.join(", "));
        let config = Config::parse(&json).expect("config");
        let addrs = config.targets.iter().map(|t| t.literal_addr().into_iter().collect()).collect();
        Targets::new(&config, addrs)
    }

    fn pick(t: &mut Targets, seq: u64, tried: &TargetSet, fail_open: bool) -> Option<TargetId> {
        t.pick(&Request { seq, key: 0, tried, now: 0 }, fail_open)
    }

    #[test]
    fn no_live_target_means_none_but_fail_open_still_tries_each_once() {
        let mut t = table(2);
        let ids: Vec<TargetId> = t.ids().collect();
        assert!(t.mark_down(ids[0]) && t.mark_down(ids[1]) && !t.mark_down(ids[1]));
        assert_eq!(pick(&mut t, 7, &TargetSet::default(), false), None);
        let mut tried = TargetSet::default();
        assert_eq!(pick(&mut t, 7, &tried, true), Some(ids[1]));
        tried.insert(ids[1]);
        assert_eq!(pick(&mut t, 7, &tried, true), Some(ids[0]));
        tried.insert(ids[0]);
        assert_eq!(pick(&mut t, 7, &tried, true), None);
    }

    #[test]
    fn an_id_of_another_generation_finds_nothing() {
        let t = table(1);
        let stale = TargetId { slot: 0, generation: 1 };
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
        // The ring follows the new order of `ports`: :3, :9, :1.
        let picks: Vec<TargetId> = (0..3).filter_map(|seq| pick(&mut t, seq, &TargetSet::default(), false)).collect();
        assert_eq!(picks, vec![before[2], added, before[0]]);
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

    #[test]
    fn slow_start_ramps_from_a_tenth_to_the_full_weight() {
        let mut t = weighted(&[2], "round_robin");
        let id = t.ids().next().expect("a target");
        let target = t.get(id).expect("target");
        assert_eq!(weight(target, 0, 10_000), 2000, "live from the start: full weight");
        t.mark_down(id);
        t.mark_up(id, 1_000);
        let target = t.get(id).expect("target");
        assert_eq!(weight(target, 1_000, 10_000), 200);
        assert_eq!(weight(target, 6_000, 10_000), 1000);
        assert_eq!(weight(target, 11_000, 10_000), 2000);
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
