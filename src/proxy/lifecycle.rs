//! The one owner of a target's lifecycle: every change of a target's state (out of the
//! rotation, back in, suspect, added to the table, removed from it) goes through here, which
//! tells the table, the policy, the health checks and probes, the counters, the pools and the
//! other workers, in one order, wherever the change came from (a request here, a probe, a note
//! from another worker, a reload, a lookup). pingora's `Backends` and sozu's `BackendMap` are
//! the models: one thing that discovery and health update, and everything else reads.
//!
//! The leader is the workers' single voice: a follower that sees a target fail takes it out
//! here and tells the leader, which tells every follower; only the leader's probes bring a
//! target back, for every worker at once.

use super::upstream::Upstreams;
use crate::balance::Balancer;
use crate::config::Config;
use crate::health::{Failure, Health};
use crate::ids::TargetId;
use crate::observe::metrics::Metrics;
use crate::runtime::timer::Timer;
use crate::runtime::wheel::Wheel;
use crate::targets::{Reconciled, Targets};
use crate::workers::{Link, Note};
use log::{info, warn};

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This worker saw it (a request, a probe): it logs the change and tells the others.
    Here,
    /// Another worker's note: it was logged there.
    Peer,
}

/// Every store of per-target state, borrowed for one change.
pub struct Lifecycle<'a> {
    pub config: &'a Config,
    pub now: u64,
    pub targets: &'a mut Targets,
    pub balancer: &'a mut Balancer,
    pub health: &'a mut Health,
    pub metrics: &'a mut Metrics,
    pub upstreams: &'a mut Upstreams,
    pub wheel: &'a mut Wheel<Timer>,
    pub link: &'a Link,
}

impl Lifecycle<'_> {
    /// Takes `id` out of the rotation: its idle connections go, its probes start. From here, one
    /// line and the other workers hear of it; from a peer, answers seen here no longer count
    /// toward `rise`.
    pub fn take_out(&mut self, id: TargetId, why: Failure, origin: Origin) {
        if origin == Origin::Peer {
            self.health.failed(id, false, self.config);
        }
        if !self.targets.mark_down(id) {
            return;
        }
        self.balancer.target_down(id);
        self.metrics.state_changed(id);
        self.upstreams.drop_idle(id);
        if origin == Origin::Here {
            let fails = self.health.fails(id);
            let (live, all) = (self.targets.live_count(), self.targets.len());
            warn!("target {} down: {why} ({fails} in a row; {live} of {all} live)", self.targets.url(id));
        }
        // The leader tells the followers, so every change of a target's state reaches each
        // follower in the order the leader made it; a follower tells the leader.
        match (self.link.is_leader(), origin) {
            (true, _) => {
                self.link.tell_others(|| Note::Down(id, why));
                self.health.schedule_probe(id, false, self.config, self.wheel, self.now);
            }
            (false, Origin::Here) => self.link.send(0, Note::Down(id, why)),
            (false, Origin::Peer) => {}
        }
    }

    /// Puts `id` back into the rotation. From here (the leader's probes), one line and every
    /// follower hears of it; from the leader's note, failures seen here before no longer count
    /// toward `fall`.
    pub fn bring_back(&mut self, id: TargetId, origin: Origin) {
        if !self.targets.mark_up(id, self.now) {
            return;
        }
        self.balancer.target_up(id, self.targets);
        self.metrics.state_changed(id);
        match origin {
            Origin::Here => {
                self.link.tell_others(|| Note::Up(id));
                let (live, all) = (self.targets.live_count(), self.targets.len());
                info!("target {} up ({live} of {all} live)", self.targets.url(id));
            }
            Origin::Peer => {
                self.health.succeeded(id, true, self.config);
            }
        }
    }

    /// A request to `id` timed out: the leader probes it now, rather than count it.
    pub fn suspect(&mut self, id: TargetId) {
        if !self.link.is_leader() {
            self.link.send(0, Note::Suspect(id));
        } else if self.targets.is_live(id) {
            self.health.suspect(id, self.wheel, self.now);
        }
    }

    /// The table changed (a reload, a lookup): the policy, the health checks, the counters
    /// and the pools follow it, and a new target out of the rotation is probed at once.
    pub fn table_changed(&mut self, changes: &Reconciled) {
        self.balancer.rebuild(self.targets);
        for &id in &changes.removed {
            self.health.target_removed(id, self.wheel);
            self.metrics.target_removed(id);
            self.upstreams.target_removed(id);
        }
        for &id in &changes.added {
            self.health.target_added(id);
            self.metrics.target_added(id);
            self.upstreams.target_added(id);
            if !self.targets.is_live(id) {
                self.health.probe_now(id, self.wheel, self.now);
            }
        }
    }

    /// Arms every target's next probe as the config says (at start, after a reload).
    pub fn schedule_probes(&mut self) {
        for t in self.targets.iter() {
            self.health.schedule_probe(t.id, t.live, self.config, self.wheel, self.now);
        }
    }
}
