//! What the workers tell each other (`workers::Note`), applied to this worker's loop, and a
//! follower's counters copied for the leader's admin endpoints.

use super::{Flow, Server};
use crate::health::Failure;
use crate::ids::TargetId;
use crate::workers::{Note, Reloaded};
use std::sync::Arc;

impl Server {
    /// Applies every note in this worker's mailbox, oldest first.
    pub(super) fn take_mail(&mut self) -> Flow {
        let mut notes = std::mem::take(&mut self.notes);
        self.env.link.take_mail(&mut notes);
        let mut flow = Flow::Go;
        for note in notes.drain(..) {
            match note {
                Note::Down(id, why) => self.peer_took_out(id, why),
                Note::Up(id) => self.leader_brought_back(id),
                Note::Addr(id, addr) => {
                    self.env.targets.set_addr(id, addr);
                }
                Note::Suspect(id) => {
                    let env = &mut self.env;
                    if env.targets.is_live(id) {
                        env.health.suspect(id, &mut env.wheel, env.now);
                    }
                }
                Note::Reload(reloaded) => self.follow_reload(*reloaded),
                Note::Discovered(index, addrs) => {
                    self.apply_discovered(index, &addrs);
                }
                Note::ReopenLog => self.env.log.reopen(),
                Note::Drain(signal) => {
                    if self.drain(signal) == Flow::Stop {
                        flow = Flow::Stop;
                    }
                }
                Note::Stop => flow = Flow::Stop,
            }
        }
        self.notes = notes;
        flow
    }

    /// Another worker took `id` out (it logged why): to the leader a follower's word, which it
    /// passes on to every follower and follows with probes; to a follower the leader's.
    fn peer_took_out(&mut self, id: TargetId, why: Failure) {
        let env = &mut self.env;
        // Answers seen here before no longer count toward `rise`.
        env.health.failed(id, false, &env.config);
        if !env.targets.mark_down(id) {
            return;
        }
        env.balancer.target_down(id);
        env.metrics.state_changed(id);
        self.proxy.target_down(id);
        if env.link.is_leader() {
            env.health.schedule_probe(id, false, &env.config, &mut env.wheel, env.now);
            env.link.tell_others(|| Note::Down(id, why));
        }
    }

    /// The leader's probes brought `id` back.
    fn leader_brought_back(&mut self, id: TargetId) {
        let env = &mut self.env;
        if env.targets.mark_up(id, env.now) {
            env.balancer.target_up(id, &env.targets);
            env.metrics.state_changed(id);
            // Failures seen here before the revival no longer count toward `fall`.
            env.health.succeeded(id, true, &env.config);
        }
    }

    /// A reload the leader applied: the same settings and the same table change.
    fn follow_reload(&mut self, Reloaded { config, log, tls }: Reloaded) {
        if let Some(log) = log {
            self.env.log.replace(log);
        }
        if let (Some(running), Some(renewed)) = (self.tls.as_mut(), tls.as_ref()) {
            running.config = Arc::clone(renewed);
        }
        self.apply_table(config);
    }

    /// A follower copies its counters for the leader when they changed, at most every
    /// `PUBLISH_EVERY`, and always before it returns.
    pub(super) fn publish(&mut self, last: bool) {
        let due = self.published_at + super::PUBLISH_EVERY.as_millis() as u64;
        if !self.unpublished || (self.env.now < due && !last) {
            return;
        }
        let (env, proxy) = (&self.env, &self.proxy);
        let upstreams = env.targets.ids().map(|id| {
            let (active, idle) = proxy.upstream_counts(id);
            (id, active, idle)
        });
        if env.link.publish(&env.metrics, proxy.len(), upstreams) {
            self.unpublished = false;
            self.published_at = self.env.now;
        }
    }
}
