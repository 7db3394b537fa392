//! What the evidence says about each target, and when to look again.
//!
//! Passive evidence: a failed connect, reset or early close counts against a target
//! (`Health::failed`); `fall` in a row take it out of the rotation. A response timeout only makes
//! it a suspect (`Health::suspect`): one slow URL says nothing about the others, so the target is
//! probed at once, and again every `sleeping` until a probe passes or `fall` have failed. Active
//! evidence: every `sleeping` seconds ±10 % (so targets never probe in one burst) each dropped
//! target, and with `check_live` every target, gets a probe (`probe.rs`). `rise` answers of 200
//! in a row bring a dropped target back.
//!
//! Nothing here touches the rotation, the pools or the log: each function returns the `Change`
//! the evidence made, and the caller applies it (`proxy::Ctx::apply`).

pub mod probe;

use crate::config::Config;
use crate::ids::TargetId;
use crate::random::Rng;
use crate::runtime::clock::millis;
use crate::runtime::timer::Timer;
use crate::runtime::wheel::{TimerId, Wheel};
use crate::targets::Targets;
use std::fmt;
use std::io;

/// Why an attempt to use a target failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Connect(io::ErrorKind),
    ConnectTimeout,
    Unresolved,
    /// Reset (or another I/O error) after connecting, before the response head.
    Reset(io::ErrorKind),
    /// The target closed before sending a response head.
    Eof,
    ResponseTimeout,
    /// An active probe failed.
    Probe(&'static str),
}

impl Failure {
    /// Nothing reached the target, so any request may be replayed elsewhere.
    pub fn before_request(self) -> bool {
        matches!(self, Failure::Connect(_) | Failure::ConnectTimeout | Failure::Unresolved)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(kind) => write!(f, "connect failed ({})", io::Error::from(*kind)),
            Failure::ConnectTimeout => f.write_str("connect timed out"),
            Failure::Unresolved => f.write_str("host name does not resolve"),
            Failure::Reset(kind) => write!(f, "connection failed ({})", io::Error::from(*kind)),
            Failure::Eof => f.write_str("closed the connection without a response"),
            Failure::ResponseTimeout => f.write_str("response timed out"),
            Failure::Probe(why) => write!(f, "health probe {why}"),
        }
    }
}

/// Failures and successes in a row: the hysteresis between live and dropped. Pure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streak {
    fails: u32,
    oks: u32,
}

/// What one piece of evidence did to a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Stay,
    Down,
    Up,
}

impl Streak {
    pub fn failure(&mut self, live: bool, fall: u32) -> Change {
        self.oks = 0;
        self.fails = self.fails.saturating_add(1);
        if live && self.fails >= fall {
            Change::Down
        } else {
            Change::Stay
        }
    }

    pub fn success(&mut self, live: bool, rise: u32) -> Change {
        self.fails = 0;
        self.oks = self.oks.saturating_add(1);
        if !live && self.oks >= rise {
            Change::Up
        } else {
            Change::Stay
        }
    }

    pub fn fails(&self) -> u32 {
        self.fails
    }
}

/// Spreads probe times over ±10 % of the period.
pub struct Jitter(Rng);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(Rng::new(seed))
    }

    /// A delay within [0.9, 1.1] × `period`.
    pub fn spread(&mut self, period: u64) -> u64 {
        period - period / 10 + self.0.below(period / 5 + 1)
    }
}

/// One target's health, kept by slot.
struct State {
    id: TargetId,
    streak: Streak,
    probing: bool,
    /// The next probe's timer, when one is armed.
    probe_timer: Option<TimerId>,
    /// Counts armed probe timers; a `ProbeDue` of an older round is stale and ignored.
    probe_round: u32,
    /// A request to it timed out: probe it even while live.
    suspect: bool,
}

pub struct Health {
    /// By target slot; `None` for a slot a reload emptied.
    states: Vec<Option<State>>,
    jitter: Jitter,
}

impl Health {
    pub fn new(targets: &Targets, seed: u64) -> Health {
        let mut health = Health { states: Vec::new(), jitter: Jitter::new(seed) };
        for id in targets.ids() {
            health.target_added(id);
        }
        health
    }

