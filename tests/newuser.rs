//! What a new user tripped over (issue 26): the access log's byte count for the proxy's own
//! answers. Real binaries on 127.0.0.1 ephemeral ports.

mod common;

use common::{closed_port, eventually, read_lines, temp_log, Client, Proxy};
use std::time::Duration;

/// A proxy whose targets all refuse connections, logging to a file in `format`.
fn proxy_with_no_live_target(format: &str) -> (Proxy, std::path::PathBuf) {
    let log = temp_log(&format!("newuser-{format}"));
    let ports = [closed_port(), closed_port()].map(|p| format!("\"http://127.0.0.1:{p}/\""));
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\", \"access_log\": \"{}\", \"access_log_format\": \"{format}\"}}",
        ports.join(", "),
        log.display()
    ));
    (proxy, log)
}

/// The access log's lines, once there are `n`.
fn log_lines(log: &std::path::Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(5), &format!("{n} access-log lines"), || {
        let lines = read_lines(log);
        (lines.len() >= n).then_some(lines)
    })
}

#[test]
fn the_access_log_counts_the_body_of_the_all_down_answer() {
    let (proxy, log) = proxy_with_no_live_target("common");
    let mut client = Client::connect(proxy.addr);
    let answer = client.request("GET", "/", &[], b"");
    assert_eq!((answer.status, answer.text().as_str()), (500, "All servers is off"));
    let head = client.request("HEAD", "/", &[], b"");
    assert_eq!(head.status, 500);
    let lines = log_lines(&log, 2);
    assert!(lines[0].contains("\"GET / HTTP/1.1\" 500 18 "), "{}", lines[0]);
    // A HEAD answer carries no body, and the log says so.
    assert!(lines[1].contains("\"HEAD / HTTP/1.1\" 500 0 "), "{}", lines[1]);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_json_access_log_counts_the_body_of_the_all_down_answer() {
    let (proxy, log) = proxy_with_no_live_target("json");
    assert_eq!(proxy.get("/").body.len(), 18);
    let lines = log_lines(&log, 1);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!((line["status"].as_u64(), line["bytes"].as_u64()), (Some(500), Some(18)), "{}", lines[0]);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_access_log_counts_the_body_of_a_400_for_a_malformed_request() {
    let t = common::targets(1);
    let log = temp_log("newuser-400");
    let proxy = Proxy::start(&t, &format!("\"access_log\": \"{}\"", log.display()));
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n");
    let answer = client.read_response(false);
    assert_eq!(answer.status, 400);
    assert!(!answer.body.is_empty());
    let lines = log_lines(&log, 1);
    let expected = format!(" 400 {} ", answer.body.len());
    assert!(lines[0].contains(&expected), "{expected:?} in {}", lines[0]);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn one_target_is_said_in_the_singular_by_check_the_start_line_and_a_reload() {
    let t = common::targets(1);
    let config = std::env::temp_dir().join(format!("ringproxy-newuser-check-{}.json", std::process::id()));
    std::fs::write(&config, common::config_json(&t, "")).expect("config");
    let out = std::process::Command::new(common::proxy_bin()).arg("--check").arg("--config").arg(&config).output();
    let text = String::from_utf8_lossy(&out.expect("run --check").stdout).into_owned();
    assert!(text.trim_end().ends_with(": ok (1 target)"), "{text}");
    let _ = std::fs::remove_file(&config);

    let proxy = Proxy::start(&t, "");
    let start = proxy.proc.wait_line("listening on", Duration::from_secs(5));
    assert!(start.contains("; 1 target: http://127.0.0.1:"), "{start}");
    proxy.reload(&common::config_json(&t, "\"admin\": \"127.0.0.1:0\""));
    let reloaded = proxy.proc.wait_line("reloaded the config", Duration::from_secs(5));
    assert!(reloaded.contains("reloaded the config: 1 target (0 added, 0 removed), 1 live"), "{reloaded}");
}
