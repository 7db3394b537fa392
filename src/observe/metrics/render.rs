//! The Prometheus text exposition (format 0.0.4) of the counters, made only when scraped.

use super::{Metrics, TargetMetrics, BUCKETS_MS};
use crate::ids::TargetId;
use crate::observe::accesslog::{self, REASONS};
use crate::observe::oplog;
use crate::runtime::limits::LocalError;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

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
    single(o, "ringproxy_failovers_total", "counter", "Requests that needed more than one attempt.", m.failovers.total);
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