    /// A target joined the table: it starts with a clean record.
    pub fn target_added(&mut self, id: TargetId) {
        if self.states.len() <= id.slot() {
            self.states.resize_with(id.slot() + 1, || None);
        }
        self.states[id.slot()] = Some(State {
            id,
            streak: Streak::default(),
            probing: false,
            probe_timer: None,
            probe_round: 0,
            suspect: false,
        });
    }

    /// A target left the table: its next probe is called off (one in flight ends unheeded).
    pub fn target_removed(&mut self, id: TargetId, wheel: &mut Wheel<Timer>) {
        if let Some(timer) = self.state(id).and_then(|s| s.probe_timer.take()) {
            wheel.cancel(timer);
        }
        if let Some(slot) = self.states.get_mut(id.slot()).filter(|s| s.as_ref().is_some_and(|s| s.id == id)) {
            *slot = None;
        }
    }

    /// Probes `id` now rather than a period from now (a target added by a reload).
    pub fn probe_now(&mut self, id: TargetId, wheel: &mut Wheel<Timer>, now: u64) {
        if let Some(s) = self.state(id).filter(|s| !s.probing && s.probe_timer.is_none()) {
            arm(s, wheel, now);
        }
    }

    fn state(&mut self, id: TargetId) -> Option<&mut State> {
        self.states.get_mut(id.slot())?.as_mut().filter(|s| s.id == id)
    }

    fn state_ref(&self, id: TargetId) -> Option<&State> {
        self.states.get(id.slot())?.as_ref().filter(|s| s.id == id)
    }

    /// A failure that counts against `id` (live or not); the change it makes.
    pub fn failed(&mut self, id: TargetId, live: bool, config: &Config) -> Change {
        self.state(id).map_or(Change::Stay, |s| s.streak.failure(live, config.health.fall))
    }

    /// `id` answered: a response head, or a probe's 200.
    pub fn succeeded(&mut self, id: TargetId, live: bool, config: &Config) -> Change {
        self.state(id).map_or(Change::Stay, |s| s.streak.success(live, config.health.rise))
    }

    /// A probe of `id` is running, or `id` is a suspect being watched: for the status page.
    pub fn is_probing(&self, id: TargetId) -> bool {
        self.state_ref(id).is_some_and(|s| s.probing || s.suspect)
    }

    /// How many failures in a row `id` has now, for log lines.
    pub fn fails(&self, id: TargetId) -> u32 {
        self.state_ref(id).map_or(0, |s| s.streak.fails())
    }

    /// A request to live `id` got no response in time. That is evidence about the request (a
    /// slow URL), not proof that the target is dead: probe it now, not at its next turn.
    pub fn suspect(&mut self, id: TargetId, wheel: &mut Wheel<Timer>, now: u64) {
        let Some(s) = self.state(id) else {
            return;
        };
        s.suspect = true;
        if s.probing {
            return;
        }
        if let Some(timer) = s.probe_timer.take() {
            wheel.cancel(timer);
        }
        arm(s, wheel, now);
    }

    /// Arms `id`'s next probe, one jittered period from now, unless one is armed or running or
    /// the target needs none (live, not a suspect, no `check_live`).
    pub fn schedule_probe(&mut self, id: TargetId, live: bool, config: &Config, wheel: &mut Wheel<Timer>, now: u64) {
        let delay = self.jitter.spread(millis(config.health.sleeping));
        let Some(s) = self.state(id) else {
            return;
        };
        if s.probe_timer.is_some() || s.probing || !wants_probe(s, live, config) {
            return;
        }
        arm(s, wheel, now + delay);
    }

    /// `id`'s probe timer of `round` fired: whether a probe should start now.
    pub fn probe_due(&mut self, id: TargetId, round: u32, live: bool, config: &Config) -> bool {
        let Some(s) = self.state(id) else {
            return false;
        };
        if round != s.probe_round || s.probe_timer.is_none() {
            // Replaced by a sooner probe after this one had already come due.
            return false;
        }
        s.probe_timer = None;
        if s.probing || !wants_probe(s, live, config) {
            return false;
        }
        s.probing = true;
        true
    }

    /// A probe of `id` ended; its result is counted with `failed` or `succeeded`.
    pub fn probe_finished(&mut self, id: TargetId) {
        if let Some(s) = self.state(id) {
            s.probing = false;
        }
    }

