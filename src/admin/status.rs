//! What `/metrics` and `/status.json` say, read from the loop's state: the leader's own
//! counters, plus every other worker's last copy of theirs.
//!
//! A rendering is not free (256 targets make 800 KB of `/metrics`, 5 to 9 ms in a debug build),
//! so renderings may take at most 5 % of the loop's time (`Credit`): within that, every answer
//! is rendered afresh; beyond it (clients asking without pause), the last rendering is sent
//! again, shared rather than copied, until the credit is back or it is `MAX_AGE_MS` old. What
//! they say is therefore up to a second old under a flood of scrapes, and current otherwise.

use super::View;
use crate::observe::metrics::{self, unix_now, Metrics, ProxyView, TargetView};
use log::debug;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How old a rendering may be when it is sent again (loop ms).
pub const MAX_AGE_MS: u64 = 1000;

/// Rendering time each millisecond of the loop pays for (µs): 5 % of the loop.
const CREDIT_PER_MS: i64 = 50;

/// Rendering time saved up while nobody asks, at most (µs): what a burst may render afresh.
const CREDIT_MAX: i64 = 10_000;

/// One rendering of an endpoint, and when it was made.
struct Rendered {
    body: Arc<[u8]>,
    at: u64,
}

/// The rendering time the loop can spare: it grows with the loop's time, up to `CREDIT_MAX`,
/// and each rendering spends what it took.
#[derive(Default)]
struct Credit {
    us: i64,
    at: u64,
}

impl Credit {
    /// Whether a rendering is affordable at `now` (loop ms).
    fn affordable(&mut self, now: u64) -> bool {
        let earned = i64::try_from(now.saturating_sub(self.at)).unwrap_or(i64::MAX).saturating_mul(CREDIT_PER_MS);
        self.us = self.us.saturating_add(earned).min(CREDIT_MAX);
        self.at = now;
        self.us >= 0
    }

    fn spend(&mut self, took: Duration) {
        self.us = self.us.saturating_sub(i64::try_from(took.as_micros()).unwrap_or(i64::MAX));
    }
}

/// The last rendering of each endpoint, and what the loop can spare for the next.
#[derive(Default)]
pub struct Copies {
    metrics: Option<Rendered>,
    json: Option<Rendered>,
    credit: Credit,
}

impl Copies {
    /// The Prometheus text exposition.
    pub fn metrics(&mut self, view: &View<'_>) -> Arc<[u8]> {
        let now = view.env.now;
        if let Some(copy) = reusable(&self.metrics, &mut self.credit, now) {
            return copy;
        }
        keep(&mut self.metrics, &mut self.credit, now, timed("/metrics", || metrics(view)))
    }

    /// What the status page shows, as JSON.
    pub fn json(&mut self, view: &View<'_>) -> Arc<[u8]> {
        let now = view.env.now;
        if let Some(copy) = reusable(&self.json, &mut self.credit, now) {
            return copy;
        }
        keep(&mut self.json, &mut self.credit, now, timed("/status.json", || json(view)))
    }
}

/// The last rendering, when a new one is not affordable and it is recent enough.
fn reusable(last: &Option<Rendered>, credit: &mut Credit, now: u64) -> Option<Arc<[u8]>> {
    let affordable = credit.affordable(now);
    let copy = last.as_ref().filter(|c| !affordable && now.saturating_sub(c.at) < MAX_AGE_MS)?;
    Some(Arc::clone(&copy.body))
}

/// A new rendering and how long it took.
fn timed(what: &str, render: impl FnOnce() -> String) -> (Arc<[u8]>, Duration) {
    let started = Instant::now();
    let body: Arc<[u8]> = render().into_bytes().into();
    let took = started.elapsed();
    debug!("admin: rendered {what}, {} bytes in {} us", body.len(), took.as_micros());
    (body, took)
}

/// Pays for a new rendering and keeps it as the last.
fn keep(last: &mut Option<Rendered>, credit: &mut Credit, now: u64, (body, took): (Arc<[u8]>, Duration)) -> Arc<[u8]> {
    credit.spend(took);
    *last = Some(Rendered { body: Arc::clone(&body), at: now });
    body
}

/// Every worker's counters and connections, added up.
struct Totals<'a> {
    metrics: Cow<'a, Metrics>,
    targets: Vec<TargetView<'a>>,
    client_connections: usize,
    accepted_by_worker: Vec<u64>,
}

fn totals<'a>(view: &View<'a>) -> Totals<'a> {
    let env = view.env;
    let mut targets: Vec<TargetView<'a>> = env
        .targets
        .ids()
        .map(|id| {
            let (active, idle) = view.proxy.upstream_counts(id);
            TargetView { id, url: env.targets.url(id), live: env.targets.is_live(id), active, idle }
        })
        .collect();
    let mut totals = Totals {
        metrics: Cow::Borrowed(&env.metrics),
        targets: Vec::new(),
        client_connections: view.proxy.len(),
        accepted_by_worker: vec![env.metrics.connections_accepted],
    };
    for snapshot in env.link.snapshots() {
        let theirs = snapshot.metrics.as_ref();
        totals.accepted_by_worker.push(theirs.map_or(0, |m| m.connections_accepted));
        if let Some(theirs) = theirs {
            totals.metrics.to_mut().absorb(theirs);
        }
        totals.client_connections += snapshot.client_connections;
        for &(id, active, idle) in &snapshot.upstreams {
            if let Some(t) = targets.iter_mut().find(|t| t.id == id) {
                t.active += active;
                t.idle += idle;
            }
        }
    }
    totals.targets = targets;
    totals
}

