//! The counters behind `/metrics` and `/status`: plain integers in the reactor, bumped where a
//! request, a probe or a reload ends, and rendered only when someone asks. Nothing here locks
//! or allocates per request; the failover feed is a fixed ring of copies.
//!
//! Names follow the Prometheus conventions HAProxy's and Traefik's exporters use: a
//! `ringproxy_` prefix, `_total` on counters, seconds and bytes as base units, one label
//! `target` holding the URL as configured.

use super::accesslog::{self, Trace, REASONS};
use super::oplog;
use crate::balance::TargetId;
use crate::runtime::limits::LocalError;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
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

/// Requests per second over the last minute, one bucket per second of the loop clock.
#[derive(Clone)]
struct Rate {
    buckets: [u32; RATE_SECONDS],
    /// The second the newest bucket counts.
    last: u64,
}

impl Rate {
    fn tick(&mut self, now_ms: u64) {
        let sec = now_ms / 1000;
        self.advance(sec);
        let at = (sec % RATE_SECONDS as u64) as usize;
        self.buckets[at] = self.buckets[at].saturating_add(1);
    }

    /// Moves the newest bucket to `sec`, emptying the seconds skipped.
    fn advance(&mut self, sec: u64) {
        if sec > self.last {
            let stale = (sec - self.last).min(RATE_SECONDS as u64);
            for s in sec + 1 - stale..=sec {
                self.buckets[(s % RATE_SECONDS as u64) as usize] = 0;
            }
            self.last = sec;
        }
    }

    /// Adds another worker's counts, second by second.
    fn absorb(&mut self, other: &Rate) {
        self.advance(other.last);
        let window = RATE_SECONDS as u64;
        for s in self.last.saturating_sub(window - 1)..=self.last {
            if s <= other.last && s + window > other.last {
                let at = (s % window) as usize;
                self.buckets[at] = self.buckets[at].saturating_add(other.buckets[at]);
            }
        }
    }

    /// The last `RATE_SECONDS` whole seconds before `now_ms`, oldest first (zeros before the
    /// loop started).
    fn series(&self, now_ms: u64) -> impl Iterator<Item = u32> + '_ {
        let sec = now_ms / 1000 + RATE_SECONDS as u64;
        (sec - RATE_SECONDS as u64..sec).map(move |s| {
            let Some(s) = s.checked_sub(RATE_SECONDS as u64) else {
                return 0;
            };
            let held = s <= self.last && s + (RATE_SECONDS as u64) > self.last;
            if held {
                self.buckets[(s % RATE_SECONDS as u64) as usize]
            } else {
                0
            }
        })
    }
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

/// A request that needed more than one attempt, for the status page's feed.
#[derive(Clone, Copy)]
pub struct Failover {
    pub at: f64,
    pub seq: u64,
    /// The status the client got (0: none, the connection closed).
    pub status: u16,
    pub trace: Trace,
    /// The target whose answer the client got, if one did.
    pub answered_by: Option<TargetId>,
    request: [u8; 80],
    request_len: u8,
}

impl Failover {
    /// The start of the request line: method and path, cut at 80 bytes.
    pub fn request(&self) -> &[u8] {
        &self.request[..usize::from(self.request_len)]
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
    feed: Box<[Option<Failover>; FEED]>,
    /// Where the next failover goes in `feed`.
    feed_next: usize,
    pub failovers: u64,
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
        *self.feed = *source.feed;
        self.feed_next = source.feed_next;
        self.failovers = source.failovers;
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
            feed: Box::new([None; FEED]),
            feed_next: 0,
            failovers: 0,
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
            self.feed_failover(e);
        }
    }

    fn feed_failover(&mut self, e: &Ended<'_>) {
        let mut request = [0u8; 80];
        let len = e.request_line.len().min(request.len());
        request[..len].copy_from_slice(&e.request_line[..len]);
        self.feed[self.feed_next] = Some(Failover {
            at: unix_now(),
            seq: e.seq,
            status: e.status,
            trace: *e.trace,
            answered_by: e.answered_by,
            request,
            request_len: len as u8,
        });
        self.feed_next = (self.feed_next + 1) % FEED;
        self.failovers += 1;
    }

    /// The failovers kept, newest first.
    pub fn feed(&self) -> impl Iterator<Item = &Failover> {
        (1..=FEED).filter_map(move |back| self.feed[(self.feed_next + FEED - back) % FEED].as_ref())
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
        self.failovers += other.failovers;
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
        let mut feed: Vec<Failover> = self.feed().chain(other.feed()).copied().collect();
        feed.sort_by(|a, b| b.at.total_cmp(&a.at));
        feed.truncate(FEED);
        *self.feed = [None; FEED];
        for (i, f) in feed.into_iter().rev().enumerate() {
            self.feed[i] = Some(f);
        }
        self.feed_next = self.feed.iter().position(Option::is_none).unwrap_or(0);
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

/// What the loop knows about a target at scrape time, beside its counters.
pub struct TargetView<'a> {
    pub id: TargetId,
    pub url: &'a str,
    pub live: bool,
    pub active: usize,
    pub idle: usize,
}

