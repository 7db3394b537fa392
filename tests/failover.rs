//! Failover that loses nothing: real processes and loopback fault injectors only.

mod common;

use common::{eventually, read_head, read_lines, serve_raw, targets, temp_log, Client, FullBacklog, Proxy, Target};
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn json_path(path: &std::path::Path) -> String {
    path.display().to_string()
}

#[test]
fn sixteen_keep_alive_clients_lose_nothing_when_a_target_is_killed_and_restarted() {
    let mut ts = targets(5);
    let log = temp_log("kill-under-load");
    let proxy = Proxy::start(&ts, &format!("\"sleeping\": 0.2, \"access_log\": \"{}\"", json_path(&log)));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let from_t3 = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, ok, from_t3, failures) = (stop.clone(), ok.clone(), from_t3.clone(), failures.clone());
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.try_request("GET", "/", &[], b"") {
                        Ok(r) if r.status == 200 && r.body == b"Hello, world!" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.target() == "t3" {
                                from_t3.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => failures.lock().expect("failures").push(format!("status {}", r.status)),
                        Err(e) => {
                            failures.lock().expect("failures").push(e);
                            client = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    let wait_for_more = |n: usize| {
        let target = ok.load(Ordering::Relaxed) + n;
        eventually(Duration::from_secs(20), "more requests", || (ok.load(Ordering::Relaxed) >= target).then_some(()));
    };
    for _round in 0..3 {
        wait_for_more(3000);
        ts[2].kill();
        wait_for_more(3000);
        ts[2].restart();
        let before = from_t3.load(Ordering::Relaxed);
        eventually(Duration::from_secs(5), "the restarted t3 to serve again", || {
            (from_t3.load(Ordering::Relaxed) > before).then_some(())
        });
    }
    wait_for_more(1000);
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().expect("client thread"));

    let failures = failures.lock().expect("failures").clone();
    let total = ok.load(Ordering::Relaxed) + failures.len();
    let lines = eventually(Duration::from_secs(5), "the access log to catch up", || {
        let lines = read_lines(&log);
        (lines.len() >= total).then_some(lines)
    });
    let retried = lines.iter().filter(|l| l.contains(" tried=")).count();
    println!("requests {total}, failures {}, retried {retried}", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(retried > 0, "killing a target under load should have needed retries");
    let _ = std::fs::remove_file(log);
}

/// Accepts connections and reads from them, never answering.
fn silent(mut conn: std::net::TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
}

#[test]
fn a_target_that_never_answers_gets_get_retried_elsewhere_and_post_504() {
    let silent_addr = serve_raw(silent);
    let t2 = Target::start("t2");
    let log = temp_log("silent");
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{silent_addr}/\", \"{}\"], \"listen\": \"127.0.0.1:0\", \"upstream_timeout\": 0.4, \
         \"fall\": 100, \"access_log\": \"{}\"}}",
        t2.url(),
        json_path(&log)
    ));
    // Request #0 goes to the silent target: a POST must not be replayed.
    let started = Instant::now();
    let r = Client::connect(proxy.addr).request("POST", "/echo", &[], b"once");
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Requests #1.. alternate; the ones the silent target gets are retried on t2.
    for _ in 0..4 {
        let r = Client::connect(proxy.addr).request("GET", "/", &[], b"");
        assert_eq!((r.status, r.target()), (200, "t2"));
    }
    let lines = eventually(Duration::from_secs(5), "5 log lines", || Some(read_lines(&log)).filter(|l| l.len() >= 5));
    assert!(lines[0].contains("\"POST /echo HTTP/1.1\" 504") && lines[0].contains("tried=t1:timeout"), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("tried=t1:timeout,t2:ok")), "{lines:?}");
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_target_with_a_full_backlog_times_out_on_connect_and_the_request_succeeds_elsewhere() {
    let hung = FullBacklog::new();
    let t2 = Target::start("t2");
    let log = temp_log("backlog");
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{}/\", \"{}\"], \"listen\": \"127.0.0.1:0\", \"connect_timeout\": 0.3, \
         \"access_log\": \"{}\"}}",
        hung.addr,
        t2.url(),
        json_path(&log)
    ));
    let started = Instant::now();
    let r = proxy.get("/");
    assert_eq!((r.status, r.target()), (200, "t2"));
    assert!(started.elapsed() >= Duration::from_millis(300), "the connect timeout should have passed first");
    let line = eventually(Duration::from_secs(5), "a log line", || read_lines(&log).into_iter().next());
    assert!(line.contains("tried=t1:conn_timeout,t2:ok"), "{line}");
    proxy.proc.wait_line("down: connect timed out", Duration::from_secs(1));
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_target_that_resets_mid_body_leaves_the_client_connection_closed_never_complete_looking() {
    let addr = serve_raw(|mut conn| {
        // Read one byte only: the rest of the request stays unread, so closing sends a reset.
        let _ = conn.read(&mut [0u8; 1]);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        let _ = conn.write_all(&[b'x'; 1000]);
    });
    let proxy = Proxy::with_config(&format!("{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\"}}"));
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut got = Vec::new();
    let _ = client.stream.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(body.len() < 100_000, "a cut response must never look complete");
    assert!(client.is_closed());
}

