//! Which targets are in the rotation, and how they get back in.
//!
//! Passive: a failed connect, reset or early EOF counts against a target (`failed`); `fall` in
//! a row take it out of the ring. A response timeout only makes it a suspect (`suspect`): one
//! slow URL says nothing about the others, so the target is probed at once and only a failed
//! probe counts against it. Active: every `sleeping` seconds ±10 %
//! (so targets never probe in one burst) each dropped target, and with `check_live` every
//! target, gets a `GET <probe_path>` in this same reactor, after a fresh lookup of its name on
//! the resolver thread (`Prober`). `rise` answers of 200 in a row bring a dropped target back.
//! Every state change is one log line.

use crate::config::Config;
use crate::reactor::{Shared, Timer};
use crate::ready::{Io, Ready};
use crate::resolve::Resolver;
use crate::ring::HashRing;
use crate::token::{token, Kind};
use crate::wheel::TimerId;
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::Interest;
use slab::Slab;
use std::fmt;
use std::io;
use std::net::SocketAddr;

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

/// Spreads probe times over ±10 % of the period (xorshift64*: no crate, no syscall).
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A delay within [0.9, 1.1] × `period`.
    pub fn spread(&mut self, period: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let random = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let width = period / 5;
        period - period / 10 + random % (width + 1)
    }
}

pub struct Target {
    pub url: String,
    host: String,
    port: u16,
    literal: Option<SocketAddr>,
    pub addr: Option<SocketAddr>,
    /// The probe request, built once.
    probe_request: Vec<u8>,
    streak: Streak,
    probing: bool,
    /// The next probe's timer, when one is armed.
    probe_timer: Option<TimerId>,
    /// Counts armed probe timers; a `ProbeDue` of an older round is stale and ignored.
    probe_round: u32,
    /// A request to it timed out: probe it even while live.
    suspect: bool,
}

/// The targets, the ring over the live ones, and the rules that move them between the two.
pub struct Targets {
    pub list: Vec<Target>,
    pub ring: HashRing,
    fall: u32,
    rise: u32,
    check_live: bool,
    period: u64,
    jitter: Jitter,
}

impl Targets {
    /// `addrs[i]` is target i's address if known at start; unknown ones start out of the ring.
    pub fn new(config: &Config, addrs: Vec<Option<SocketAddr>>, seed: u64) -> Targets {
        let mut ring = HashRing::new(config.targets.len());
        let list = config
            .targets
            .iter()
            .zip(addrs)
            .enumerate()
            .map(|(i, (spec, addr))| {
                if addr.is_none() {
                    ring.mark_down(i);
                }
                let probe_request = format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringproxy-probe\r\nConnection: close\r\n\r\n",
                    config.probe_path, spec.host
                );
                Target {
                    url: spec.url.clone(),
                    host: spec.host.clone(),
                    port: spec.port,
                    literal: spec.literal_addr(),
                    addr,
                    probe_request: probe_request.into_bytes(),
                    streak: Streak::default(),
                    probing: false,
                    probe_timer: None,
                    probe_round: 0,
                    suspect: false,
                }
            })
            .collect();
        Targets {
            list,
            ring,
            fall: config.fall,
            rise: config.rise,
            check_live: config.check_live,
            period: config.sleeping.as_millis().min(u128::from(u64::MAX)) as u64,
            jitter: Jitter::new(seed),
        }
    }

    pub fn addr(&self, target: usize) -> Option<SocketAddr> {
        self.list[target].addr
    }

    pub fn url(&self, target: usize) -> &str {
        &self.list[target].url
    }

    /// Whether the prober should keep an eye on `target`.
    fn wants_probe(&self, target: usize) -> bool {
        self.check_live || !self.ring.is_live(target) || self.list[target].suspect
    }
}

/// Counts a failure against a target; `fall` in a row take it out of the rotation.
pub fn failed(sh: &mut Shared, target: usize, why: Failure) {
    let live = sh.targets.ring.is_live(target);
    let fall = sh.targets.fall;
    let t = &mut sh.targets.list[target];
    if t.streak.failure(live, fall) != Change::Down {
        return;
    }
    let fails = t.streak.fails();
    sh.targets.ring.mark_down(target);
    let ring = &sh.targets.ring;
    warn!(
        "target {} down: {why} ({fails} in a row; {} of {} live)",
        sh.targets.url(target),
        ring.live_count(),
        ring.len()
    );
    sh.upstreams.drop_idle(target);
    schedule_probe(sh, target);
}

