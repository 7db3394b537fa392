//! Every config in `examples/` is one the proxy accepts (`ringproxy --check`) and the schema
//! accepts, and so is what `--print-config` makes of it. The TLS examples name PEM files by
//! relative path: the test makes them in a scratch directory and checks from there, so no
//! private key is committed.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The examples the README and the docs point to: none may go missing unnoticed.
const EXPECTED: [&str; 6] = [
    "compose-discovery.json",
    "five-local-targets.json",
    "json-access-log.json",
    "tls-sni.json",
    "websocket.json",
    "workers.json",
];

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    all.sort();
    all
}

/// Self-signed PEM pairs at every `cert`/`key` path the example's `tls` names, below `dir`.
fn make_certificates(config: &Value, dir: &Path) {
    let Some(tls) = config.get("tls") else {
        return;
    };
    let sni = tls.get("sni").and_then(Value::as_array).cloned().unwrap_or_default();
    for pair in std::iter::once(tls).chain(sni.iter()) {
        let (Some(cert), Some(key)) = (pair["cert"].as_str(), pair["key"].as_str()) else {
            panic!("a tls entry without cert and key: {pair}");
        };
        let (cert, key) = (dir.join(cert), dir.join(key));
        for file in [&cert, &key] {
            std::fs::create_dir_all(file.parent().expect("a directory")).expect("mkdir");
        }
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", "/CN=example", "-addext", "subjectAltName=DNS:localhost"])
            .output()
            .expect("openssl req");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn every_example_is_checked_by_the_proxy_and_the_schema() {
    let found: Vec<String> = examples().iter().map(|p| p.file_name().expect("name").to_string_lossy().into()).collect();
    assert_eq!(found, EXPECTED, "examples/ changed: update EXPECTED and examples/README.md");
    let scratch = std::env::temp_dir().join(format!("ringproxy-examples-{}", std::process::id()));
    for path in examples() {
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read the example");
        common::schema_check(&text).unwrap_or_else(|e| panic!("{name}: the schema refuses it: {e}"));
        let config: Value = serde_json::from_str(&text).expect("JSON");
        assert!(config.get("$schema").is_some(), "{name}: names the schema, for editors");
        // The example as a user runs it, from a directory that holds what it names.
        let dir = scratch.join(name.trim_end_matches(".json"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        make_certificates(&config, &dir);
        let copy = dir.join(&name);
        std::fs::write(&copy, &text).expect("copy the example");
        let run = |flag: &str| {
            let out = Command::new(common::proxy_bin())
                .args([flag, "--config"])
                .arg(&copy)
                .current_dir(&dir)
                .output()
                .expect("run ringproxy");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(out.status.code(), Some(0), "{name} {flag}: {text}{}", String::from_utf8_lossy(&out.stderr));
            text
        };
        assert!(run("--check").contains(": ok ("), "{name}");
        let effective = run("--print-config");
        common::schema_check(&effective)
            .unwrap_or_else(|e| panic!("{name}: --print-config gives what the schema refuses: {e}"));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