/// The Prometheus text exposition, rendered now.
fn metrics(view: &View<'_>) -> String {
    let totals = totals(view);
    let proxy = ProxyView {
        client_connections: totals.client_connections,
        draining: view.env.draining,
        accepted_by_worker: totals.accepted_by_worker,
    };
    metrics::render(&totals.metrics, &totals.targets, &proxy)
}

/// What the status page shows, as JSON, rendered now.
fn json(view: &View<'_>) -> String {
    let env = view.env;
    let totals = totals(view);
    let m = &*totals.metrics;
    let rows: Vec<Value> = totals
        .targets
        .iter()
        .filter_map(|t| {
            let tm = m.target(t.id)?;
            let state = if env.draining {
                "draining"
            } else if t.live {
                "up"
            } else if env.health.is_probing(t.id) {
                "probing"
            } else {
                "down"
            };
            let errors: Map<String, Value> = tm.failures().map(|(r, n)| (r.to_owned(), json!(n))).collect();
            let probe = tm.last_probe.map(|p| json!({"passed": p.passed, "why": p.why, "at": p.at}));
            Some(json!({
                "id": format!("t{}", t.id.slot() + 1),
                "url": t.url,
                "state": state,
                "since": tm.changed,
                "requests": tm.requests(),
                "rps": tm.rate(env.now).collect::<Vec<u32>>(),
                "errors": errors,
                "last_probe": probe,
                "active": t.active,
                "idle": t.idle,
            }))
        })
        .collect();
    let feed: Vec<Value> = m
        .failovers
        .iter()
        .map(|f| {
            let tried: Vec<Value> = f
                .trace
                .items()
                .iter()
                .map(|(id, outcome)| {
                    json!({"id": format!("t{}", id.slot() + 1), "target": env.targets.url(*id), "outcome": outcome.name()})
                })
                .collect();
            json!({
                "at": f.at,
                "seq": f.seq,
                "request": String::from_utf8_lossy(f.request()),
                "status": f.status,
                "answered_by": f.answered_by.map(|id| env.targets.url(id)),
                "tried": tried,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started": m.started,
        "now": unix_now(),
        "draining": env.draining,
        "live": env.targets.live_count(),
        "connections": totals.client_connections,
        "workers": env.link.count(),
        "failovers_total": m.failovers.total,
        "tunnels": m.tunnels_open,
        "reloads": {"success": m.reloads[0], "failure": m.reloads[1]},
        "targets": rows,
        "failovers": feed,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Copies` sends at `now` for a rendering that takes `took`: the last one, or the
    /// next number.
    fn ask(last: &mut Option<Rendered>, credit: &mut Credit, now: u64, took_ms: f64, n: &mut u32) -> String {
        let body = match reusable(last, credit, now) {
            Some(copy) => copy,
            None => {
                *n += 1;
                let fresh: Arc<[u8]> = n.to_string().into_bytes().into();
                keep(last, credit, now, (fresh, Duration::from_secs_f64(took_ms / 1000.0)))
            }
        };
        String::from_utf8_lossy(&body).into_owned()
    }

    #[test]
    fn renderings_asked_every_10_ms_that_take_300_us_are_always_fresh() {
        let (mut last, mut credit, mut n) = (None, Credit::default(), 0);
        for i in 0..500 {
            assert_eq!(ask(&mut last, &mut credit, i * 10, 0.3, &mut n), (i + 1).to_string());
        }
    }

    #[test]
    fn costly_renderings_are_shared_until_the_loop_has_paid_for_them_and_never_over_a_second_old() {
        let (mut last, mut credit, mut n) = (None, Credit::default(), 0);
        // Asked without pause: one rendering of 20 ms, then the copy.
        assert_eq!(ask(&mut last, &mut credit, 0, 20.0, &mut n), "1");
        assert_eq!(ask(&mut last, &mut credit, 0, 20.0, &mut n), "1");
        // 20 ms of rendering is paid back by 400 ms of the loop (5 %).
        assert_eq!(ask(&mut last, &mut credit, 399, 20.0, &mut n), "1");
        // This one takes 100 ms, which the loop has not paid back a second later: still, a copy
        // is not sent once it is a second old.
        assert_eq!(ask(&mut last, &mut credit, 400, 100.0, &mut n), "2");
        assert_eq!(ask(&mut last, &mut credit, 1399, 100.0, &mut n), "2");
        assert_eq!(ask(&mut last, &mut credit, 1400, 100.0, &mut n), "3");
    }

    #[test]
    fn a_quiet_spell_saves_up_at_most_ten_ms_of_rendering() {
        let (mut last, mut credit, mut n) = (None, Credit::default(), 0);
        assert_eq!(ask(&mut last, &mut credit, 60_000, 4.0, &mut n), "1");
        assert_eq!(ask(&mut last, &mut credit, 60_000, 4.0, &mut n), "2");
        assert_eq!(ask(&mut last, &mut credit, 60_000, 4.0, &mut n), "3");
        assert_eq!(ask(&mut last, &mut credit, 60_000, 4.0, &mut n), "3", "10 ms saved, 12 spent");
    }
}
