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
//! - a follower that takes a target out tells the leader, which takes it out, probes it and
//!   tells every follower: each follower hears of every change of a target's state in the
//!   order the leader made it, so the copies cannot end up disagreeing, and a note crosses
//!   two loops that check their mailbox between events, well within a millisecond;
//! - only the leader's probes bring a target back, and it tells the followers, with any new
//!   address a probe's lookup found;
//! - `max_connections` holds for the process: one shared count, changed per connection;
//! - reloads, discovery answers, drains and log reopens go from the leader to the followers,
//!   which apply them in the order sent, so every copy of the table takes the same slots.
//!
//! Followers copy their counters into a snapshot at most once a millisecond while they are
//! busy; the admin endpoints add the snapshots to the leader's own counters.

use crate::config::Config;
use crate::health::Failure;
use crate::ids::TargetId;
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
    /// The leader's probes brought it back.
    Up(TargetId),
    /// A probe's lookup found the target's name at a new address.
    Addr(TargetId, SocketAddr),
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
#[derive(Clone, Default)]
pub struct Snapshot {
    pub metrics: Option<Metrics>,
    pub client_connections: usize,
    /// Upstream connections by target: (serving, idle).
    pub upstreams: Vec<(TargetId, usize, usize)>,
}

/// Aligned to two cache lines (what x86's adjacent-line prefetch pairs), so that one worker's
/// writes never slow another's reads of a neighbouring field.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Peer {
    /// Set when `inbox` has notes, so that a loop checks it with one load between events.
    mail: AtomicBool,
    /// The worker's loop has returned: notes for it are dropped.
    gone: AtomicBool,
    inbox: Mutex<Vec<Note>>,
    waker: Arc<Waker>,
    snapshot: Mutex<Snapshot>,
}

/// What the workers share.
pub struct Shared {
    peers: Box<[Padded<Peer>]>,
    /// The ring's sequence number: the next request's position, across all workers.
    seq: Padded<AtomicU64>,
    /// Client connections open, across all workers.
    connections: Padded<AtomicUsize>,
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
            .map(|waker| {
                Padded(Peer {
                    mail: AtomicBool::new(false),
                    gone: AtomicBool::new(false),
                    inbox: Mutex::new(Vec::new()),
                    waker,
                    snapshot: Mutex::new(Snapshot::default()),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            peers,
            seq: Padded(AtomicU64::new(0)),
            connections: Padded(AtomicUsize::new(0)),
            running: AtomicUsize::new(count - 1),
        });
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

    /// Takes a client connection if the process has fewer than `max` open; `release` gives
    /// it back when it closes.
    pub fn admit(&self, max: usize) -> bool {
        let open = self.shared.connections.fetch_add(1, Ordering::Relaxed);
        if open < max {
            return true;
        }
        self.release();
        false
    }

    pub fn release(&self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Leaves `note` in worker `to`'s mailbox and wakes it.
    pub fn send(&self, to: usize, note: Note) {
        let peer = &self.shared.peers[to];
        let mut inbox = lock(&peer.inbox);
        if peer.gone.load(Ordering::Acquire) {
            return;
        }
        inbox.push(note);
        drop(inbox);
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

    /// Copies this follower's counters and gauges where the leader reads them; false, and
    /// nothing copied, while the leader is reading the last copy (the loop tries again soon).
    pub fn publish(
        &self,
        metrics: &Metrics,
        client_connections: usize,
        upstreams: impl Iterator<Item = (TargetId, usize, usize)>,
    ) -> bool {
        let Ok(mut snapshot) = self.shared.peers[self.me].snapshot.try_lock() else {
            return false;
        };
        match snapshot.metrics.as_mut() {
            Some(copy) => copy.clone_from(metrics),
            None => snapshot.metrics = Some(metrics.clone()),
        }
        snapshot.client_connections = client_connections;
        snapshot.upstreams.clear();
        snapshot.upstreams.extend(upstreams);
        true
    }

    /// Every follower's last snapshot, copied out so that no follower waits on the caller.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.shared.peers.iter().skip(1).map(|peer| lock(&peer.snapshot).clone()).collect()
    }

    /// A follower's loop returned (or its thread is unwinding): no more notes for it, and the
    /// leader, which may be waiting for the last one, is woken.
    pub fn exited(&self) {
        if self.is_leader() {
            return;
        }
        let peer = &self.shared.peers[self.me];
        let mut inbox = lock(&peer.inbox);
        peer.gone.store(true, Ordering::Release);
        inbox.clear();
        drop(inbox);
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
        if let Err(e) = self.shared.peers[0].waker.wake() {
            warn!("cannot wake the leader: {e}");
        }
    }

    /// Followers still running.
    pub fn followers_running(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }
}
