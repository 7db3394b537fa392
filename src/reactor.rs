//! The event loop: poll, hand each event to the owner of its token, run the timers that came
//! due. It holds no protocol logic; sessions, probes and the pool do the work.
//!
//! Events are hints: every handler confirms with the syscall itself (`WouldBlock`,
//! `take_error`), so an event that arrives for a slab slot freed and reused within the same batch
//! costs at most one wasted syscall, never a wrong action.

use crate::accesslog::AccessLog;
use crate::buffer::BufferPool;
use crate::config::{AllDown, Config};
use crate::health::{Prober, Targets};
use crate::http::ChunkLimits;
use crate::resolve::{self, Resolver};
use crate::session::{ExchangePool, Session, Verdict};
use crate::token::{decode, token, Kind};
use crate::upstream::Upstreams;
use crate::wheel::Wheel;
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a wheel entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    Session(usize),
    Probe(usize),
    /// A target's next health probe is due: the target, and its probe round.
    ProbeDue(usize, u32),
    AcceptRetry,
    DrainDeadline,
}

/// Timeouts in wheel milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: u64,
    pub client_header: u64,
    pub client_body: u64,
    pub keepalive: u64,
    pub upstream: u64,
    pub probe: u64,
}

/// Everything a session or probe may touch besides itself.
pub struct Shared {
    pub registry: Registry,
    pub pool: BufferPool,
    pub targets: Targets,
    pub upstreams: Upstreams,
    pub wheel: Wheel<Timer>,
    pub timeouts: Timeouts,
    /// Milliseconds since start, read once per loop pass.
    pub now: u64,
    /// The next request's sequence number, for the ring.
    pub seq: u64,
    pub draining: bool,
    pub path_prefix: String,
    pub max_request_head: usize,
    pub all_down_status: u16,
    pub all_down: AllDown,
    pub retries: usize,
    /// No retry starts later than this many ms after its request arrived.
    pub retry_timeout: u64,
    pub access_log: AccessLog,
    pub max_body_size: Option<u64>,
    pub chunk_limits: ChunkLimits,
    pub exchanges: ExchangePool,
}

pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    sessions: Slab<Session>,
    prober: Prober,
    sh: Shared,
    shutdown: u64,
    clock: Instant,
    /// Sessions that used up their turn and must be pumped again.
    requeued: Vec<usize>,
    accept_paused: bool,
    max_connections: usize,
    /// When the last "refusing connections" line was logged (wheel ms), to log once a second.
    refused_logged: Option<u64>,
    refused: u64,
}

