//! Several event loops in one process (`"workers"`), and what they share.
//!
//! Each worker is a whole loop on its own thread with its own listener in one `SO_REUSEPORT`
//! group, its own sessions, pools, wheel and copy of the target table. Nothing on the hot path
//! takes a lock: the only thing every request touches is the ring's sequence number, one
//! atomic add, so the `seq % live` rotation stays exact across workers.
//!
//! Worker 0 leads: it alone probes, looks up discovered names, reloads, handles signals and
//! serves the admin endpoints. The others follow through their mailboxes (`Note`), each with a
//! waker so a note reaches a sleeping loop at once:
//! - a worker that takes a target out tells every other worker directly, so the target leaves
//!   every rotation within a loop pass; the leader then probes it and tells everyone again, so
//!   that a note crossing a revival in flight cannot leave the workers disagreeing;
//! - only the leader's probes bring a target back, and it tells the followers;
//! - reloads, discovery answers, drains and log reopens go from the leader to the followers,
//!   which apply them in the order sent, so every copy of the table takes the same slots.
//!
//! Followers copy their counters into a snapshot at most once a millisecond while they are
//! busy; the admin endpoints add the snapshots to the leader's own counters.

use crate::balance::TargetId;
use crate::config::Config;
use crate::health::Failure;
use crate::observe::accesslog::AccessLog;
use crate::observe::metrics::Metrics;
use crate::tls::TlsConfig;
use log::warn;
use mio::Waker;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What one worker tells another.
pub enum Note {
    /// A worker took this target out of its rotation, for this reason.
    Down(TargetId, Failure),
    /// The leader's probes brought it back, at this address.
    Up(TargetId, Option<SocketAddr>),
    /// A follower's request to it timed out: the leader probes it now.
    Suspect(TargetId),
    /// The leader reloaded the config: the same table change, and this worker's access log if
    /// the file moved.
    Reload(Box<Reloaded>),
    /// A lookup of the `discover` target at this index found these addresses.
    Discovered(usize, Vec<SocketAddr>),
    ReopenLog,
    /// Stop accepting and finish what is in flight; the signal's name.
    Drain(&'static str),
    /// Close everything now.
    Stop,
}

/// A reload as the leader applied it (the keys that need a restart already put back).
pub struct Reloaded {
    pub config: Config,
    pub log: Option<AccessLog>,
    pub tls: Option<TlsConfig>,
}

/// A follower's counters and gauges, as of its last copy.
#[derive(Default)]
pub struct Snapshot {
    pub metrics: Option<Metrics>,
    pub client_connections: usize,
    /// Upstream connections by target: (serving, idle).
    pub upstreams: Vec<(TargetId, usize, usize)>,
}

struct Peer {
    /// Set when `inbox` has notes, so that a loop checks it with one load between events.
    mail: AtomicBool,
    inbox: Mutex<Vec<Note>>,
    waker: Arc<Waker>,
    snapshot: Mutex<Snapshot>,
}

/// What the workers share.
pub struct Shared {
    peers: Box<[Peer]>,
    /// The ring's sequence number: the next request's position, across all workers.
    seq: AtomicU64,
    /// Followers whose loop has not returned yet.
    running: AtomicUsize,
}

/// One worker's handle on what the workers share.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
    me: usize,
}

/// A poisoned lock only means another worker panicked while holding it; the data is plain
/// counters and notes, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// One link per worker, each worker woken through its waker; worker 0 leads.
    pub fn group(wakers: Vec<Arc<Waker>>) -> Vec<Link> {
        let count = wakers.len();
        let peers = wakers
            .into_iter()
            .map(|waker| Peer {
                mail: AtomicBool::new(false),
                inbox: Mutex::new(Vec::new()),
                waker,
                snapshot: Mutex::new(Snapshot::default()),
            })
            .collect();
        let shared = Arc::new(Shared { peers, seq: AtomicU64::new(0), running: AtomicUsize::new(count - 1) });
        (0..count).map(|me| Link { shared: Arc::clone(&shared), me }).collect()
    }

    pub fn is_leader(&self) -> bool {
        self.me == 0
    }

    /// This worker's number, 0 for the leader.
    pub fn index(&self) -> usize {
        self.me
    }

    pub fn count(&self) -> usize {
        self.shared.peers.len()
    }

    /// The next request's position in the ring.
    pub fn next_seq(&self) -> u64 {
        self.shared.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Leaves `note` in worker `to`'s mailbox and wakes it.
    pub fn send(&self, to: usize, note: Note) {
        let peer = &self.shared.peers[to];
        lock(&peer.inbox).push(note);
        peer.mail.store(true, Ordering::Release);
        if let Err(e) = peer.waker.wake() {
            warn!("cannot wake worker {to}: {e}");
        }
    }

    /// Sends a note made by `note` to every worker but this one.
    pub fn tell_others(&self, note: impl Fn() -> Note) {
        for to in (0..self.count()).filter(|&to| to != self.me) {
            self.send(to, note());
        }
    }

    /// Whether notes wait in this worker's mailbox: one load, cheap enough between events.
    pub fn has_mail(&self) -> bool {
        self.count() > 1 && self.shared.peers[self.me].mail.load(Ordering::Acquire)
    }

    /// Moves this worker's notes into `into`, oldest first.
    pub fn take_mail(&self, into: &mut Vec<Note>) {
        let peer = &self.shared.peers[self.me];
        peer.mail.store(false, Ordering::Release);
        into.append(&mut lock(&peer.inbox));
    }

    /// Copies this follower's counters and gauges where the leader reads them.
    pub fn publish(
        &self,
        metrics: &Metrics,
        client_connections: usize,
        upstreams: impl Iterator<Item = (TargetId, usize, usize)>,
    ) {
        let mut snapshot = lock(&self.shared.peers[self.me].snapshot);
        match snapshot.metrics.as_mut() {
            Some(copy) => copy.clone_from(metrics),
            None => snapshot.metrics = Some(metrics.clone()),
        }
        snapshot.client_connections = client_connections;
        snapshot.upstreams.clear();
        snapshot.upstreams.extend(upstreams);
    }

    /// Calls `each` with every follower's last snapshot.
    pub fn with_snapshots(&self, mut each: impl FnMut(&Snapshot)) {
        for peer in self.shared.peers.iter().skip(1) {
            each(&lock(&peer.snapshot));
        }
    }

    /// A follower's loop returned: the leader may be waiting for the last one to exit.
    pub fn exited(&self) {
        if !self.is_leader() {
            self.shared.running.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = self.shared.peers[0].waker.wake() {
                warn!("cannot wake the leader: {e}");
            }
        }
    }

    /// Followers still running.
    pub fn followers_running(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }
}
