//! The counters behind `/metrics` and `/status`: plain integers in the reactor, bumped where a
//! request, a probe or a reload ends, and rendered only when someone asks (`render`). Nothing
//! here locks or allocates per request; the per-target rate is a ring of seconds (`rate`), the
//! failover feed a fixed ring of copies (`feed`).
//!
//! Names follow the Prometheus conventions HAProxy's and Traefik's exporters use: a
//! `ringproxy_` prefix, `_total` on counters, seconds and bytes as base units, one label
//! `target` holding the URL as configured.

mod feed;
mod rate;
mod render;

pub use feed::{Failover, Feed};
pub use render::{render, ProxyView, TargetView};

use super::accesslog::{Trace, REASONS};
use crate::ids::TargetId;
use crate::runtime::limits::LocalError;
use rate::Rate;
use std::time::{SystemTime, UNIX_EPOCH};

/// Upper bounds of the request-duration histogram, in milliseconds (rendered as seconds).
const BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Seconds of history behind the status page's requests-per-second sparkline.
pub const RATE_SECONDS: usize = 60;

/// Failovers kept for the status page's feed.
pub const FEED: usize = 50;

/// Seconds since the epoch, as Prometheus timestamps are written.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The last probe of a target: whether it passed, why not, when.
#[derive(Clone, Copy, Debug)]
pub struct ProbeNote {
    pub passed: bool,
    pub why: &'static str,
    pub at: f64,
}

/// What one target did, by slot.
#[derive(Clone)]
pub struct TargetMetrics {
    id: TargetId,
    /// Responses relayed from it, by status class 1xx to 5xx.
    responses: [u64; 5],
    failures: [u64; REASONS.len()],
    /// Attempts on it that were retries of a request that had failed elsewhere (or on it).
    retries: u64,
    /// When it last entered or left the rotation (or joined the table).
    pub changed: f64,
    probes: [u64; 2],
    pub last_probe: Option<ProbeNote>,
    /// Requests whose duration fell in each bucket (not cumulative).
    duration_buckets: [u64; BUCKETS_MS.len()],
    duration_sum_ms: u64,
    duration_count: u64,
    rate: Rate,
}

impl TargetMetrics {
    fn new(id: TargetId, now: f64) -> TargetMetrics {
        TargetMetrics {
            id,
            responses: [0; 5],
            failures: [0; REASONS.len()],
            retries: 0,
            changed: now,
            probes: [0; 2],
            last_probe: None,
            duration_buckets: [0; BUCKETS_MS.len()],
            duration_sum_ms: 0,
            duration_count: 0,
            rate: Rate { buckets: [0; RATE_SECONDS], last: 0 },
        }
    }

    pub fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// Failures by reason, only those that happened.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS.iter().zip(self.failures).filter(|(_, n)| *n > 0).map(|(r, n)| (*r, n))
    }

    pub fn rate(&self, now_ms: u64) -> impl Iterator<Item = u32> + '_ {
        self.rate.series(now_ms)
    }

    /// Adds another worker's counts for the same target.
    fn absorb(&mut self, other: &TargetMetrics) {
        add(&mut self.responses, &other.responses);
        add(&mut self.failures, &other.failures);
        add(&mut self.probes, &other.probes);
        add(&mut self.duration_buckets, &other.duration_buckets);
        self.retries += other.retries;
        self.duration_sum_ms += other.duration_sum_ms;
        self.duration_count += other.duration_count;
        self.changed = self.changed.max(other.changed);
        if other.last_probe.is_some_and(|o| self.last_probe.is_none_or(|p| o.at > p.at)) {
            self.last_probe = other.last_probe;
        }
        self.rate.absorb(&other.rate);
    }
}

/// Adds `from` into `to`, element by element.
fn add(to: &mut [u64], from: &[u64]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t += f;
    }
}

/// How an exchange ended, for the counters.
pub struct Ended<'a> {
    pub seq: u64,
    pub trace: &'a Trace,
    /// The target whose response was relayed; `None` when the proxy answered itself.
    pub answered_by: Option<TargetId>,
    pub status: u16,
    pub request_line: &'a [u8],
    pub duration_ms: u64,
    pub now_ms: u64,
}