#[test]
fn a_pooled_connection_the_target_closed_is_retried_on_a_fresh_one() {
    // Each connection answers one request, then reads the next and closes without a word:
    // the target dropping a kept-alive connection just as a request arrives on it.
    let addr = serve_raw(|mut conn| {
        if read_head(&mut conn) {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            read_head(&mut conn);
        }
    });
    let log = temp_log("stale");
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\", \"access_log\": \"{}\"}}",
        json_path(&log)
    ));
    let mut client = Client::connect(proxy.addr);
    for _ in 0..10 {
        let r = client.request("GET", "/", &[], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    let lines = eventually(Duration::from_secs(5), "10 log lines", || Some(read_lines(&log)).filter(|l| l.len() >= 10));
    assert!(lines.iter().filter(|l| l.contains("tried=t1:stale,t1:ok")).count() >= 5, "{lines:?}");
    assert!(!proxy.proc.lines().iter().any(|l| l.contains(" down: ")), "a stale connection is not the target's fault");
    let _ = std::fs::remove_file(log);
}

#[test]
fn try_all_fails_open_when_every_target_is_marked_down() {
    let mut ts = targets(2);
    let proxy = Proxy::start(&ts, "\"sleeping\": 60, \"all_down\": \"try_all\"");
    ts.iter_mut().for_each(|t| t.kill());
    assert_eq!(proxy.get("/").status, 500);
    proxy.proc.wait_line("0 of 2 live)", Duration::from_secs(1));
    ts.iter_mut().for_each(|t| t.restart());
    // No probe will run for a minute; fail-open finds the targets anyway.
    let r = proxy.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!"));
    proxy.proc.wait_line(" up (", Duration::from_secs(1));
}

#[test]
fn check_live_takes_a_dead_target_out_before_any_client_request_finds_it() {
    let mut ts = targets(2);
    let proxy = Proxy::start(&ts, "\"sleeping\": 0.2, \"check_live\": true");
    ts[0].kill();
    proxy.proc.wait_line("down: health probe", Duration::from_secs(3));
    for _ in 0..4 {
        assert_eq!(proxy.get("/").target(), "t2");
    }
}

#[test]
fn a_slow_url_does_not_take_healthy_targets_out() {
    let ts = targets(3);
    let log = temp_log("slow-url");
    let proxy = Proxy::start(&ts, &format!("\"upstream_timeout\": 0.3, \"access_log\": \"{}\"", json_path(&log)));
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || Client::connect(addr).request("GET", "/sleep/2000", &[], b"").status)
        })
        .collect();
    for request in slow {
        assert_eq!(request.join().expect("client"), 504, "the client of a timed-out request gets 504");
    }
    // Every target is still in the rotation: the next requests spread over all three.
    let mut client = Client::connect(proxy.addr);
    let seen: std::collections::BTreeSet<String> =
        (0..9).map(|_| client.request("GET", "/", &[], b"").target().to_string()).collect();
    assert_eq!(seen.len(), 3, "{seen:?}\n{:#?}", proxy.proc.lines());
    assert!(!proxy.proc.lines().iter().any(|l| l.contains(" down: ")), "{:#?}", proxy.proc.lines());
    let lines = eventually(Duration::from_secs(5), "12 log lines", || Some(read_lines(&log)).filter(|l| l.len() >= 12));
    for line in lines.iter().filter(|l| l.contains("/sleep/")) {
        assert!(line.contains(" 504 ") && line.contains("attempts=2 "), "one retry, not a walk: {line}");
    }
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_timed_out_request_on_the_only_target_gets_504_not_all_servers_off() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "\"upstream_timeout\": 0.3");
    let r = proxy.get("/sleep/1000");
    assert_eq!(r.status, 504);
    assert_eq!(proxy.get("/").status, 200, "the target is still live");
}

