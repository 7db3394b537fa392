//! What `/metrics` and `/status.json` say, read from the loop's state at the moment of asking:
//! the leader's own counters, plus every other worker's last copy of theirs.

use super::View;
use crate::observe::metrics::{self, unix_now, Metrics, ProxyView, TargetView};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

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

/// The Prometheus text exposition.
pub fn metrics(view: &View<'_>) -> String {
    let totals = totals(view);
    let proxy = ProxyView {
        client_connections: totals.client_connections,
        draining: view.env.draining,
        accepted_by_worker: totals.accepted_by_worker,
    };
    metrics::render(&totals.metrics, &totals.targets, &proxy)
}

/// What the status page shows, as JSON.
pub fn json(view: &View<'_>) -> String {
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
        .feed()
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
        "failovers_total": m.failovers,
        "tunnels": m.tunnels_open,
        "reloads": {"success": m.reloads[0], "failure": m.reloads[1]},
        "targets": rows,
        "failovers": feed,
    })
    .to_string()
}
