//! The proxy proper: client sessions, the exchanges they carry, the upstream pool, and the
//! rules for retrying and answering locally.
//!
//! `Proxy` owns the sessions and what they share (`Resources`). `Env` is what the loop owns and
//! lends out: the config snapshot, the clock, the targets and their health, the wheel, the log.
//! `Ctx` is the two together, borrowed for one call into a session; it is also where health
//! evidence is counted and applied (`Ctx::take_out`, `Ctx::bring_back`): the one place a target
//! leaves or enters the rotation.

pub mod client;
pub mod exchange;
pub mod lifecycle;
pub mod local;
pub mod retry;
pub mod session;
pub mod upstream;

use crate::balance::Balancer;
use crate::config::Config;
use crate::health::probe::{ProbeCtx, ProbeResult, Probed};
use crate::health::{Change, Failure, Health};
use crate::ids::TargetId;
use crate::observe::accesslog::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::oplog::{count, Noisy};
use crate::runtime::buffer::BufferPool;
use crate::runtime::limits::LocalError;
use crate::runtime::timer::Timer;
use crate::runtime::token::{decode, token, Kind};
use crate::runtime::wheel::Wheel;
use crate::targets::Targets;
use crate::tls::TlsConfig;
use crate::warn_noisy;
use crate::workers::Link;
use client::{Client, RecordScratch};
use exchange::ExchangePool;
use lifecycle::{Lifecycle, Origin};
use log::warn;
use mio::net::TcpStream;
use mio::{Interest, Registry};
use rustls::ServerConnection;
use session::Session;
use slab::Slab;
use std::net::SocketAddr;
use upstream::{Owner, Upstreams};

/// Extra room in every buffer beyond the longest request head, for the fields the proxy adds.
const HEAD_SLACK: usize = 1024;

/// What the loop owns and lends to the proxy and the prober.
pub struct Env {
    /// The configuration snapshot every part reads; a reload swaps it here, in one place.
    pub config: Config,
    /// Milliseconds since start, read once per loop pass.
    pub now: u64,
    pub draining: bool,
    pub registry: Registry,
    pub wheel: Wheel<Timer>,
    pub targets: Targets,
    /// The policy's state over `targets`.
    pub balancer: Balancer,
    pub health: Health,
    pub log: AccessLog,
    pub metrics: Metrics,
    /// This worker's place among the workers, and what they share.
    pub link: Link,
}

impl Env {
    pub fn probe_cx(&mut self) -> ProbeCtx<'_> {
        ProbeCtx {
            config: &self.config,
            targets: &mut self.targets,
            registry: &self.registry,
            wheel: &mut self.wheel,
            now: self.now,
        }
    }
}

/// What the sessions share among themselves.
pub struct Resources {
    pub buffers: BufferPool,
    pub upstreams: Upstreams,
    pub exchanges: ExchangePool,
    /// This worker's count of requests, for the ids it makes. The ring's position is shared
    /// by the workers (`Link::next_seq`); with one worker the two are the same.
    pub seq: u64,
    /// Random per process, in hex: generated request ids are this and the sequence number.
    pub id_prefix: [u8; 16],
    /// Where a TLS client's response head and body start are joined into one record.
    pub record: RecordScratch,
}

/// Everything a session may touch besides itself, for one call.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub now: u64,
    pub draining: bool,
    pub registry: &'a Registry,
    pub wheel: &'a mut Wheel<Timer>,
    pub targets: &'a mut Targets,
    pub balancer: &'a mut Balancer,
    pub health: &'a mut Health,
    pub log: &'a mut AccessLog,
    pub metrics: &'a mut Metrics,
    pub buffers: &'a mut BufferPool,
    pub upstreams: &'a mut Upstreams,
    pub exchanges: &'a mut ExchangePool,
    pub seq: &'a mut u64,
    pub id_prefix: &'a [u8; 16],
    pub record: &'a mut RecordScratch,
    pub link: &'a Link,
}

