//! The balancing policies as a client sees them, through the real proxy: weights, least
//! connections, consistent hashing that follows a target out and back, slow start, and a name
//! that stands for every address it resolves to.

mod common;

use common::{eventually, targets, Client, Proxy, Target};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Which target answered each of `n` GETs on one keep-alive connection, counted by name.
fn spread(proxy: &Proxy, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut client = Client::connect(proxy.addr);
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = client.request("GET", "/", headers, b"");
        assert_eq!(r.status, 200);
        *counts.entry(r.target().to_owned()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn round_robin_follows_the_weights() {
    let t = targets(3);
    let ports = format!(
        "[{{\"url\": \"{}\", \"weight\": 3}}, \"{}\", {{\"url\": \"{}\", \"weight\": 2}}]",
        t[0].url(),
        t[1].url(),
        t[2].url()
    );
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": {ports}, \"listen\": \"127.0.0.1:0\", \"policy\": \"round_robin\"}}"
    ));
    let counts = spread(&proxy, 60, &[]);
    assert_eq!((counts["t1"], counts["t2"], counts["t3"]), (30, 10, 20), "{counts:?}");
}

#[test]
fn least_conn_sends_new_requests_around_the_busy_targets() {
    let t = targets(3);
    let proxy = Proxy::start(&t, "\"policy\": \"least_conn\"");
    let addr = proxy.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                Client::connect(addr).request("GET", "/sleep/3000", &[], b"").target().to_owned()
            })
        })
        .collect();
    // Both slow requests are in flight, on two different targets.
    eventually(Duration::from_secs(5), "two requests in flight", || {
        let m = proxy.admin_get("/metrics").text();
        let active: u32 = m
            .lines()
            .filter(|l| l.starts_with("ringproxy_target_connections{") && l.contains("state=\"active\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
            .sum();
        (active == 2).then_some(())
    });
    let fast = spread(&proxy, 10, &[]);
    let busy: Vec<String> = slow.into_iter().map(|h| h.join().expect("slow request")).collect();
    assert_ne!(busy[0], busy[1], "the two slow requests went to different targets");
    assert_eq!(fast.len(), 1, "every fast request went to the idle target: {fast:?}");
    assert!(!busy.contains(fast.keys().next().expect("one")), "{fast:?} vs busy {busy:?}");
}

#[test]
fn hash_keeps_a_key_on_one_target_follows_it_out_and_brings_it_back() {
    let mut t = targets(4);
    let proxy = Proxy::start(&t, "\"policy\": \"hash\", \"hash_key\": \"header:X-User\", \"sleeping\": 0.2");
    let owner = |user: &str| {
        let counts = spread(&proxy, 5, &[("X-User", user)]);
        assert_eq!(counts.len(), 1, "one user, one target: {counts:?}");
        counts.into_keys().next().expect("a target")
    };
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let before: Vec<String> = users.iter().map(|u| owner(u)).collect();
    let distinct: std::collections::BTreeSet<&String> = before.iter().collect();
    assert!(distinct.len() >= 3, "40 users spread over the targets: {before:?}");
    // The target of user-0 leaves: only its users move.
    let gone = before[0].clone();
    let index = t.iter().position(|x| x.name == gone).expect("the target");
    t[index].kill();
    let during: Vec<String> = users.iter().map(|u| owner(u)).collect();
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        if *b == gone {
            assert_ne!(d, &gone, "{} moved off the dead target", users[i]);
        } else {
            assert_eq!(b, d, "{} stayed where it was", users[i]);
        }
    }
    t[index].restart();
    eventually(Duration::from_secs(10), "the target to come back", || {
        let once = spread(&proxy, 1, &[("X-User", &users[0])]);
        once.contains_key(&gone).then_some(())
    });
    let after: Vec<String> = users.iter().map(|u| owner(u)).collect();
    assert_eq!(after, before, "every user is back where it was");
}

#[test]
fn a_cookie_and_the_path_are_keys_too() {
    let t = targets(3);
    let proxy = Proxy::start(&t, "\"policy\": \"hash\", \"hash_key\": \"cookie:session\"");
    let mut c = Client::connect(proxy.addr);
    let first = c.request("GET", "/", &[("Cookie", "theme=dark; session=abc123")], b"").target().to_owned();
    for theme in ["light", "blue", "red"] {
        let cookie = format!("session=abc123; theme={theme}");
        assert_eq!(c.request("GET", "/", &[("Cookie", &cookie)], b"").target(), first);
    }
    let proxy = Proxy::start(&t, "\"policy\": \"hash\", \"hash_key\": \"path\"");
    let mut c = Client::connect(proxy.addr);
    let first = c.request("GET", "/ping/?a=1", &[], b"").target().to_owned();
    assert_eq!(c.request("GET", "/ping/?b=2", &[], b"").target(), first, "the query is not part of the key");
}

#[test]
fn p2c_keeps_traffic_off_a_target_that_holds_requests() {
    let t = targets(2);
    let proxy = Proxy::start(&t, "\"policy\": \"p2c\"");
    let addr = proxy.addr;
    let slow =
        std::thread::spawn(move || Client::connect(addr).request("GET", "/sleep/3000", &[], b"").target().to_owned());
    eventually(Duration::from_secs(5), "the slow request in flight", || {
        proxy.admin_get("/metrics").text().contains("state=\"active\"} 1").then_some(())
    });
    let fast = spread(&proxy, 10, &[]);
    let busy = slow.join().expect("slow request");
    assert_eq!(fast.get(&busy), None, "with two targets p2c compares both: {fast:?}, busy {busy}");
}

