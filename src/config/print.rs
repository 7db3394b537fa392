//! The effective configuration as JSON, for `ringproxy --print-config`: every key the parser
//! knows, with the value the proxy will use after defaults, floors and derived values, in the
//! file's own form, so the output is itself a valid config that means the same (as nginx's
//! `-T` and Caddy's `adapt` show what the server runs with).

use super::{AllDown, Config, HashKey, LogDestination, LogFormat, Policy};
use serde_json::{json, Value};
use std::time::Duration;

impl Config {
    /// Every key with its effective value. `retries` is `null` when it follows a discovered
    /// (changing) table; `max_connections` is the file's value, which the proxy may lower at
    /// start to fit the descriptor limit.
    pub fn effective(&self) -> Value {
        Value::Object(self.effective_keys().collect())
    }

    /// The same as indented JSON, the keys in the order the parser takes them (`ports` first).
    pub fn effective_text(&self) -> String {
        let lines: Vec<String> = self
            .effective_keys()
            .map(|(key, value)| {
                let value = serde_json::to_string_pretty(&value).unwrap_or_default().replace('\n', "\n  ");
                format!("  {}: {value}", Value::String(key))
            })
            .collect();
        format!("{{\n{}\n}}", lines.join(",\n"))
    }

    fn effective_keys(&self) -> impl Iterator<Item = (String, Value)> + '_ {
        super::keys().into_iter().filter_map(|key| Some((key.to_owned(), self.value_of(key)?)))
    }

    fn value_of(&self, key: &str) -> Option<Value> {
        let secs = |d: Duration| json!(d.as_secs_f64());
        Some(match key {
            "ports" => Value::Array(
                self.targets
                    .iter()
                    .map(|t| json!({"url": t.url, "weight": t.weight, "discover": t.discover}))
                    .collect(),
            ),
            "sleeping" => secs(self.health.sleeping),
            "listen" => json!(self.listen.to_string()),
            "connect_timeout" => secs(self.timeouts.connect),
            "client_header_timeout" => secs(self.timeouts.client_header),
            "keepalive_timeout" => secs(self.timeouts.keepalive),
            "upstream_timeout" => secs(self.timeouts.upstream),
            "probe_timeout" => secs(self.health.probe_timeout),
            "shutdown_timeout" => secs(self.timeouts.shutdown),
            "probe_path" => json!(self.health.probe_path),
            "all_down_status" => json!(self.balancing.all_down_status),
            "max_request_head" => json!(self.limits.max_request_head),
            "max_idle_upstream" => json!(self.limits.max_idle_upstream),
            "fall" => json!(self.health.fall),
            "rise" => json!(self.health.rise),
            "check_live" => json!(self.health.check_live),
            "retries" => match (self.balancing.retries, self.targets.iter().any(|t| t.discover)) {
                (Some(n), _) => json!(n),
                (None, true) => Value::Null,
                (None, false) => json!(self.targets.len()),
            },
            "retry_timeout" => secs(self.timeouts.retry),
            "all_down" => json!(match self.balancing.all_down {
                AllDown::Error => "error",
                AllDown::TryAll => "try_all",
            }),
            "access_log" => match &self.logging.access_log {
                LogDestination::Off => json!("off"),
                LogDestination::Stdout => json!("stdout"),
                LogDestination::File(path) => json!(path.to_string_lossy()),
            },
            "access_log_format" => json!(match self.logging.access_log_format {
                LogFormat::Common => "common",
                LogFormat::Json => "json",
            }),
            "admin" => self.admin.addr.map_or(Value::Null, |a| json!(a.to_string())),
            "admin_max_connections" => json!(self.admin.max_connections),
            "policy" => json!(match self.balancing.policy {
                Policy::HashRing => "hashring",
                Policy::RoundRobin => "round_robin",
                Policy::LeastConn => "least_conn",
                Policy::P2c => "p2c",
                Policy::Hash => "hash",
            }),
            "hash_key" => json!(match &self.balancing.hash_key {
                HashKey::ClientIp => "client_ip".to_owned(),
                HashKey::Path => "path".to_owned(),
                HashKey::Header(name) => format!("header:{name}"),
                HashKey::Cookie(name) => format!("cookie:{name}"),
            }),
            "slow_start" => secs(self.balancing.slow_start),
            "resolve_interval" => secs(self.health.resolve_interval),
            "upgrade_protocols" => json!(self.upgrade_protocols),
            "tls" => {
                let tls = self.tls.as_ref()?;
                let sni: Vec<Value> = tls
                    .sni
                    .iter()
                    .map(
                        |s| json!({"names": s.names, "cert": s.cert.to_string_lossy(), "key": s.key.to_string_lossy()}),
                    )
                    .collect();
                json!({
                    "listen": tls.listen.to_string(),
                    "cert": tls.cert.to_string_lossy(),
                    "key": tls.key.to_string_lossy(),
                    "sni": sni,
                })
            }
            "tunnel_timeout" => secs(self.timeouts.tunnel),
            "client_body_timeout" => secs(self.timeouts.client_body),
            "max_body_size" => json!(self.limits.max_body_size.unwrap_or(0)),
            "max_connections" => json!(self.limits.max_connections),
            "max_chunk_line" => json!(self.limits.chunk_limits.line),
            "max_trailer_size" => json!(self.limits.chunk_limits.trailers),
            "workers" => json!(self.workers),
            // `$schema`, and any key that only the file carries.
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_config_is_a_config_that_means_the_same() {
        for text in [
            r#"{"ports": ["http://127.0.0.1:9001/"], "sleeping": 1}"#,
            r#"{"ports": ["http://a:81/api/", {"url": "http://b:82/api", "weight": 3}], "policy": "hash",
                "hash_key": "cookie:sid", "admin": null, "access_log": "stdout", "access_log_format": "json",
                "sleeping": 0.001, "max_body_size": 1048576, "retries": 2, "workers": 2}"#,
            r#"{"ports": [{"url": "http://app:8080/", "discover": true}], "slow_start": 10,
                "tls": {"listen": ":8443", "cert": "c.pem", "key": "k.pem", "sni": [{"names": ["a.test"], "cert": "a", "key": "b"}]}}"#,
        ] {
            let text_form = Config::parse(text).expect("valid").effective_text();
            let read: Value = serde_json::from_str(&text_form).expect("the text is JSON");
            assert!(text_form.starts_with("{\n  \"ports\": ["), "{text_form}");
            let first = Config::parse(text).expect("valid").effective();
            assert_eq!(read, first);
            let again = Config::parse(&first.to_string()).expect("the effective config parses").effective();
            assert_eq!(first, again, "{text}");
            let keys: Vec<&String> = first.as_object().expect("object").keys().collect();
            assert!(keys.len() >= 35, "every key but $schema (and tls when off): {keys:?}");
        }
        let defaults = Config::parse(r#"{"ports": ["http://a/"]}"#).expect("valid").effective();
        assert_eq!(defaults["upstream_timeout"], json!(30.0));
        assert_eq!(defaults["admin"], json!("127.0.0.1:9000"));
        assert_eq!(defaults["retries"], json!(1));
        assert_eq!(defaults["max_chunk_line"], json!(4096));
        let floored = Config::parse(r#"{"ports": ["http://a/"], "sleeping": 0.001}"#).expect("valid").effective();
        assert_eq!(floored["sleeping"], json!(0.1), "the floor, as the proxy uses it");
    }
}
