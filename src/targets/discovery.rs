//! Names that stand for every address they resolve to (`{"url": ..., "discover": true}` in
//! `ports`): `docker compose up --scale`, or Swarm's `tasks.NAME`. Every `resolve_interval`
//! each such name is looked up again on a helper thread, never on the loop; its answer comes
//! back through the waker, and the loop reconciles the name's addresses in the target table
//! (`Targets::discovered`). A lookup that fails for a transient reason (no answer from the
//! DNS server) changes nothing: dead addresses leave through health checks. A name that does
//! not exist any more (`tasks.app` once the service is scaled to zero) empties its addresses,
//! but only after `NX_HOLD` answers in a row say so, as HAProxy's `hold nx` waits before
//! trusting an NXDOMAIN.

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

/// Answers in a row saying a name does not exist before its addresses leave.
const NX_HOLD: u32 = 3;

pub struct Discovery {
    resolver: Resolver<Name>,
    /// Names with a lookup out: one at a time per name.
    pending: Vec<Name>,
    timer: Option<TimerId>,
    /// Names whose last lookup failed, with how many answers in a row said the name does not
    /// exist; a failure is logged once, not every round.
    failing: Vec<(Name, u32)>,
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
            let next = now + crate::runtime::clock::millis(config.health.resolve_interval);
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
            let url = &config.targets[index].url;
            let e = match answer {
                Ok(addrs) => {
                    self.failing.retain(|(n, _)| *n != name);
                    found.push((index, addrs));
                    continue;
                }
                Err(e) => e,
            };
            if !self.failing.iter().any(|(n, _)| *n == name) {
                warn!(
                    "{url}: lookup failed: {e}; keeping its addresses, trying again every {:?}",
                    config.health.resolve_interval
                );
                self.failing.push((name.clone(), 0));
            }
            let Some((_, nx)) = self.failing.iter_mut().find(|(n, _)| *n == name) else {
                continue;
            };
            *nx = if no_such_name(&e) { *nx + 1 } else { 0 };
            if *nx == NX_HOLD {
                warn!("{url}: the name does not exist ({NX_HOLD} answers in a row); its addresses leave");
                found.push((index, Vec::new()));
            }
        }
        found
    }
}

/// The resolver said the name does not exist or has no address (`EAI_NONAME`, `EAI_NODATA`),
/// rather than that it could not get an answer (`EAI_AGAIN`, a network error). The standard
/// library keeps only `gai_strerror`'s text, which glibc has spelled this way for decades.
fn no_such_name(e: &io::Error) -> bool {
    let text = e.to_string();
    e.kind() == io::ErrorKind::NotFound
        || text.contains("Name or service not known")
        || text.contains("No address associated with hostname")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_does_not_exist_is_told_from_a_resolver_that_did_not_answer() {
        let gai = |text: &str| io::Error::other(format!("failed to lookup address information: {text}"));
        assert!(no_such_name(&gai("Name or service not known")));
        assert!(no_such_name(&gai("No address associated with hostname")));
        assert!(no_such_name(&io::Error::new(io::ErrorKind::NotFound, "app has no address")));
        assert!(!no_such_name(&gai("Temporary failure in name resolution")));
        assert!(!no_such_name(&io::Error::from(io::ErrorKind::TimedOut)));
    }
}
