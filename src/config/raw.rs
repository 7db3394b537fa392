//! The config file exactly as written: JSON keys taken one by one with their defaults, so that
//! a value of the wrong type names its key. Only `config` sees this form.

use super::{err, ConfigError};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The file as written, every key with its default filled in.
pub(super) struct RawConfig {
    /// Each a URL string, or an object `{"url", "weight", "discover"}`.
    pub(super) ports: Vec<Value>,
    pub(super) sleeping: f64,
    pub(super) listen: String,
    pub(super) connect_timeout: f64,
    pub(super) client_header_timeout: f64,
    pub(super) keepalive_timeout: f64,
    pub(super) upstream_timeout: f64,
    pub(super) probe_timeout: f64,
    pub(super) shutdown_timeout: f64,
    pub(super) probe_path: String,
    pub(super) all_down_status: u16,
    pub(super) max_request_head: usize,
    pub(super) max_idle_upstream: usize,
    pub(super) fall: u32,
    pub(super) rise: u32,
    pub(super) check_live: bool,
    /// Defaults to the number of targets.
    pub(super) retries: Option<usize>,
    pub(super) retry_timeout: f64,
    pub(super) all_down: String,
    pub(super) access_log: String,
    pub(super) access_log_format: String,
    /// `None`: the key is absent (the default address); `Some(None)`: `null`, no admin listener.
    pub(super) admin: Option<Option<String>>,
    pub(super) admin_max_connections: usize,
    pub(super) policy: String,
    pub(super) hash_key: String,
    pub(super) slow_start: f64,
    pub(super) resolve_interval: f64,
    pub(super) upgrade_protocols: Vec<String>,
    /// `{"listen", "cert", "key", "sni": [{"names", "cert", "key"}]}`, or absent.
    pub(super) tls: Option<Value>,
    pub(super) tunnel_timeout: f64,
    pub(super) client_body_timeout: f64,
    /// 0: no limit.
    pub(super) max_body_size: u64,
    pub(super) max_connections: usize,
    /// Defaults to the smaller of 4 KiB and a quarter of `max_request_head`.
    pub(super) max_chunk_line: Option<u32>,
    /// Defaults to the smaller of 8 KiB and half of `max_request_head`.
    pub(super) max_trailer_size: Option<u32>,
    /// A number, or `"auto"` for one per available core.
    pub(super) workers: Value,
}

/// The keys of a config object, taken one by one so that an error names its key, and the names
/// asked for, so that the parser itself says which keys it knows (`known`).
pub(super) struct Keys {
    map: Map<String, Value>,
    asked: Vec<&'static str>,
}

impl Keys {
    pub(super) fn new(map: Map<String, Value>) -> Keys {
        Keys { map, asked: Vec::new() }
    }

    fn take<T: DeserializeOwned>(&mut self, key: &'static str) -> Result<Option<T>, ConfigError> {
        self.asked.push(key);
        match self.map.remove(key) {
            None => Ok(None),
            Some(value) => serde_json::from_value(value).map(Some).map_err(|e| err(key, plain(&e.to_string()))),
        }
    }

    fn or<T: DeserializeOwned>(&mut self, key: &'static str, default: T) -> Result<T, ConfigError> {
        Ok(self.take(key)?.unwrap_or(default))
    }

    /// The error for a missing `ports`, naming a key that looks like a slip for it (`port`).
    fn missing_ports(&self) -> ConfigError {
        let near = self.map.keys().find(|k| !did_you_mean(k, &["ports"]).is_empty());
        match near {
            Some(k) => err("", format!("missing field `ports` (is `{k}` meant to be `ports`?)")),
            None => err("", "missing field `ports`"),
        }
    }

    /// A key left over once every known one was taken: an error naming it, with the closest
    /// known key when one is near (`sleping` → `sleeping`).
    fn refuse_unknown(&self) -> Result<(), ConfigError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(unknown) => Err(err("", format!("unknown field `{unknown}`{}", did_you_mean(unknown, &self.asked)))),
        }
    }
}

/// Every top-level key the parser takes, in its order.
pub(super) fn known() -> Vec<&'static str> {
    // Only the required key is present: every other one is asked for and takes its default.
    let mut keys = Keys::new(Map::from_iter([("ports".to_owned(), Value::Array(Vec::new()))]));
    let _ = RawConfig::from_keys_asked(&mut keys);
    keys.asked
}

