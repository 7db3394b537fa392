//! The event loop: poll, hand each event to the owner of its token, run the timers that came
//! due, act on signals. It holds no protocol logic: the proxy's sessions and the prober do the
//! work, and what they share lives in `proxy::Env`.
//!
//! Events are hints: every handler confirms with the syscall itself (`WouldBlock`,
//! `take_error`), so an event that arrives for a slab slot freed and reused within the same batch
//! costs at most one wasted syscall, never a wrong action.

use crate::admin::{self, Admin, View};
use crate::balance::Balancer;
use crate::config::{Config, MAX_TARGETS};
use crate::health::probe::{ProbeResult, Prober};
use crate::health::Health;
use crate::observe::accesslog::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::oplog::{self, Noisy};
use crate::proxy::{Env, Proxy};
use crate::runtime::clock::{millis, Clock};
use crate::runtime::limits::{self, Needs};
use crate::runtime::listen;
use crate::runtime::resolve::{self, Resolver};
use crate::runtime::signals::{self, Action};
use crate::runtime::timer::Timer;
use crate::runtime::token::{decode, token, Kind};
use crate::runtime::wheel::Wheel;
use crate::targets::discovery::Discovery;
use crate::targets::Targets;
use crate::tls::{self, TlsConfig};
use crate::warn_noisy;
use crate::workers::{Link, Note};
use reload::Reload;

mod notes;
mod reload;
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Waker};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Looks every target up once, before the loops start: an address list per entry of
/// `ports`, empty for a name that does not resolve yet.
fn lookup_targets(config: &Config) -> Vec<Vec<SocketAddr>> {
    config
        .targets
        .iter()
        .map(|t| match t.literal_addr() {
            Some(addr) => vec![addr],
            None => match resolve::lookup_all(t.bare_host(), t.port) {
                Ok(all) if t.discover => all,
                Ok(all) => resolve::preferred(&all).into_iter().collect(),
                Err(e) if t.discover => {
                    warn!("{}: {e}; looking it up again every {:?}", t.url, config.health.resolve_interval);
                    Vec::new()
                }
                Err(e) => {
                    warn!("target {} down: {e} (probing every {:?})", t.url, config.health.sleeping);
                    Vec::new()
                }
            },
        })
        .collect()
}