/// What the proxy as a whole did (or one worker of it).
pub struct Metrics {
    pub started: f64,
    targets: Vec<Option<TargetMetrics>>,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Answers the proxy made itself, by status.
    local: Box<[u64; 600]>,
    pub reloads: [u64; 2],
    pub last_reload: Option<f64>,
    /// The requests that failed over: the newest kept, all counted.
    pub failovers: Feed,
    /// Tunnels (WebSockets) open now and ever, and the bytes they carried each way.
    pub tunnels_open: u64,
    pub tunnels: u64,
    pub tunnel_bytes_up: u64,
    pub tunnel_bytes_down: u64,
    /// The proxy's own resources that ran out, by `LocalError::ALL`'s order.
    local_errors: [u64; LocalError::ALL.len()],
    /// TLS handshakes that failed or never finished.
    pub tls_handshakes_failed: u64,
    /// Upstream connections closed for bytes nobody asked for.
    pub stray_responses: u64,
}

/// `clone_from` reuses the copy's allocations: a follower copies its counters for the leader
/// up to once a millisecond (`workers`).
impl Clone for Metrics {
    fn clone(&self) -> Metrics {
        let mut copy = Metrics::default();
        copy.clone_from(self);
        copy
    }

    fn clone_from(&mut self, source: &Metrics) {
        self.started = source.started;
        self.targets.clone_from(&source.targets);
        self.connections_accepted = source.connections_accepted;
        self.connections_refused = source.connections_refused;
        *self.local = *source.local;
        self.reloads = source.reloads;
        self.last_reload = source.last_reload;
        self.failovers.clone_from(&source.failovers);
        self.tunnels_open = source.tunnels_open;
        self.tunnels = source.tunnels;
        self.tunnel_bytes_up = source.tunnel_bytes_up;
        self.tunnel_bytes_down = source.tunnel_bytes_down;
        self.local_errors = source.local_errors;
        self.tls_handshakes_failed = source.tls_handshakes_failed;
        self.stray_responses = source.stray_responses;
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started: unix_now(),
            targets: Vec::new(),
            connections_accepted: 0,
            connections_refused: 0,
            local: Box::new([0; 600]),
            reloads: [0; 2],
            last_reload: None,
            failovers: Feed::default(),
            tunnels_open: 0,
            tunnels: 0,
            tunnel_bytes_up: 0,
            tunnel_bytes_down: 0,
            local_errors: [0; LocalError::ALL.len()],
            tls_handshakes_failed: 0,
            stray_responses: 0,
        }
    }
}

impl Metrics {
    /// A target joined the table (at start or by a reload): its counters start from zero.
    pub fn target_added(&mut self, id: TargetId) {
        if self.targets.len() <= id.slot() {
            self.targets.resize(id.slot() + 1, None);
        }
        self.targets[id.slot()] = Some(TargetMetrics::new(id, unix_now()));
    }

    pub fn target_removed(&mut self, id: TargetId) {
        if let Some(slot) = self.targets.get_mut(id.slot()).filter(|m| m.as_ref().is_some_and(|m| m.id == id)) {
            *slot = None;
        }
    }

    pub fn target(&self, id: TargetId) -> Option<&TargetMetrics> {
        self.targets.get(id.slot())?.as_ref().filter(|m| m.id == id)
    }

    fn target_mut(&mut self, id: TargetId) -> Option<&mut TargetMetrics> {
        self.targets.get_mut(id.slot())?.as_mut().filter(|m| m.id == id)
    }

    /// `id` entered or left the rotation.
    pub fn state_changed(&mut self, id: TargetId) {
        if let Some(m) = self.target_mut(id) {
            m.changed = unix_now();
        }
    }

    pub fn probed(&mut self, id: TargetId, result: Result<(), &'static str>) {
        if let Some(m) = self.target_mut(id) {
            m.probes[usize::from(result.is_err())] += 1;
            m.last_probe = Some(ProbeNote { passed: result.is_ok(), why: result.err().unwrap_or(""), at: unix_now() });
        }
    }

    /// The proxy answered a request itself, with no exchange (malformed, too large, too slow).
    pub fn answered_locally(&mut self, status: u16) {
        if let Some(n) = self.local.get_mut(usize::from(status)).filter(|_| status >= 100) {
            *n += 1;
        }
    }

    /// An exchange ended: count its attempts, its answer and, if it failed over, keep it for
    /// the feed.
    pub fn exchange_ended(&mut self, e: &Ended<'_>) {
        for (i, &(target, outcome)) in e.trace.items().iter().enumerate() {
            let Some(m) = self.target_mut(target) else {
                continue;
            };
            if let Some(reason) = outcome.reason() {
                m.failures[reason] += 1;
            }
            if i > 0 {
                m.retries += 1;
            }
        }
        match e.answered_by.and_then(|id| self.target_mut(id)) {
            Some(m) => {
                if let Some(n) = m.responses.get_mut(usize::from(e.status / 100).wrapping_sub(1)) {
                    *n += 1;
                }
                // One bucket per request; `render` sums them into Prometheus' cumulative form.
                if let Some(n) = BUCKETS_MS.iter().position(|&b| e.duration_ms <= b).map(|i| &mut m.duration_buckets[i])
                {
                    *n += 1;
                }
                m.duration_sum_ms += e.duration_ms;
                m.duration_count += 1;
                m.rate.tick(e.now_ms);
            }
            None => self.answered_locally(e.status),
        }
        if e.trace.len() > 1 {
            self.failovers.push(e);
        }
    }

