//! The event loop: poll, hand each event to the owner of its token, run the timers that came
//! due, act on signals. It holds no protocol logic: the proxy's sessions and the prober do the
//! work, and what they share lives in `proxy::Env`.
//!
//! Events are hints: every handler confirms with the syscall itself (`WouldBlock`,
//! `take_error`), so an event that arrives for a slab slot freed and reused within the same batch
//! costs at most one wasted syscall, never a wrong action.

use crate::admin::{self, Admin, View};
use crate::balance::{Reconciled, Targets};
use crate::config::{Config, ConfigError, MAX_TARGETS};
use crate::discovery::Discovery;
use crate::health::probe::{ProbeResult, Prober};
use crate::health::Health;
use crate::observe::accesslog::AccessLog;
use crate::observe::metrics::Metrics;
use crate::proxy::{Env, Proxy};
use crate::runtime::clock::{millis, Clock};
use crate::runtime::resolve::{self, Resolver};
use crate::runtime::signals::{self, Action};
use crate::runtime::timer::Timer;
use crate::runtime::token::{decode, token, Kind};
use crate::runtime::wheel::Wheel;
use crate::tls::{self, TlsConfig};
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Waker};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

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
    signals: Signals,
    clock: Clock,
    accept_paused: bool,
    prober: Prober,
    proxy: Proxy,
    env: Env,
    /// Probe results waiting to be applied, reused between passes.
    probe_results: Vec<ProbeResult>,
    admin: Option<Admin>,
    reload: Reload,
    discovery: Discovery,
    tls: Option<TlsListener>,
}

/// A config file read and checked off the loop, with the access log it names opened if that
/// changed.
struct Loaded {
    config: Config,
    log: Option<AccessLog>,
    /// The certificates, read and checked.
    tls: Option<TlsConfig>,
}

/// Reloads on SIGHUP: the file is read, validated and its access log opened on a helper
/// thread, and the result comes back through a channel and the loop's waker.
struct Reload {
    path: Option<PathBuf>,
    waker: Arc<Waker>,
    done: Sender<Result<Loaded, ConfigError>>,
    results: Receiver<Result<Loaded, ConfigError>>,
    /// A reload is being read; another SIGHUP meanwhile asks for one more after it.
    running: bool,
    again: bool,
}

impl Server {
    /// Binds the listener and looks up every target once. Blocking here is fine: the loop has
    /// not started.
    pub fn new(config: &Config) -> io::Result<Server> {
        let config = config.clone();
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token(Kind::Listener(PROXY_LISTENER)), Interest::READABLE)?;
        let waker = Arc::new(Waker::new(&registry, token(Kind::Waker))?);
        let (done, results) = channel();
        let reload = Reload { path: None, waker: Arc::clone(&waker), done, results, running: false, again: false };
        let mut signals = Signals::new(signals::HANDLED)?;
        registry.register(&mut signals, token(Kind::Signals), Interest::READABLE)?;

