//! SIGHUP reloads the config file: targets come and go under load without a failed request,
//! and a file that does not validate changes nothing.

mod common;

use common::{config_json, eventually, targets, Client, Proxy, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines containing `needle` in the proxy's output so far.
fn count_lines(proxy: &Proxy, needle: &str) -> usize {
    proxy.proc.lines().iter().filter(|l| l.contains(needle)).count()
}

/// Rewrites the config to name `set` and waits for the proxy to say it reloaded.
fn reload_to(proxy: &Proxy, all: &[Target], set: &[usize], extra: &str) {
    let before = count_lines(proxy, "reloaded the config");
    let ports: Vec<String> = set.iter().map(|&i| format!("\"{}\"", all[i].url())).collect();
    let admin = proxy.admin.map_or("null".to_owned(), |a| format!("\"{a}\""));
    proxy.reload(&format!(
        "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\", \"admin\": {admin}{}{extra}}}",
        ports.join(", "),
        if extra.is_empty() { "" } else { ", " }
    ));
    eventually(Duration::from_secs(5), "the reload", || {
        (count_lines(proxy, "reloaded the config") > before).then_some(())
    });
}

/// Requests each target in the table has answered, from `/status.json`.
fn requests_by_target(proxy: &Proxy) -> BTreeMap<String, u64> {
    let status: serde_json::Value = serde_json::from_slice(&proxy.admin_get("/status.json").body).expect("status JSON");
    let rows = status["targets"].as_array().cloned().unwrap_or_default();
    rows.iter().filter_map(|t| Some((t["url"].as_str()?.to_owned(), t["requests"].as_u64()?))).collect()
}

#[test]
fn twenty_reloads_under_load_lose_no_request_and_new_targets_get_traffic_at_once() {
    let all = targets(4);
    let proxy = Proxy::start(&all[..2], "\"sleeping\": 0.2");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let loaders: Vec<_> = (0..3)
        .map(|n| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.addr);
            std::thread::spawn(move || {
                // One loader on fresh connections, the others keep-alive; bounded in time.
                let mut client = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if n == 0 {
                        client = Client::connect(addr);
                    }
                    let body = vec![b'x'; 100 * n];
                    let method = if n == 2 { "POST" } else { "GET" };
                    let path = if n == 2 { "/echo" } else { "/" };
                    match client.try_request(method, path, &[], &body) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("loader {n}: status {}", r.status);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("loader {n}: {e}");
                            client = Client::connect(addr);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let sets: [&[usize]; 5] = [&[1, 2], &[2, 3, 0], &[3], &[0, 1, 2, 3], &[0, 2]];
    let mut probe = Client::connect(proxy.addr);
    for round in 0..20 {
        let set = sets[round % sets.len()];
        reload_to(&proxy, &all, set, "\"sleeping\": 0.2");
        let wanted: BTreeSet<String> = set.iter().map(|&i| all[i].name.clone()).collect();
        for _ in 0..2 * set.len() {
            let r = probe.request("GET", "/", &[], b"");
            assert_eq!(r.status, 200);
            assert!(wanted.contains(r.target()), "round {round}: {} answered after a reload to {wanted:?}", r.target());
        }
        let start = requests_by_target(&proxy);
        eventually(Duration::from_secs(5), "every target of the new config to get traffic", || {
            let now = requests_by_target(&proxy);
            let count = |counts: &BTreeMap<String, u64>, i: usize| counts.get(&all[i].url()).copied().unwrap_or(0);
            set.iter().all(|&i| count(&now, i) > count(&start, i)).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        loader.join().expect("loader");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("20 reloads under load: {ok} requests answered 200, {failed} failed");
    assert_eq!(failed, 0, "{ok} ok, {failed} failed");
    assert!(ok > 100, "the load ran: {ok}");
    let metrics = proxy.admin_get("/metrics").text();
    assert!(metrics.contains("ringproxy_reloads_total{result=\"success\"} 20"), "{metrics}");
}

#[test]
fn an_invalid_config_keeps_the_running_one_with_one_line_naming_the_key() {
    let all = targets(2);
    let proxy = Proxy::start(&all[..1], "");
    proxy.reload(&config_json(&all, "\"sleeping\": -1"));
    let line = proxy.proc.wait_line("reload failed", Duration::from_secs(5));
    assert!(line.contains("`sleeping`") && line.contains("keeping the running config"), "{line}");
    for _ in 0..4 {
        assert_eq!(proxy.get("/").target(), all[0].name, "still the old target set");
    }
    proxy.reload("{\"ports\": ");
    eventually(Duration::from_secs(5), "the second failure", || {
        (count_lines(&proxy, "reload failed") == 2).then_some(())
    });
    let metrics = proxy.admin_get("/metrics").text();
    assert!(metrics.contains("ringproxy_reloads_total{result=\"failure\"} 2"), "{metrics}");
    // A valid file after the bad ones is taken.
    reload_to(&proxy, &all, &[1], "");
    assert_eq!(proxy.get("/").target(), all[1].name);
}

#[test]
fn a_changed_listen_address_keeps_the_old_listener_and_says_a_restart_is_needed() {
    let all = targets(1);
    let proxy = Proxy::start(&all, "");
    let port = common::closed_port();
    proxy.reload(&config_json(&all, "").replace("127.0.0.1:0\"", &format!("127.0.0.1:{port}\"")));
    let line = proxy.proc.wait_line("needs a restart", Duration::from_secs(5));
    assert!(line.contains("`listen`"), "{line}");
    assert_eq!(proxy.get("/").status, 200, "the old listener still serves");
}

#[test]
fn a_reload_moves_the_access_log_and_its_format() {
    let all = targets(1);
    let log = |name: &str| std::env::temp_dir().join(format!("ringproxy-reload-{}-{name}.log", std::process::id()));
    let (first, second) = (log("a"), log("b"));
    let proxy = Proxy::start(&all, &format!("\"access_log\": \"{}\"", first.display()));
    proxy.get("/");
    eventually(Duration::from_secs(5), "a line in the first log", || {
        std::fs::read_to_string(&first).ok().filter(|t| t.contains("GET / HTTP/1.1")).map(|_| ())
    });
    reload_to(
        &proxy,
        &all,
        &[0],
        &format!("\"access_log\": \"{}\", \"access_log_format\": \"json\"", second.display()),
    );
    proxy.get("/moved");
    let line = eventually(Duration::from_secs(5), "a line in the second log", || {
        std::fs::read_to_string(&second).ok().filter(|t| t.contains("/moved"))
    });
    assert!(line.starts_with('{'), "JSON after the reload: {line}");
    assert!(!std::fs::read_to_string(&first).unwrap_or_default().contains("/moved"));
    let _ = (std::fs::remove_file(&first), std::fs::remove_file(&second));
}
