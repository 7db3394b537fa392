//! The status page in a real headless browser (Debian's `chromium`): after a target is killed,
//! the rendered page shows it down and the failover in the feed, with the trace.

mod common;

use common::{eventually, targets, Proxy};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The browser, or `None` (with a notice) where it is not installed and CI does not require it.
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    common::needs(found.is_some(), "chromium", "apt-get install chromium");
    found
}

/// Runs headless chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`), letting the
/// page's scripts run for a few seconds of virtual time; its standard output.
fn browse(browser: &str, url: &str, args: &[&str]) -> String {
    // A profile of its own for each run: two browsers on one profile stop one another.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("ringproxy-chromium-{}-{run}", std::process::id()));
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,560"])
        .args(["--virtual-time-budget=4000", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_status_page_shows_a_killed_target_down_and_its_failover_in_the_feed() {
    let Some(browser) = chromium() else {
        return;
    };
    let mut t = targets(3);
    let proxy = Proxy::start(&t, "\"sleeping\": 60");
    for _ in 0..30 {
        assert_eq!(proxy.get("/").status, 200);
    }
    let killed = t[1].url();
    t[1].kill();
    // Fresh connections, so that one of them is sent to the dead target and fails over.
    eventually(Duration::from_secs(10), "a failover", || {
        assert_eq!(proxy.get("/").status, 200);
        let metrics = proxy.admin_get("/metrics").text();
        let failovers = metrics.lines().find_map(|l| l.strip_prefix("ringproxy_failovers_total "))?.parse::<u64>();
        failovers.is_ok_and(|n| n >= 1).then_some(())
    });
    let page = format!("http://{}/status", proxy.admin.expect("admin"));
    let dom = browse(browser, &page, &["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"1\""), "the page rendered its data: {dom}");
    let row = format!("<tr data-target=\"{killed}\" data-state=\"down\">");
    assert!(dom.contains(&row), "the killed target shows down: {dom}");
    for alive in [t[0].url(), t[2].url()] {
        assert!(dom.contains(&format!("<tr data-target=\"{alive}\" data-state=\"up\">")), "{alive} shows up");
    }
    let feed = dom.split("<ol id=\"feed\">").nth(1).and_then(|f| f.split("</ol>").next()).expect("the feed");
    let failover = feed.split("<li ").find(|item| item.contains("class=\"failover\"")).expect("a failover in the feed");
    assert!(failover.contains(&format!("data-target=\"{killed}\"")), "the trace names the dead target: {failover}");
    assert!(failover.contains("conn_refused") || failover.contains("stale"), "and why it failed: {failover}");
    assert!(failover.contains("answered by http://127.0.0.1:"), "and who answered: {failover}");

    // A screenshot too, as a person would see it; `bench/screenshot.sh` makes docs/status.png,
    // which docs/operations.md shows.
    let shot = std::env::temp_dir().join(format!("ringproxy-status-{}.png", std::process::id()));
    browse(browser, &page, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the page");
    let _ = std::fs::remove_file(Path::new(&shot));
}

#[test]
fn the_status_page_counts_one_target_in_the_singular() {
    let Some(browser) = chromium() else {
        return;
    };
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    let dom = browse(browser, &format!("http://{}/status", proxy.admin.expect("admin")), &["--dump-dom"]);
    let summary = dom.split("id=\"summary\">").nth(1).and_then(|s| s.split("</div>").next()).expect("the summary");
    assert!(summary.contains(" · 1 of 1 target live · 0 client connections · 0 failovers · "), "{summary}");
}
