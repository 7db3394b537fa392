//! Reloading the config on SIGHUP, and applying what changed in the target table (a reload, a
//! lookup of a discovered name): the parts of the loop that swap state, kept apart from the
//! loop itself. The file is read, validated and its access log and certificates opened on a
//! helper thread; the result comes back through a channel and the loop's waker.

use super::Server;
use crate::admin::Admin;
use crate::config::{Config, ConfigError, MAX_TARGETS};
use crate::observe::accesslog::AccessLog;
use crate::observe::oplog::count;
use crate::targets::Reconciled;
use crate::tls::{self, TlsConfig};
use crate::workers::{Note, Reloaded};
use log::{error, info, warn};
use mio::Waker;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// A config file read and checked off the loop, with the access log it names opened if that
/// changed.
pub(super) struct Loaded {
    config: Config,
    /// One per worker when the file names another log, none when it names the running one.
    logs: Vec<AccessLog>,
    /// The certificates, read and checked.
    tls: Option<TlsConfig>,
}

/// Reloads on SIGHUP: the file is read, validated and its access log opened on a helper
/// thread, and the result comes back through a channel and the loop's waker.
pub(super) struct Reload {
    path: Option<PathBuf>,
    pub(super) waker: Arc<Waker>,
    done: Sender<Result<Loaded, ConfigError>>,
    results: Receiver<Result<Loaded, ConfigError>>,
    /// A reload is being read; another SIGHUP meanwhile asks for one more after it.
    running: bool,
    again: bool,
}

impl Reload {
    pub(super) fn new(waker: Arc<Waker>) -> Reload {
        let (done, results) = channel();
        Reload { path: None, waker, done, results, running: false, again: false }
    }

    /// The file SIGHUP reads.
    pub(super) fn watch(&mut self, path: PathBuf) {
        self.path = Some(path);
    }
}

