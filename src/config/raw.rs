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

/// The keys of a config object, taken one by one so that an error names its key.
pub(super) struct Keys(pub(super) Map<String, Value>);

impl Keys {
    fn take<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(value) => serde_json::from_value(value).map(Some).map_err(|e| err(key, e.to_string())),
        }
    }

    fn or<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.take(key)?.unwrap_or(default))
    }
}

impl RawConfig {
    pub(super) fn from_keys(mut k: Keys) -> Result<RawConfig, ConfigError> {
        let raw = RawConfig {
            ports: k.take("ports")?.ok_or_else(|| err("", "missing field `ports`"))?,
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
            retries: k.take("retries")?,
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
        if let Some(unknown) = k.0.keys().next() {
            return Err(err("", format!("unknown field `{unknown}`")));
        }
        Ok(raw)
    }
}