impl<'a> Ctx<'a> {
    pub fn new(env: &'a mut Env, res: &'a mut Resources) -> Ctx<'a> {
        Ctx {
            config: &env.config,
            now: env.now,
            draining: env.draining,
            registry: &env.registry,
            wheel: &mut env.wheel,
            targets: &mut env.targets,
            balancer: &mut env.balancer,
            health: &mut env.health,
            log: &mut env.log,
            metrics: &mut env.metrics,
            buffers: &mut res.buffers,
            upstreams: &mut res.upstreams,
            exchanges: &mut res.exchanges,
            seq: &mut res.seq,
            id_prefix: &res.id_prefix,
            record: &mut res.record,
            link: &env.link,
        }
    }

    /// Every store of per-target state, for one change of a target's state.
    pub fn lifecycle(&mut self) -> Lifecycle<'_> {
        Lifecycle {
            config: self.config,
            now: self.now,
            targets: self.targets,
            balancer: self.balancer,
            health: self.health,
            metrics: self.metrics,
            upstreams: self.upstreams,
            wheel: self.wheel,
            link: self.link,
        }
    }

    /// A failure that counts against `id`.
    pub fn target_failed(&mut self, id: TargetId, why: Failure) {
        if self.health.failed(id, self.targets.is_live(id), self.config) == Change::Down {
            self.lifecycle().take_out(id, why, Origin::Here);
        }
    }

    /// `id` sent a response head, or passed a probe.
    pub fn target_answered(&mut self, id: TargetId) {
        // Only the leader's probes bring a target back, for every worker at once.
        if self.health.succeeded(id, self.targets.is_live(id), self.config) == Change::Up && self.link.is_leader() {
            self.lifecycle().bring_back(id, Origin::Here);
        }
    }

    /// A request to `id` timed out: probe it now rather than count it.
    pub fn target_suspect(&mut self, id: TargetId) {
        self.lifecycle().suspect(id);
    }

    /// A probe of `id` ended: count it, and arm the next one if `id` still needs one.
    pub fn probe_finished(&mut self, (id, result): ProbeResult) {
        self.health.probe_finished(id);
        let passed = result == Probed::Passed;
        match result {
            Probed::Passed => {
                self.metrics.probed(id, Ok(()));
                self.target_answered(id);
            }
            Probed::Failed(why) => {
                self.metrics.probed(id, Err(why));
                self.target_failed(id, Failure::Probe(why));
            }
            // The proxy's own want: the target is neither better nor worse for it.
            Probed::Skipped(local) => self.metrics.local_error(local),
        }
        let live = self.targets.is_live(id);
        if passed || !live {
            self.health.clear_suspect(id);
        }
        self.health.schedule_probe(id, live, self.config, self.wheel, self.now);
    }
}

/// Counts `e` if it is the proxy running out of its own resources.
pub fn local_failure(env: &mut Env, e: &std::io::Error) {
    if let Some(local) = LocalError::of(e) {
        env.metrics.local_error(local);
    }
}

/// A seed that differs between processes and starts: the clock and the process id.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `n` as 16 lowercase hex digits.
pub fn hex(n: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[(n >> (60 - 4 * i) & 0xf) as usize];
    }
    out
}

/// What the loop should do with a session after pumping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    Close,
    /// Still has work but gave up its turn so others get theirs: pump again soon.
    Requeue,
}

/// The client sessions and what they share.
pub struct Proxy {
    sessions: Slab<Session>,
    res: Resources,
    /// Sessions that used up their turn and must be pumped again, and a spare list to swap
    /// with while pumping them.
    requeued: Vec<usize>,
    spare: Vec<usize>,
    /// Connections turned away over `max_connections`, and when that was last logged.
    turned_away: u64,
    turned_away_logged: Option<u64>,
}