/// Extra room in every buffer beyond the longest request head, for the fields the proxy adds.
const HEAD_SLACK: usize = 1024;

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Reactor {
    /// Binds the listener and looks up every target once. Blocking here is fine: the loop has
    /// not started.
    pub fn new(config: &Config) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token(Kind::Listener), Interest::READABLE)?;
        let waker = Arc::new(Waker::new(&registry, token(Kind::Waker))?);
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2])?;
        registry.register(&mut signals, token(Kind::Signals), Interest::READABLE)?;

        let addrs = config
            .targets
            .iter()
            .map(|t| match t.literal_addr() {
                Some(addr) => Some(addr),
                None => resolve::lookup(&t.host, t.port)
                    .map_err(|e| warn!("target {} down: {e} (probing every {:?})", t.url, config.sleeping))
                    .ok(),
            })
            .collect();
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id());
        let path_prefix = config.targets.first().map(|t| t.path_prefix.clone()).unwrap_or_default();
        let mut sh = Shared {
            registry,
            pool: BufferPool::new(config.max_request_head + HEAD_SLACK),
            targets: Targets::new(config, addrs, seed),
            upstreams: Upstreams::new(config.targets.len(), config.max_idle_upstream),
            wheel: Wheel::new(0),
            timeouts: Timeouts {
                connect: millis(config.connect_timeout),
                client_header: millis(config.client_header_timeout),
                client_body: millis(config.client_body_timeout),
                keepalive: millis(config.keepalive_timeout),
                upstream: millis(config.upstream_timeout),
                probe: millis(config.probe_timeout),
            },
            now: 0,
            seq: 0,
            draining: false,
            path_prefix,
            max_request_head: config.max_request_head,
            all_down_status: config.all_down_status,
            all_down: config.all_down,
            retries: config.retries,
            retry_timeout: millis(config.retry_timeout),
            access_log: AccessLog::start(&config.access_log)?,
            max_body_size: config.max_body_size,
            chunk_limits: config.chunk_limits,
            exchanges: ExchangePool::default(),
        };
        let mut prober = Prober::new(Resolver::start(waker)?);
        prober.start_all(&mut sh);
        Ok(Reactor {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            sessions: Slab::new(),
            prober,
            sh,
            shutdown: millis(config.shutdown_timeout),
            clock: Instant::now(),
            requeued: Vec::new(),
            accept_paused: false,
            max_connections: config.max_connections,
            refused_logged: None,
            refused: 0,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until a signal's drain completes.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        let mut requeued = Vec::new();
        loop {
            let timeout = if self.requeued.is_empty() {
                self.sh.wheel.next_deadline().map(|d| Duration::from_millis(d.saturating_sub(self.sh.now)))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.sh.now = millis(self.clock.elapsed());
            for event in events.iter() {
                if !self.dispatch(event) {
                    self.sh.access_log.flush();
                    return Ok(());
                }
            }
            std::mem::swap(&mut requeued, &mut self.requeued);
            for key in requeued.drain(..) {
                self.pump(key);
            }
            self.sh.wheel.poll(self.sh.now, &mut fired);
            for timer in fired.drain(..) {
                if !self.on_timer(timer) {
                    self.sh.access_log.flush();
                    return Ok(());
                }
            }
            self.sh.access_log.flush();
            if self.sh.draining && self.sessions.is_empty() {
                info!("drained; exiting");
                return Ok(());
            }
        }
    }

    /// Hands one event to its owner; `false` means stop now.
    fn dispatch(&mut self, event: &mio::event::Event) -> bool {
        match decode(event.token()) {
            Kind::Listener => self.accept(),
            Kind::Client(key) => {
                if let Some(session) = self.sessions.get_mut(key) {
                    session.client_event(event);
                    self.pump(key);
                }
            }
            Kind::Upstream(slot) => {
                if let Some(key) = self.sh.upstreams.owner(slot) {
                    if let Some(session) = self.sessions.get_mut(key) {
                        session.upstream_event(slot, event);
                        self.pump(key);
                    }
                }
            }
            Kind::Probe(key) => self.prober.on_event(&mut self.sh, key, event),
            Kind::Waker => self.prober.resolved(&mut self.sh),
            Kind::Signals => return self.on_signals(),
        }
        true
    }

    fn pump(&mut self, key: usize) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        match session.pump(&mut self.sh) {
            Verdict::Open => {}
            Verdict::Requeue => self.requeued.push(key),
            Verdict::Close => self.close(key),
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut session) = self.sessions.try_remove(key) {
            session.teardown(&mut self.sh);
        }
    }

    /// Accepts until the backlog is empty (edge-triggered: nothing will remind us).
    fn accept(&mut self) {
        while let Some(listener) = self.listener.as_ref().filter(|_| !self.accept_paused) {
            match listener.accept() {
                Ok((stream, _)) if self.sessions.len() >= self.max_connections => self.refuse(stream),
                Ok((mut stream, peer)) => {
                    let entry = self.sessions.vacant_entry();
                    let key = entry.key();
                    let registered = self.sh.registry.register(
                        &mut stream,
                        token(Kind::Client(key)),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(e) = registered {
                        error!("cannot register client {peer}: {e}");
                        continue;
                    }
                    // Best effort: a failure here only costs latency.
                    let _ = stream.set_nodelay(true);
                    entry.insert(Session::new(key, stream, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    error!("accept failed: {e}; pausing accepts for 100 ms");
                    self.accept_paused = true;
                    self.sh.wheel.insert(self.sh.now + 100, Timer::AcceptRetry);
                    return;
                }
            }
        }
    }

    /// Over `max_connections`: a best-effort 503 and a close, so the client is told and the
    /// reactor spends one write on it. Logged at most once a second.
    fn refuse(&mut self, mut stream: mio::net::TcpStream) {
        const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
            Content-Length: 20\r\nConnection: close\r\n\r\nToo many connections";
        let _ = std::io::Write::write(&mut stream, BUSY);
        self.refused += 1;
        if self.refused_logged.is_none_or(|at| self.sh.now >= at + 1000) {
            warn!("max_connections ({}) reached: refused {} connections so far", self.max_connections, self.refused);
            self.refused_logged = Some(self.sh.now);
        }
    }

    /// `false` means stop now.
    fn on_timer(&mut self, timer: Timer) -> bool {
        match timer {
            Timer::Session(key) => {
                if let Some(session) = self.sessions.get_mut(key) {
                    match session.on_timer(&mut self.sh) {
                        Verdict::Open => {}
                        Verdict::Requeue => self.requeued.push(key),
                        Verdict::Close => self.close(key),
                    }
                }
            }
            Timer::Probe(key) => self.prober.on_timer(&mut self.sh, key),
            Timer::ProbeDue(target, round) => self.prober.due(&mut self.sh, target, round),
            Timer::AcceptRetry => {
                self.accept_paused = false;
                self.accept();
            }
            Timer::DrainDeadline => {
                warn!("shutdown timeout: cutting {} connections still in flight", self.sessions.len());
                return false;
            }
        }
        true
    }

    /// SIGTERM, SIGINT or SIGQUIT (nginx's graceful stop, and its Docker image's stop signal):
    /// stop accepting and let requests in flight finish; a second one stops at once. SIGUSR1
    /// reopens the access log; SIGHUP and SIGUSR2 are logged and otherwise ignored, rather
    /// than killing the process as their default action would.
    fn on_signals(&mut self) -> bool {
        let mut stop = None;
        for signal in self.signals.pending() {
            match signal {
                SIGHUP => warn!("SIGHUP: reloading the config is not supported yet; carrying on with the current one"),
                SIGUSR1 => {
                    info!("SIGUSR1: reopening the access log");
                    self.sh.access_log.reopen();
                }
                SIGUSR2 => warn!("SIGUSR2: ignored"),
                other => stop = Some(other),
            }
        }
        let Some(signal) = stop else {
            return true;
        };
        if self.sh.draining {
            warn!("signal {signal} again: exiting now");
            return false;
        }
        info!(
            "signal {signal}: draining {} connections (at most {} ms), no longer accepting",
            self.sessions.len(),
            self.shutdown
        );
        if let Some(mut listener) = self.listener.take() {
            if let Err(e) = self.sh.registry.deregister(&mut listener) {
                warn!("deregistering the listener: {e}");
            }
        }
        self.sh.draining = true;
        self.sh.wheel.insert(self.sh.now + self.shutdown, Timer::DrainDeadline);
        let keys: Vec<usize> = self.sessions.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.pump(key);
        }
        true
    }
}
