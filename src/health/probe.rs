//! Health probes: a non-blocking `GET <probe_path>` to a target in this same loop, after a
//! fresh lookup of its name on the resolver thread (never on the loop). A probe ends passed (a
//! `HTTP/1.x 200` status line) or failed, with why; the caller counts the result (`Health`) and
//! applies what it changed.

use crate::config::Config;
use crate::ids::TargetId;
use crate::runtime::clock::millis;
use crate::runtime::limits::LocalError;
use crate::runtime::ready::{Connect, Io, Ready};
use crate::runtime::resolve::{self, Resolver};
use crate::runtime::timer::Timer;
use crate::runtime::token::{token, Kind};
use crate::runtime::wheel::{TimerId, Wheel};
use crate::targets::Targets;
use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Registry};
use slab::Slab;
use std::net::SocketAddr;

/// How a probe of a target ended.
pub type ProbeResult = (TargetId, Probed);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probed {
    Passed,
    Failed(&'static str),
    /// The proxy could not open the probe's connection for want of its own descriptors or
    /// memory: nothing was learned about the target.
    Skipped(LocalError),
}

/// What a probe needs from the loop, borrowed for one call.
pub struct ProbeCtx<'a> {
    pub config: &'a Config,
    pub targets: &'a mut Targets,
    pub registry: &'a Registry,
    pub wheel: &'a mut Wheel<Timer>,
    pub now: u64,
}

struct Probe {
    stream: TcpStream,
    target: TargetId,
    ready: Ready,
    connected: bool,
    sent: usize,
    got: [u8; 16],
    got_len: usize,
    timer: TimerId,
}

/// Where a probe in flight stands.
enum Progress {
    Pending,
    Passed,
    Failed(&'static str),
}

/// The probes in flight, at most one per target.
pub struct Prober {
    probes: Slab<Probe>,
    resolver: Resolver<TargetId>,
    /// Each target's probe request, by slot, made once.
    requests: Vec<Vec<u8>>,
}

impl Prober {
    pub fn new(resolver: Resolver<TargetId>, config: &Config, targets: &Targets) -> Prober {
        let mut prober = Prober { probes: Slab::new(), resolver, requests: Vec::new() };
        prober.reconfigure(config, targets);
        prober
    }

    /// Makes every target's probe request again, after a reload changed the targets or the
    /// probe path.
    pub fn reconfigure(&mut self, config: &Config, targets: &Targets) {
        self.requests.clear();
        for t in targets.ids().filter_map(|id| targets.get(id)) {
            if self.requests.len() <= t.id.slot() {
                self.requests.resize_with(t.id.slot() + 1, Vec::new);
            }
            self.requests[t.id.slot()] = request(&config.health.probe_path, &t.spec.host);
        }
    }

    /// Starts a probe of `id`: a lookup of its name first, or a connect to its literal address.
    /// A probe that fails at once is its own result.
    pub fn start(&mut self, id: TargetId, cx: &mut ProbeCtx<'_>) -> Option<ProbeResult> {
        let Some(target) = cx.targets.get(id) else {
            return Some((id, Probed::Failed("target is gone")));
        };
        match target.spec.literal_addr() {
            Some(addr) => self.connect(id, addr, cx),
            None => {
                self.resolver.lookup(id, target.spec.bare_host(), target.spec.port);
                None
            }
        }
    }

    /// Takes the resolver's answers and probes the targets they are for; a target whose name
    /// now resolves elsewhere goes into `moved`, for the other workers' tables.
    pub fn resolved(
        &mut self,
        cx: &mut ProbeCtx<'_>,
        results: &mut Vec<ProbeResult>,
        moved: &mut Vec<(TargetId, SocketAddr)>,
    ) {
        while let Some((id, answer)) = self.resolver.answer() {
            if cx.targets.get(id).is_none() {
                continue;
            }
            match answer.map(|addrs| resolve::preferred(&addrs)) {
                Ok(Some(addr)) => {
                    if cx.targets.set_addr(id, addr) {
                        moved.push((id, addr));
                    }
                    results.extend(self.connect(id, addr, cx));
                }
                Ok(None) | Err(_) => {
                    debug!("probe {}: lookup failed", cx.targets.url(id));
                    results.push((id, Probed::Failed("lookup failed")));
                }
            }
        }
    }