/// A target answered (a response head, or a probe's 200).
pub fn succeeded(sh: &mut Shared, target: usize) {
    let live = sh.targets.ring.is_live(target);
    let rise = sh.targets.rise;
    if sh.targets.list[target].streak.success(live, rise) == Change::Up {
        sh.targets.ring.mark_up(target);
        let ring = &sh.targets.ring;
        info!("target {} up ({} of {} live)", sh.targets.url(target), ring.live_count(), ring.len());
    }
}

/// A request to `target` got no response in time. That is evidence about the request (a slow
/// URL), not proof that the target is dead: probe it now, instead of at its next turn.
pub fn suspect(sh: &mut Shared, target: usize) {
    if !sh.targets.ring.is_live(target) {
        return;
    }
    let t = &mut sh.targets.list[target];
    t.suspect = true;
    if t.probing {
        return;
    }
    if let Some(id) = t.probe_timer.take() {
        sh.wheel.cancel(id);
    }
    arm_probe(sh, target, 0);
}

/// Arms `target`'s next probe, one jittered period from now, unless one is armed or running.
pub fn schedule_probe(sh: &mut Shared, target: usize) {
    let t = &sh.targets.list[target];
    if t.probe_timer.is_some() || t.probing || !sh.targets.wants_probe(target) {
        return;
    }
    let delay = sh.targets.jitter.spread(sh.targets.period);
    arm_probe(sh, target, delay);
}

fn arm_probe(sh: &mut Shared, target: usize, delay: u64) {
    let t = &mut sh.targets.list[target];
    t.probe_round = t.probe_round.wrapping_add(1);
    t.probe_timer = Some(sh.wheel.insert(sh.now + delay, Timer::ProbeDue(target, t.probe_round)));
}

struct Probe {
    stream: TcpStream,
    target: usize,
    ready: Ready,
    connected: bool,
    sent: usize,
    got: [u8; 16],
    got_len: usize,
    timer: TimerId,
}

enum Outcome {
    Pending,
    Up,
    Down(&'static str),
}

/// Revival probes: one in flight at most per dropped target.
pub struct Prober {
    probes: Slab<Probe>,
    resolver: Resolver,
}

impl Prober {
    pub fn new(resolver: Resolver) -> Prober {
        Prober { probes: Slab::new(), resolver }
    }

    /// Arms the first probe of every target that needs one.
    pub fn start_all(&mut self, sh: &mut Shared) {
        for target in 0..sh.targets.list.len() {
            schedule_probe(sh, target);
        }
    }

    /// `target`'s probe time came: look its name up again, or probe its address.
    pub fn due(&mut self, sh: &mut Shared, target: usize, round: u32) {
        let wanted = sh.targets.wants_probe(target);
        let t = &mut sh.targets.list[target];
        if round != t.probe_round || t.probe_timer.is_none() {
            // Replaced by a sooner probe after this one had already come due.
            return;
        }
        t.probe_timer = None;
        if t.probing || !wanted {
            return;
        }
        t.probing = true;
        match t.literal {
            Some(addr) => self.start(sh, target, addr),
            None => self.resolver.lookup(target, &t.host, t.port),
        }
    }

    /// Takes the resolver's answers and probes the targets they are for.
    pub fn resolved(&mut self, sh: &mut Shared) {
        while let Some((target, result)) = self.resolver.answer() {
            match result {
                Ok(addr) => {
                    sh.targets.list[target].addr = Some(addr);
                    self.start(sh, target, addr);
                }
                Err(e) => {
                    debug!("probe {}: lookup failed: {e}", sh.targets.url(target));
                    self.finished(sh, target, Err("lookup failed"));
                }
            }
        }
    }

