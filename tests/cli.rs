//! The command line: config validation, help and version, exit codes.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::proxy_bin()).args(args).output().expect("run ringproxy");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn check(json: &str) -> (Option<i32>, String) {
    // A name of its own for each call: tests run side by side, and two configs may be as long.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ringproxy-cli-{}-{call}.json", std::process::id()));
    std::fs::write(&path, json).expect("write config");
    let result = run(&["--check", "--config", path.to_str().expect("utf8 path")]);
    let _ = std::fs::remove_file(path);
    result
}

#[test]
fn the_shipped_config_is_valid() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/appsettings.json");
    let (code, text) = run(&["--check", "--config", shipped]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok (5 targets)"));
}

#[test]
fn a_bad_config_exits_1_with_one_line_naming_the_key() {
    let cases = [
        (r#"{"ports": [], "sleeping": 1}"#, "`ports`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "sleeping": 0}"#, "`sleeping`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "sleeping": -1}"#, "`sleeping`"),
        (r#"{"ports": ["127.0.0.1:1"], "sleeping": 1}"#, "`ports`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "sleepin": 1}"#, "unknown field `sleepin`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "listen": "everywhere"}"#, "`listen`"),
        (r#"{"ports": "#, "EOF"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "sleeping": "1"}"#, "`sleeping`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "fall": 1.5}"#, "`fall`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "retries": -1}"#, "`retries`"),
        (r#"{"ports": ["http://127.0.0.1:1/", 7]}"#, "`ports`"),
        (r#"{"ports": ["http://127.0.0.1:1/", "http://127.0.0.1:1"]}"#, "`ports`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "max_connections": 0}"#, "`max_connections`"),
        (r#"["http://127.0.0.1:1/"]"#, "JSON object"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "access_log": "/nonexistent-dir/a.log"}"#, "`access_log`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "admin": "nowhere"}"#, "`admin`"),
        (r#"{"ports": ["http://127.0.0.1:1/"], "access_log_format": "xml"}"#, "`access_log_format`"),
    ];
    for (json, key) in cases {
        let (code, text) = check(json);
        assert_eq!(code, Some(1), "{json}: {text}");
        assert!(text.contains(key), "{json}: message {text:?} should name {key}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text:?}");
    }
}

#[test]
fn a_missing_config_file_exits_1() {
    let (code, text) = run(&["--config", "/nonexistent/ringproxy.json"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("cannot read"), "{text}");
}

#[test]
fn help_version_and_bad_usage() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("--config") && text.contains("SIGTERM"));
    let (code, text) = run(&["--version"]);
    assert_eq!((code, text.trim()), (Some(0), concat!("ringproxy ", env!("CARGO_PKG_VERSION"))));
    let (code, _) = run(&["--bogus"]);
    assert_eq!(code, Some(2));
}

#[test]
fn a_config_saved_with_a_byte_order_mark_is_accepted() {
    let (code, text) = check("\u{feff}{\"ports\": [\"http://127.0.0.1:1/\"], \"sleeping\": 1}");
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn intervals_and_timeouts_below_their_floor_are_raised_with_a_warning() {
    let (code, text) = check(r#"{"ports": ["http://127.0.0.1:1/"], "sleeping": 1e-9, "connect_timeout": 0.000001}"#);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("`sleeping`: 0.000000001 s is below the floor of 0.1 s"), "{text}");
    assert!(text.contains("`connect_timeout`"), "{text}");
}

#[test]
fn a_tiny_sleeping_does_not_make_the_probes_spin() {
    let port = common::closed_port();
    let proxy = common::Proxy::with_config(&format!(
        "{{\"ports\": [\"http://127.0.0.1:{port}/\"], \"listen\": \"127.0.0.1:0\", \"sleeping\": 1e-9}}"
    ));
    // The first request finds the target dead; from then on it is probed every `sleeping`.
    assert_eq!(proxy.get("/").status, 500);
    let before = common::cpu_seconds(proxy.proc.pid());
    // A measurement window, not a wait for readiness.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = common::cpu_seconds(proxy.proc.pid()) - before;
    assert!(used < 0.3, "{used} s of CPU in a second of probing a dead target");
}

#[test]
fn a_misspelt_key_is_named_with_the_nearest_known_one() {
    let (code, text) = check(r#"{"ports": ["http://127.0.0.1:1/"], "sleping": 1}"#);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("unknown field `sleping` (did you mean `sleeping`?)"), "{text}");
}

#[test]
fn print_config_shows_every_key_after_defaults_as_a_config_of_its_own() {
    let path = std::env::temp_dir().join(format!("ringproxy-cli-print-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"ports": ["http://127.0.0.1:1/"], "upstream_timeout": 12, "sleeping": 0.01}"#)
        .expect("write config");
    let out = Command::new(common::proxy_bin()).arg("--print-config").arg("--config").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("{\n  \"ports\": ["), "ports first, as the file has it: {text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the floor"), "the warning goes to stderr");
    let effective: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(effective["upstream_timeout"], 12.0);
    assert_eq!(effective["connect_timeout"], 2.0, "a default, said out loud");
    assert_eq!(effective["sleeping"], 0.1, "the floor the proxy uses, not the value asked for");
    let shown = effective.as_object().expect("an object").len();
    assert_eq!(shown, ringproxy::config::keys().len() - 2, "every key but $schema and tls (off)");
    // What it prints is a config that checks, and means the same.
    std::fs::write(&path, &text).expect("write the effective config");
    let again =
        Command::new(common::proxy_bin()).arg("--print-config").arg("--config").arg(&path).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&again.stdout), text);
    let _ = std::fs::remove_file(path);
}