        let addrs = config
            .targets
            .iter()
            .map(|t| match t.literal_addr() {
                Some(addr) => vec![addr],
                None => match resolve::lookup_all(t.bare_host(), t.port) {
                    Ok(all) if t.discover => all,
                    Ok(all) => resolve::preferred(&all).into_iter().collect(),
                    Err(e) if t.discover => {
                        warn!("{}: {e}; looking it up again every {:?}", t.url, config.resolve_interval);
                        Vec::new()
                    }
                    Err(e) => {
                        warn!("target {} down: {e} (probing every {:?})", t.url, config.sleeping);
                        Vec::new()
                    }
                },
            })
            .collect();
        let seed = crate::proxy::random_seed();
        let targets = Targets::new(&config, addrs);
        if targets.refused() > 0 {
            warn!("{} discovered addresses left out: the table holds {MAX_TARGETS} targets at most", targets.refused());
        }
        let health = Health::new(&targets, seed);
        let mut env = Env {
            log: AccessLog::start(&config.access_log, config.access_log_format)?,
            now: 0,
            draining: false,
            registry,
            wheel: Wheel::new(0),
            targets,
            health,
            metrics: Metrics::default(),
            config,
        };
        let ids: Vec<_> = env.targets.ids().collect();
        for &id in &ids {
            env.metrics.target_added(id);
        }
        let admin = match env.config.admin {
            Some(addr) => match Admin::bind(addr, &env) {
                Ok(admin) => Some(admin),
                Err(e) if env.config.admin_named => {
                    return Err(io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))
                }
                Err(e) => {
                    error!("admin endpoints off: cannot listen on the default {addr}: {e} (set \"admin\" to a free address, or null)");
                    None
                }
            },
            None => None,
        };
        for id in ids {
            let live = env.targets.is_live(id);
            env.health.schedule_probe(id, live, &env.config, &mut env.wheel, 0);
        }
        let tls = match &env.config.tls {
            Some(spec) => {
                let config = tls::load(spec).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                let mut listener = TcpListener::bind(spec.listen)
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS listener {}: {e}", spec.listen)))?;
                let addr = listener.local_addr()?;
                env.registry.register(&mut listener, token(Kind::Listener(TLS_LISTENER)), Interest::READABLE)?;
                Some(TlsListener { listener, addr, config })
            }
            None => None,
        };
        let mut discovery = Discovery::start(Arc::clone(&waker))?;
        discovery.round(&env.config, &mut env.wheel, 0);
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            clock: Clock::start(),
            accept_paused: false,
            prober: Prober::new(Resolver::start(waker)?, &env.config, &env.targets),
            proxy: Proxy::new(&env.config),
            env,
            probe_results: Vec::new(),
            admin,
            reload,
            discovery,
            tls,
        })
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
        self.reload.path = Some(path);
    }

    /// Runs until a signal's drain completes.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        loop {
            let admin_requeued = self.admin.as_ref().is_some_and(Admin::has_requeued);
            let timeout = if self.proxy.has_requeued() || admin_requeued {
                Some(Duration::ZERO)
            } else {
                self.env.wheel.next_deadline().map(|d| Duration::from_millis(d.saturating_sub(self.env.now)))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.env.now = self.clock.now();
            self.proxy.sweep_idle(&events, &self.env);
            let mut flow = Flow::Go;
            for event in events.iter() {
                flow = self.on_event(event);
                if flow == Flow::Stop {
                    break;
                }
            }
            if flow == Flow::Go {
                self.proxy.pump_requeued(&mut self.env);
                self.pump_admin();
                self.env.wheel.poll(self.env.now, &mut fired);
                for timer in fired.drain(..) {
                    flow = self.on_timer(timer);
                    if flow == Flow::Stop {
                        break;
                    }
                }
            }
            self.env.log.flush();
            if flow == Flow::Stop {
                return Ok(());
            }
            if self.env.draining && self.proxy.is_empty() {
                info!("drained; exiting");
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
                let result = self.prober.on_event(key, event, &mut self.env.probe_cx());
                self.apply_probes(result);
            }
            Some(Kind::Waker) => {
                self.take_reload();
                self.take_discoveries();
                let mut results = std::mem::take(&mut self.probe_results);
                self.prober.resolved(&mut self.env.probe_cx(), &mut results);
                self.apply_probes(results.drain(..));
                self.probe_results = results;
            }
            Some(Kind::Signals) => return self.on_signals(),
            None => {}
        }
        Flow::Go
    }

    /// Gives admin connections that used up their turn another one.
    fn pump_admin(&mut self) {
        let Some(admin) = self.admin.as_mut().filter(|a| a.has_requeued()) else {
            return;
        };
        for touched in admin.pump_requeued(&View { env: &self.env, proxy: &self.proxy }) {
            admin.rearm(touched, &mut self.env);
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
                    // Out of file descriptors, most likely: back off instead of spinning.
                    error!("accept failed: {e}; pausing accepts for 100 ms");
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
                let result = self.prober.on_timer(key, &mut self.env.probe_cx());
                self.apply_probes(result);
            }
            Timer::ProbeDue(id, round) => {
                let live = self.env.targets.is_live(id);
                if self.env.health.probe_due(id, round, live, &self.env.config) {
                    let result = self.prober.start(id, &mut self.env.probe_cx());
                    self.apply_probes(result);
                }
            }
            Timer::Admin(key) => {
                if let Some(admin) = self.admin.as_mut() {
                    admin.on_timer(key);
                }
            }
            Timer::Discover => self.discovery.due(&self.env.config, &mut self.env.wheel, self.env.now),
            Timer::AcceptRetry => {
                self.accept_paused = false;
                self.accept(false);
                self.accept(true);
            }
            Timer::DrainDeadline => {
                warn!("shutdown timeout: cutting {} connections still in flight", self.proxy.len());
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// Acts on the signals that came (`runtime::signals` says what each means).
    fn on_signals(&mut self) -> Flow {
        let mut drain = None;
        for signal in self.signals.pending() {
            let name = signals::name(signal);
            match signals::action(signal) {
                Action::Drain => drain = Some(name),
                Action::ReopenLog => {
                    info!("{name}: reopening the access log");
                    self.env.log.reopen();
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

    /// SIGHUP: reads the config file again, off the loop; `take_reload` applies it.
    fn start_reload(&mut self, signal: &str) {
        let Some(path) = self.reload.path.clone() else {
            warn!("{signal}: no config file to reload; ignored");
            return;
        };
        if self.env.draining {
            warn!("{signal}: draining; reload ignored");
            return;
        }
        if self.reload.running {
            self.reload.again = true;
            return;
        }
        info!("{signal}: reloading {}", path.display());
        let (done, waker) = (self.reload.done.clone(), Arc::clone(&self.reload.waker));
        let running_log = self.env.config.access_log.clone();
        let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
            let loaded = Config::load(&path).and_then(|config| {
                let tls = config.tls.as_ref().map(tls::load).transpose()?;
                let log =
                    match config.access_log == running_log {
                        true => None,
                        false => Some(AccessLog::start(&config.access_log, config.access_log_format).map_err(|e| {
                            ConfigError { key: "access_log".into(), problem: format!("cannot open: {e}") }
                        })?),
                    };
                Ok(Loaded { config, log, tls })
            });
            let _ = done.send(loaded);
            let _ = waker.wake();
        });
        match spawned {
            Ok(_) => self.reload.running = true,
            Err(e) => error!("{signal}: cannot start reading the config: {e}"),
        }
    }

    /// Applies a config read by `start_reload`, or keeps the running one if it was invalid.
    fn take_reload(&mut self) {
        while let Ok(result) = self.reload.results.try_recv() {
            self.reload.running = false;
            match result {
                Ok(loaded) => self.apply_config(loaded),
                Err(e) => {
                    let path = self.reload.path.as_deref().unwrap_or(std::path::Path::new("-")).display();
                    error!("reload failed: {path}: {e}; keeping the running config");
                    self.env.metrics.reloaded(false);
                }
            }
            if std::mem::take(&mut self.reload.again) {
                self.start_reload("SIGHUP");
            }
        }
    }

    /// Swaps a new config in. Requests in flight finish on the target they were sent to; a
    /// removed target's idle connections close now. What cannot change without dropping
    /// connections (the listen address, the buffer size) keeps its running value, with a line.
    fn apply_config(&mut self, Loaded { mut config, log, tls }: Loaded) {
        let old = &self.env.config;
        for warning in &config.warnings {
            warn!("reload: {warning}");
        }
        if config.listen != old.listen {
            let running = self.local_addr;
            warn!("reload: `listen` changed to {}: that needs a restart; still listening on {running}", config.listen);
            config.listen = old.listen;
        }
        if config.max_request_head != old.max_request_head || config.chunk_limits != old.chunk_limits {
            warn!("reload: `max_request_head`, `max_chunk_line` and `max_trailer_size` size the buffers and need a restart; keeping the running values");
            (config.max_request_head, config.chunk_limits) = (old.max_request_head, old.chunk_limits);
        }
        let old_tls_listen = old.tls.as_ref().map(|t| t.listen);
        if config.tls.as_ref().map(|t| t.listen) != old_tls_listen {
            warn!("reload: the TLS listener (`tls.listen`) changed: that needs a restart; keeping the running one");
            config.tls = old.tls.clone();
        } else if let (Some(running), Some(renewed)) = (self.tls.as_mut(), tls) {
            // New connections get the certificates just read; open ones keep theirs.
            running.config = renewed;
        }
        if config.admin != self.env.config.admin {
            config.admin = self.move_admin(config.admin);
        }
        if let Some(log) = log {
            self.env.log.replace(log);
        }
        self.env.log.set_format(config.access_log_format);
        self.env.targets.configure(&config);
        let changes = self.env.targets.reconcile(&config.targets, self.env.now);
        self.env.config = config;
        self.targets_changed(&changes);
        let env = &mut self.env;
        let ids: Vec<_> = env.targets.ids().collect();
        for id in ids {
            let live = env.targets.is_live(id);
            env.health.schedule_probe(id, live, &env.config, &mut env.wheel, env.now);
        }
        self.discovery.round(&env.config, &mut env.wheel, env.now);
        env.metrics.reloaded(true);
        let (live, all) = (env.targets.live_count(), env.targets.len());
        let (added, removed) = (changes.added.len(), changes.removed.len());
        info!("reloaded the config: {all} targets ({added} added, {removed} removed), {live} live");
    }

    /// The target table changed (a reload, a lookup of a discovered name): every per-target
    /// store follows it, and a new target out of the rotation is probed at once.
    fn targets_changed(&mut self, changes: &Reconciled) {
        let env = &mut self.env;
        for &id in &changes.removed {
            env.health.target_removed(id, &mut env.wheel);
            env.metrics.target_removed(id);
        }
        for &id in &changes.added {
            env.health.target_added(id);
            env.metrics.target_added(id);
            if !env.targets.is_live(id) {
                env.health.probe_now(id, &mut env.wheel, env.now);
            }
        }
        if changes.refused > 0 {
            warn!("{} addresses left out: the table holds {MAX_TARGETS} targets at most", changes.refused);
        }
        self.proxy.targets_changed(&changes.added, &changes.removed);
        self.prober.reconfigure(&env.config, &env.targets);
    }

    /// Applies what lookups of discovered names found.
    fn take_discoveries(&mut self) {
        for (index, addrs) in self.discovery.answers(&self.env.config) {
            let entry = self.env.config.targets[index].clone();
            let changes = self.env.targets.discovered(index, &entry, &addrs);
            if changes.added.is_empty() && changes.removed.is_empty() {
                continue;
            }
            let (added, removed) = (changes.added.len(), changes.removed.len());
            info!("{}: {} addresses ({added} new, {removed} gone)", entry.url, addrs.len());
            for url in &changes.gone {
                info!("target {url} gone: its name no longer resolves to it");
            }
            self.targets_changed(&changes);
        }
    }

    /// Moves the admin listener to `to`; the address it ends up on. A move to another address
    /// on the same port (127.0.0.1:9000 to 0.0.0.0:9000) must close the old listener first.
    fn move_admin(&mut self, to: Option<SocketAddr>) -> Option<SocketAddr> {
        let (from, configured) = (self.admin_addr(), self.env.config.admin);
        let bound = match to {
            Some(addr) => match Admin::bind(addr, &self.env) {
                Ok(admin) => Some(admin),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && from.is_some_and(|f| f.port() == addr.port()) => {
                    if let Some(old) = self.admin.take() {
                        old.close(&mut self.env);
                    }
                    match Admin::bind(addr, &self.env) {
                        Ok(admin) => Some(admin),
                        Err(e) => {
                            error!("reload: cannot move the admin listener to {addr}: {e}; it stays where it was");
                            self.admin = from.and_then(|f| Admin::bind(f, &self.env).ok());
                            return configured;
                        }
                    }
                }
                Err(e) => {
                    error!("reload: cannot move the admin listener to {addr}: {e}; it stays where it was");
                    return configured;
                }
            },
            None => None,
        };
        if let Some(old) = std::mem::replace(&mut self.admin, bound) {
            old.close(&mut self.env);
        }
        match self.admin_addr() {
            Some(addr) => info!("admin endpoints on {addr}"),
            None => info!("admin endpoints off"),
        }
        to
    }

    /// Stops accepting and lets requests in flight finish; a second signal stops at once.
    fn drain(&mut self, signal: &str) -> Flow {
        if self.env.draining {
            warn!("{signal} again: exiting now");
            return Flow::Stop;
        }
        let shutdown = millis(self.env.config.shutdown_timeout);
        info!("{signal}: draining {} connections (at most {shutdown} ms), no longer accepting", self.proxy.len());
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

/// The name the loop had before the redesign, for code written against it.
pub type Reactor = Server;