    fn connect(&mut self, id: TargetId, addr: SocketAddr, cx: &mut ProbeCtx<'_>) -> Option<ProbeResult> {
        let entry = self.probes.vacant_entry();
        let key = entry.key();
        let connected = TcpStream::connect(addr).and_then(|mut stream| {
            cx.registry.register(&mut stream, token(Kind::Probe(key)), Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => {
                let timer = cx.wheel.insert(cx.now + millis(cx.config.health.probe_timeout), Timer::Probe(key));
                entry.insert(Probe {
                    stream,
                    target: id,
                    ready: Ready::default(),
                    connected: false,
                    sent: 0,
                    got: [0; 16],
                    got_len: 0,
                    timer,
                });
                None
            }
            Err(e) => {
                debug!("probe {}: {e}", cx.targets.url(id));
                match LocalError::of(&e) {
                    Some(local) => Some((id, Probed::Skipped(local))),
                    None => Some((id, Probed::Failed("connect failed"))),
                }
            }
        }
    }

    pub fn on_event(&mut self, key: usize, event: &mio::event::Event, cx: &mut ProbeCtx<'_>) -> Option<ProbeResult> {
        let probe = self.probes.get_mut(key)?;
        probe.ready.update(event);
        if cx.targets.get(probe.target).is_none() {
            // A reload removed it, and its slot may hold another target's request now.
            return self.conclude(key, Progress::Failed("target is gone"), cx);
        }
        let request = self.requests.get(probe.target.slot()).map_or(&[][..], Vec::as_slice);
        let progress = drive(probe, request);
        self.conclude(key, progress, cx)
    }

    pub fn on_timer(&mut self, key: usize, cx: &mut ProbeCtx<'_>) -> Option<ProbeResult> {
        if !self.probes.contains(key) {
            return None;
        }
        self.conclude(key, Progress::Failed("timed out"), cx)
    }

    fn conclude(&mut self, key: usize, progress: Progress, cx: &mut ProbeCtx<'_>) -> Option<ProbeResult> {
        let result = match progress {
            Progress::Pending => return None,
            Progress::Passed => Probed::Passed,
            Progress::Failed(why) => Probed::Failed(why),
        };
        let probe = self.probes.remove(key);
        cx.wheel.cancel(probe.timer);
        if let Probed::Failed(why) = result {
            debug!("probe {}: {why}", cx.targets.url(probe.target));
        }
        Some((probe.target, result))
    }
}

/// A probe request, the proxy's own or `ringproxy --probe`'s.
pub fn request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringproxy-probe\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// The status of an `HTTP/1.x NNN ` status line at the start of `got` (13 bytes at least).
pub fn status(got: &[u8]) -> Option<u16> {
    let well_formed =
        got.len() >= 13 && got.starts_with(b"HTTP/1.") && got[8] == b' ' && matches!(got[12], b' ' | b'\r');
    let digits = got.get(9..12).filter(|d| well_formed && d.iter().all(u8::is_ascii_digit))?;
    Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

/// Moves a probe as far as readiness allows: connect, send the request, read the status line.
fn drive(probe: &mut Probe, request: &[u8]) -> Progress {
    if !probe.connected {
        match probe.ready.connect_outcome(&probe.stream) {
            Connect::Done => probe.connected = true,
            Connect::Pending => return Progress::Pending,
            Connect::Failed(_) => return Progress::Failed("connect failed"),
        }
    }
    while probe.sent < request.len() {
        match probe.ready.write(&mut probe.stream, &request[probe.sent..], &[]) {
            Io::Bytes(n) => probe.sent += n,
            Io::Retry => {}
            Io::Blocked | Io::Eof => break,
            Io::Failed(_) => return Progress::Failed("send failed"),
        }
    }
    let mut closed = false;
    while probe.got_len < probe.got.len() && !closed {
        match probe.ready.read(&mut probe.stream, &mut probe.got[probe.got_len..]) {
            Io::Bytes(n) => probe.got_len += n,
            Io::Retry => {}
            Io::Eof => closed = true,
            Io::Blocked => break,
            Io::Failed(_) => return Progress::Failed("reset"),
        }
    }
    // "HTTP/1.1 200 " is all a probe needs to see.
    let got = &probe.got[..probe.got_len];
    if got.len() >= 13 {
        return match status(got) {
            Some(200) => Progress::Passed,
            _ => Progress::Failed("answered other than 200"),
        };
    }
    if closed {
        return Progress::Failed("closed before answering");
    }
    Progress::Pending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_is_read_strictly() {
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status(b"HTTP/1.0 503 \r\n"), Some(503));
        assert_eq!(status(b"HTTP/1.1 204\r\n\r\n"), Some(204));
        for bad in [&b"HTTP/1.1 2000 OK"[..], b"HTTP/2 200 OK\r\n", b"HTTP/1.1 2x0 OK\r\n", b"HTTP/1.1 200"] {
            assert_eq!(status(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
