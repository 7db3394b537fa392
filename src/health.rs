//! Which targets are in the rotation, and how they get back in.
//!
//! Passive: a failed connect, reset, early EOF or response timeout takes a target out of the
//! ring at once (`Targets::fail`). Active: every `sleeping` seconds each dropped target gets a
//! `GET <probe_path>` in this same reactor, after a fresh lookup of its name on the resolver
//! thread; a 200 puts it back (`Prober`). Every state change is one log line.

use crate::config::TargetSpec;
use crate::reactor::{Shared, Timer};
use crate::resolve::Resolver;
use crate::ring::HashRing;
use crate::token::{token, Kind};
use crate::upstream::{Ready, Upstreams};
use crate::wheel::TimerId;
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::Interest;
use slab::Slab;
use std::fmt;
use std::io::{self, Read, Write};
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
}

impl Failure {
    /// Nothing reached the target, so any request may be replayed elsewhere.
    pub fn before_request(self) -> bool {
        matches!(
            self,
            Failure::Connect(_) | Failure::ConnectTimeout | Failure::Unresolved
        )
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
        }
    }
}

pub struct Target {
    pub spec: TargetSpec,
    pub addr: Option<SocketAddr>,
    /// The probe request, built once.
    probe_request: Vec<u8>,
    probing: bool,
}

/// The targets and the ring over the live ones.
pub struct Targets {
    pub list: Vec<Target>,
    pub ring: HashRing,
}

impl Targets {
    /// `addrs[i]` is target i's address if known at start; unknown ones start out of the ring.
    pub fn new(specs: &[TargetSpec], addrs: Vec<Option<SocketAddr>>, probe_path: &str) -> Targets {
        let mut ring = HashRing::new(specs.len());
        let list = specs
            .iter()
            .zip(addrs)
            .enumerate()
            .map(|(i, (spec, addr))| {
                if addr.is_none() {
                    ring.mark_down(i);
                }
                let probe_request = format!(
                    "GET {probe_path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringproxy-probe\r\nConnection: close\r\n\r\n",
                    spec.host
                );
                Target { spec: spec.clone(), addr, probe_request: probe_request.into_bytes(), probing: false }
            })
            .collect();
        Targets { list, ring }
    }

    pub fn addr(&self, target: usize) -> Option<SocketAddr> {
        self.list[target].addr
    }

    pub fn url(&self, target: usize) -> &str {
        &self.list[target].spec.url
    }

    /// Takes a target out of the rotation after a failure (logged once, when it leaves).
    pub fn fail(&mut self, target: usize, why: Failure, upstreams: &mut Upstreams) {
        if self.ring.mark_down(target) {
            warn!(
                "target {} down: {why} ({} of {} live)",
                self.url(target),
                self.ring.live_count(),
                self.ring.len()
            );
            upstreams.drop_idle(target);
        }
    }

    /// A target answered a request: nothing to do until rise/fall counts exist.
    pub fn succeeded(&mut self, _target: usize) {}

    fn revive(&mut self, target: usize) {
        if self.ring.mark_up(target) {
            info!(
                "target {} up ({} of {} live)",
                self.url(target),
                self.ring.live_count(),
                self.ring.len()
            );
        }
    }
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
        Prober {
            probes: Slab::new(),
            resolver,
        }
    }

    /// Starts a probe round: each dropped target not already being probed gets a lookup (for a
    /// name) or a probe (for an address).
    pub fn round(&mut self, sh: &mut Shared) {
        for target in 0..sh.targets.list.len() {
            let t = &mut sh.targets.list[target];
            if sh.targets.ring.is_live(target) || t.probing {
                continue;
            }
            t.probing = true;
            match t.spec.literal_addr() {
                Some(addr) => self.start(sh, target, addr),
                None => self.resolver.lookup(target, &t.spec.host, t.spec.port),
            }
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
                    sh.targets.list[target].probing = false;
                }
            }
        }
    }

    fn start(&mut self, sh: &mut Shared, target: usize, addr: SocketAddr) {
        let entry = self.probes.vacant_entry();
        let key = entry.key();
        let connected = TcpStream::connect(addr).and_then(|mut stream| {
            sh.registry.register(
                &mut stream,
                token(Kind::Probe(key)),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => {
                let timer = sh
                    .wheel
                    .insert(sh.now + sh.timeouts.probe, Timer::Probe(key));
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
                sh.targets.list[target].probing = false;
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
        if matches!(outcome, Outcome::Pending) {
            return;
        }
        let probe = self.probes.remove(key);
        sh.wheel.cancel(probe.timer);
        sh.targets.list[probe.target].probing = false;
        match outcome {
            Outcome::Up => sh.targets.revive(probe.target),
            Outcome::Down(why) => debug!("probe {}: {why}", sh.targets.url(probe.target)),
            Outcome::Pending => {}
        }
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
    while probe.sent < request.len() && probe.ready.write {
        match probe.stream.write(&request[probe.sent..]) {
            Ok(n) => probe.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => probe.ready.write = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Down("send failed"),
        }
    }
    while probe.got_len < probe.got.len() && probe.ready.read {
        match probe.stream.read(&mut probe.got[probe.got_len..]) {
            Ok(0) => break,
            Ok(n) => probe.got_len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => probe.ready.read = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Down("reset"),
        }
    }
    // "HTTP/1.1 200 " is all a probe needs to see.
    let got = &probe.got[..probe.got_len];
    if got.len() >= 13 {
        return if got.starts_with(b"HTTP/1.")
            && &got[8..12] == b" 200"
            && matches!(got[12], b' ' | b'\r')
        {
            Outcome::Up
        } else {
            Outcome::Down("answered other than 200")
        };
    }
    if probe.ready.read {
        return Outcome::Down("closed before answering");
    }
    Outcome::Pending
}