#[test]
fn a_frozen_target_costs_a_get_one_timeout_and_failed_probes_take_it_out() {
    let ts = targets(2);
    // fall 2: one failed probe is not enough; the suspect is probed again every `sleeping`.
    let proxy = Proxy::start(&ts, "\"upstream_timeout\": 0.5, \"probe_timeout\": 0.3, \"sleeping\": 0.2, \"fall\": 2");
    let frozen = Command::new("kill").args(["-STOP", &ts[0].pid().to_string()]).status().expect("kill");
    assert!(frozen.success());
    let mut client = Client::connect(proxy.addr);
    let r = client.request("GET", "/", &[], b"");
    assert_eq!((r.status, r.target()), (200, "t2"), "the first GET found t1 frozen and went on to t2");
    // Nobody asks t1 anything more: its probes alone take it out.
    proxy.proc.wait_line("down: health probe", Duration::from_secs(5));
    for _ in 0..4 {
        let started = Instant::now();
        let r = client.request("GET", "/", &[], b"");
        assert_eq!((r.status, r.target()), (200, "t2"));
        assert!(started.elapsed() < Duration::from_millis(400), "no request waits on the frozen target any more");
    }
    let thawed = Command::new("kill").args(["-CONT", &ts[0].pid().to_string()]).status().expect("kill");
    assert!(thawed.success());
}

#[test]
fn connect_failures_stop_at_the_retry_budget() {
    let log = temp_log("budget");
    let ports: Vec<String> = (0..4).map(|_| format!("\"http://127.0.0.1:{}/\"", common::closed_port())).collect();
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\", \"retries\": 1, \"access_log\": \"{}\"}}",
        ports.join(", "),
        json_path(&log)
    ));
    assert_eq!(proxy.get("/").status, 502);
    let line = eventually(Duration::from_secs(5), "a log line", || read_lines(&log).into_iter().next());
    assert!(line.contains("attempts=2 "), "retries: 1 allows two attempts: {line}");
    let _ = std::fs::remove_file(log);

    // Failures found before any packet leaves (a name that cannot resolve: a label over 63
    // bytes fails inside the resolver library, without a query) take the same budget.
    let log = temp_log("budget-sync");
    let names: Vec<String> = (0..4).map(|i| format!("\"http://{}{i}.test:80/\"", "a".repeat(64))).collect();
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\", \"retries\": 1, \"all_down\": \"try_all\", \
         \"sleeping\": 60, \"access_log\": \"{}\"}}",
        names.join(", "),
        json_path(&log)
    ));
    assert_eq!(proxy.get("/").status, 502);
    let line = eventually(Duration::from_secs(5), "a log line", || read_lines(&log).into_iter().next());
    assert!(line.contains("attempts=2 "), "retries: 1 allows two attempts: {line}");
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_pipelined_request_gets_a_response_timeout_of_its_own() {
    // The second request starts where the first ended, in the same phase: it must not inherit
    // what is left of the first one's timeout.
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "\"upstream_timeout\": 1");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /sleep/700 HTTP/1.1\r\nHost: t\r\n\r\nGET /sleep/600 HTTP/1.1\r\nHost: t\r\n\r\n");
    for _ in 0..2 {
        let r = client.read_response(false);
        assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!"));
    }
}
