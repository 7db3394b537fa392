//! The parser, the schema (`docs/ringproxy.schema.json`) and the reference
//! (`docs/configuration.md`) say the same: the same keys, nested ones included, and the same
//! defaults. A key added to one and not the others fails here.

mod common;

use ringproxy::config::{keys, Config, SNI_KEYS, TARGET_KEYS, TLS_KEYS};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ringproxy.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the schema")).expect("the schema is JSON")
}

fn names(object: &Value) -> BTreeSet<String> {
    object.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// The object form of a `ports` entry in the schema.
fn target_object(schema: &Value) -> &Value {
    let forms = schema["properties"]["ports"]["items"]["oneOf"].as_array().expect("ports: a URL or an object");
    forms.iter().find(|f| f["type"] == "object").expect("the object form")
}

#[test]
fn the_schema_has_every_key_the_parser_takes_and_no_other() {
    let schema = schema();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["additionalProperties"], false, "an unknown key is an error for the proxy too");
    assert_eq!(names(&schema["properties"]), set(&keys()));
    assert_eq!(names(&target_object(&schema)["properties"]), set(&TARGET_KEYS));
    let tls = &schema["properties"]["tls"];
    assert_eq!(names(&tls["properties"]), set(&TLS_KEYS));
    assert_eq!(names(&tls["properties"]["sni"]["items"]["properties"]), set(&SNI_KEYS));
    for (key, property) in schema["properties"].as_object().expect("properties") {
        let described = property["description"].as_str().is_some_and(|d| d.len() > 20);
        assert!(described, "`{key}` has no description for the editor to show");
    }
}

#[test]
fn the_schemas_defaults_are_the_parsers() {
    let schema = schema();
    let effective = Config::parse(r#"{"ports": ["http://127.0.0.1:1/"]}"#).expect("valid").effective();
    let mut compared = 0;
    for (key, property) in schema["properties"].as_object().expect("properties") {
        let Some(default) = property.get("default") else {
            continue;
        };
        let used = &effective[key.as_str()];
        let same = match (default.as_f64(), used.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => default == used,
        };
        assert!(same, "`{key}`: the schema says {default}, the parser uses {used}");
        compared += 1;
    }
    assert!(compared >= 30, "only {compared} defaults compared");
    for (nested, parsed) in [
        (&target_object(&schema)["properties"]["weight"]["default"], 1),
        (&schema["properties"]["tls"]["properties"]["listen"]["default"], 8443),
    ] {
        assert!(nested.as_u64() == Some(parsed) || nested.as_str().is_some_and(|s| s.ends_with(&parsed.to_string())));
    }
}

/// The keys in the first column of `docs/configuration.md`'s tables (`` `key` ``).
fn documented_keys() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md");
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key.to_owned()))
        .collect()
}

#[test]
fn the_reference_documents_every_key_the_parser_takes_and_no_other() {
    let documented = documented_keys();
    let top: Vec<&String> = documented.iter().filter(|k| !k.contains(['.', '['])).collect();
    let unique: BTreeSet<String> = top.iter().map(|k| (*k).clone()).collect();
    assert_eq!(unique.len(), top.len(), "a key documented twice: {top:?}");
    assert_eq!(unique, set(&keys()), "docs/configuration.md and the parser disagree");
    let nested = |prefix: &str| -> BTreeSet<String> {
        let subkeys = documented.iter().filter_map(|k| k.strip_prefix(prefix)).filter(|k| !k.contains(['.', '[']));
        subkeys.map(str::to_owned).collect()
    };
    assert_eq!(nested("ports[]."), set(&TARGET_KEYS));
    assert_eq!(nested("tls."), set(&TLS_KEYS));
    assert_eq!(nested("tls.sni[]."), set(&SNI_KEYS));
}

#[test]
fn the_schema_and_the_parser_agree_at_the_edges() {
    // (the keys beside one target, whether both accept them)
    let cases: &[(&str, bool)] = &[
        (r#""listen": ":8000""#, true),
        (r#""listen": "LocalHost:0""#, true),
        (r#""listen": "[::1]:8000""#, true),
        (r#""listen": "8000""#, false),
        (r#""listen": """#, false),
        (r#""admin": null"#, true),
        (r#""admin": "nowhere""#, false),
        (r#""workers": "auto""#, true),
        (r#""workers": 2.0"#, true),
        (r#""workers": 0"#, false),
        (r#""workers": 65"#, false),
        (r#""retries": 0"#, true),
        (r#""retries": null"#, true),
        (r#""retries": -1"#, false),
        (r#""sleeping": 0.001"#, true),
        (r#""upstream_timeout": 86400"#, true),
        (r#""upstream_timeout": 86401"#, false),
        (r#""upstream_timeout": 0"#, false),
        (r#""slow_start": 0"#, true),
        (r#""max_body_size": 0"#, true),
        (r#""max_body_size": 1e3"#, true),
        (r#""access_log_format": "clf""#, true),
        (r#""access_log_format": "xml""#, false),
        (r#""hash_key": "header:X-User""#, true),
        (r#""hash_key": "header:""#, false),
        (r#""upgrade_protocols": ["websocket", "h2c"]"#, false),
        (r#""upgrade_protocols": ["web socket"]"#, false),
        (r#""policy": "leastconn""#, false),
        (r#""fall": 0"#, false),
        (r#""all_down_status": 600"#, false),
        (r#""max_request_head": 512"#, false),
        (r#""max_chunk_line": 63"#, false),
        (r#""sleping": 1"#, false),
        (r#""tls": {"cert": "c", "key": "k", "lisen": ":1"}"#, false),
        (r#""tls": {"key": "k"}"#, false),
    ];
    let target = r#""ports": ["http://127.0.0.1:1/"]"#;
    let mut disagreements = Vec::new();
    for (keys, accepted) in cases {
        let json = format!("{{{target}, {keys}}}");
        let parser = Config::parse(&json).is_ok();
        let schema = common::schema_check(&json).is_ok();
        if parser != *accepted || (schema != *accepted && common::needs_python("jsonschema")) {
            disagreements.push(format!("{keys}: expected {accepted}, parser {parser}, schema {schema}"));
        }
    }
    for ports in [r#"["http://[::1]:81/api"]"#, r#"[{"url": "http://a/", "weight": 3.0}]"#] {
        let json = format!(r#"{{"ports": {ports}}}"#);
        assert!(Config::parse(&json).is_ok() && common::schema_check(&json).is_ok(), "{json}");
    }
    for ports in [
        r#"[]"#,
        r#"["ftp://a/"]"#,
        r#"["http://u:p@a/"]"#,
        r#"["http://a:99999/"]"#,
        r#"[{"url": "http://a/", "weight": 0}]"#,
        r#"[{"url": "http://a/", "weight": 1001}]"#,
        r#"[{"uri": "http://a/"}]"#,
    ] {
        let json = format!(r#"{{"ports": {ports}}}"#);
        assert!(Config::parse(&json).is_err(), "the parser takes {json}");
        if common::needs_python("jsonschema") && !ports.contains("99999") {
            assert!(common::schema_check(&json).is_err(), "the schema takes {json}");
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn the_references_a_to_z_line_names_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md");
    let line = text.lines().find(|l| l.starts_with("**Every key, A–Z:**")).expect("the A–Z line");
    let named: BTreeSet<String> = line.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert_eq!(named, set(&keys()));
}
