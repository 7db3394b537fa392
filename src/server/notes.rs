//! What the workers tell each other (`workers::Note`), applied to this worker's loop, and a
//! follower's counters copied for the leader's admin endpoints.

use super::{Flow, Server};
use crate::proxy::lifecycle::Origin;
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
                Note::Down(id, why) => self.proxy.lifecycle(&mut self.env).take_out(id, why, Origin::Peer),
                Note::Up(id) => self.proxy.lifecycle(&mut self.env).bring_back(id, Origin::Peer),
                Note::Addr(id, addr) => {
                    self.env.targets.set_addr(id, addr);
                }
                Note::Suspect(id) => self.proxy.lifecycle(&mut self.env).suspect(id),
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
