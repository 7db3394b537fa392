//! The command line: config validation, help and version, exit codes.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::proxy_bin()).args(args).output().expect("run ringproxy");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn check(json: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("ringproxy-cli-{}-{}.json", std::process::id(), json.len()));
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
