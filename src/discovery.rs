//! Names that stand for every address they resolve to (`{"url": ..., "discover": true}` in
//! `ports`): `docker compose up --scale`, or Swarm's `tasks.NAME`. Every `resolve_interval`
//! each such name is looked up again on a helper thread, never on the loop; its answer comes
//! back through the waker, and the loop reconciles the name's addresses in the target table
//! (`Targets::discovered`). A lookup that fails changes nothing: a name that stops resolving
//! for a moment must not empty the table, and dead addresses leave through health checks.

use crate::config::Config;
use crate::runtime::resolve::Resolver;
use crate::runtime::timer::Timer;
use crate::runtime::wheel::{TimerId, Wheel};
use log::warn;
use mio::Waker;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// A name and port, as the lookup was asked.
type Name = (String, u16);

pub struct Discovery {
    resolver: Resolver<Name>,
    /// Names with a lookup out: one at a time per name.
    pending: Vec<Name>,
    timer: Option<TimerId>,
    /// Names whose last lookup failed, so that a failure is logged once, not every round.
    failing: Vec<Name>,
}

impl Discovery {
    pub fn start(waker: Arc<Waker>) -> io::Result<Discovery> {
        Ok(Discovery { resolver: Resolver::start(waker)?, pending: Vec::new(), timer: None, failing: Vec::new() })
    }

    /// Looks every `discover` name up now, and arms the next round `resolve_interval` later.
    pub fn round(&mut self, config: &Config, wheel: &mut Wheel<Timer>, now: u64) {
        if let Some(timer) = self.timer.take() {
            wheel.cancel(timer);
        }
        let mut any = false;
        for spec in config.targets.iter().filter(|t| t.discover) {
            any = true;
            let name = (spec.bare_host().to_ascii_lowercase(), spec.port);
            if !self.pending.contains(&name) {
                self.resolver.lookup(name.clone(), &name.0, name.1);
                self.pending.push(name);
            }
        }
        if any {
            let next = now + crate::runtime::clock::millis(config.resolve_interval);
            self.timer = Some(wheel.insert(next, Timer::Discover));
        }
    }

    /// The round's timer fired (it is spent).
    pub fn due(&mut self, config: &Config, wheel: &mut Wheel<Timer>, now: u64) {
        self.timer = None;
        self.round(config, wheel, now);
    }

    /// The answers that came: for each name still in `ports`, its entry's index and its
    /// addresses. Failed lookups are logged (once until the name resolves again) and left out.
    pub fn answers(&mut self, config: &Config) -> Vec<(usize, Vec<SocketAddr>)> {
        let mut found = Vec::new();
        while let Some((name, answer)) = self.resolver.answer() {
            self.pending.retain(|n| *n != name);
            let entry = config
                .targets
                .iter()
                .position(|t| t.discover && t.port == name.1 && t.bare_host().eq_ignore_ascii_case(&name.0));
            let Some(index) = entry else {
                continue;
            };
            match answer {
                Ok(addrs) => {
                    self.failing.retain(|n| *n != name);
                    found.push((index, addrs));
                }
                Err(e) => {
                    if !self.failing.contains(&name) {
                        warn!(
                            "{}: lookup failed: {e}; keeping its addresses, trying again every {:?}",
                            config.targets[index].url, config.resolve_interval
                        );
                        self.failing.push(name);
                    }
                }
            }
        }
        found
    }
}