#[test]
fn slow_start_ramps_a_revived_target_up_instead_of_all_at_once() {
    let mut t = targets(2);
    let proxy = Proxy::start(&t, "\"policy\": \"round_robin\", \"slow_start\": 3, \"sleeping\": 0.1");
    t[1].kill();
    eventually(Duration::from_secs(5), "t2 down", || (!spread(&proxy, 4, &[]).contains_key("t2")).then_some(()));
    t[1].restart();
    eventually(Duration::from_secs(10), "t2 back", || spread(&proxy, 4, &[]).get("t2").map(|_| ()));
    let early = spread(&proxy, 100, &[]);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(start.elapsed()));
    let late = spread(&proxy, 100, &[]);
    let share = |c: &BTreeMap<String, usize>| c.get("t2").copied().unwrap_or(0);
    assert!(share(&early) < 35, "just after its revival t2 takes a small share: {early:?}");
    assert!((45..=55).contains(&share(&late)), "after slow_start, its full share: {late:?}");
}

/// Whether this process may make a mount namespace (root, with `unshare` installed).
fn can_unshare() -> bool {
    let ok = Command::new("unshare").args(["--mount", "true"]).status().is_ok_and(|s| s.success());
    common::needs(ok, "`unshare --mount`", "run as root")
}

#[test]
fn a_discovered_name_stands_for_every_address_and_follows_its_changes() {
    if !can_unshare() {
        return;
    }
    // Three targets on one port of three loopback addresses, and a hosts file the proxy reads
    // in a mount namespace of its own: the name "app.test" means whatever the file says.
    let port = common::closed_port();
    let hosts: Vec<String> = (2..=5).map(|i| format!("127.0.0.{i}")).collect();
    let mut t: Vec<Target> =
        hosts.iter().enumerate().map(|(i, h)| Target::on(&format!("a{}", i + 1), h, port, &[])).collect();
    let file = std::env::temp_dir().join(format!("ringproxy-hosts-{}", std::process::id()));
    let write_hosts = |addrs: &[&str]| {
        let text: String = addrs.iter().map(|a| format!("{a} app.test\n")).collect();
        // Written in place: the bind mount follows the file's inode.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .expect("hosts file");
    };
    write_hosts(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    // Names come from the hosts file only: no DNS server is asked, so a name the file lacks
    // does not exist, at once and for sure.
    let nsswitch = std::env::temp_dir().join(format!("ringproxy-nsswitch-{}", std::process::id()));
    std::fs::write(&nsswitch, "hosts: files\n").expect("nsswitch.conf");
    let config = std::env::temp_dir().join(format!("ringproxy-discover-{}.json", std::process::id()));
    let json = format!(
        "{{\"ports\": [{{\"url\": \"http://app.test:{port}/\", \"discover\": true}}], \"listen\": \"127.0.0.1:0\", \
         \"admin\": \"127.0.0.1:0\", \"resolve_interval\": 0.3, \"sleeping\": 0.2}}"
    );
    common::schema_check(&json).expect("the schema accepts the config");
    std::fs::write(&config, json).expect("config");
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/nsswitch.conf && exec {} --config {}",
        file.display(),
        nsswitch.display(),
        common::proxy_bin().display(),
        config.display()
    );
    let proc = common::Proc::spawn(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    let addr = common::listening_addr(&proc.wait_line("listening on", Duration::from_secs(10)));
    let served = |n: usize| {
        let mut c = Client::connect(addr);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let r = c.request("GET", "/", &[], b"");
            seen.insert(if r.status == 200 { r.target().to_owned() } else { r.status.to_string() });
        }
        seen
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<String>>();
    assert_eq!(served(30), names(&["a1", "a2", "a3"]), "every address of the name serves");
    // Scale up: a fourth address joins within about a resolve interval and a probe.
    write_hosts(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let joined = Instant::now();
    eventually(Duration::from_secs(5), "the new address to serve", || served(8).contains("a4").then_some(()));
    println!("a new address served {:?} after the hosts file named it", joined.elapsed());
    // Scale down: a vanished address gets no new requests, and nothing fails.
    write_hosts(&["127.0.0.3", "127.0.0.5"]);
    eventually(Duration::from_secs(5), "a1 and a3 to leave", || (served(12) == names(&["a2", "a4"])).then_some(()));
    // The name stops existing: its addresses stay for a few answers, then leave.
    write_hosts(&[]);
    assert_eq!(served(4), names(&["a2", "a4"]), "one answer saying the name is gone is not trusted yet");
    eventually(Duration::from_secs(5), "the addresses to leave", || (served(2) == names(&["500"])).then_some(()));
    proc.wait_line("the name does not exist", Duration::from_secs(1));
    // And it comes back.
    write_hosts(&["127.0.0.3"]);
    eventually(Duration::from_secs(5), "the name to serve again", || (served(4) == names(&["a2"])).then_some(()));
    t.clear();
    let _ = (std::fs::remove_file(&file), std::fs::remove_file(&config), std::fs::remove_file(&nsswitch));
}
