//! The admin listener as an operator uses it: `/metrics` read by a real Prometheus parser,
//! `/livez` and `/readyz` through a drain, `ringproxy --probe`, request ids and the JSON log.

mod common;

use common::{eventually, targets, Client, Proxy};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Parses exposition text with the Python `prometheus_client` parser (the reference
/// implementation's own); every sample as (name, labels, value). Panics on text it refuses.
fn parse_metrics(text: &str) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    const SCRIPT: &str = "
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prometheus_client refused the exposition: {err}\n{text}");
    let samples: Vec<(String, serde_json::Map<String, Value>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser JSON");
    samples
}

/// The sum of the samples called `name` whose labels include every pair in `labels`.
fn sum(samples: &[(String, serde_json::Map<String, Value>, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_move_with_traffic_and_failures() {
    if !common::needs_python("prometheus_client") {
        return;
    }
    let mut t = targets(2);
    let proxy = Proxy::start(&t, "\"sleeping\": 60");
    let (url1, url2) = (t[0].url(), t[1].url());
    let before = parse_metrics(&proxy.admin_get("/metrics").text());
    assert_eq!(sum(&before, "ringproxy_target_up", &[("target", &url1)]), 1.0);
    assert_eq!(sum(&before, "ringproxy_build_info", &[]), 1.0);

    let mut client = Client::connect(proxy.addr);
    for _ in 0..10 {
        assert_eq!(client.request("GET", "/", &[], b"").status, 200);
    }
    t[0].kill();
    for _ in 0..6 {
        assert_eq!(Client::connect(proxy.addr).request("GET", "/", &[], b"").status, 200);
    }
    let mut bad = Client::connect(proxy.addr);
    bad.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(bad.read_response(false).status, 400);

    let text = proxy.admin_get("/metrics").text();
    let after = parse_metrics(&text);
    let relayed = |url: &str| sum(&after, "ringproxy_target_responses_total", &[("target", url), ("code", "2xx")]);
    assert_eq!(relayed(&url1) + relayed(&url2), 16.0, "{text}");
    assert_eq!(sum(&after, "ringproxy_target_up", &[("target", &url1)]), 0.0);
    assert_eq!(sum(&after, "ringproxy_target_up", &[("target", &url2)]), 1.0);
    let refused = sum(&after, "ringproxy_target_failures_total", &[("target", &url1), ("reason", "conn_refused")]);
    let stale = sum(&after, "ringproxy_target_failures_total", &[("target", &url1), ("reason", "stale")]);
    assert!(refused + stale >= 1.0, "the killed target's failure is counted: {text}");
    assert!(sum(&after, "ringproxy_failovers_total", &[]) >= 1.0);
    assert!(sum(&after, "ringproxy_target_retries_total", &[("target", &url2)]) >= 1.0);
    assert_eq!(sum(&after, "ringproxy_local_responses_total", &[("code", "400")]), 1.0);
    assert!(sum(&after, "ringproxy_client_connections_total", &[]) >= 8.0);
    let count = sum(&after, "ringproxy_target_request_duration_seconds_count", &[("target", &url2)]);
    let inf = sum(&after, "ringproxy_target_request_duration_seconds_bucket", &[("target", &url2), ("le", "+Inf")]);
    assert!(count >= 8.0 && count == inf, "histogram count {count}, +Inf bucket {inf}");
    assert!(sum(&after, "ringproxy_target_connections", &[("target", &url2), ("state", "idle")]) >= 1.0);
    assert!(sum(&after, "ringproxy_process_start_time_seconds", &[]) > 1.7e9);
}

#[test]
fn the_admin_listener_answers_only_its_own_paths_and_never_proxies() {
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    assert_eq!(proxy.admin_get("/livez").text(), "ok\n");
    let missing = proxy.admin_get("/hello");
    assert_eq!(missing.status, 404);
    let mut c = Client::connect(proxy.admin.expect("admin"));
    let post = c.request("POST", "/metrics", &[], b"x");
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
    let mut c = Client::connect(proxy.admin.expect("admin"));
    let head = c.request("HEAD", "/status", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty() && head.header("content-length").is_some_and(|n| n != "0"));
    // Keep-alive: the status page polls over one connection.
    let mut c = Client::connect(proxy.admin.expect("admin"));
    for _ in 0..3 {
        let status: Value = serde_json::from_slice(&c.request("GET", "/status.json", &[], b"").body).expect("json");
        assert_eq!(status["targets"][0]["url"], t[0].url().as_str());
    }
    let page = proxy.admin_get("/status");
    assert!(page.text().contains("<script>") && !page.text().contains("src=\"http"), "one page, no external assets");
}

#[test]
fn the_admin_listener_can_be_turned_off() {
    let t = targets(1);
    let proxy = Proxy::start(&t, "\"admin\": null");
    assert!(proxy.admin.is_none());
    assert_eq!(proxy.get("/").status, 200);
}

#[test]
fn readyz_follows_the_targets_and_the_drain_while_livez_stays_up() {
    let mut t = targets(1);
    let proxy = Proxy::start(&t, "\"sleeping\": 0.2, \"shutdown_timeout\": 10");
    assert_eq!(proxy.admin_get("/readyz").status, 200);
    t[0].kill();
    assert_eq!(proxy.get("/").status, 500, "the only target is gone");
    let not_ready = proxy.admin_get("/readyz");
    assert_eq!((not_ready.status, not_ready.text().as_str()), (503, "no live target\n"));
    assert_eq!(proxy.admin_get("/livez").status, 200);
    t[0].restart();
    eventually(Duration::from_secs(10), "readyz back to 200", || {
        (proxy.admin_get("/readyz").status == 200).then_some(())
    });

    // A slow request keeps the drain going while readyz is asked.
    let addr = proxy.addr;
    let slow =
        std::thread::spawn(move || Client::connect(addr).try_request("GET", "/sleep/1500", &[], b"").map(|r| r.status));
    eventually(Duration::from_secs(5), "the slow request in flight", || {
        let text = proxy.admin_get("/metrics").text();
        text.contains("ringproxy_client_connections 1").then_some(())
    });
    proxy.signal("TERM");
    let draining = eventually(Duration::from_secs(5), "readyz to say draining", || {
        let r = Client::connect(proxy.admin.expect("admin")).try_request("GET", "/readyz", &[], b"").ok()?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(draining.text(), "draining\n");
    assert_eq!(slow.join().expect("the slow request"), Ok(200), "the request in flight finished");
}

#[test]
fn the_probe_command_exits_0_on_2xx_and_1_otherwise() {
    let mut t = targets(1);
    let proxy = Proxy::start(&t, "");
    let admin = proxy.admin.expect("admin");
    let probe = |url: String| {
        Command::new(common::proxy_bin()).args(["--probe", &url]).output().expect("run the probe").status.code()
    };
    assert_eq!(probe(format!("http://{admin}/livez")), Some(0));
    assert_eq!(probe(format!("http://{admin}/readyz")), Some(0));
    assert_eq!(probe(format!("http://{admin}/nothing")), Some(1));
    assert_eq!(probe(format!("http://127.0.0.1:{}/", common::closed_port())), Some(1));
    t[0].kill();
    proxy.get("/");
    assert_eq!(probe(format!("http://{admin}/readyz")), Some(1), "no live target");
}

#[test]
fn a_request_id_is_kept_or_made_and_reaches_the_target_and_the_json_log() {
    let t = targets(1);
    let log = std::env::temp_dir().join(format!("ringproxy-json-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let proxy = Proxy::start(&t, &format!("\"access_log\": \"{}\", \"access_log_format\": \"json\"", log.display()));
    let mut c = Client::connect(proxy.addr);
    let kept = c.request("GET", "/headers", &[("X-Request-Id", "abc-123"), ("User-Agent", "tester/1")], b"");
    assert!(kept.text().contains("X-Request-Id: abc-123\r\n"), "{}", kept.text());
    let made = c.request("GET", "/headers", &[("X-Request-Id", "not ok")], b"").text();
    let id = made.split("X-Request-Id: ").nth(1).and_then(|r| r.split("\r\n").next()).expect("an id").to_owned();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let lines = eventually(Duration::from_secs(5), "two log lines", || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().count() >= 2).then_some(text)
    });
    let entries: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(entries[0]["request_id"], "abc-123");
    assert_eq!(entries[0]["user_agent"], "tester/1");
    assert_eq!(entries[0]["status"], 200);
    assert!(entries[0]["total_ms"].is_u64());
    assert_eq!(entries[1]["request_id"], id.as_str());
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_client_pipelining_admin_requests_cannot_stall_the_proxy() {
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    let admin = proxy.admin.expect("admin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stream = std::net::TcpStream::connect(admin).expect("admin connect");
            let mut reader = stream.try_clone().expect("clone");
            let drain = std::thread::spawn(move || {
                let mut sink = [0u8; 65536];
                while matches!(std::io::Read::read(&mut reader, &mut sink), Ok(n) if n > 0) {}
            });
            let batch = "GET /livez HTTP/1.1\r\nHost: a\r\n\r\n".repeat(4000);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut out = &stream;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                if out.write_all(batch.as_bytes()).is_err() {
                    break;
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = drain.join();
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(proxy.get("/").status, 200);
        worst = worst.max(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().expect("flood");
    assert!(worst < Duration::from_millis(500), "a proxied request waited {worst:?} behind the admin flood");
}

#[test]
fn idle_admin_connections_cannot_lock_out_the_healthcheck() {
    let t = targets(1);
    let proxy = Proxy::start(&t, "\"admin_max_connections\": 2");
    let admin = proxy.admin.expect("admin");
    let mut squatters: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(admin).expect("connect");
            s.write_all(b"G").expect("one byte");
            s
        })
        .collect();
    let probe = Command::new(common::proxy_bin())
        .args(["--probe", &format!("http://{admin}/readyz")])
        .output()
        .expect("run the probe");
    assert_eq!(probe.status.code(), Some(0), "{}", String::from_utf8_lossy(&probe.stderr));
    squatters.clear();
}

#[test]
fn an_admin_request_with_a_body_is_answered_and_its_body_never_read_as_a_request() {
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    let mut c = Client::connect(proxy.admin.expect("admin"));
    let hidden = "GET /livez HTTP/1.1\r\nHost: a\r\n\r\n";
    c.send(format!("POST /livez HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()).as_bytes());
    let answer = c.read_response(false);
    assert_eq!((answer.status, answer.header("connection")), (405, Some("close")));
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c.stream, &mut rest);
    assert!(rest.is_empty(), "nothing after the 405: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_busy_default_admin_port_turns_the_admin_off_but_a_named_one_is_fatal() {
    let t = targets(1);
    // Held here, or by someone else already: either way 127.0.0.1:9000 is busy.
    let _held = std::net::TcpListener::bind("127.0.0.1:9000");
    let config = std::env::temp_dir().join(format!("ringproxy-admin-default-{}.json", std::process::id()));
    let json = format!("{{\"ports\": [\"{}\"], \"listen\": \"127.0.0.1:0\"}}", t[0].url());
    common::schema_check(&json).expect("the schema accepts the config");
    std::fs::write(&config, json).expect("config");
    let proc = common::Proc::spawn(Command::new(common::proxy_bin()).arg("--config").arg(&config));
    let line = proc.wait_line("admin endpoints off", Duration::from_secs(10));
    assert!(line.contains("cannot listen on the default 127.0.0.1:9000"), "{line}");
    proc.wait_line("listening on", Duration::from_secs(5));

    std::fs::write(
        &config,
        format!("{{\"ports\": [\"{}\"], \"listen\": \"127.0.0.1:0\", \"admin\": \"127.0.0.1:9000\"}}", t[0].url()),
    )
    .expect("config");
    let mut named = common::Proc::spawn(Command::new(common::proxy_bin()).arg("--config").arg(&config));
    assert_eq!(named.wait_exit(Duration::from_secs(10)), Some(1), "{:?}", named.lines());
    // The exit can be seen before the reader thread has collected the last line: wait for it.
    named.wait_line("admin listener 127.0.0.1:9000", Duration::from_secs(5));
    let _ = std::fs::remove_file(&config);
}
