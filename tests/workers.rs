//! `"workers": N`: N event loops sharing one port (`SO_REUSEPORT`). Every request goes on a
//! fresh connection so the kernel spreads them over the workers, and the tests check what must
//! hold across them: one ring, one view of health, one probe per target, one set of counters,
//! and reloads and drains that reach every loop.

mod common;

use common::{eventually, targets, Client, Proxy, Target};
use std::collections::BTreeMap;
use std::time::Duration;

/// Connections each worker accepted, leader first.
fn accepted_by_worker(proxy: &Proxy, workers: usize) -> Vec<f64> {
    (0..workers).map(|w| proxy.metric(&format!("ringproxy_worker_connections_total{{worker=\"{w}\"}}"))).collect()
}

fn responses(proxy: &Proxy, t: &Target) -> f64 {
    (1..=5)
        .map(|c| proxy.metric(&format!("ringproxy_target_responses_total{{target=\"{}\",code=\"{c}xx\"}}", t.url())))
        .sum()
}

#[test]
fn two_workers_share_the_port_keep_the_ring_exact_and_add_up_their_counters() {
    let t = targets(3);
    let proxy = Proxy::start(&t, "\"workers\": 2");
    proxy.proc.wait_line("2 workers", Duration::from_secs(5));
    let n = 300;
    let order: Vec<String> = (0..n).map(|_| proxy.get("/").target().to_owned()).collect();
    // One sequence for the whole process: the rotation is exact whichever loop accepted.
    let first = t.iter().position(|x| x.name == order[0]).expect("a known target");
    for (i, name) in order.iter().enumerate() {
        assert_eq!(name, &t[(first + i) % 3].name, "request {i} broke the rotation: {order:?}");
    }
    let accepted = eventually(Duration::from_secs(5), "both workers' counts", || {
        let a = accepted_by_worker(&proxy, 2);
        (a.iter().sum::<f64>() >= n as f64).then_some(a)
    });
    assert!(accepted.iter().all(|&a| a > 0.0), "the kernel gave one worker every connection: {accepted:?}");
    let total: f64 = t.iter().map(|x| responses(&proxy, x)).sum();
    assert_eq!(total, n as f64, "the targets' counters add up over the workers");
}

#[test]
fn a_failure_one_worker_sees_takes_the_target_out_of_every_rotation_and_it_is_probed_once() {
    let mut t = targets(3);
    let proxy = Proxy::start(&t, "\"workers\": 2, \"sleeping\": 0.2");
    for _ in 0..30 {
        assert_eq!(proxy.get("/").status, 200);
    }
    t[1].kill();
    // Whichever worker meets the dead target first takes it out for both: sequential requests
    // meet it once, however the kernel spreads them.
    let mut by_target = BTreeMap::new();
    for _ in 0..200 {
        let r = proxy.get("/");
        assert_eq!(r.status, 200, "no request is lost");
        *by_target.entry(r.target().to_owned()).or_insert(0) += 1;
    }
    assert!(!by_target.contains_key(&t[1].name), "{by_target:?}");
    let failures = |proxy: &Proxy| {
        // "stale" is not on the list: a pooled connection found closed counts against nobody.
        ["conn_refused", "conn_error", "conn_timeout", "reset", "eof", "timeout"]
            .iter()
            .map(|r| {
                proxy.metric(&format!("ringproxy_target_failures_total{{target=\"{}\",reason=\"{r}\"}}", t[1].url()))
            })
            .sum::<f64>()
    };
    eventually(Duration::from_secs(2), "the failure counted", || (failures(&proxy) >= 1.0).then_some(()));
    assert_eq!(failures(&proxy), 1.0, "after the first failure, no worker sent to the dead target again");
    assert_eq!(proxy.metric(&format!("ringproxy_target_up{{target=\"{}\"}}", t[1].url())), 0.0);
    // One prober for the process: about one probe per `sleeping`, not one per worker.
    let probes = |proxy: &Proxy| {
        proxy.metric(&format!("ringproxy_target_probes_total{{target=\"{}\",result=\"failed\"}}", t[1].url()))
    };
    let before = probes(&proxy);
    std::thread::sleep(Duration::from_secs(2));
    let made = probes(&proxy) - before;
    assert!((6.0..=13.0).contains(&made), "{made} probes in 2 s at one every 0.2 s ± 10 %");
    t[1].restart();
    eventually(Duration::from_secs(5), "the revived target in every worker's rotation", || {
        let names: Vec<String> = (0..30).map(|_| proxy.get("/").target().to_owned()).collect();
        (names.iter().filter(|n| **n == t[1].name).count() == 10).then_some(())
    });
}