    pub fn tunnel_opened(&mut self) {
        self.tunnels_open += 1;
        self.tunnels += 1;
    }

    /// A tunnel closed, having carried `up` bytes to its target and `down` to its client.
    pub fn tunnel_closed(&mut self, up: u64, down: u64) {
        self.tunnels_open = self.tunnels_open.saturating_sub(1);
        self.tunnel_bytes_up += up;
        self.tunnel_bytes_down += down;
    }

    /// Adds a follower's counters to these (the leader's): what the admin endpoints show.
    /// Reloads and probes are the leader's alone, and the newest failovers of both are kept.
    pub fn absorb(&mut self, other: &Metrics) {
        self.connections_accepted += other.connections_accepted;
        self.connections_refused += other.connections_refused;
        add(&mut self.local[..], &other.local[..]);
        self.failovers.absorb(&other.failovers);
        self.tunnels_open += other.tunnels_open;
        self.tunnels += other.tunnels;
        self.tunnel_bytes_up += other.tunnel_bytes_up;
        self.tunnel_bytes_down += other.tunnel_bytes_down;
        add(&mut self.local_errors, &other.local_errors);
        self.tls_handshakes_failed += other.tls_handshakes_failed;
        self.stray_responses += other.stray_responses;
        for theirs in other.targets.iter().flatten() {
            if let Some(mine) = self.target_mut(theirs.id) {
                mine.absorb(theirs);
            }
        }
    }

    /// The proxy ran out of one of its own resources (not a target's fault).
    pub fn local_error(&mut self, error: LocalError) {
        self.local_errors[error as usize] += 1;
    }

    pub fn reloaded(&mut self, ok: bool) {
        self.reloads[usize::from(!ok)] += 1;
        if ok {
            self.last_reload = Some(unix_now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::accesslog::Outcome;

    #[test]
    fn a_followers_counts_add_up_with_the_leaders() {
        let id = TargetId::first(0);
        let (mut leader, mut follower) = (Metrics::default(), Metrics::default());
        leader.target_added(id);
        follower.target_added(id);
        let mut trace = Trace::default();
        trace.push(id, Outcome::Ok);
        let mut failed = Trace::default();
        failed.push(id, Outcome::Stale);
        failed.push(id, Outcome::Ok);
        let ended = |seq, trace| Ended {
            seq,
            trace,
            answered_by: Some(id),
            status: 200,
            request_line: b"GET / HTTP/1.1",
            duration_ms: 2,
            now_ms: 61_500,
        };
        for seq in 0..3 {
            leader.exchange_ended(&ended(seq, &trace));
        }
        follower.exchange_ended(&Ended { now_ms: 62_100, ..ended(3, &trace) });
        follower.exchange_ended(&Ended { now_ms: 62_200, ..ended(4, &failed) });
        follower.connections_accepted = 2;
        leader.absorb(&follower);
        let tm = leader.target(id).expect("target");
        assert_eq!((tm.requests(), tm.duration_count, leader.connections_accepted), (5, 5, 2));
        let rate: Vec<u32> = tm.rate(63_000).collect();
        assert_eq!(&rate[rate.len() - 2..], &[3, 2]);
        assert_eq!(leader.failovers.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(leader.failovers.total, 1);
    }

    #[test]
    fn the_feed_keeps_the_newest_fifty() {
        let mut m = Metrics::default();
        let id = TargetId::first(0);
        m.target_added(id);
        let mut trace = Trace::default();
        trace.push(id, Outcome::Stale);
        trace.push(id, Outcome::Ok);
        for seq in 0..(FEED as u64 + 7) {
            m.exchange_ended(&Ended {
                seq,
                trace: &trace,
                answered_by: Some(id),
                status: 200,
                request_line: b"GET / HTTP/1.1",
                duration_ms: 3,
                now_ms: 5,
            });
        }
        let seqs: Vec<u64> = m.failovers.iter().map(|f| f.seq).collect();
        assert_eq!(seqs.len(), FEED);
        assert_eq!(seqs[0], FEED as u64 + 6);
        assert_eq!(m.target(id).map(TargetMetrics::requests), Some(FEED as u64 + 7));
    }
}