impl Proxy {
    pub fn new(config: &Config) -> Proxy {
        Proxy {
            sessions: Slab::new(),
            res: Resources {
                buffers: BufferPool::new(config.limits.max_request_head + HEAD_SLACK),
                upstreams: Upstreams::new(config.targets.len()),
                exchanges: ExchangePool::default(),
                seq: 0,
                id_prefix: hex(random_seed()),
                record: RecordScratch::default(),
            },
            requeued: Vec::new(),
            spare: Vec::new(),
            turned_away: 0,
            turned_away_logged: None,
        }
    }

    /// Client connections open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Requests this worker has started, ever.
    pub fn requests(&self) -> u64 {
        self.res.seq
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every store of per-target state, the pools among them, for one change of a target's
    /// state that came from outside a session (a note, a reload, a lookup).
    pub fn lifecycle<'a>(&'a mut self, env: &'a mut Env) -> Lifecycle<'a> {
        Lifecycle {
            config: &env.config,
            now: env.now,
            targets: &mut env.targets,
            balancer: &mut env.balancer,
            health: &mut env.health,
            metrics: &mut env.metrics,
            upstreams: &mut self.res.upstreams,
            wheel: &mut env.wheel,
            link: &env.link,
        }
    }

    /// Closes the idle upstream connections and frees the buffers the last period did not
    /// need, keeping at most `max_idle` idle connections per target: (connections closed,
    /// bytes freed).
    pub fn trim_pools(&mut self, max_idle: usize) -> (usize, usize) {
        // After a burst, the session table keeps its peak capacity: give back the part above
        // four times what is open now (the slab can only drop vacant entries at its end).
        let before = self.sessions.capacity();
        if self.sessions.len() * 4 < before {
            self.sessions.shrink_to_fit();
        }
        let freed = (before - self.sessions.capacity()) * std::mem::size_of::<Session>();
        (self.res.upstreams.trim(max_idle), self.res.buffers.trim() + self.res.exchanges.trim() + freed)
    }

    /// Upstream connections to `id`: (serving a request, idle in the pool).
    pub fn upstream_counts(&self, id: TargetId) -> (usize, usize) {
        self.res.upstreams.counts(id)
    }

    /// Takes a new client connection, or turns it away over `max_connections`; with `tls`, a
    /// connection of the TLS listener.
    pub fn accept(&mut self, mut stream: TcpStream, peer: SocketAddr, tls: Option<&TlsConfig>, env: &mut Env) {
        // `max_connections` holds for the process, whichever worker accepted.
        if !env.link.admit(env.config.limits.max_connections) {
            return self.turn_away(stream, tls.is_some(), env);
        }
        env.metrics.connections_accepted += 1;
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let registered =
            env.registry.register(&mut stream, token(Kind::Client(key)), Interest::READABLE | Interest::WRITABLE);
        if let Err(e) = registered {
            local_failure(env, &e);
            warn_noisy!(Noisy::LocalError, "cannot register client {peer}: {e}; closed");
            env.link.release();
            return;
        }
        // Best effort: a failure here only costs latency.
        let _ = stream.set_nodelay(true);
        let client = match tls.map(|config| ServerConnection::new(std::sync::Arc::clone(config))) {
            None => Client::new(stream, peer),
            Some(Ok(conn)) => Client::tls(stream, peer, conn),
            Some(Err(e)) => {
                warn_noisy!(Noisy::LocalError, "cannot start TLS for {peer}: {e}; closed");
                let _ = env.registry.deregister(&mut stream);
                env.link.release();
                return;
            }
        };
        entry.insert(Session::new(key, client));
    }

    /// A best-effort 503 and a close, so the client is told and the loop spends one write on
    /// it; a TLS client only gets the close, as plain bytes would be garbage to it. Logged at
    /// most once a second.
    fn turn_away(&mut self, mut stream: TcpStream, tls: bool, env: &mut Env) {
        if !tls {
            let mut answer = [0u8; 160];
            let n = local::busy(&mut answer);
            let _ = std::io::Write::write(&mut stream, &answer[..n]);
        }
        self.turned_away += 1;
        env.metrics.connections_refused += 1;
        if self.turned_away_logged.is_none_or(|at| env.now >= at + 1000) {
            let max = env.config.limits.max_connections;
            let refused = count(self.turned_away, "connection", "connections");
            warn!("max_connections ({max}) reached: refused {refused} so far");
            self.turned_away_logged = Some(env.now);
        }
    }

    pub fn client_event(&mut self, key: usize, event: &mio::event::Event, env: &mut Env) {
        if let Some(session) = self.sessions.get_mut(key) {
            session.client_event(event);
            self.pump(key, env);
        }
    }

    pub fn upstream_event(&mut self, slot: usize, event: &mio::event::Event, env: &mut Env) {
        match self.res.upstreams.owner(slot) {
            Some(Owner::Session(key)) => {
                if let Some(session) = self.sessions.get_mut(key) {
                    session.upstream_event(slot, event);
                    self.pump(key, env);
                }
            }
            // An idle connection has nothing to say: data, a FIN or a reset all end it.
            Some(Owner::Pool) => self.close_idle(slot, env),
            None => {}
        }
    }

    /// Closes the idle connections that have something to say in this batch of events, before
    /// any session can take one: a target's stray bytes must not answer the next request.
    pub fn sweep_idle(&mut self, events: &mio::Events, env: &mut Env) {
        self.res.upstreams.next_pass();
        for event in events.iter() {
            if let Some(Kind::Upstream(slot)) = decode(event.token()) {
                if let Some(Owner::Pool) = self.res.upstreams.owner(slot) {
                    self.close_idle(slot, env);
                }
            }
        }
    }

    /// Closes an idle upstream connection that had an event, with a line if the target sent
    /// bytes nobody asked for (a second answer to one request).
    fn close_idle(&mut self, slot: usize, env: &mut Env) {
        if let Some(target) = self.res.upstreams.close_idle(slot) {
            env.metrics.stray_responses += 1;
            let url = env.targets.url(target);
            warn_noisy!(
                Noisy::StrayBytes,
                "target {url} sent bytes nobody asked for, on an idle connection; closed it"
            );
        }
    }

    /// A session's timer fired.
    pub fn on_timer(&mut self, key: usize, env: &mut Env) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let verdict = session.on_timer(&mut Ctx::new(env, &mut self.res));
        self.obey(key, verdict, env);
    }