    fn start(&mut self, sh: &mut Shared, target: usize, addr: SocketAddr) {
        let entry = self.probes.vacant_entry();
        let key = entry.key();
        let connected = TcpStream::connect(addr).and_then(|mut stream| {
            sh.registry.register(&mut stream, token(Kind::Probe(key)), Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => {
                let timer = sh.wheel.insert(sh.now + sh.timeouts.probe, Timer::Probe(key));
                entry.insert(Probe {
                    stream,
                    target,
                    ready: Ready::default(),
                    connected: false,
                    sent: 0,
                    got: [0; 16],
                    got_len: 0,
                    timer,
                });
            }
            Err(e) => {
                debug!("probe {}: {e}", sh.targets.url(target));
                self.finished(sh, target, Err("connect failed"));
            }
        }
    }

    pub fn on_event(&mut self, sh: &mut Shared, key: usize, event: &mio::event::Event) {
        let Some(probe) = self.probes.get_mut(key) else {
            return;
        };
        probe.ready.update(event);
        let outcome = drive(probe, &sh.targets.list[probe.target].probe_request);
        self.conclude(sh, key, outcome);
    }

    pub fn on_timer(&mut self, sh: &mut Shared, key: usize) {
        if self.probes.contains(key) {
            self.conclude(sh, key, Outcome::Down("timed out"));
        }
    }

    fn conclude(&mut self, sh: &mut Shared, key: usize, outcome: Outcome) {
        let result = match outcome {
            Outcome::Pending => return,
            Outcome::Up => Ok(()),
            Outcome::Down(why) => Err(why),
        };
        let probe = self.probes.remove(key);
        sh.wheel.cancel(probe.timer);
        self.finished(sh, probe.target, result);
    }

    /// A probe of `target` ended: count it, and arm the next one if still wanted.
    fn finished(&mut self, sh: &mut Shared, target: usize, result: Result<(), &'static str>) {
        sh.targets.list[target].probing = false;
        match result {
            Ok(()) => {
                sh.targets.list[target].suspect = false;
                succeeded(sh, target);
            }
            Err(why) => {
                debug!("probe {}: {why}", sh.targets.url(target));
                failed(sh, target, Failure::Probe(why));
                // A suspect stays one, probed every period, until a probe clears it or it
                // is down (and probed as a dropped target).
                if !sh.targets.ring.is_live(target) {
                    sh.targets.list[target].suspect = false;
                }
            }
        }
        schedule_probe(sh, target);
    }
}

/// Moves a probe as far as readiness allows: connect, send the request, read the status line.
fn drive(probe: &mut Probe, request: &[u8]) -> Outcome {
    if !probe.connected {
        if !(probe.ready.write || probe.ready.read) {
            return Outcome::Pending;
        }
        match probe.stream.take_error() {
            Ok(None) if probe.stream.peer_addr().is_ok() => probe.connected = true,
            Ok(None) => return Outcome::Pending,
            Ok(Some(_)) | Err(_) => return Outcome::Down("connect failed"),
        }
    }
    while probe.sent < request.len() {
        match probe.ready.write(&mut probe.stream, &request[probe.sent..], &[]) {
            Io::Bytes(n) => probe.sent += n,
            Io::Retry => {}
            Io::Blocked | Io::Eof => break,
            Io::Failed(_) => return Outcome::Down("send failed"),
        }
    }
    let mut closed = false;
    while probe.got_len < probe.got.len() && !closed {
        match probe.ready.read(&mut probe.stream, &mut probe.got[probe.got_len..]) {
            Io::Bytes(n) => probe.got_len += n,
            Io::Retry => {}
            Io::Eof => closed = true,
            Io::Blocked => break,
            Io::Failed(_) => return Outcome::Down("reset"),
        }
    }
    // "HTTP/1.1 200 " is all a probe needs to see.
    let got = &probe.got[..probe.got_len];
    if got.len() >= 13 {
        return if got.starts_with(b"HTTP/1.") && &got[8..12] == b" 200" && matches!(got[12], b' ' | b'\r') {
            Outcome::Up
        } else {
            Outcome::Down("answered other than 200")
        };
    }
    if closed {
        return Outcome::Down("closed before answering");
    }
    Outcome::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wheel::Wheel;

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
}
