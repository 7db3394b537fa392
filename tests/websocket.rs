//! WebSocket through the proxy, with real peers on both ends (the Python `websockets`
//! library): the upgrade is forwarded, a `101` turns the connection into a tunnel, messages
//! and control frames pass unchanged, and a target that dies closes its client promptly.
//! Other upgrades, and upgrades a target declines, stay plain HTTP.

mod common;

use common::{targets, Client, Proc, Proxy};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/ws.py")
}

/// The echo server, and the port it listens on.
fn echo_server() -> (Proc, u16) {
    let server = Proc::spawn(Command::new("python3").arg(script()).arg("serve"));
    let line = server.wait_line("PORT ", Duration::from_secs(10));
    let port = line.trim_start_matches("PORT ").trim().parse().expect("a port");
    (server, port)
}

fn proxy_for(port: u16, extra: &str) -> Proxy {
    Proxy::with_config(&format!(
        "{{\"ports\": [\"http://127.0.0.1:{port}/\"], \"listen\": \"127.0.0.1:0\"{}{extra}}}",
        if extra.is_empty() { "" } else { ", " }
    ))
}

#[test]
fn messages_pings_and_the_close_handshake_pass_through_the_tunnel() {
    if !common::needs_python("websockets") {
        return;
    }
    let (_server, port) = echo_server();
    let log = std::env::temp_dir().join(format!("ringproxy-ws-{}.log", std::process::id()));
    let proxy = proxy_for(port, &format!("\"access_log\": \"{}\", \"access_log_format\": \"json\"", log.display()));
    let out = Command::new("python3")
        .arg(script())
        .args(["echo", &format!("ws://{}/chat", proxy.addr)])
        .output()
        .expect("run the client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK 100 messages"), "{text}");

    let metrics = common::eventually(Duration::from_secs(5), "the tunnel to be counted", || {
        let m = proxy.admin_get("/metrics").text();
        m.contains("ringproxy_tunnels 0").then_some(m)
    });
    assert!(metrics.contains("ringproxy_tunnels_total 1"), "{metrics}");
    let bytes = |dir: &str| -> u64 {
        let prefix = format!("ringproxy_tunnel_bytes_total{{direction=\"{dir}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0)
    };
    // 100 messages averaging well over 100 KiB each way.
    assert!(bytes("upstream") > 10 << 20 && bytes("downstream") > 10 << 20, "{metrics}");
    let line = common::eventually(Duration::from_secs(5), "the access log line", || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("\"status\":101"))
    });
    let entry: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(entry["request"], "GET /chat HTTP/1.1");
    assert!(entry["total_ms"].as_u64().is_some(), "the tunnel's duration: {entry}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_target_killed_mid_tunnel_closes_the_client_promptly() {
    if !common::needs_python("websockets") {
        return;
    }
    let (mut server, port) = echo_server();
    let proxy = proxy_for(port, "");
    let client = Proc::spawn(Command::new("python3").arg(script()).args(["hold", &format!("ws://{}/", proxy.addr)]));
    client.wait_line("OPEN", Duration::from_secs(10));
    server.kill();
    let closed = client.wait_line("CLOSED after", Duration::from_secs(10));
    let secs: f64 = closed.split_whitespace().nth(2).and_then(|s| s.parse().ok()).expect("seconds");
    assert!(secs < 2.0, "the client heard of the dead target after {secs} s");
}

#[test]
fn an_upgrade_the_target_declines_stays_http_and_h2c_is_never_forwarded() {
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    let mut c = Client::connect(proxy.addr);
    // target-svc answers 200 to anything: the connection stays HTTP, keep-alive included.
    let upgrade = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")];
    let declined = c.request("GET", "/headers", &upgrade, b"");
    assert_eq!(declined.status, 200);
    assert!(declined.text().contains("Upgrade: websocket\r\n"), "the upgrade was forwarded: {}", declined.text());
    assert_eq!(c.request("GET", "/", &[], b"").status, 200, "the same connection carries the next request");
    let h2c = c.request(
        "GET",
        "/headers",
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
        b"",
    );
    assert_eq!(h2c.status, 200);
    let seen = h2c.text().to_ascii_lowercase();
    assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "h2c is dropped: {seen}");
    // A POST with a body never upgrades.
    let post = c.request("POST", "/headers", &upgrade, b"x");
    assert!(!post.text().contains("Upgrade:"), "{}", post.text());
}

#[test]
fn on_sigterm_an_open_tunnel_gets_shutdown_timeout_then_closes() {
    if !common::needs_python("websockets") {
        return;
    }
    let (_server, port) = echo_server();
    let mut proxy = proxy_for(port, "\"shutdown_timeout\": 1");
    let client = Proc::spawn(Command::new("python3").arg(script()).args(["hold", &format!("ws://{}/", proxy.addr)]));
    client.wait_line("OPEN", Duration::from_secs(10));
    proxy.signal("TERM");
    let closed = client.wait_line("CLOSED after", Duration::from_secs(10));
    let secs: f64 = closed.split_whitespace().nth(2).and_then(|s| s.parse().ok()).expect("seconds");
    assert!((0.8..3.0).contains(&secs), "the tunnel lived {secs} s into a 1 s drain");
    assert!(proxy.proc.wait_exit(Duration::from_secs(5)).is_some(), "the proxy exited");
}

#[test]
fn a_client_that_half_closes_before_the_101_still_hears_the_target() {
    let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_peers.py");
    let portfile = std::env::temp_dir().join(format!("ringproxy-upgrader-{}", std::process::id()));
    let _ = std::fs::remove_file(&portfile);
    let _target = Proc::spawn(Command::new("python3").arg(&peers).arg("upgrader").arg(&portfile).arg("late"));
    let port: u16 = common::eventually(Duration::from_secs(10), "the upgrader's port", || {
        std::fs::read_to_string(&portfile).ok()?.trim().parse().ok()
    });
    let proxy = proxy_for(port, "");
    let client = Proc::spawn(Command::new("python3").arg(&peers).args([
        "fetch",
        "127.0.0.1",
        &proxy.addr.port().to_string(),
        "/",
        "upgrade",
        "halfclose",
    ]));
    let line = client.wait_line("STATUS", Duration::from_secs(10));
    assert_eq!(line, "STATUS 101 BODY 11 b'hello world'");
    let _ = std::fs::remove_file(&portfile);
}