impl Server {
    /// SIGHUP: reads the config file again, off the loop; `take_reload` applies it.
    pub(super) fn start_reload(&mut self, signal: &str) {
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
        let running_log = self.env.config.logging.access_log.clone();
        let workers = self.env.link.count();
        let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
            let loaded = Config::load(&path).and_then(|config| {
                let tls = config.tls.as_ref().map(tls::load).transpose()?;
                let moved = config.logging.access_log != running_log;
                let logs = (0..if moved { workers } else { 0 })
                    .map(|_| AccessLog::start(&config.logging.access_log, config.logging.access_log_format))
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(|e| ConfigError { key: "access_log".into(), problem: format!("cannot open: {e}") })?;
                Ok(Loaded { config, logs, tls })
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
    pub(super) fn take_reload(&mut self) {
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
    fn apply_config(&mut self, Loaded { mut config, logs, tls }: Loaded) {
        let old = &self.env.config;
        for warning in &config.warnings {
            warn!("reload: {warning}");
        }
        if config.listen != old.listen {
            let running = self.local_addr;
            warn!("reload: `listen` changed to {}: that needs a restart; still listening on {running}", config.listen);
            config.listen = old.listen;
        }
        if config.workers != old.workers {
            warn!(
                "reload: `workers` changed to {}: that needs a restart; still running {}",
                config.workers, old.workers
            );
            config.workers = old.workers;
        }
        if let Some(lowered) = super::fit_connections(&mut config) {
            warn!("reload: {lowered}");
        }
        if config.limits.max_request_head != old.limits.max_request_head
            || config.limits.chunk_limits != old.limits.chunk_limits
        {
            warn!("reload: `max_request_head`, `max_chunk_line` and `max_trailer_size` size the buffers and need a restart; keeping the running values");
            (config.limits.max_request_head, config.limits.chunk_limits) =
                (old.limits.max_request_head, old.limits.chunk_limits);
        }
        let old_tls_listen = old.tls.as_ref().map(|t| t.listen);
        let mut tls = tls;
        if config.tls.as_ref().map(|t| t.listen) != old_tls_listen {
            warn!("reload: the TLS listener (`tls.listen`) changed: that needs a restart; keeping the running one");
            config.tls = old.tls.clone();
            tls = None;
        } else if let (Some(running), Some(renewed)) = (self.tls.as_mut(), tls.as_ref()) {
            // New connections get the certificates just read; open ones keep theirs.
            running.config = Arc::clone(renewed);
        }
        if config.admin.addr != self.env.config.admin.addr {
            config.admin.addr = self.move_admin(config.admin.addr);
        }
        let mut logs = logs.into_iter();
        if let Some(log) = logs.next() {
            self.env.log.replace(log);
        }
        for to in 1..self.env.link.count() {
            let (config, log, tls) = (config.clone(), logs.next(), tls.clone());
            self.env.link.send(to, Note::Reload(Box::new(Reloaded { config, log, tls })));
        }
        let changes = self.apply_table(config);
        self.proxy.lifecycle(&mut self.env).schedule_probes();
        let env = &mut self.env;
        if let Some(discovery) = self.discovery.as_mut() {
            discovery.round(&env.config, &mut env.wheel, env.now);
        }
        env.metrics.reloaded(true);
        let (live, all) = (env.targets.live_count(), env.targets.len());
        let (added, removed) = (changes.added.len(), changes.removed.len());
        let all = count(all, "target", "targets");
        info!("reloaded the config: {all} ({added} added, {removed} removed), {live} live");
    }

    /// Takes a reloaded config's table and settings, as every worker does the same way.
    pub(super) fn apply_table(&mut self, config: Config) -> Reconciled {
        self.env.log.set_format(config.logging.access_log_format);
        self.env.balancer.configure(&config);
        let changes = self.env.targets.reconcile(&config.targets, self.env.now);
        self.env.config = config;
        self.targets_changed(&changes);
        changes
    }

    /// The target table changed (a reload, a lookup of a discovered name): every per-target
    /// store follows it (`Lifecycle::table_changed`), and the prober makes its requests again.
    fn targets_changed(&mut self, changes: &Reconciled) {
        self.proxy.lifecycle(&mut self.env).table_changed(changes);
        let env = &mut self.env;
        if changes.refused > 0 && env.link.is_leader() {
            let refused = count(changes.refused, "address", "addresses");
            warn!("{refused} left out: the table holds {MAX_TARGETS} targets at most");
        }
        if let Some(prober) = self.prober.as_mut() {
            prober.reconfigure(&env.config, &env.targets);
        }
    }

    /// Applies what lookups of discovered names found, and has the followers do the same.
    pub(super) fn take_discoveries(&mut self) {
        let Some(discovery) = self.discovery.as_mut() else {
            return;
        };
        for (index, addrs) in discovery.answers(&self.env.config) {
            if self.apply_discovered(index, &addrs) {
                self.env.link.tell_others(|| Note::Discovered(index, addrs.clone()));
            }
        }
    }

    /// Takes the addresses a lookup of the `discover` entry at `index` found; whether the
    /// table changed. Only the leader logs it.
    pub(super) fn apply_discovered(&mut self, index: usize, addrs: &[SocketAddr]) -> bool {
        let Some(entry) = self.env.config.targets.get(index).cloned() else {
            return false;
        };
        let changes = self.env.targets.discovered(index, &entry, addrs);
        if changes.added.is_empty() && changes.removed.is_empty() {
            return false;
        }
        if self.env.link.is_leader() {
            let (added, removed) = (changes.added.len(), changes.removed.len());
            info!("{}: {} ({added} new, {removed} gone)", entry.url, count(addrs.len(), "address", "addresses"));
            for url in &changes.gone {
                info!("target {url} gone: its name no longer resolves to it");
            }
        }
        self.targets_changed(&changes);
        true
    }

    /// Moves the admin listener to `to`; the address it ends up on. A move to another address
    /// on the same port (127.0.0.1:9000 to 0.0.0.0:9000) must close the old listener first.
    fn move_admin(&mut self, to: Option<SocketAddr>) -> Option<SocketAddr> {
        let (from, configured) = (self.admin_addr(), self.env.config.admin.addr);
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
}