/// Raises the soft descriptor limit to the hard one, saying so.
fn raise_descriptor_limit() {
    match limits::raise_nofile() {
        Ok((before, after)) if after > before => {
            info!("descriptor limit (RLIMIT_NOFILE) raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => warn!("cannot raise the descriptor limit (RLIMIT_NOFILE): {e}"),
    }
}

/// Lowers `max_connections` to what the descriptor limit holds once the proxy's own needs are
/// met (probes, the admin port, listeners, logs), so that an outsider holding connections
/// meets `max_connections` before the proxy's own `socket()` calls fail. Returns the line
/// saying so when it lowered it.
fn fit_connections(config: &mut Config) -> Option<String> {
    let (limit, _) = limits::nofile().ok()?;
    let discovers = config.targets.iter().any(|t| t.discover);
    let needs = Needs {
        workers: config.workers.max(1),
        targets: if discovers { MAX_TARGETS } else { config.targets.len() },
        admin: config.admin.addr.map_or(0, |_| config.admin.max_connections + 1),
    };
    let fits = needs.connections_within(limit).max(1);
    if config.limits.max_connections <= fits {
        return None;
    }
    let asked = std::mem::replace(&mut config.limits.max_connections, fits);
    Some(format!(
        "max_connections lowered from {asked} to {fits}: the descriptor limit is {limit}, the proxy keeps {} for \
         itself (probes, the admin port, listeners, logs), and a connection may need {} (its own and its \
         target's); raise the limit (ulimit -n; docker run --ulimit nofile=N; compose `ulimits: nofile:`) to \
         allow more",
        needs.reserved(),
        needs.per_connection()
    ))
}

/// The proxy's listener number in its token.
const PROXY_LISTENER: usize = 0;
/// The TLS listener's.
const TLS_LISTENER: usize = 2;

/// The TLS listener and the configuration its new connections get.
struct TlsListener {
    listener: TcpListener,
    addr: SocketAddr,
    config: TlsConfig,
}

/// Events taken from one `poll`. Fewer per batch means the loop comes back to the kernel
/// sooner, so a connection whose bytes arrived during a long batch waits less behind it: at
/// c1000 a quarter of mio's usual 1024 took ringproxy's p99 from 1.21x HAProxy's to 1.09x
/// (HAProxy's own `maxpollevents` is 200), at no cost in requests/s.
const EVENTS_PER_POLL: usize = 256;

/// How often each loop closes the idle upstream connections the last period did not need.
const POOL_PERIOD: u64 = 2000;

/// Freed buffers worth handing back to the kernel: below this, the next burst would only take
/// the pages again.
const RETURN_TO_OS: usize = 1 << 20;

/// Gives the kernel back the free pages of the heap, as HAProxy does after releasing its pools:
/// freed buffers sit in glibc's heap, where RSS counts them, until it is trimmed. It walks
/// every arena, the other workers' too, so one trim a period serves the whole process: a
/// worker whose turn another took this period skips it. After a burst freed 1 MiB of buffers,
/// and once when the traffic stops: what else a burst left in the heap (renders of `/metrics`,
/// log lines, a reload's parse) goes back then.
fn return_memory_to_os(now_ms: u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let last = LAST.load(Relaxed);
    if now_ms < last + POOL_PERIOD || LAST.compare_exchange(last, now_ms, Relaxed, Relaxed).is_err() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often at most a busy follower copies its counters for the leader's admin endpoints.
const PUBLISH_EVERY: Duration = Duration::from_millis(1);

/// Whether the loop goes on after handling something.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// The leader's: the followers hear of signals from it.
    signals: Option<Signals>,
    clock: Clock,
    accept_paused: bool,
    /// The leader's: a target is probed once, not once per worker.
    prober: Option<Prober>,
    proxy: Proxy,
    env: Env,
    /// Probe results waiting to be applied, reused between passes.
    probe_results: Vec<ProbeResult>,
    admin: Option<Admin>,
    reload: Reload,
    /// The leader's.
    discovery: Option<Discovery>,
    tls: Option<TlsListener>,
    /// The other workers, built by `new` and started by `run`.
    followers: Vec<Server>,
    /// Notes taken from the mailbox, reused between passes.
    notes: Vec<Note>,
    /// A follower's counters changed since it last copied them for the leader, and when that was.
    unpublished: bool,
    published_at: u64,
    /// Requests this worker had started at the last pool trim, and whether the heap was
    /// trimmed since they last moved: a quiet period trims it once.
    seen_requests: u64,
    trimmed_quiet: bool,
}

/// Calls `Link::exited` when a follower's thread leaves its loop, by return or by unwinding.
struct Exited(Link);

impl Drop for Exited {
    fn drop(&mut self) {
        self.0.exited();
    }
}

/// One worker's own sockets and loop, before its role is known.
struct Parts {
    poll: Poll,
    waker: Arc<Waker>,
    listener: TcpListener,
    tls: Option<TlsListener>,
}

impl Server {
    /// Binds the listeners (one per worker) and looks up every target once. Blocking here is
    /// fine: no loop has started.
    pub fn new(config: &Config) -> io::Result<Server> {
        // First, so a signal during the lookups below waits for the loop instead of killing
        // the process by its default action.
        let signals = Signals::new(signals::HANDLED)?;
        let mut config = config.clone();
        raise_descriptor_limit();
        if let Some(lowered) = fit_connections(&mut config) {
            warn!("{lowered}");
        }
        let workers = config.workers.max(1);
        let listeners = listen::bind(config.listen, workers)?;
        let tls_listeners: Vec<Option<TlsListener>> = match &config.tls {
            Some(spec) => {
                let tls_config =
                    tls::load(spec).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                let bound = listen::bind(spec.listen, workers)
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS listener {}: {e}", spec.listen)))?;
                let mut all = Vec::with_capacity(workers);
                for listener in bound {
                    let addr = listener.local_addr()?;
                    all.push(Some(TlsListener { listener, addr, config: Arc::clone(&tls_config) }));
                }
                all
            }
            None => (0..workers).map(|_| None).collect(),
        };
        let mut parts = Vec::with_capacity(workers);
        for (listener, tls) in listeners.into_iter().zip(tls_listeners) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), token(Kind::Waker))?);
            parts.push(Parts { poll, waker, listener, tls });
        }
        let links = Link::group(parts.iter().map(|p| Arc::clone(&p.waker)).collect());
        let addrs = lookup_targets(&config);
        let clock = Clock::start();
        let mut built = Vec::with_capacity(workers);
        for (part, link) in parts.into_iter().zip(links) {
            built.push(Server::worker(part, link, &config, addrs.clone(), clock)?);
        }
        let mut leader = built.remove(0);
        leader.followers = built;
        leader.lead(signals)?;
        Ok(leader)
    }

    /// A worker with its sockets, its copy of the table and nothing of the leader's.
    fn worker(
        part: Parts,
        link: Link,
        config: &Config,
        addrs: Vec<Vec<SocketAddr>>,
        clock: Clock,
    ) -> io::Result<Server> {
        let Parts { poll, waker, mut listener, mut tls } = part;
        let registry = poll.registry().try_clone()?;
        registry.register(&mut listener, token(Kind::Listener(PROXY_LISTENER)), Interest::READABLE)?;
        if let Some(t) = tls.as_mut() {
            registry.register(&mut t.listener, token(Kind::Listener(TLS_LISTENER)), Interest::READABLE)?;
        }
        let targets = Targets::new(config, addrs);
        let mut balancer = Balancer::new(config, &targets);
        balancer.reseed(link.index() as u64);
        let mut env = Env {
            log: AccessLog::start(&config.logging.access_log, config.logging.access_log_format)?,
            now: clock.now(),
            draining: false,
            registry,
            wheel: Wheel::new(clock.now()),
            health: Health::new(&targets, crate::proxy::random_seed()),
            targets,
            balancer,
            metrics: Metrics::default(),
            config: config.clone(),
            link,
        };
        let ids: Vec<_> = env.targets.ids().collect();
        for id in ids {
            env.metrics.target_added(id);
        }
        env.wheel.insert(env.now + POOL_PERIOD, Timer::PoolTrim);
        Ok(Server {
            local_addr: listener.local_addr()?,
            poll,
            listener: Some(listener),
            signals: None,
            clock,
            accept_paused: false,
            prober: None,
            proxy: Proxy::new(&env.config),
            env,
            probe_results: Vec::new(),
            admin: None,
            reload: Reload::new(waker),
            discovery: None,
            tls,
            followers: Vec::new(),
            notes: Vec::new(),
            unpublished: false,
            published_at: 0,
            seen_requests: 0,
            trimmed_quiet: false,
        })
    }

    /// Makes this worker the leader: signals, the admin endpoints, probes and discovery.
    fn lead(&mut self, mut signals: Signals) -> io::Result<()> {
        let waker = Arc::clone(&self.reload.waker);
        self.env.registry.register(&mut signals, token(Kind::Signals), Interest::READABLE)?;
        self.signals = Some(signals);
        let env = &mut self.env;
        if env.targets.refused() > 0 {
            warn!(
                "{} left out: the table holds {MAX_TARGETS} targets at most",
                oplog::count(env.targets.refused(), "discovered address", "discovered addresses")
            );
        }
        self.admin = match env.config.admin.addr {
            Some(addr) => match Admin::bind(addr, env) {
                Ok(admin) => Some(admin),
                Err(e) if env.config.admin.named => {
                    return Err(io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))
                }
                Err(e) => {
                    error!("admin endpoints off: cannot listen on the default {addr}: {e} (set \"admin\" to a free address, or null)");
                    None
                }
            },
            None => None,
        };
        self.proxy.lifecycle(&mut self.env).schedule_probes();
        let env = &mut self.env;
        let mut discovery = Discovery::start(Arc::clone(&waker))?;
        discovery.round(&env.config, &mut env.wheel, env.now);
        self.discovery = Some(discovery);
        self.prober = Some(Prober::new(Resolver::start(waker)?, &env.config, &env.targets));
        Ok(())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the TLS listener accepts, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.addr)
    }

    /// Where the admin endpoints answer, when they are on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// The file SIGHUP reloads; without one, SIGHUP is logged and ignored.
    pub fn reload_from(&mut self, path: PathBuf) {
        self.reload.watch(path);
    }

    /// Starts the other workers, runs this one (the leader) until a signal's drain completes,
    /// and waits for the others to finish.
    pub fn run(&mut self) -> io::Result<()> {
        let mut threads = Vec::with_capacity(self.followers.len());
        for mut follower in self.followers.drain(..) {
            let name = format!("worker-{}", follower.env.link.index());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                // Tells the leader this loop is over however it ends, unwinding included.
                let _exit = Exited(follower.env.link.clone());
                let result = follower.serve();
                if let Err(e) = &result {
                    error!("worker {}: event loop failed: {e}", follower.env.link.index());
                }
                result
            });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    self.env.link.tell_others(|| Note::Stop);
                    return Err(e);
                }
            }
        }
        let result = self.serve();
        self.env.link.tell_others(|| Note::Stop);
        for thread in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {}
                Err(_) => error!("a worker panicked"),
            }
        }
        result
    }

    /// This worker's loop, until its drain completes or it is told to stop.
    fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut fired = Vec::new();
        let follower = !self.env.link.is_leader();
        loop {
            let admin_requeued = self.admin.as_ref().is_some_and(Admin::has_requeued);
            let mut timeout = if self.proxy.has_requeued() || admin_requeued {
                Some(Duration::ZERO)
            } else {
                self.env.wheel.next_deadline().map(|d| Duration::from_millis(d.saturating_sub(self.env.now)))
            };
            if self.unpublished {
                timeout = Some(timeout.map_or(PUBLISH_EVERY, |t| t.min(PUBLISH_EVERY)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.env.now = self.clock.now();
            self.proxy.sweep_idle(&events, &mut self.env);
            // Whether this pass may have changed a counter or a gauge the leader shows.
            let mut busy = !events.is_empty() || self.proxy.has_requeued();
            let mut flow = Flow::Go;
            for event in events.iter() {
                if self.env.link.has_mail() {
                    flow = self.take_mail();
                    if flow == Flow::Stop {
                        break;
                    }
                }
                flow = self.on_event(event);
                if flow == Flow::Stop {
                    break;
                }
            }
            if flow == Flow::Go {
                self.proxy.pump_requeued(&mut self.env);
                self.pump_admin();
                self.env.wheel.poll(self.env.now, &mut fired);
                busy |= !fired.is_empty();
                for timer in fired.drain(..) {
                    flow = self.on_timer(timer);
                    if flow == Flow::Stop {
                        break;
                    }
                }
            }
            self.env.log.flush();
            if follower {
                self.unpublished |= busy;
                self.publish(flow == Flow::Stop);
            }
            if flow == Flow::Stop {
                return Ok(());
            }
            // A follower is done when its own connections are; the leader waits for them all.
            if self.env.draining && self.proxy.is_empty() && (follower || self.env.link.followers_running() == 0) {
                if !follower {
                    info!("drained; exiting");
                }
                return Ok(());
            }
        }
    }

    /// Hands one event to its owner.
    fn on_event(&mut self, event: &mio::event::Event) -> Flow {
        match decode(event.token()) {
            Some(Kind::Listener(admin::ADMIN_LISTENER)) => {
                if let Some(admin) = self.admin.as_mut() {
                    admin.accept(&mut self.env);
                }
            }
            Some(Kind::Listener(TLS_LISTENER)) => self.accept(true),
            Some(Kind::Listener(_)) => self.accept(false),
            Some(Kind::Admin(key)) => {
                if let Some(admin) = self.admin.as_mut() {
                    let touched = admin.on_event(key, event, &View { env: &self.env, proxy: &self.proxy });
                    admin.rearm(touched, &mut self.env);
                }
            }
            Some(Kind::Client(key)) => self.proxy.client_event(key, event, &mut self.env),
            Some(Kind::Upstream(slot)) => self.proxy.upstream_event(slot, event, &mut self.env),
            Some(Kind::Probe(key)) => {
                if let Some(prober) = self.prober.as_mut() {
                    let result = prober.on_event(key, event, &mut self.env.probe_cx());
                    self.apply_probes(result);
                }
            }
            Some(Kind::Waker) => {
                if self.take_mail() == Flow::Stop {
                    return Flow::Stop;
                }
                self.take_reload();
                self.take_discoveries();
                if let Some(prober) = self.prober.as_mut() {
                    let (mut results, mut moved) = (std::mem::take(&mut self.probe_results), Vec::new());
                    prober.resolved(&mut self.env.probe_cx(), &mut results, &mut moved);
                    for (id, addr) in moved {
                        self.env.link.tell_others(|| Note::Addr(id, addr));
                    }
                    self.apply_probes(results.drain(..));
                    self.probe_results = results;
                }
            }
            Some(Kind::Signals) => return self.on_signals(),
            None => {}
        }
        Flow::Go
    }

    /// The admin's share of the pass: connections left in its listener's queue, and turns for
    /// the connections owed one.
    fn pump_admin(&mut self) {
        if let Some(admin) = self.admin.as_mut() {
            admin.pump(&mut self.env, &self.proxy);
        }
    }

    /// Counts finished probes and applies what they changed.
    fn apply_probes(&mut self, results: impl IntoIterator<Item = ProbeResult>) {
        for result in results {
            self.proxy.probe_finished(result, &mut self.env);
        }
    }

    /// Accepts until the backlog is empty (edge-triggered: nothing will remind us), on the
    /// plain listener or the TLS one.
    fn accept(&mut self, tls: bool) {
        loop {
            if self.accept_paused {
                return;
            }
            let (listener, config) = match (tls, self.listener.as_ref(), self.tls.as_ref()) {
                (false, Some(listener), _) => (listener, None),
                (true, _, Some(t)) => (&t.listener, Some(&t.config)),
                _ => return,
            };
            match listener.accept() {
                Ok((stream, peer)) => self.proxy.accept(stream, peer, config, &mut self.env),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors or memory, most likely: back off instead of spinning.
                    crate::proxy::local_failure(&mut self.env, &e);
                    warn_noisy!(Noisy::LocalError, "accept failed: {e}; pausing accepts for 100 ms");
                    self.accept_paused = true;
                    self.env.wheel.insert(self.env.now + 100, Timer::AcceptRetry);
                    return;
                }
            }
        }
    }

    fn on_timer(&mut self, timer: Timer) -> Flow {
        match timer {
            Timer::Session(key) => self.proxy.on_timer(key, &mut self.env),
            Timer::Probe(key) => {
                if let Some(prober) = self.prober.as_mut() {
                    let result = prober.on_timer(key, &mut self.env.probe_cx());
                    self.apply_probes(result);
                }
            }
            Timer::ProbeDue(id, round) => {
                let live = self.env.targets.is_live(id);
                if let Some(prober) = self.prober.as_mut() {
                    if self.env.health.probe_due(id, round, live, &self.env.config) {
                        let result = prober.start(id, &mut self.env.probe_cx());
                        self.apply_probes(result);
                    }
                }
            }
            Timer::Admin(key) => {
                if let Some(admin) = self.admin.as_mut() {
                    admin.on_timer(key);
                }
            }
            Timer::AdminBudget => {
                if let Some(admin) = self.admin.as_mut() {
                    admin.budget_back();
                }
            }
            Timer::Discover => {
                if let Some(discovery) = self.discovery.as_mut() {
                    discovery.due(&self.env.config, &mut self.env.wheel, self.env.now);
                }
            }
            Timer::PoolTrim => {
                let (closed, freed) = self.proxy.trim_pools(self.env.config.limits.max_idle_upstream);
                if closed > 0 {
                    let closed = oplog::count(closed, "idle upstream connection", "idle upstream connections");
                    log::debug!("closed {closed} beyond what the last {POOL_PERIOD} ms needed or max_idle_upstream");
                }
                // The count of log lines held back within the last seconds, so none goes unsaid.
                oplog::report_suppressed();
                let requests = self.proxy.requests();
                let quiet = requests == self.seen_requests;
                (self.seen_requests, self.trimmed_quiet) = (requests, quiet && self.trimmed_quiet);
                if freed >= RETURN_TO_OS {
                    log::debug!("freed {} KiB of buffers the last {POOL_PERIOD} ms did not need", freed >> 10);
                    return_memory_to_os(self.env.now);
                } else if quiet && !self.trimmed_quiet {
                    return_memory_to_os(self.env.now);
                    self.trimmed_quiet = true;
                }
                self.env.wheel.insert(self.env.now + POOL_PERIOD, Timer::PoolTrim);
            }
            Timer::AcceptRetry => {
                self.accept_paused = false;
                self.accept(false);
                self.accept(true);
            }
            Timer::AdminAcceptRetry => {
                if let Some(admin) = self.admin.as_mut() {
                    admin.accept_retry(&mut self.env);
                }
            }
            Timer::DrainDeadline => {
                if self.env.link.is_leader() {
                    let open = oplog::count(self.proxy.len(), "connection", "connections");
                    warn!("shutdown timeout: cutting {open} still in flight");
                }
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// Acts on the signals that came (`runtime::signals` says what each means).
    fn on_signals(&mut self) -> Flow {
        let mut drain = None;
        let Some(signals) = self.signals.as_mut() else {
            return Flow::Go;
        };
        for signal in signals.pending() {
            let name = signals::name(signal);
            match signals::action(signal) {
                Action::Drain => drain = Some(name),
                Action::ReopenLog => {
                    info!("{name}: reopening the access log");
                    self.env.log.reopen();
                    self.env.link.tell_others(|| Note::ReopenLog);
                }
                Action::Reload => self.start_reload(name),
                Action::Ignore => warn!("{name}: ignored"),
            }
        }
        match drain {
            Some(name) => self.drain(name),
            None => Flow::Go,
        }
    }

    /// Stops accepting and lets requests in flight finish; a second signal stops at once.
    /// The leader tells the followers to do the same.
    fn drain(&mut self, signal: &'static str) -> Flow {
        let leader = self.env.link.is_leader();
        if self.env.draining {
            if leader {
                warn!("{signal} again: exiting now");
            }
            return Flow::Stop;
        }
        let shutdown = millis(self.env.config.timeouts.shutdown);
        if leader {
            self.env.link.tell_others(|| Note::Drain(signal));
            let open = oplog::count(self.proxy.len(), "connection", "connections");
            info!("{signal}: draining {open} (at most {shutdown} ms), no longer accepting");
        }
        if let Some(mut listener) = self.listener.take() {
            if let Err(e) = self.env.registry.deregister(&mut listener) {
                warn!("deregistering the listener: {e}");
            }
        }
        if let Some(mut t) = self.tls.take() {
            if let Err(e) = self.env.registry.deregister(&mut t.listener) {
                warn!("deregistering the TLS listener: {e}");
            }
        }
        self.env.draining = true;
        self.env.wheel.insert(self.env.now + shutdown, Timer::DrainDeadline);
        self.proxy.drain(&mut self.env);
        Flow::Go
    }
}