    /// `id` is no suspect any more: a probe passed, or it is down and probed as a dropped
    /// target. Until then a suspect is probed every period.
    pub fn clear_suspect(&mut self, id: TargetId) {
        if let Some(s) = self.state(id) {
            s.suspect = false;
        }
    }
}

/// Whether the prober should keep an eye on a target.
fn wants_probe(s: &State, live: bool, config: &Config) -> bool {
    config.health.check_live || !live || s.suspect
}

fn arm(s: &mut State, wheel: &mut Wheel<Timer>, when: u64) {
    s.probe_round = s.probe_round.wrapping_add(1);
    s.probe_timer = Some(wheel.insert(when, Timer::ProbeDue(s.id, s.probe_round)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_in_a_row_take_a_target_down_and_a_success_resets_the_count() {
        let mut s = Streak::default();
        assert_eq!(s.failure(true, 3), Change::Stay);
        assert_eq!(s.failure(true, 3), Change::Stay);
        assert_eq!(s.success(true, 2), Change::Stay);
        assert_eq!(s.failure(true, 3), Change::Stay);
        assert_eq!(s.failure(true, 3), Change::Stay);
        assert_eq!(s.failure(true, 3), Change::Down);
    }

    #[test]
    fn rise_successes_in_a_row_bring_it_back_and_a_failure_resets_the_count() {
        let mut s = Streak::default();
        assert_eq!(s.failure(true, 1), Change::Down);
        assert_eq!(s.success(false, 2), Change::Stay);
        assert_eq!(s.failure(false, 1), Change::Stay, "a dropped target cannot go down again");
        assert_eq!(s.success(false, 2), Change::Stay);
        assert_eq!(s.success(false, 2), Change::Up);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let mut j = Jitter::new(42);
        let delays: Vec<u64> = (0..1000).map(|_| j.spread(1000)).collect();
        assert!(delays.iter().all(|&d| (900..=1100).contains(&d)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "only {} distinct delays", distinct.len());
    }

    #[test]
    fn probes_of_many_targets_never_fire_in_one_burst() {
        // Forty targets dropped at the same instant, probed every second with a test clock.
        let mut j = Jitter::new(7);
        let mut wheel = Wheel::new(0);
        for target in 0..40u32 {
            wheel.insert(j.spread(1000), target);
        }
        let mut per_ms = std::collections::BTreeMap::new();
        let mut fired = Vec::new();
        for now in 0..=3_000 {
            wheel.poll(now, &mut fired);
            for target in fired.drain(..) {
                *per_ms.entry(now).or_insert(0) += 1;
                wheel.insert(now + j.spread(1000), target);
            }
        }
        let busiest = per_ms.values().copied().max().unwrap_or(0);
        assert!(busiest <= 3, "{busiest} probes in one millisecond");
        let first_round: Vec<_> = per_ms.range(..1200).collect();
        assert!(first_round.len() >= 25, "the first round spread over only {} instants", first_round.len());
    }

    #[test]
    fn a_suspect_is_probed_at_once_and_a_replaced_timer_is_ignored() {
        let config = Config::parse(r#"{"ports": ["http://127.0.0.1:1/"], "sleeping": 10}"#).expect("config");
        let addrs = vec![config.targets[0].literal_addr().into_iter().collect()];
        let targets = Targets::new(&config, addrs);
        let id = targets.ids().next().expect("a target");
        let mut health = Health::new(&targets, 1);
        let mut wheel = Wheel::new(0);
        health.schedule_probe(id, true, &config, &mut wheel, 0);
        assert!(wheel.next_deadline().is_none(), "a live target needs no probe");
        health.suspect(id, &mut wheel, 5);
        let mut fired = Vec::new();
        wheel.poll(5, &mut fired);
        let [Timer::ProbeDue(due, round)] = fired[..] else { panic!("{fired:?}") };
        assert!(health.probe_due(due, round, true, &config));
        assert!(!health.probe_due(due, round.wrapping_sub(1), true, &config), "a stale round");
        health.probe_finished(id);
        health.schedule_probe(id, true, &config, &mut wheel, 5);
        assert!(wheel.next_deadline().is_some(), "a suspect whose probe failed is probed again");
    }
}