/// What the loop knows about the proxy at scrape time.
pub struct ProxyView {
    pub client_connections: usize,
    pub draining: bool,
    /// Client connections each worker accepted, leader first: how the kernel spread them.
    pub accepted_by_worker: Vec<u64>,
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// Writes one metric family's help and type lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// A family of one sample without labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The Prometheus text exposition (format 0.0.4).
pub fn render(m: &Metrics, targets: &[TargetView<'_>], proxy: &ProxyView) -> String {
    let mut out = String::with_capacity(4096 + targets.len() * 2048);
    let o = &mut out;
    family(o, "ringproxy_build_info", "gauge", "Version of the running ringproxy.");
    let _ = writeln!(o, "ringproxy_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    single(
        o,
        "ringproxy_process_start_time_seconds",
        "gauge",
        "When the process started, in seconds since the epoch.",
        format_args!("{:.3}", m.started),
    );
    single(o, "ringproxy_draining", "gauge", "1 while the proxy drains after SIGTERM.", u8::from(proxy.draining));
    single(o, "ringproxy_client_connections", "gauge", "Client connections open now.", proxy.client_connections);
    single(o, "ringproxy_client_connections_total", "counter", "Client connections accepted.", m.connections_accepted);
    single(
        o,
        "ringproxy_client_connections_refused_total",
        "counter",
        "Connections turned away over max_connections.",
        m.connections_refused,
    );
    family(o, "ringproxy_worker_connections_total", "counter", "Client connections accepted, by worker.");
    for (worker, n) in proxy.accepted_by_worker.iter().enumerate() {
        let _ = writeln!(o, "ringproxy_worker_connections_total{{worker=\"{worker}\"}} {n}");
    }
    family(o, "ringproxy_local_responses_total", "counter", "Responses the proxy made itself, by status.");
    for (code, n) in m.local.iter().enumerate().filter(|(_, n)| **n > 0) {
        let _ = writeln!(o, "ringproxy_local_responses_total{{code=\"{code}\"}} {n}");
    }
    single(o, "ringproxy_failovers_total", "counter", "Requests that needed more than one attempt.", m.failovers);
    single(o, "ringproxy_tunnels", "gauge", "Tunnels (WebSockets) open now.", m.tunnels_open);
    single(o, "ringproxy_tunnels_total", "counter", "Tunnels opened by a 101 Switching Protocols.", m.tunnels);
    family(o, "ringproxy_tunnel_bytes_total", "counter", "Bytes tunnels carried, by direction, counted as they close.");
    let _ = writeln!(o, "ringproxy_tunnel_bytes_total{{direction=\"upstream\"}} {}", m.tunnel_bytes_up);
    let _ = writeln!(o, "ringproxy_tunnel_bytes_total{{direction=\"downstream\"}} {}", m.tunnel_bytes_down);
    family(o, "ringproxy_reloads_total", "counter", "Configuration reloads, by result.");
    for (result, n) in ["success", "failure"].iter().zip(m.reloads) {
        let _ = writeln!(o, "ringproxy_reloads_total{{result=\"{result}\"}} {n}");
    }
    single(
        o,
        "ringproxy_last_reload_success_timestamp_seconds",
        "gauge",
        "When the config was last reloaded.",
        format_args!("{:.3}", m.last_reload.unwrap_or(m.started)),
    );
    render_own(o, m);
    render_targets(o, m, targets);
    out
}

/// What the proxy ran out of, and what its logs lost.
fn render_own(o: &mut String, m: &Metrics) {
    family(o, "ringproxy_local_errors_total", "counter", "Failures of the proxy's own resources (descriptors, buffers, memory), by errno; never counted against a target.");
    for (error, n) in LocalError::ALL.iter().zip(m.local_errors) {
        let _ = writeln!(o, "ringproxy_local_errors_total{{error=\"{}\"}} {n}", error.name());
    }
    single(
        o,
        "ringproxy_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or did not finish in time.",
        m.tls_handshakes_failed,
    );
    single(
        o,
        "ringproxy_stray_responses_total",
        "counter",
        "Upstream connections closed because the target sent bytes nobody asked for.",
        m.stray_responses,
    );
    let logs = [("operational", &oplog::COUNTERS), ("access", &accesslog::COUNTERS)];
    family(
        o,
        "ringproxy_log_lines_dropped_total",
        "counter",
        "Log lines lost: the writer was behind, or the write failed.",
    );
    for (log, counters) in logs {
        let _ = writeln!(o, "ringproxy_log_lines_dropped_total{{log=\"{log}\"}} {}", counters.dropped.load(Relaxed));
    }
    family(o, "ringproxy_log_write_errors_total", "counter", "Writes of log lines that failed (EPIPE, ENOSPC, ...).");
    for (log, counters) in logs {
        let _ =
            writeln!(o, "ringproxy_log_write_errors_total{{log=\"{log}\"}} {}", counters.write_errors.load(Relaxed));
    }
}

fn render_targets(o: &mut String, m: &Metrics, targets: &[TargetView<'_>]) {
    let rows: Vec<(String, &TargetView<'_>, &TargetMetrics)> =
        targets.iter().filter_map(|t| Some((label(t.url), t, m.target(t.id)?))).collect();
    family(o, "ringproxy_target_up", "gauge", "1 when the target is in the rotation.");
    for (url, t, _) in &rows {
        let _ = writeln!(o, "ringproxy_target_up{{target=\"{url}\"}} {}", u8::from(t.live));
    }
    family(o, "ringproxy_target_last_change_timestamp_seconds", "gauge", "When the target last went up or down.");
    for (url, _, tm) in &rows {
        let _ = writeln!(o, "ringproxy_target_last_change_timestamp_seconds{{target=\"{url}\"}} {:.3}", tm.changed);
    }
    family(o, "ringproxy_target_responses_total", "counter", "Responses relayed from the target, by status class.");
    for (url, _, tm) in &rows {
        for (class, n) in tm.responses.iter().enumerate() {
            let _ = writeln!(o, "ringproxy_target_responses_total{{target=\"{url}\",code=\"{}xx\"}} {n}", class + 1);
        }
    }
    family(o, "ringproxy_target_failures_total", "counter", "Failed attempts on the target, by reason.");
    for (url, _, tm) in &rows {
        for (reason, n) in REASONS.iter().zip(tm.failures) {
            let _ = writeln!(o, "ringproxy_target_failures_total{{target=\"{url}\",reason=\"{reason}\"}} {n}");
        }
    }
    family(o, "ringproxy_target_retries_total", "counter", "Attempts on the target that retried a failed one.");
    for (url, _, tm) in &rows {
        let _ = writeln!(o, "ringproxy_target_retries_total{{target=\"{url}\"}} {}", tm.retries);
    }
    family(o, "ringproxy_target_connections", "gauge", "Upstream connections to the target, by state.");
    for (url, t, _) in &rows {
        let _ = writeln!(o, "ringproxy_target_connections{{target=\"{url}\",state=\"active\"}} {}", t.active);
        let _ = writeln!(o, "ringproxy_target_connections{{target=\"{url}\",state=\"idle\"}} {}", t.idle);
    }
    family(o, "ringproxy_target_probes_total", "counter", "Health probes of the target, by result.");
    for (url, _, tm) in &rows {
        for (result, n) in ["passed", "failed"].iter().zip(tm.probes) {
            let _ = writeln!(o, "ringproxy_target_probes_total{{target=\"{url}\",result=\"{result}\"}} {n}");
        }
    }
    let name = "ringproxy_target_request_duration_seconds";
    family(o, name, "histogram", "Time from a request's head to the end of its response, for relayed responses.");
    for (url, _, tm) in &rows {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS_MS.iter().zip(tm.duration_buckets) {
            cumulative += n;
            let _ = writeln!(o, "{name}_bucket{{target=\"{url}\",le=\"{}\"}} {cumulative}", *bound as f64 / 1000.0);
        }
        let _ = writeln!(o, "{name}_bucket{{target=\"{url}\",le=\"+Inf\"}} {}", tm.duration_count);
        let _ = writeln!(o, "{name}_sum{{target=\"{url}\"}} {}", tm.duration_sum_ms as f64 / 1000.0);
        let _ = writeln!(o, "{name}_count{{target=\"{url}\"}} {}", tm.duration_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::accesslog::Outcome;

    #[test]
    fn the_rate_counts_whole_seconds_and_forgets_after_a_minute() {
        let mut r = Rate { buckets: [0; RATE_SECONDS], last: 0 };
        for ms in [1000, 1500, 1999, 3000] {
            r.tick(ms);
        }
        let s: Vec<u32> = r.series(4000).collect();
        assert_eq!(s.len(), RATE_SECONDS);
        assert_eq!(&s[s.len() - 3..], &[2 + 1, 0, 1][..]);
        let later: Vec<u32> = r.series(120_000).collect();
        assert!(later.iter().all(|&n| n == 0), "{later:?}");
        r.tick(200_000);
        assert_eq!(r.series(201_000).last(), Some(1));
    }

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
        assert_eq!(leader.feed().map(|f| f.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(leader.failovers, 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
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
        let seqs: Vec<u64> = m.feed().map(|f| f.seq).collect();
        assert_eq!(seqs.len(), FEED);
        assert_eq!(seqs[0], FEED as u64 + 6);
        assert_eq!(m.target(id).map(TargetMetrics::requests), Some(FEED as u64 + 7));
    }
}