#[test]
fn reloads_and_drains_reach_every_worker() {
    let old = targets(2);
    let new = targets(2);
    let mut proxy = Proxy::start(&old, "\"workers\": 2");
    assert_eq!(proxy.get("/").status, 200);
    let admin = proxy.admin.expect("admin").to_string();
    let json = common::config_json(&new, &format!("\"workers\": 2, \"admin\": \"{admin}\""));
    let json = json.replace("127.0.0.1:0", &proxy.addr.to_string());
    proxy.reload(&json);
    proxy.proc.wait_line("reloaded the config", Duration::from_secs(5));
    // The followers apply the reload from their mailbox, right after the leader.
    eventually(Duration::from_secs(2), "only the new targets answer", || {
        let names: Vec<String> = (0..40).map(|_| proxy.get("/").target().to_owned()).collect();
        names.iter().all(|n| new.iter().any(|t| &t.name == n)).then_some(())
    });
    // Requests in flight on many connections (so on both workers) when SIGTERM comes.
    let slow = Target::on("slow", "127.0.0.1", 0, &["--delay-ms", "700"]);
    let json = common::config_json(std::slice::from_ref(&slow), &format!("\"workers\": 2, \"admin\": \"{admin}\""));
    proxy.reload(&json.replace("127.0.0.1:0", &proxy.addr.to_string()));
    eventually(Duration::from_secs(5), "the slow target in every worker's table", || {
        (0..10).all(|_| proxy.get("/").target() == "slow").then_some(())
    });
    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(proxy.addr)).collect();
    for c in &mut clients {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    let active = format!("ringproxy_target_connections{{target=\"{}\",state=\"active\"}}", slow.url());
    eventually(Duration::from_secs(2), "8 requests at the target", || (proxy.metric(&active) == 8.0).then_some(()));
    proxy.signal("TERM");
    for c in &mut clients {
        let r = c.read_response(false);
        assert_eq!((r.status, r.target()), (200, "slow"), "a request in flight finished during the drain");
    }
    assert_eq!(proxy.proc.wait_exit(Duration::from_secs(5)), Some(0), "every worker drained and the process exited 0");
}

#[test]
fn a_drain_with_nothing_in_flight_ends_at_once_and_max_connections_counts_the_process() {
    let t = targets(1);
    let mut proxy = Proxy::start(
        &t,
        "\"workers\": 2, \"max_connections\": 6, \"shutdown_timeout\": 30, \"client_header_timeout\": 1",
    );
    // Six idle connections fill the process, however the kernel spread them.
    let mut held: Vec<Client> = (0..6).map(|_| Client::connect(proxy.addr)).collect();
    for c in &mut held {
        assert_eq!(c.request("GET", "/", &[], b"").status, 200);
    }
    for _ in 0..8 {
        let r = Client::connect(proxy.addr).request("GET", "/", &[], b"");
        assert_eq!(r.status, 503, "a seventh connection is over max_connections on either worker");
    }
    eventually(Duration::from_secs(2), "8 refusals counted", || {
        (proxy.metric("ringproxy_client_connections_refused_total") == 8.0).then_some(())
    });
    drop(held);
    eventually(Duration::from_secs(3), "the closed connections gone from both workers' gauges", || {
        (proxy.metric("ringproxy_client_connections") == 0.0).then_some(())
    });
    // Connections that time out on a follower leave its gauge too (a pass with timers only).
    let idle: Vec<Client> = (0..6).map(|_| Client::connect(proxy.addr)).collect();
    eventually(Duration::from_secs(3), "six idle connections counted", || {
        (proxy.metric("ringproxy_client_connections") == 6.0).then_some(())
    });
    eventually(Duration::from_secs(5), "the idle connections timed out", || {
        (proxy.metric("ringproxy_client_connections") == 0.0).then_some(())
    });
    drop(idle);
    let started = std::time::Instant::now();
    proxy.signal("TERM");
    assert_eq!(proxy.proc.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3), "drained in {:?}, not shutdown_timeout", started.elapsed());
}