    /// Pumps the sessions that gave up their turn last pass.
    pub fn pump_requeued(&mut self, env: &mut Env) {
        if self.requeued.is_empty() {
            return;
        }
        let mut keys = std::mem::replace(&mut self.requeued, std::mem::take(&mut self.spare));
        for key in keys.drain(..) {
            self.pump(key, env);
        }
        self.spare = keys;
    }

    pub fn has_requeued(&self) -> bool {
        !self.requeued.is_empty()
    }

    /// The loop began to drain: every session gets a pump, and the idle ones close.
    pub fn drain(&mut self, env: &mut Env) {
        let keys: Vec<usize> = self.sessions.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.pump(key, env);
        }
    }

    /// Counts a probe's result and applies what it changed.
    pub fn probe_finished(&mut self, result: ProbeResult, env: &mut Env) {
        Ctx::new(env, &mut self.res).probe_finished(result);
    }

    fn pump(&mut self, key: usize, env: &mut Env) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let verdict = session.pump(&mut Ctx::new(env, &mut self.res));
        self.obey(key, verdict, env);
    }

    fn obey(&mut self, key: usize, verdict: Verdict, env: &mut Env) {
        match verdict {
            Verdict::Open => {}
            Verdict::Requeue => self.requeued.push(key),
            Verdict::Close => {
                if let Some(mut session) = self.sessions.try_remove(key) {
                    session.teardown(&mut Ctx::new(env, &mut self.res));
                    env.link.release();
                }
            }
        }
    }
}
