//! What `/metrics` and `/status.json` say, read from the loop's state at the moment of asking.

use super::View;
use crate::observe::metrics::{self, unix_now, ProxyView, TargetView};
use serde_json::{json, Map, Value};

/// The loop's view of every target, for the renderers.
fn targets<'a>(view: &View<'a>) -> Vec<TargetView<'a>> {
    let env = view.env;
    env.targets
        .ids()
        .map(|id| {
            let (active, idle) = view.proxy.upstream_counts(id);
            TargetView { id, url: env.targets.url(id), live: env.targets.is_live(id), active, idle }
        })
        .collect()
}

/// The Prometheus text exposition.
pub fn metrics(view: &View<'_>) -> String {
    let proxy = ProxyView { client_connections: view.proxy.len(), draining: view.env.draining };
    metrics::render(&view.env.metrics, &targets(view), &proxy)
}

/// What the status page shows, as JSON.
pub fn json(view: &View<'_>) -> String {
    let env = view.env;
    let m = &env.metrics;
    let rows: Vec<Value> = targets(view)
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
        "connections": view.proxy.len(),
        "failovers_total": m.failovers,
        "tunnels": m.tunnels_open,
        "reloads": {"success": m.reloads[0], "failure": m.reloads[1]},
        "targets": rows,
        "failovers": feed,
    })
    .to_string()
}
