//! Which target serves a request: the policy that picks among a table's live targets, one file
//! per policy behind one call (`Balancer::pick`), and the state the policies keep (the ring,
//! the running weights, the random draws, slow start). The table itself, and whether a target
//! is live, are `targets/`'s. The retry and failover rules are the session's and the same for
//! every policy: a policy only ever sees live targets the request has not tried yet.

pub mod hash;
pub mod hashring;
pub mod least_conn;
pub mod p2c;
pub mod round_robin;

use crate::config::{Config, Policy};
pub use crate::ids::{TargetId, TargetSet, MAX_TARGETS};
use crate::random::Rng;
use crate::targets::{fnv1a, Target, Targets};
use hashring::HashRing;

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

/// What the policies keep between picks, for one table.
pub struct Balancer {
    ring: HashRing,
    policy: Policy,
    slow_start_ms: u64,
    /// For `p2c`'s random choices.
    rng: Rng,
    /// Smooth weighted round robin's running weight of each target, by slot (`round_robin`,
    /// and `least_conn`'s ties).
    current: Vec<i64>,
}

impl Balancer {
    /// The policy of `config`, over `targets`' live targets.
    pub fn new(config: &Config, targets: &Targets) -> Balancer {
        let mut balancer = Balancer {
            ring: HashRing::new([]),
            policy: config.balancing.policy,
            slow_start_ms: 0,
            rng: Rng::new(fnv1a(&std::process::id().to_le_bytes())),
            current: vec![0; MAX_TARGETS],
        };
        balancer.configure(config);
        balancer.rebuild(targets);
        balancer
    }

    /// Gives this copy random draws of its own (each worker has one), so that `p2c` does not
    /// draw the same targets in every worker at once.
    pub fn reseed(&mut self, salt: u64) {
        self.rng.reseed(salt);
    }

    /// Takes the policy and slow start of a (re)loaded config.
    pub fn configure(&mut self, config: &Config) {
        self.policy = config.balancing.policy;
        self.slow_start_ms = u64::try_from(config.balancing.slow_start.as_millis()).unwrap_or(u64::MAX);
    }

    /// The table changed (a reload, a lookup): the ring is made again from its live targets,
    /// and a slot given to another target starts with no running weight.
    pub fn rebuild(&mut self, targets: &Targets) {
        self.ring = HashRing::new(targets.iter().filter(|t| t.live).map(|t| (t.rank, t.id)));
        let mut held = TargetSet::default();
        targets.ids().for_each(|id| held.insert(id));
        for (slot, current) in self.current.iter_mut().enumerate() {
            if !held.contains(TargetId::first(slot)) {
                *current = 0;
            }
        }
    }

    /// `id` left the rotation.
    pub fn target_down(&mut self, id: TargetId) {
        self.ring.remove(id);
    }

    /// `id`, `rank`th in the config, came back: it starts with no running weight.
    pub fn target_up(&mut self, id: TargetId, targets: &Targets) {
        if let Some(t) = targets.get(id) {
            self.ring.insert(id, t.rank);
            self.current[id.slot()] = 0;
        }
    }

    /// The target for a request among `targets`' live ones it has not tried, by the configured
    /// policy; with `fail_open`, when none is live, among all targets not tried yet.
    pub fn pick(&mut self, targets: &Targets, req: &Request<'_>, fail_open: bool) -> Option<TargetId> {
        let candidates = Candidates {
            targets,
            current: &mut self.current,
            tried: req.tried,
            now: req.now,
            slow_start_ms: self.slow_start_ms,
        };
        let picked = match self.policy {
            Policy::HashRing => self.ring.pick(req.seq, req.tried),
            Policy::RoundRobin => round_robin::pick(candidates),
            Policy::LeastConn => least_conn::pick(candidates),
            Policy::P2c => p2c::pick(candidates, &mut self.rng),
            Policy::Hash => hash::pick(candidates, req.key),
        };
        picked.or_else(|| if fail_open { pick_any(targets, req.seq, req.tried) } else { None })
    }
}

/// Like the ring's pick over every target, live or not, in the rotation's order: the fail-open
/// choice.
fn pick_any(targets: &Targets, seq: u64, tried: &TargetSet) -> Option<TargetId> {
    let mut order = [(usize::MAX, None, TargetId::first(0)); MAX_TARGETS];
    let mut n = 0;
    for t in targets.iter() {
        order[n] = (t.rank.0, t.rank.1, t.id);
        n += 1;
    }
    let order = &mut order[..n];
    order.sort_unstable_by_key(|&(i, addr, _)| (i, addr));
    let first = (seq % n.max(1) as u64) as usize;
    (0..n).map(|k| order[(first + k) % n].2).find(|&t| !tried.contains(t))
}