/// `" (did you mean `KEY`?)"` for the known key nearest `unknown`, when one is near enough to be
/// a slip of the keyboard: at most two edits, and no more than a third of its letters.
pub(super) fn did_you_mean(unknown: &str, known: &[&str]) -> String {
    let near = known
        .iter()
        .map(|k| (edits(&unknown.to_ascii_lowercase(), k), *k))
        .filter(|&(d, k)| d <= 2 && d * 3 <= k.len().max(unknown.len()))
        .min();
    near.map(|(_, k)| format!(" (did you mean `{k}`?)")).unwrap_or_default()
}

/// serde's message without Rust's type names: `expected usize` is `expected a whole number`.
fn plain(message: &str) -> String {
    [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ]
    .iter()
    .fold(message.to_owned(), |m, (rust, words)| m.replace(rust, words))
}

/// Edits (insert, delete, replace, swap two neighbours) from `a` to `b`: the optimal string
/// alignment distance.
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

impl RawConfig {
    pub(super) fn from_keys(mut k: Keys) -> Result<RawConfig, ConfigError> {
        let raw = RawConfig::from_keys_asked(&mut k)?;
        k.refuse_unknown()?;
        Ok(raw)
    }

    fn from_keys_asked(k: &mut Keys) -> Result<RawConfig, ConfigError> {
        // A JSON Schema's address, for editors: nothing for the proxy.
        let _: Option<String> = k.take("$schema")?;
        let raw = RawConfig {
            ports: match k.take("ports")? {
                Some(ports) => ports,
                None => return Err(k.missing_ports()),
            },
            sleeping: k.or("sleeping", 1.0)?,
            listen: k.or("listen", "0.0.0.0:8000".to_owned())?,
            connect_timeout: k.or("connect_timeout", 2.0)?,
            client_header_timeout: k.or("client_header_timeout", 10.0)?,
            keepalive_timeout: k.or("keepalive_timeout", 60.0)?,
            upstream_timeout: k.or("upstream_timeout", 30.0)?,
            probe_timeout: k.or("probe_timeout", 1.0)?,
            shutdown_timeout: k.or("shutdown_timeout", 5.0)?,
            probe_path: k.or("probe_path", "/ping/".to_owned())?,
            all_down_status: k.or("all_down_status", 500)?,
            max_request_head: k.or("max_request_head", 16 * 1024)?,
            max_idle_upstream: k.or("max_idle_upstream", 64)?,
            fall: k.or("fall", 1)?,
            rise: k.or("rise", 1)?,
            check_live: k.or("check_live", false)?,
            // `null` says the default out loud (`--print-config` writes it for a discovered table).
            retries: k.take::<Option<usize>>("retries")?.flatten(),
            // Long enough for one retry after a full `upstream_timeout`, as nginx retries on timeout.
            retry_timeout: k.or("retry_timeout", 60.0)?,
            all_down: k.or("all_down", "error".to_owned())?,
            access_log: k.or("access_log", "off".to_owned())?,
            access_log_format: k.or("access_log_format", "common".to_owned())?,
            admin: k.take("admin")?,
            admin_max_connections: k.or("admin_max_connections", 64)?,
            policy: k.or("policy", "hashring".to_owned())?,
            hash_key: k.or("hash_key", "client_ip".to_owned())?,
            slow_start: k.or("slow_start", 0.0)?,
            resolve_interval: k.or("resolve_interval", 5.0)?,
            upgrade_protocols: k.or("upgrade_protocols", vec!["websocket".to_owned()])?,
            tls: k.take("tls")?,
            // A WebSocket may idle between messages for minutes; HAProxy's guides suggest an
            // hour for `timeout tunnel`.
            tunnel_timeout: k.or("tunnel_timeout", 3600.0)?,
            client_body_timeout: k.or("client_body_timeout", 10.0)?,
            max_body_size: k.or("max_body_size", 0)?,
            max_connections: k.or("max_connections", 10_000)?,
            max_chunk_line: k.take("max_chunk_line")?,
            max_trailer_size: k.take("max_trailer_size")?,
            workers: k.or("workers", Value::from(1))?,
        };
        Ok(raw)
    }
}