/// The targets a policy may pick for one request: live, and not tried by it yet. A policy may
/// walk them more than once; nothing is collected.
pub struct Candidates<'a> {
    targets: &'a Targets,
    current: &'a mut [i64],
    tried: &'a TargetSet,
    now: u64,
    slow_start_ms: u64,
}

impl Candidates<'_> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Target> {
        let tried = self.tried;
        self.targets.iter().filter(move |t| t.live && !tried.contains(t.id))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table and its policy, as a worker holds them.
    pub(crate) struct Pool {
        pub targets: Targets,
        pub balancer: Balancer,
    }

    impl Pool {
        pub(crate) fn pick(&mut self, req: &Request<'_>, fail_open: bool) -> Option<TargetId> {
            self.balancer.pick(&self.targets, req, fail_open)
        }

        pub(crate) fn ids(&self) -> Vec<TargetId> {
            self.targets.ids().collect()
        }

        pub(crate) fn attempt_started(&mut self, id: TargetId) {
            self.targets.attempt_started(id);
        }

        pub(crate) fn attempt_ended(&mut self, id: TargetId) {
            self.targets.attempt_ended(id);
        }

        pub(crate) fn mark_down(&mut self, id: TargetId) -> bool {
            self.balancer.target_down(id);
            self.targets.mark_down(id)
        }

        pub(crate) fn mark_up(&mut self, id: TargetId, now: u64) -> bool {
            let up = self.targets.mark_up(id, now);
            self.balancer.target_up(id, &self.targets);
            up
        }
    }

    /// A table of `n` targets on 127.0.0.1 ports 1..=n, by the prototype's rule.
    pub(crate) fn table(n: usize) -> Pool {
        weighted(&vec![1; n], "hashring")
    }

    /// A table of targets with these weights, under `policy`.
    pub(crate) fn weighted(weights: &[u32], policy: &str) -> Pool {
        let ports: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{\"url\": \"http://127.0.0.1:{}/\", \"weight\": {w}}}", i + 1))
            .collect();
        let json = format!("{{\"ports\": [{}], \"policy\": \"{policy}\"}}", ports.join(", "));
        let config = Config::parse(&json).expect("config");
        let addrs = config.targets.iter().map(|t| t.literal_addr().into_iter().collect()).collect();
        let targets = Targets::new(&config, addrs);
        let balancer = Balancer::new(&config, &targets);
        Pool { targets, balancer }
    }

    fn pick(p: &mut Pool, seq: u64, tried: &TargetSet, fail_open: bool) -> Option<TargetId> {
        p.pick(&Request { seq, key: 0, tried, now: 0 }, fail_open)
    }

    #[test]
    fn no_live_target_means_none_but_fail_open_still_tries_each_once() {
        let mut t = table(2);
        let ids: Vec<TargetId> = t.ids();
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
    fn after_a_reload_the_ring_follows_the_new_order() {
        let mut p = table(3);
        let before: Vec<TargetId> = p.ids();
        let specs: Vec<crate::config::TargetSpec> =
            ["http://127.0.0.1:3/", "http://127.0.0.1:9/", "http://127.0.0.1:1/"]
                .iter()
                .map(|u| crate::config::parse_target_url(u).expect("url"))
                .collect();
        let changes = p.targets.reconcile(&specs, 0);
        p.balancer.rebuild(&p.targets);
        let added = changes.added[0];
        // The ring follows the new order of `ports`: :3, :9, :1.
        let picks: Vec<TargetId> = (0..3).filter_map(|seq| pick(&mut p, seq, &TargetSet::default(), false)).collect();
        assert_eq!(picks, vec![before[2], added, before[0]]);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_the_full_weight() {
        let mut t = weighted(&[2], "round_robin");
        let id = t.ids()[0];
        let target = t.targets.get(id).expect("target");
        assert_eq!(weight(target, 0, 10_000), 2000, "live from the start: full weight");
        t.mark_down(id);
        t.mark_up(id, 1_000);
        let target = t.targets.get(id).expect("target");
        assert_eq!(weight(target, 1_000, 10_000), 200);
        assert_eq!(weight(target, 6_000, 10_000), 1000);
        assert_eq!(weight(target, 11_000, 10_000), 2000);
    }
}
